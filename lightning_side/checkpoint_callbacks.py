"""The two checkpoint callbacks: the best epoch by val/acc, and the newest epochs with last.ckpt.

Two callbacks, because this Lightning refreshes save_last only when its own top-k saves: a
monitor="val/acc" callback alone would leave last.ckpt behind after an epoch that didn't improve.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from lightning.pytorch.callbacks import ModelCheckpoint


class BestCheckpoint(ModelCheckpoint):
    """The best checkpoint by val/acc, kept across --resume as the flax side keeps it.

    A resumed run writes into a new version folder, and ModelCheckpoint reloads its ranking only
    into an unchanged folder ("The dirpath has changed ... won't be reloaded"): the resumed run's
    first epoch would become the best whatever its val/acc, and the run would test it. Like the
    flax side, which carries its best checkpoint into the new folder, this copies the earlier best
    .ckpt in and ranks the new epochs against its score. ModelCheckpoint replaces the best only on
    a strictly greater val/acc, so on a tie the earlier checkpoint stays the best.
    """

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self._carried: tuple[Path, Path] | None = None  # (the earlier best, its copy here) till copied

    def load_state_dict(self, state_dict: dict) -> None:
        earlier_dirpath = state_dict.get("dirpath", self.dirpath)
        if self.dirpath is None or earlier_dirpath == self.dirpath:
            super().load_state_dict(state_dict)
            return
        best, score = state_dict.get("best_model_path"), state_dict.get("best_model_score")
        if not best or score is None:  # stopped before its first validation: nothing to carry
            return
        copy = Path(self.dirpath) / Path(best).name
        self._carried = (Path(best), copy)
        self.best_model_path = self.kth_best_model_path = str(copy)
        self.best_model_score = self.kth_value = score
        self.best_k_models = {str(copy): score}

    def on_train_start(self, trainer, pl_module) -> None:
        carried, self._carried = self._carried, None
        if carried is None:
            return
        earlier, copy = carried
        # A best that is missing or damaged stays so: testing it then warns and tests the last
        # checkpoint instead (train.evaluate_test_split), as on the flax side.
        if trainer.is_global_zero and earlier.is_file():
            copy.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(earlier, copy)
        trainer.strategy.barrier("best checkpoint carried over")


class LatestCheckpoints(ModelCheckpoint):
    """The newest epoch checkpoints and `last.ckpt`; on Ctrl-C, one more at the step reached.

    Lightning's `save_on_exception` would also save after any error, a diverged run's NaN weights
    included; only an interrupt is saved here. A run resumed from that checkpoint continues with
    the next batch of the interrupted epoch (the DataModule reads its position from global_step).
    """

    def __init__(self, **kwargs) -> None:
        super().__init__(save_on_exception=True, **kwargs)

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        if isinstance(exception, KeyboardInterrupt):
            super().on_exception(trainer, pl_module, exception)

    def load_state_dict(self, state_dict: dict) -> None:
        # A resumed run writes into a new version folder, where this ranking of the newest steps
        # starts afresh: the older folder keeps its own. Lightning would do the same, with a
        # warning about the changed folder that, here, announces what is meant.
        if state_dict.get("dirpath", self.dirpath) == self.dirpath:
            super().load_state_dict(state_dict)
        else:
            self.best_model_path = state_dict["best_model_path"]

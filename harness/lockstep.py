"""Run the sides' train.py files in lockstep from the same weights and collect what they logged and ended with.

Used by tests/test_lockstep.py, and by users:

    python -m harness.lockstep                       # float64, the default recipe, 10 steps
    python -m harness.lockstep --sides lightning flax nnx   # NNX against both
    python -m harness.lockstep --precision 32 --steps 1 --label-smoothing 0.1 --schedule cosine
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Mapping

import numpy as np
import torch

from lightning_side.models import create_model
from harness.processes import finish, start_train
from harness.events import scalars
from harness.verdicts import judged_pairs
from common.sides import DEFAULT_SIDES, FLAX_SIDES, SIDES



def lockstep(workdir: Path, *, steps: int = 10, precision: str = "64-true", model: str = "resnet20",
             extra: list[str] = (), seed: int = 0, data: list[str] = ("--dataset", "digits"),
             batch_size: int = 32, sides: tuple[str, ...] = DEFAULT_SIDES,
             devices: Mapping[str, tuple[int, ...]] | None = None, in_this_process=None) -> dict:
    """Train `sides` (Lightning among them) `steps` optimizer steps (one epoch of `steps` batches)
    from one init: the Lightning side's fresh model for `seed` (for resnet18/34/50, torchvision's
    own), which every side converts from its state_dict (--init-from).

    A Flax side (flax, nnx) trains once per entry of `devices[side]`, host device counts (data
    parallel; one run on 1 device where it is not named); a run on n > 1 devices is keyed
    "<side> on n devices", as "flax on 2 devices". The runs are started together as processes: each
    spends much of its time in imports and XLA's compiler, one core each. Given
    `in_this_process(side, argv) -> exit code`, the 1-device runs go through it instead, one after
    the other, while the other runs are processes."""
    devices = dict(devices or {})
    if set(devices) - (set(sides) & set(FLAX_SIDES)):
        raise ValueError(f"devices names {sorted(devices)}: only the Flax sides among {list(sides)} "
                         "take host devices")
    workdir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    init = workdir / "init.pt"
    torch.save(create_model(model, num_classes=10).state_dict(), init)
    argv = ["--model", model, *data, "--batch-size", str(batch_size), "--epochs", "1",
            "--limit-train-batches", str(steps), "--limit-val-batches", "2", "--limit-test-batches", "2", "--log-every", "1",
            "--precision", precision, "--init-from", str(init), "--logdir", str(workdir / "logs"),
            "--seed", str(seed), *extra]
    runs = {}
    for side in sides:
        if side not in FLAX_SIDES:
            runs[side] = (side, ["--run-name", "parity"])
            continue
        for n in devices.get(side, (1,)):
            runs[side if n == 1 else f"{side} on {n} devices"] = (side, ["--run-name", f"parity-{n}", "--devices", str(n)])
    here = set(sides) if in_this_process else set()
    started = {name: start_train(side, [*argv, *own]) for name, (side, own) in runs.items() if name not in here}
    codes = {name: in_this_process(runs[name][0], [*argv, *runs[name][1]]) for name in sorted(here)}
    done = finish(started) if started else {}
    out = {}
    for name, (side, own) in runs.items():
        if name in here:
            if codes[name] != 0:
                raise RuntimeError(f"{name} failed in this process with exit code {codes[name]}")
        elif done[name].returncode != 0:
            raise RuntimeError(f"{name} failed:\n{done[name].stderr[-4000:]}")
        version = workdir / "logs" / side / own[1] / "version_0"
        out[name] = {"scalars": scalars(version), "weights": final_weights(side, version)}
    return out


def final_weights(side: str, version: Path) -> dict[str, np.ndarray]:
    """The model's state_dict (torch names) at the end of training, as float64 numpy."""
    if side == "lightning":
        ckpt = torch.load(version / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
        state = {k[len("model."):]: v for k, v in ckpt["state_dict"].items() if k.startswith("model.")}
    else:
        import jax

        from flax_side.checkpoint import _flax_variables
        from flax_side.convert import flax_to_torch
        with jax.enable_x64(True):
            steps = sorted(int(p.name) for p in (version / "checkpoints").iterdir() if p.name.isdigit())
            state = flax_to_torch(_flax_variables(version / "checkpoints" / str(steps[-1])))
    return {k: v.double().numpy() for k, v in state.items() if not k.endswith("num_batches_tracked")}


def relative_differences(result: dict, runs: tuple[str, str] = DEFAULT_SIDES) -> dict[str, float]:
    """Largest relative differences between two of lockstep's runs (Lightning and flax, unless named):
    per-step train loss, val and test loss, weights."""
    a, b = (result[name]["scalars"] for name in runs)
    loss_a = np.array([v for _, v in a["train/loss"]])
    loss_b = np.array([v for _, v in b["train/loss"]])
    if len(loss_a) != len(loss_b):
        raise AssertionError(f"logged {len(loss_a)} vs {len(loss_b)} train steps")
    wa, wb = (result[name]["weights"] for name in runs)
    if wa.keys() != wb.keys():
        raise AssertionError(f"different weights: {sorted(set(wa) ^ set(wb))[:5]}")
    return {
        "train/loss (worst step)": float(np.max(np.abs(loss_a - loss_b) / np.abs(loss_a))),
        "val/loss": abs(a["val/loss"][-1][1] - b["val/loss"][-1][1]) / abs(a["val/loss"][-1][1]),
        # The same --limit-test-batches batches, through the best checkpoint's weights.
        "test/loss": abs(a["test/loss"][-1][1] - b["test/loss"][-1][1]) / abs(a["test/loss"][-1][1]),
        "weights": max(float(np.abs(wa[k] - wb[k]).max() / max(np.abs(wa[k]).max(), 1e-30))
                       for k in wa if "running" not in k),
        # One number for all parameters: fp32 noise swamps a tiny tensor's own scale after one step
        # (a BatchNorm bias starts at 0), never the whole model's.
        "weights (global)": float(np.sqrt(sum(((wa[k] - wb[k]) ** 2).sum() for k in wa if "running" not in k)
                                          / sum((wa[k] ** 2).sum() for k in wa if "running" not in k))),
        "batch statistics": max(float(np.abs(wa[k] - wb[k]).max() / max(np.abs(wa[k]).max(), 1e-30))
                                for k in wa if "running" in k),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--precision", default="64-true")
    parser.add_argument("--model", default="resnet20")
    parser.add_argument("--workdir", type=Path, default=Path("logs/parity"))
    parser.add_argument("--sides", nargs="+", choices=SIDES, default=list(DEFAULT_SIDES),
                        help="the sides to train, Lightning always among them; each is compared with Lightning, and NNX "
                             "with linen too (default: %(default)s)")
    args, extra = parser.parse_known_args()
    sides = ["lightning", *(s for s in args.sides if s != "lightning")]
    result = lockstep(args.workdir, steps=args.steps, precision=args.precision, model=args.model, extra=extra,
                      sides=tuple(sides))
    for pair in judged_pairs(sides):  # each side against Lightning, NNX against linen too
        print(f"{pair[1]} against {pair[0]}:")
        for name, value in relative_differences(result, pair).items():
            print(f"{name:>24}: {value:.2e}")


if __name__ == "__main__":
    main()

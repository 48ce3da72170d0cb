"""Each side's learning-rate schedule, as one function of the step."""

from typing import Callable

from common.config import parse_config


def learning_rates(side: str, argv: list[str], steps_per_epoch: int) -> Callable[[int], float]:
    """step -> the LR of the side's own schedule for these flags (lightning_side/schedules.py's
    factor of --lr, or flax_side/schedules.py's optax schedule)."""
    config = parse_config(side, argv)
    if side == "lightning":
        from lightning_side.schedules import lr_factor_fn

        factor = lr_factor_fn(config.schedule, config.epochs, steps_per_epoch, config.warmup_epochs,
                              config.milestones)
        return lambda step: config.lr * factor(step)
    from flax_side.schedules import create_schedule

    schedule = create_schedule(config, steps_per_epoch=steps_per_epoch)
    return lambda step: float(schedule(step))

"""Reading back what a run wrote to TensorBoard."""

from pathlib import Path

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator


def scalars(version_dir) -> dict[str, list[tuple[int, float]]]:
    """tag -> [(step, value)] of every event file in a run's version folder."""
    acc = EventAccumulator(str(Path(version_dir)), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}

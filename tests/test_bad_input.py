"""Bad flags, config, data and weights: both train.py exit 2 with one line and write nothing."""

import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
SIDES = ("lightning", "flax")


def _cases(tmp: Path) -> dict[str, tuple[list[str], str]]:
    empty = tmp / "empty"
    empty.mkdir()
    broken = tmp / "broken"
    (broken / "train" / "cat").mkdir(parents=True)
    (broken / "test" / "cat").mkdir(parents=True)
    (broken / "train" / "cat" / "a.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    Image.new("RGB", (32, 32)).save(broken / "test" / "cat" / "b.png")
    bad_weights = tmp / "weights.pt"
    bad_weights.write_bytes(b"\x00garbage")
    bad_yaml = tmp / "bad.yaml"
    bad_yaml.write_text("epochs: [1,\n")
    return {
        "unknown model": (["--model", "resnet21"], "--model"),
        "unknown dataset": (["--dataset", "mnist"], "--dataset"),
        "unknown precision": (["--precision", "fp8"], "--precision"),
        "zero epochs": (["--epochs", "0"], "--epochs"),
        "zero batch size": (["--batch-size", "0"], "--batch-size"),
        "NaN learning rate": (["--lr", "nan"], "--lr"),
        "missing config file": (["--config", str(tmp / "nope.yaml")], "does not exist"),
        "malformed config file": (["--config", str(bad_yaml)], "not valid YAML"),
        "empty image folder": (["--dataset", "imagefolder", "--data-dir", str(empty)], str(empty)),
        "unreadable image": (["--dataset", "imagefolder", "--data-dir", str(broken)], "a.png"),
        "no data, no network": (["--dataset", "cifar10", "--data-dir", str(empty)], "--dataset digits"),
        "nothing to resume": (["--dataset", "digits", "--resume", "last"], "resume"),
        "corrupt --init-from": (["--dataset", "digits", "--init-from", str(bad_weights)], str(bad_weights)),
    }


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory):
    """Every case on both sides, started together: each process mostly waits on imports."""
    tmp = tmp_path_factory.mktemp("bad")
    cases = _cases(tmp)
    procs = {}
    for name, (argv, _) in cases.items():
        for side in SIDES:
            logdir = tmp / "logs" / side / name.replace(" ", "_")
            procs[name, side] = (logdir, subprocess.Popen(
                [sys.executable, f"{side}_side/train.py", *argv, "--logdir", str(logdir)],
                cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    results = {}
    for key, (logdir, proc) in procs.items():
        _, stderr = proc.communicate(timeout=600)
        results[key] = (proc.returncode, stderr, logdir)
    return cases, results


@pytest.mark.parametrize("side", SIDES)
@pytest.mark.parametrize("case", [
    "unknown model", "unknown dataset", "unknown precision", "zero epochs", "zero batch size",
    "NaN learning rate", "missing config file", "malformed config file", "empty image folder",
    "unreadable image", "no data, no network", "nothing to resume", "corrupt --init-from"])
def test_bad_input_is_one_line_and_exit_2(outcomes, case, side):
    cases, results = outcomes
    code, stderr, logdir = results[case, side]
    needle = cases[case][1]
    assert code == 2, stderr[-2000:]
    assert "Traceback" not in stderr, stderr[-2000:]
    error_lines = [line for line in stderr.splitlines() if "error:" in line]
    assert len(error_lines) == 1 and needle in error_lines[0], stderr[-2000:]
    # nothing written: no run folder, so no user's logs or checkpoints could have been touched
    assert not any(logdir.rglob("*")), sorted(logdir.rglob("*"))

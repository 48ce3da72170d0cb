"""Bad flags, config, data and weights: both train.py exit 2 with one line and write nothing."""

import socket
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from harness.processes import finish
from tests.helpers.sides import DRIVERS
from tests.helpers.in_process import run_main

ROOT = Path(__file__).resolve().parents[1]


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


ARGPARSE_CASES = {"unknown model", "unknown dataset", "unknown precision", "zero epochs", "zero batch size",
                  "NaN learning rate", "missing config file", "malformed config file"}


# Every case runs in this process in the fast suite; one of each kind (argparse, data, weights)
# also as train.py processes under -m slow, where an error printed at exit or by another thread
# would show too.
PROCESS_CASES = ("unknown model", "no data, no network", "corrupt --init-from")
ALL_CASES = ("unknown model", "unknown dataset", "unknown precision", "zero epochs", "zero batch size",
             "NaN learning rate", "missing config file", "malformed config file", "empty image folder",
             "unreadable image", "no data, no network", "nothing to resume", "corrupt --init-from")


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory, request):
    """The selected cases on both sides, started together: each process mostly waits on imports."""
    tmp = tmp_path_factory.mktemp("bad")
    cases = _cases(tmp)
    selected = {item.callspec.params["case"] for item in request.session.items
                if item.originalname == "test_bad_input_is_one_line_and_exit_2"}
    procs, logdirs = {}, {}
    for name, (argv, _) in cases.items():
        if name not in selected:
            continue
        for side in DRIVERS:
            logdirs[name, side] = logdir = tmp / "logs" / side / name.replace(" ", "_")
            # The real download code, pointed at a closed port: the test never leaves 127.0.0.1.
            start = ([sys.executable, "-c", OFFLINE.format(url=_closed_port_url(), script=f"{side}_side/train.py")]
                     if name == "no data, no network" else [sys.executable, f"{side}_side/train.py"])
            procs[name, side] = subprocess.Popen(
                [*start, *argv, "--logdir", str(logdir)], cwd=ROOT, stdout=subprocess.PIPE,
                stderr=subprocess.PIPE, text=True, start_new_session=True)
    # A run that hangs is killed with every process it started (loader workers, DDP).
    results = {key: (run.returncode, run.stderr, logdirs[key]) for key, run in finish(procs).items()}
    return cases, results


OFFLINE = ("import runpy, sys, torchvision; torchvision.datasets.CIFAR10.url = {url!r}; "
           "sys.argv = [{script!r}, *sys.argv[1:]]; runpy.run_path({script!r}, run_name='__main__')")


def _closed_port_url() -> str:
    with socket.socket() as s:  # bound and closed again: nothing listens there
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/cifar-10-python.tar.gz"


def assert_one_line_and_exit_2(case: str, side: str, code: int, stderr: str, needle: str, logdir: Path):
    assert code == 2, stderr[-2000:]
    assert "Traceback" not in stderr, stderr[-2000:]
    lines = stderr.splitlines()
    if case in ARGPARSE_CASES:  # argparse's usage lines, then its one error line (docs/training.md)
        usage = lines[:-1]
        assert usage and usage[0].startswith(f"usage: python {side}_side/train.py"), stderr[-2000:]
        assert all(line.startswith(" ") for line in usage[1:]), stderr[-2000:]
        assert lines[-1].startswith(f"python {side}_side/train.py: error: ") and needle in lines[-1]
    else:  # the harness's own errors: exactly one line, nothing else
        assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], stderr[-2000:]
    # nothing written: no run folder, so no user's logs or checkpoints could have been touched
    assert not any(logdir.rglob("*")), sorted(logdir.rglob("*"))


@pytest.mark.slow  # a train.py process per case and side; every case runs in-process below
@pytest.mark.parametrize("side", DRIVERS)
@pytest.mark.parametrize("case", PROCESS_CASES)
def test_bad_input_is_one_line_and_exit_2(outcomes, case, side):
    cases, results = outcomes
    code, stderr, logdir = results[case, side]
    assert_one_line_and_exit_2(case, side, code, stderr, cases[case][1], logdir)


@pytest.mark.parametrize("side", DRIVERS)
@pytest.mark.parametrize("case", ALL_CASES)
def test_bad_input_in_process_is_one_line_and_exit_2(tmp_path, case, side, monkeypatch):
    import torchvision

    argv, needle = _cases(tmp_path)[case]
    logdir = tmp_path / "logs"
    monkeypatch.setattr(torchvision.datasets.CIFAR10, "url", _closed_port_url())  # as OFFLINE does
    done = run_main(side, [*argv, "--logdir", str(logdir)])
    assert_one_line_and_exit_2(case, side, done.returncode, done.stderr, needle, logdir)

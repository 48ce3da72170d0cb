"""The side-by-side report: a Markdown table and a PNG from both sides' event files."""

import subprocess
import sys
from pathlib import Path

from harness.compare import main

ROOT = Path(__file__).resolve().parents[1]


def test_report_from_two_real_runs(tmp_path, capsys):
    logdir = tmp_path / "logs"
    argv = ["--dataset", "digits", "--batch-size", "32", "--epochs", "2", "--limit-train-batches", "3",
            "--limit-val-batches", "2", "--log-every", "1", "--logdir", str(logdir)]
    for side in ("lightning", "flax"):
        out = subprocess.run([sys.executable, f"{side}_side/train.py", *argv], cwd=ROOT,
                             capture_output=True, text=True, timeout=600)
        assert out.returncode == 0, out.stderr[-3000:]
    assert main([str(logdir), "--out", str(tmp_path / "report")]) == 0
    table = (tmp_path / "report.md").read_text()
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]]
            for line in table.splitlines() if line.startswith("| ") and "---" not in line}
    assert rows[""] == ["lightning", "flax", "flax / lightning"]
    assert rows["epochs"][:2] == ["2", "2"] and rows["optimizer steps"][:2] == ["6", "6"]
    for metric in ("best val/acc", "test/acc", "train images/s", "peak memory (MB)", "wall time (s)"):
        lightning, flax, ratio = rows[metric]
        assert lightning != "–" and flax != "–" and ratio.endswith("×"), metric
    assert (tmp_path / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "lightning/resnet20-digits/version_0" in table and "flax/resnet20-digits/version_0" in table


def test_missing_runs_are_a_one_line_error(tmp_path, capsys):
    assert main([str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "python lightning_side/train.py" in err[0]

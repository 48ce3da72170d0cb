"""The benchmark command runs every measurement and prints the whole table."""

from harness.benchmark import main


def test_benchmark_prints_every_row(capsys):
    assert main(["--steps", "2", "--batch-size", "16"]) == 0
    out = capsys.readouterr().out
    rows = {line.split("|")[1].strip(): line for line in out.splitlines() if line.startswith("| ")}
    for name in ("raw step (images/s)", "end-to-end train.py (images/s)", "end-to-end / raw",
                 "time to first step (s)", "FLOP utilisation of the raw step"):
        assert name in rows and rows[name].rstrip().endswith("× |"), rows.get(name)
    assert "augmented images/s" in out and "GFLOP per image" in out
    gflop = float(out.split(" GFLOP per image")[0].rsplit("- ", 1)[1])
    assert 0.2 < gflop < 0.3  # ResNet-20 training: about 3 x 41 MFLOP forward per image

"""The benchmark command runs every measurement and prints the whole table."""

from harness.benchmark import main


def test_benchmark_prints_every_row(capsys):
    # Two flax columns (1 and 2 devices); torch.compile is left out of this quick check.
    assert main(["--steps", "2", "--batch-size", "16", "--devices", "2", "--no-compile"]) == 0
    out = capsys.readouterr().out
    rows = {line.split("|")[1].strip(): line for line in out.splitlines() if line.startswith("| ")}
    for name in ("raw step (images/s)", "end-to-end train.py (images/s)",
                 "time to first step (s)", "FLOP utilisation of the raw step"):
        assert name in rows and rows[name].rstrip().endswith("× |"), rows.get(name)
    ratios = [float(cell) for cell in rows["end-to-end / raw"].split("|")[2:5]]
    assert all(0 < r < 3 for r in ratios), ratios
    assert "| lightning | flax | flax, 2 devices |" in out
    assert "augmented images/s" in out and "GFLOP per image" in out
    convs = [line for line in out.splitlines() if line.startswith(("| 32x32x16", "| 16x16x32", "| 8x8x64"))]
    assert len(convs) == 3 and all(line.count(" / ") == 6 for line in convs)
    profile = next(line for line in out.splitlines() if line.startswith("The flax step on one device"))
    assert "fusion" in profile  # XLA's fused operations, by kind
    gflop = float(out.split(" GFLOP per image")[0].rsplit("- ", 1)[1])
    assert 0.2 < gflop < 0.3  # ResNet-20 training: about 3 x 41 MFLOP forward per image

"""Throughput of both sides, measured honestly and side by side.

    python -m harness.benchmark                          # resnet20, batch 128, fp32, this machine
    python -m harness.benchmark --model resnet56 --devices 2 --steps 50

Each measurement runs in a fresh process of its own, so neither side warms the other's caches:

    raw step      model + optimizer step on a synthetic batch already on the device
    end-to-end    train.py on --dataset synthetic (loader, step, logging), the second epoch's
                  perf/train_images_per_sec, so compilation and warm-up stay out
    data          the shared loader alone: augmented batches per second
    first step    seconds from process start to the end of the first raw step (imports,
                  initialisation, compilation)

and prints one table with the ratios flax/lightning and end-to-end/raw, plus FLOP utilisation:
FLOPs per image from XLA's cost analysis of the flax train step, against a measured float32
matmul peak. Figures differ up to 3x between machines of one kind: compare the ratios of one run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SIDES = ("lightning", "flax")


# --------------------------------------------------------------------------- workers (one process each)

def _process_age() -> float:
    """Seconds since this process started (Linux), so imports count towards the first step."""
    with open("/proc/self/stat") as f:
        start_ticks = int(f.read().rsplit(")", 1)[1].split()[19])
    with open("/proc/uptime") as f:
        uptime = float(f.read().split()[0])
    return uptime - start_ticks / os.sysconf("SC_CLK_TCK")


def raw_lightning(model: str, batch: int, steps: int, devices: int) -> dict:
    import torch

    from lightning_side.module import ResNetModule, parameter_groups

    torch.manual_seed(0)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    module = ResNetModule(model=model).to(device)  # channels_last, normalisation on the device
    optimizer = torch.optim.SGD(parameter_groups(module.model, 1e-4), lr=0.1, momentum=0.9, nesterov=True)
    images = torch.randint(0, 256, (batch, 32, 32, 3), dtype=torch.uint8).permute(0, 3, 1, 2).to(device)
    labels = torch.randint(0, 10, (batch,), device=device)

    def step():
        optimizer.zero_grad(set_to_none=True)
        loss = module.loss(module(images), labels)
        loss.backward()
        optimizer.step()

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    step()
    sync()
    first = _process_age()
    for _ in range(3):
        step()
    sync()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    sync()
    return {"raw": steps * batch / (time.perf_counter() - start), "first_step": first}


def raw_flax(model: str, batch: int, steps: int, devices: int) -> dict:
    if devices > 1:
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                                   + f" --xla_force_host_platform_device_count={devices}")
    import functools

    import jax
    import jax.numpy as jnp
    import numpy as np
    import optax
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

    from flax_side.models import create_model
    from flax_side.state import create_train_state, initial_variables
    from flax_side.steps import train_step

    net = create_model(model, 10)
    schedule = optax.constant_schedule(0.1)
    state = create_train_state(net, initial_variables(net, jax.random.key(0), (32, 32, 3)),
                               schedule=schedule, momentum=0.9, nesterov=True, weight_decay=1e-4,
                               loss_scaling=False)
    mesh = Mesh(np.array(jax.local_devices()[:devices]), ("data",))
    state = jax.device_put(state, NamedSharding(mesh, P()))
    rng = np.random.default_rng(0)
    data = jax.device_put((rng.integers(0, 256, (batch, 32, 32, 3), dtype=np.uint8),
                           rng.integers(0, 10, batch).astype(np.int32)), NamedSharding(mesh, P("data")))
    step = jax.jit(functools.partial(train_step, mean=np.full(3, 127.0), std=np.full(3, 64.0),
                                     input_dtype=jnp.float32, label_smoothing=0.0, schedule=schedule),
                   donate_argnums=0)
    compiled = step.lower(state, data).compile()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    state, _ = compiled(state, data)
    jax.block_until_ready(state)
    first = _process_age()
    for _ in range(3):
        state, _ = compiled(state, data)
    jax.block_until_ready(state)
    start = time.perf_counter()
    for _ in range(steps):
        state, _ = compiled(state, data)
    jax.block_until_ready(state)
    return {"raw": steps * batch / (time.perf_counter() - start), "first_step": first,
            # XLA counts the FLOPs of one device's share of the sharded program.
            "flops_per_image": float(cost.get("flops", float("nan"))) * devices / batch}


def data_pipeline(batch: int, steps: int, workers: int) -> dict:
    from datamodules import ImageDataModule

    dm = ImageDataModule(dataset="synthetic", batch_size=batch, num_workers=workers,
                         synthetic_train_size=max(batch * (steps + 5), 10_000))
    dm.setup()
    loader = dm.numpy_dataloader("train")
    it = iter(loader)
    next(it)  # workers started
    start = time.perf_counter()
    n = 0
    for images, _ in it:
        n += len(images)
    return {"data": n / (time.perf_counter() - start)}


def matmul_peak() -> dict:
    import torch

    a = torch.randn(2048, 2048)
    b = torch.randn(2048, 2048)
    a @ b
    start, k = time.perf_counter(), 10
    for _ in range(k):
        a @ b
    return {"gflops": k * 2 * 2048 ** 3 / (time.perf_counter() - start) / 1e9}


WORKERS = {"raw-lightning": raw_lightning, "raw-flax": raw_flax}


# --------------------------------------------------------------------------- the driver

def _worker(name: str, args: argparse.Namespace) -> dict:
    cmd = [sys.executable, "-m", "harness.benchmark", "--worker", name, "--model", args.model,
           "--batch-size", str(args.batch_size), "--steps", str(args.steps), "--devices", str(args.devices),
           "--num-workers", str(args.num_workers)]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=3600)
    if out.returncode != 0:
        raise RuntimeError(f"{name} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _end_to_end(side: str, args: argparse.Namespace, logdir: Path) -> float:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    steps = max(args.steps, 5)
    cmd = [sys.executable, f"{side}_side/train.py", "--dataset", "synthetic", "--model", args.model,
           "--batch-size", str(args.batch_size), "--epochs", "2", "--limit-train-batches", str(steps),
           "--limit-val-batches", "1", "--devices", str(args.devices if side == "flax" else 1),
           "--num-workers", str(args.num_workers), "--logdir", str(logdir), "--run-name", "bench",
           "--precision", "32"]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=3600)
    if out.returncode != 0:
        raise RuntimeError(f"{side} train.py failed:\n{out.stderr[-3000:]}")
    acc = EventAccumulator(str(logdir / side / "bench" / "version_0"))
    acc.Reload()
    return acc.Scalars("perf/train_images_per_sec")[-1].value


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                flags = Path("/proc/cpuinfo").read_text()
                extras = [f for f in ("avx512f", "avx512_bf16") if f" {f}" in flags]
                return f"{name}, {os.cpu_count()} cores" + (f", {' '.join(extras)}" if extras else "")
    except OSError:
        pass
    return platform.processor() or platform.machine()


def table(results: dict, args: argparse.Namespace, peak: float) -> str:
    rows = []

    def row(name, a, b, fmt="{:,.0f}"):
        ratio = f"{b / a:.2f}×" if a and b else "–"
        rows.append(f"| {name} | {fmt.format(a)} | {fmt.format(b)} | {ratio} |")

    lt, fx = results["lightning"], results["flax"]
    row("raw step (images/s)", lt["raw"], fx["raw"])
    row("end-to-end train.py (images/s)", lt["e2e"], fx["e2e"])
    row("end-to-end / raw", lt["e2e"] / lt["raw"], fx["e2e"] / fx["raw"], "{:.2f}")
    row("time to first step (s)", lt["first_step"], fx["first_step"], "{:.1f}")
    flops = fx.get("flops_per_image", float("nan"))
    row("FLOP utilisation of the raw step", lt["raw"] * flops / (peak * 1e9),
        fx["raw"] * flops / (peak * 1e9), "{:.1%}")
    head = [f"{args.model}, batch {args.batch_size}, fp32, flax on {args.devices} device(s), "
            f"{args.num_workers} loader workers; {cpu_name()}",
            "", "| | lightning | flax | flax / lightning |", "| --- | ---: | ---: | ---: |"]
    tail = ["", f"- data pipeline alone: {results['data']:,.0f} augmented images/s = "
                f"{results['data'] / max(lt['e2e'], fx['e2e']):.0f}× what the faster side consumes",
            f"- {flops / 1e9:.2f} GFLOP per image (XLA's cost analysis of the flax train step, used "
            f"for both sides); float32 matmul peak {peak:,.0f} GFLOP/s (2048² torch matmul)"]
    return "\n".join(head + rows + tail)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m harness.benchmark",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="resnet20")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=30, help="timed steps per measurement")
    parser.add_argument("--devices", type=int, default=1, help="flax: devices to shard over")
    parser.add_argument("--num-workers", type=int, default=0)
    parser.add_argument("--worker", choices=[*WORKERS, "data", "peak"], help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.worker:  # one measurement in this fresh process; JSON on the last stdout line
        if args.worker == "data":
            result = data_pipeline(args.batch_size, args.steps, args.num_workers)
        elif args.worker == "peak":
            result = matmul_peak()
        else:
            result = WORKERS[args.worker](args.model, args.batch_size, args.steps, args.devices)
        print(json.dumps(result))
        return 0

    results = {side: _worker(f"raw-{side}", args) for side in SIDES}
    with tempfile.TemporaryDirectory() as tmp:
        for side in SIDES:
            results[side]["e2e"] = _end_to_end(side, args, Path(tmp))
    results["data"] = _worker("data", args)["data"]
    peak = _worker("peak", args)["gflops"]
    print(table(results, args, peak))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

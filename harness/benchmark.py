"""Throughput of both sides, measured honestly and side by side.

    python -m harness.benchmark                          # resnet20, batch 128, fp32, this machine
    python -m harness.benchmark --model resnet56 --devices 2 --steps 50 --no-compile
    python -m harness.benchmark --depth                  # resnet20..110: cost per image against depth

Each measurement runs in a fresh process of its own, so neither side warms the other's caches:

    raw step      model + optimizer step on a synthetic batch already on the device
    end-to-end    train.py on --dataset synthetic (loader, step, logging), the second epoch's
                  perf/train_images_per_sec, so compilation and warm-up stay out
    data          the shared loader alone: augmented batches per second
    first step    seconds from process start to the end of the first raw step (imports,
                  initialisation, compilation)

for each side as it runs by default and at its best on this machine (Lightning with
torch.compile; flax sharded over every core as host devices, or every GPU), and prints one table
with the ratio of the best of each side and end-to-end/raw, plus FLOP utilisation: FLOPs per
image from XLA's cost analysis of the flax train step, against the faster of torch's and XLA's
float32 matmul. Below it, one convolution per stage timed in both frameworks shows where the
step time goes. Figures differ up to 3x between machines of one kind: compare the ratios of one run.

`--depth` measures instead the raw step of resnet20/32/44/56/110 on both sides (flax also with
XLA's default compiler options, the before of flax_side/compiler_options.py): images/s, cost per
image relative to resnet20, and peak memory, so that growth with depth is compared in one run.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from harness.architectures import CIFAR_ARCHITECTURES, default_image_size
from harness.runs import host_peak_memory_mb

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


def raw_lightning(model: str, batch: int, steps: int, devices: int, compile: bool = False,
                  image_size: int = 32) -> dict:
    import torch

    from lightning_side.module import ResNetModule, parameter_groups

    torch.manual_seed(0)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    module = ResNetModule(model=model).to(device)  # channels_last, normalisation on the device
    optimizer = torch.optim.SGD(parameter_groups(module.model, 1e-4), lr=0.1, momentum=0.9, nesterov=True)
    images = torch.randint(0, 256, (batch, image_size, image_size, 3), dtype=torch.uint8).permute(0, 3, 1, 2).to(device)
    labels = torch.randint(0, 10, (batch,), device=device)
    forward = torch.compile(module) if compile else module  # as train.py --compile does

    def step():
        optimizer.zero_grad(set_to_none=True)
        loss = module.loss(forward(images), labels)
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
    return {"raw": steps * batch / (time.perf_counter() - start), "first_step": first,
            "peak_mb": (torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda"
                        else host_peak_memory_mb())}


def _flax_step(model: str, batch: int, devices: int, xla_defaults: bool = False, image_size: int = 32):
    """(compiled train step, state, batch): the flax side's step over a synthetic batch that is
    already sharded over `devices` devices, compiled with train.py's options (or XLA's defaults).
    JAX is imported here, after XLA_FLAGS is set."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    import optax
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

    from flax_side.compiler_options import step_compiler_options
    from flax_side.models import create_model
    from flax_side.state import create_train_state, initial_variables
    from flax_side.steps import train_step

    net = create_model(model, 10)
    schedule = optax.constant_schedule(0.1)
    state = create_train_state(net, initial_variables(net, jax.random.key(0), (image_size, image_size, 3)),
                               schedule=schedule, momentum=0.9, nesterov=True, weight_decay=1e-4,
                               loss_scaling=False)
    mesh = Mesh(np.array(jax.local_devices()[:devices]), ("data",))
    state = jax.device_put(state, NamedSharding(mesh, P()))
    rng = np.random.default_rng(0)
    data = jax.device_put((rng.integers(0, 256, (batch, image_size, image_size, 3), dtype=np.uint8),
                           rng.integers(0, 10, batch).astype(np.int32)), NamedSharding(mesh, P("data")))
    step = jax.jit(functools.partial(train_step, mean=np.full(3, 127.0), std=np.full(3, 64.0),
                                     input_dtype=jnp.float32, label_smoothing=0.0, schedule=schedule),
                   donate_argnums=0, compiler_options={} if xla_defaults else step_compiler_options(model))
    return step.lower(state, data).compile(), state, data


def raw_flax(model: str, batch: int, steps: int, devices: int, compile: bool = False,
             xla_defaults: bool = False, image_size: int = 32) -> dict:
    if devices > 1:
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                                   + f" --xla_force_host_platform_device_count={devices}")
    start = time.perf_counter()
    compiled, state, data = _flax_step(model, batch, devices, xla_defaults, image_size)
    compile_seconds = time.perf_counter() - start
    import jax

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
    stats = jax.local_devices()[0].memory_stats() or {}
    return {"raw": steps * batch / (time.perf_counter() - start), "first_step": first,
            "compile_s": compile_seconds,
            "peak_mb": stats["peak_bytes_in_use"] / 2**20 if "peak_bytes_in_use" in stats else host_peak_memory_mb(),
            # XLA counts the FLOPs of one device's share of the sharded program.
            "flops_per_image": float(cost.get("flops", float("nan"))) * devices / batch}


def data_pipeline(batch: int, steps: int, workers: int, image_size: int = 32) -> dict:
    """Augmented images/s of the shared loader: at 32 px the in-memory pipeline on synthetic
    data; above, the streamed one on a generated folder of ImageNet-sized JPEGs (375-500 px a
    side), decoded, RandomResizedCrop'ed and flipped in `workers` workers (0: this process)."""
    from datamodules import ImageDataModule

    with tempfile.TemporaryDirectory() as tmp:
        if image_size == 32:
            dm = ImageDataModule(dataset="synthetic", batch_size=batch, num_workers=workers,
                                 synthetic_train_size=max(batch * (steps + 5), 10_000))
        else:
            from harness.photos import make_photo_folder

            per_class = -(-batch * (steps + 2) // 9)  # 10 classes, 10% of train carved for validation
            make_photo_folder(Path(tmp), per_class=per_class, eval_per_class=1, min_side=375, max_side=500)
            dm = ImageDataModule(dataset="imagefolder", data_dir=tmp, batch_size=batch,
                                 num_workers=workers, image_size=image_size)
        return _loader_rate(dm)


def _loader_rate(dm) -> dict:
    dm.setup()
    loader = dm.numpy_dataloader("train")
    it = iter(loader)
    next(it)  # workers started
    start = time.perf_counter()
    n = 0
    for images, _, _ in it:
        n += len(images)
    return {"data": n / (time.perf_counter() - start), "streamed": dm.streamed}


def matmul_peak() -> dict:
    """GFLOP/s of a float32 2048² matmul in torch and in XLA (their libraries differ: on one
    2-core Zen 5 CPU XLA's ran twice as fast); the faster is the peak."""
    import jax
    import torch

    n, k = 2048, 10
    a = torch.randn(n, n)
    for _ in range(3):
        a @ a
    start = time.perf_counter()
    for _ in range(k):
        a @ a
    torch_gflops = k * 2 * n ** 3 / (time.perf_counter() - start) / 1e9
    x = jax.random.normal(jax.random.key(0), (n, n))
    f = jax.jit(lambda x: x @ x)
    for _ in range(3):
        f(x).block_until_ready()
    start = time.perf_counter()
    for _ in range(k):
        y = f(x)
    y.block_until_ready()
    xla_gflops = k * 2 * n ** 3 / (time.perf_counter() - start) / 1e9
    return {"torch": torch_gflops, "xla": xla_gflops}


def xla_profile(model: str, batch: int, steps: int, image_size: int = 32) -> dict:
    """Milliseconds per flax train step by kind of XLA operation (the name of each fused
    operation without its number: `transpose_copy_fusion`, `ynn_fusion`, ...), from a
    jax.profiler trace of `steps` steps on one device."""
    import collections
    import gzip

    flags = os.environ.get("XLA_FLAGS", "")
    os.environ["XLA_FLAGS"] = f"{flags} --xla_cpu_enable_xprof_traceme=true".strip()
    step, state, data = _flax_step(model, batch, devices=1, image_size=image_size)
    import jax

    for _ in range(3):
        state, _ = step(state, data)
    jax.block_until_ready(state)
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        with jax.profiler.trace(tmp, create_perfetto_trace=True):
            for _ in range(steps):
                state, _ = step(state, data)
            jax.block_until_ready(state)
        wall = (time.perf_counter() - start) / steps * 1e3
        trace = next(Path(tmp).rglob("*.trace.json.gz"))
        events = json.loads(gzip.decompress(trace.read_bytes()))["traceEvents"]
    kinds: collections.Counter = collections.Counter()
    for event in events:
        name = event.get("name", "")
        # XLA's own operations only: not the executor's spans nor Python frames ($...).
        if event.get("ph") == "X" and "dur" in event and not name.startswith(("Thunk", "$", "Pjit")):
            kinds[name.split(".")[0]] += event["dur"] / 1e3 / steps
    return {"step_ms": wall, "kinds": dict(kinds.most_common(6))}


def conv_profile(batch: int, steps: int) -> dict:
    """Milliseconds of one 3x3 convolution of each ResNet-20 stage, forward, input gradient and
    weight gradient, in torch (channels_last) and in XLA (NHWC): where the step time goes."""
    import jax
    import jax.numpy as jnp
    import torch

    def clock(f, sync):
        sync(f())
        start = time.perf_counter()
        for _ in range(steps):
            out = f()
        sync(out)
        return (time.perf_counter() - start) / steps * 1e3

    dn = ("NHWC", "HWIO", "NHWC")
    result = {}
    for size, width in ((32, 16), (16, 32), (8, 64)):
        x = torch.randn(batch, width, size, size).contiguous(memory_format=torch.channels_last)
        w = torch.randn(width, width, 3, 3).contiguous(memory_format=torch.channels_last)
        dy = torch.randn_like(x)

        def backward(mask):
            return lambda: torch.ops.aten.convolution_backward(
                dy, x, w, None, [1, 1], [1, 1], [1, 1], False, [0, 0], 1, mask)

        no_sync = lambda out: None  # noqa: E731  (torch on the CPU returns finished tensors)
        torch_ms = [clock(lambda: torch.nn.functional.conv2d(x, w, padding=1), no_sync),
                    clock(backward([True, False, False]), no_sync),
                    clock(backward([False, True, False]), no_sync)]
        jx = jnp.asarray(x.permute(0, 2, 3, 1).numpy())
        jw = jnp.asarray(w.permute(2, 3, 1, 0).numpy())
        jdy = jnp.asarray(dy.permute(0, 2, 3, 1).numpy())
        conv = lambda a, b: jax.lax.conv_general_dilated(a, b, (1, 1), ((1, 1), (1, 1)),  # noqa: E731
                                                         dimension_numbers=dn)
        fwd = jax.jit(conv)
        dx = jax.jit(lambda b, g: jax.vjp(lambda a: conv(a, b), jx)[1](g)[0])
        dw = jax.jit(lambda a, g: jax.vjp(lambda b: conv(a, b), jw)[1](g)[0])
        sync = jax.block_until_ready
        xla_ms = [clock(lambda: fwd(jx, jw), sync), clock(lambda: dx(jw, jdy), sync),
                  clock(lambda: dw(jx, jdy), sync)]
        result[f"{size}x{size}x{width}"] = {"torch": torch_ms, "xla": xla_ms}
    return result


WORKERS = {"raw-lightning": raw_lightning, "raw-flax": raw_flax,
           "raw-flax-xla-defaults": functools.partial(raw_flax, xla_defaults=True)}


# --------------------------------------------------------------------------- the driver

def worker_argv(name: str, args: argparse.Namespace, devices: int = 1, compile: bool = False) -> list[str]:
    """This module's flags for one measurement, which main() runs and prints as JSON."""
    return ["--worker", name, "--model", args.model, "--batch-size", str(args.batch_size),
            "--steps", str(args.steps), "--devices", str(devices), "--image-size", str(args.image_size),
            "--num-workers", str(args.num_workers), "--compile" if compile else "--no-compile"]


def _worker(name: str, args: argparse.Namespace, devices: int = 1, compile: bool = False) -> dict:
    cmd = [sys.executable, "-m", "harness.benchmark", *worker_argv(name, args, devices, compile)]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=3600)
    if out.returncode != 0:
        raise RuntimeError(f"{name} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _end_to_end(side: str, args: argparse.Namespace, logdir: Path, devices: int = 1,
                compile: bool = False) -> float:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    steps = max(args.steps, 5)
    run_name = f"bench-{devices}-{int(compile)}"
    cmd = [sys.executable, f"{side}_side/train.py", "--dataset", "synthetic", "--model", args.model,
           "--image-size", str(args.image_size),
           "--batch-size", str(args.batch_size), "--epochs", "2", "--limit-train-batches", str(steps),
           "--limit-val-batches", "1", "--limit-test-batches", "1", "--devices", str(devices),
           "--num-workers", str(args.num_workers),
           "--logdir", str(logdir), "--run-name", run_name, "--precision", "32",
           *(["--compile"] if compile else [])]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=3600)
    if out.returncode != 0:
        raise RuntimeError(f"{side} train.py failed:\n{out.stderr[-3000:]}")
    acc = EventAccumulator(str(logdir / side / run_name / "version_0"))
    acc.Reload()
    return acc.Scalars("perf/train_images_per_sec")[-1].value


DEPTH_MODELS = ("resnet20", "resnet32", "resnet44", "resnet56", "resnet110")


def depth_configurations(args: argparse.Namespace) -> list[tuple[str, str, int]]:
    """(column, worker, devices) of the depth table."""
    columns = [("lightning", "raw-lightning", 1), ("flax", "raw-flax", 1),
               ("flax, XLA defaults", "raw-flax-xla-defaults", 1)]
    if args.devices > 1:
        columns.append((f"flax, {args.devices} devices", "raw-flax", args.devices))
    return columns


def depth_measurements(args: argparse.Namespace) -> dict[str, dict[str, dict]]:
    """model -> column -> raw-step result. Deeper models get fewer timed steps (about the same
    time each); the columns of one model run one after the other, so drift hits them alike."""
    results: dict[str, dict[str, dict]] = {}
    for model in args.depth_models:
        layers = int(model.removeprefix("resnet"))
        steps = max(3, round(args.steps * 20 / layers))
        run = argparse.Namespace(**{**vars(args), "model": model, "steps": steps})
        results[model] = {column: _worker(worker, run, devices)
                          for column, worker, devices in depth_configurations(args)}
        print(f"  {model}: " + ", ".join(f"{c} {r['raw']:,.0f} images/s" for c, r in results[model].items()),
              file=sys.stderr, flush=True)
    return results


def depth_table(results: dict[str, dict[str, dict]], args: argparse.Namespace) -> str:
    columns = [c[0] for c in depth_configurations(args)]
    models = list(results)
    base, deepest = models[0], models[-1]

    def cost(model, column):  # seconds per image, relative to the shallowest model
        return results[base][column]["raw"] / results[model][column]["raw"]

    lines = [f"Cost against depth: raw step, batch {args.batch_size}, fp32; {cpu_name()}", "",
             "images/s (cost per image relative to " + base + "):", "",
             f"| model | {' | '.join(columns)} |", f"| --- |{' ---: |' * len(columns)}"]
    for model in models:
        cells = [f"{results[model][c]['raw']:,.0f} (×{cost(model, c):.2f})" for c in columns]
        lines.append(f"| {model} | {' | '.join(cells)} |")
    flax_columns = [c for c in columns if c != "lightning"]
    lines += ["", "peak memory (MB) and flax compile time (s):", "",
              f"| model | {' | '.join(f'{c} MB' for c in columns)} | "
              f"{' | '.join(f'{c} compile s' for c in flax_columns)} |",
              f"| --- |{' ---: |' * (len(columns) + len(flax_columns))}"]
    for model in models:
        cells = [f"{results[model][c]['peak_mb']:,.0f}" for c in columns]
        cells += [f"{results[model][c]['compile_s']:.1f}" for c in flax_columns]
        lines.append(f"| {model} | {' | '.join(cells)} |")
    if deepest != base:
        growth = {c: cost(deepest, c) for c in columns}
        lines += ["", f"- {base} → {deepest}, cost per image: lightning ×{growth['lightning']:.2f}; "
                  + "; ".join(f"{c} ×{growth[c]:.2f} ({growth[c] / growth['lightning']:.2f}× "
                              f"lightning's growth)" for c in flax_columns)]
    return "\n".join(lines)


def configurations(args: argparse.Namespace) -> list[tuple[str, str, int, bool]]:
    """(column, side, devices, compile): each side as it runs by default and at its best here."""
    columns = [("lightning", "lightning", 1, False)]
    if args.compile:
        columns.append(("lightning + torch.compile", "lightning", 1, True))
    columns.append(("flax", "flax", 1, False))
    if args.devices > 1:
        columns.append((f"flax, {args.devices} devices", "flax", args.devices, False))
    return columns


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


def table(results: dict, args: argparse.Namespace, peak: dict) -> str:
    columns = [c[0] for c in configurations(args)]
    best = {side: max((c for c in columns if results[c]["side"] == side), key=lambda c: results[c]["e2e"])
            for side in SIDES}
    top = max(peak.values())
    flops = next(results[c]["flops_per_image"] for c in columns if "flops_per_image" in results[c])
    rows = []

    def row(name, value, fmt="{:,.0f}", ratio=True):
        values = [value(results[c]) for c in columns]
        a, b = value(results[best["lightning"]]), value(results[best["flax"]])
        cells = " | ".join(fmt.format(v) for v in values)
        rows.append(f"| {name} | {cells} | {f'{b / a:.2f}×' if ratio and a and b else '–'} |")

    row("raw step (images/s)", lambda r: r["raw"])
    row("end-to-end train.py (images/s)", lambda r: r["e2e"])
    row("end-to-end / raw", lambda r: r["e2e"] / r["raw"], "{:.2f}", ratio=False)
    row("time to first step (s)", lambda r: r["first_step"], "{:.1f}")
    row("FLOP utilisation of the raw step", lambda r: r["raw"] * flops / (top * 1e9), "{:.0%}")
    head = [f"{args.model} at {args.image_size} px, batch {args.batch_size}, fp32, {args.num_workers} "
            f"loader workers; {cpu_name()}",
            "", f"| | {' | '.join(columns)} | best flax / best lightning |",
            f"| --- |{' ---: |' * len(columns)} ---: |"]
    if args.image_size == 32:
        data = (f"- data pipeline alone: {results['data']:,.0f} augmented images/s = "
                f"{results['data'] / max(results[c]['e2e'] for c in columns):.0f}× what the fastest "
                f"configuration consumes")
    else:
        feeds = "; ".join(f"{side}'s best raw step ({results[best[side]]['raw']:,.1f} images/s) needs "
                          f"{math.ceil(results[best[side]]['raw'] / results['data'])}" for side in SIDES)
        data = (f"- streamed JPEG pipeline at {args.image_size} px: {results['data']:,.0f} images/s per "
                f"loader worker (375-500 px JPEGs: decode, RandomResizedCrop, flip); workers to feed "
                f"each side: {feeds}")
    tail = ["", f"- best of each side (by end-to-end): {best['lightning']}; {best['flax']}", data,
            f"- {flops / 1e9:.2f} GFLOP per image (XLA's cost analysis of the flax train step, used "
            f"for both sides); float32 matmul peak {top:,.0f} GFLOP/s (2048²: torch "
            f"{peak['torch']:,.0f}, XLA {peak['xla']:,.0f})"]
    if "convs" in results:
        tail += ["", "One 3x3 convolution, batch %d, milliseconds (forward / input gradient / "
                     "weight gradient):" % args.batch_size, "",
                 "| H×W×C | torch | XLA | XLA / torch |", "| --- | --- | --- | --- |"]
        for shape, ms in results["convs"].items():
            t, x = ms["torch"], ms["xla"]
            tail.append(f"| {shape} | {' / '.join(f'{v:.1f}' for v in t)} | "
                        f"{' / '.join(f'{v:.1f}' for v in x)} | "
                        f"{' / '.join(f'{b / a:.1f}×' for a, b in zip(t, x))} |")
    if "xla" in results:
        xla = results["xla"]
        kinds = ", ".join(f"{name} {ms:.0f}" for name, ms in xla["kinds"].items())
        tail += ["", f"The flax step on one device by kind of XLA operation, ms per step "
                     f"(jax.profiler; {xla['step_ms']:.0f} ms per step while tracing): {kinds}"]
    return "\n".join(head + rows + tail)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m harness.benchmark",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="resnet20")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=30, help="timed steps per measurement")
    parser.add_argument("--devices", type=int, default=_default_devices(),
                        help="flax is also measured sharded over this many devices (on a CPU: "
                             "host devices; default: the CPU's cores, or the GPUs)")
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=True,
                        help="also measure Lightning with torch.compile (about a minute more)")
    parser.add_argument("--profile", action=argparse.BooleanOptionalAction, default=True,
                        help="time one convolution per stage in torch and XLA, and the flax step "
                             "by kind of XLA operation")
    parser.add_argument("--image-size", type=int, default=None,
                        help="image side (default: 32 for the CIFAR networks, 224 for resnet18/34/50); "
                             "above 32 the data row measures the streamed JPEG pipeline")
    parser.add_argument("--num-workers", type=int, default=0)
    parser.add_argument("--depth", action="store_true",
                        help="instead of the table above: the raw step of resnet20/32/44/56/110 on "
                             "both sides, cost per image against depth, peak memory")
    parser.add_argument("--depth-models", nargs="+", default=list(DEPTH_MODELS), metavar="MODEL",
                        help="the models of --depth, shallowest first (default: %(default)s)")
    parser.add_argument("--worker", choices=[*WORKERS, "data", "peak", "convs", "xla"],
                        help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.image_size is None:
        args.image_size = default_image_size(args.model)

    if args.worker:  # one measurement in this fresh process; JSON on the last stdout line
        if args.worker == "data":
            result = data_pipeline(args.batch_size, args.steps, args.num_workers, args.image_size)
        elif args.worker == "peak":
            result = matmul_peak()
        elif args.worker == "convs":
            result = conv_profile(args.batch_size, args.steps)
        elif args.worker == "xla":
            result = xla_profile(args.model, args.batch_size, min(args.steps, 5), args.image_size)
        else:
            result = WORKERS[args.worker](args.model, args.batch_size, args.steps, args.devices,
                                          args.compile, image_size=args.image_size)
        print(json.dumps(result))
        return 0

    if args.depth:
        print(depth_table(depth_measurements(args), args))
        return 0

    results: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        for column, side, devices, compile in configurations(args):
            results[column] = {"side": side, **_worker(f"raw-{side}", args, devices, compile)}
            results[column]["e2e"] = _end_to_end(side, args, Path(tmp), devices, compile)
    # Streamed photos: one process's rate, so the table can say how many workers feed each side.
    streamed = args.image_size != 32
    results["data"] = _worker("data", argparse.Namespace(**{**vars(args), "num_workers": 0})
                              if streamed else args)["data"]
    if args.profile:
        if args.model in CIFAR_ARCHITECTURES and args.image_size == 32:  # ResNet-20's three stages
            results["convs"] = _worker("convs", args)
        results["xla"] = _worker("xla", args)
    print(table(results, args, _worker("peak", args)))
    return 0


def _default_devices() -> int:
    """The flax side's best guess at using the whole machine: every GPU, or every CPU core as
    an XLA host device (XLA runs much of a step on one core per device)."""
    try:
        import torch

        if torch.cuda.is_available():
            return torch.cuda.device_count()
    except ImportError:
        pass
    return os.cpu_count() or 1


if __name__ == "__main__":
    raise SystemExit(main())

"""The benchmark command: its flags, each measurement in a fresh process, and the table printed.

`python -m harness.benchmark --worker NAME ...` runs one measurement in the process it starts and
prints its result as JSON on the last stdout line; without --worker, `main` starts one such
process per measurement (and train.py for the end-to-end rows), so neither side warms the other's
caches.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from common.architectures import CIFAR_ARCHITECTURES, default_image_size
from common.sides import train_command
from harness import benchmark
from harness.benchmark.measurements import WORKERS, data_pipeline, matmul_peak
from harness.benchmark.nnx_forms import FORMS, measure_form
from harness.benchmark.profiles import conv_profile, xla_profile
from harness.benchmark.report import (configurations, depth_configurations, depth_table, nnx_overhead_table,
                                      table)

ROOT = Path(__file__).resolve().parents[2]
DEPTH_MODELS = ("resnet20", "resnet32", "resnet44", "resnet56", "resnet110")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker:  # one measurement in this fresh process; JSON on the last stdout line
        print(json.dumps(measure_here(args)))
    elif args.depth:
        print(depth_table(depth_measurements(args), args))
    elif args.nnx_overhead:
        results, steps = nnx_overhead_measurements(args)
        print(nnx_overhead_table(results, args, steps))
    else:
        print(table(side_by_side(args), args, run_measurement("peak", args)))
    return 0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m harness.benchmark",
                                     description=benchmark.__doc__.split("\n\n")[0])
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
    parser.add_argument("--nnx-overhead", action="store_true",
                        help="instead of the table above: the train step of --model (default "
                             "resnet20) in each form NNX can be jitted in, beside linen's under "
                             "jax.jit, at --overhead-batch-sizes: ms per step and its ratio to "
                             "linen's, host time per call, peak memory, time to the first step")
    parser.add_argument("--overhead-batch-sizes", nargs="+", type=int, default=[8, 32, 128],
                        metavar="BATCH", help="the batch sizes of --nnx-overhead (default: %(default)s); "
                                              "--steps is the timed steps in all at the largest, the "
                                              "smaller get proportionally more, in --windows windows")
    parser.add_argument("--overhead-forms", nargs="+", choices=list(FORMS), default=list(FORMS),
                        metavar="FORM", help="the forms of --nnx-overhead, of: %(choices)s "
                                             "(default: all; linen's is the unit of the ratios)")
    parser.add_argument("--windows", type=int, default=5,
                        help="--nnx-overhead: timed windows per measurement, their median reported")
    parser.add_argument("--worker", choices=[*WORKERS, "data", "peak", "convs", "xla", "nnx-form"],
                        help=argparse.SUPPRESS)
    parser.add_argument("--form", choices=list(FORMS), help=argparse.SUPPRESS)  # of --worker nnx-form
    args = parser.parse_args(argv)
    if args.image_size is None:
        args.image_size = default_image_size(args.model)
    return args


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


# --------------------------------------------------------------------------- one measurement

def worker_argv(name: str, args: argparse.Namespace, devices: int = 1, compile: bool = False) -> list[str]:
    """This command's flags for one measurement, which main() runs and prints as JSON."""
    return ["--worker", name, "--model", args.model, "--batch-size", str(args.batch_size),
            "--steps", str(args.steps), "--devices", str(devices), "--image-size", str(args.image_size),
            "--num-workers", str(args.num_workers), "--compile" if compile else "--no-compile",
            "--windows", str(args.windows), *(["--form", args.form] if args.form else [])]


def measure_here(args: argparse.Namespace) -> dict:
    """The measurement --worker names, in this process."""
    if args.worker == "data":
        return data_pipeline(args.batch_size, args.steps, args.num_workers, args.image_size)
    if args.worker == "peak":
        return matmul_peak()
    if args.worker == "convs":
        return conv_profile(args.batch_size, args.steps)
    if args.worker == "xla":
        return xla_profile(args.model, args.batch_size, min(args.steps, 5), args.image_size)
    if args.worker == "nnx-form":  # --steps: the steps of one window
        return measure_form(args.form, args.model, args.batch_size, args.steps, args.windows, args.image_size)
    return WORKERS[args.worker](args.model, args.batch_size, args.steps, args.devices,
                                args.compile, image_size=args.image_size)


def run_measurement(name: str, args: argparse.Namespace, devices: int = 1, compile: bool = False) -> dict:
    """One measurement in a fresh process: its result."""
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
    cmd = train_command(side, [
        "--dataset", "synthetic", "--model", args.model, "--image-size", str(args.image_size),
        "--batch-size", str(args.batch_size), "--epochs", "2", "--limit-train-batches", str(steps),
        "--limit-val-batches", "1", "--limit-test-batches", "1", "--devices", str(devices),
        "--num-workers", str(args.num_workers), "--logdir", str(logdir), "--run-name", run_name,
        "--precision", "32", *(["--compile"] if compile else [])])
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=3600)
    if out.returncode != 0:
        raise RuntimeError(f"{side} train.py failed:\n{out.stderr[-3000:]}")
    acc = EventAccumulator(str(logdir / side / run_name / "version_0"))
    acc.Reload()
    return acc.Scalars("perf/train_images_per_sec")[-1].value


# --------------------------------------------------------------------------- the tables' measurements

def side_by_side(args: argparse.Namespace) -> dict:
    """column -> results of the main table (configurations()), and the data and profile rows."""
    results: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        for column, side, devices, compile in configurations(args):
            results[column] = {"side": side, **run_measurement(f"raw-{side}", args, devices, compile)}
            results[column]["e2e"] = _end_to_end(side, args, Path(tmp), devices, compile)
    # Streamed photos: one process's rate, so the table can say how many workers feed each side.
    streamed = args.image_size != 32
    results["data"] = run_measurement("data", argparse.Namespace(**{**vars(args), "num_workers": 0})
                                      if streamed else args)["data"]
    if args.profile:
        if args.model in CIFAR_ARCHITECTURES and args.image_size == 32:  # ResNet-20's three stages
            results["convs"] = run_measurement("convs", args)
        results["xla"] = run_measurement("xla", args)
    return results


def depth_measurements(args: argparse.Namespace) -> dict[str, dict[str, dict]]:
    """model -> column -> raw-step result. Deeper models get fewer timed steps (about the same
    time each); the columns of one model run one after the other, so drift hits them alike."""
    results: dict[str, dict[str, dict]] = {}
    for model in args.depth_models:
        layers = int(model.removeprefix("resnet"))
        steps = max(3, round(args.steps * 20 / layers))
        run = argparse.Namespace(**{**vars(args), "model": model, "steps": steps})
        results[model] = {column: run_measurement(worker, run, devices)
                          for column, worker, devices in depth_configurations(args)}
        print(f"  {model}: " + ", ".join(f"{c} {r['raw']:,.0f} images/s" for c, r in results[model].items()),
              file=sys.stderr, flush=True)
    return results


def nnx_overhead_measurements(args: argparse.Namespace) -> tuple[dict[int, dict[str, dict]], dict[int, int]]:
    """(batch size -> form -> its measurement, batch size -> timed steps per window). Each form
    at each batch size in a fresh process; smaller batches get more steps (about the same time
    each); the forms of one batch size run one after the other, so drift hits them alike."""
    largest = max(args.overhead_batch_sizes)
    results: dict[int, dict[str, dict]] = {}
    steps: dict[int, int] = {}
    for batch in args.overhead_batch_sizes:
        steps[batch] = max(1, round(args.steps * largest / batch / args.windows))
        results[batch] = {}
        for form in args.overhead_forms:
            run = argparse.Namespace(**{**vars(args), "batch_size": batch, "steps": steps[batch], "form": form})
            results[batch][form] = run_measurement("nnx-form", run)
        print(f"  batch {batch}: " + ", ".join(f"{form} {r['ms']:,.1f} ms" for form, r in results[batch].items()),
              file=sys.stderr, flush=True)
    return results, steps

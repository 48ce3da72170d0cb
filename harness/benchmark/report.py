"""The benchmark's tables: the configurations measured (its columns), and the Markdown tables
built from their results: the main table, the depth table and the NNX overhead table."""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
from pathlib import Path

from common.sides import FLAX_SIDES, SIDES


def configurations(args: argparse.Namespace) -> list[tuple[str, str, int, bool]]:
    """(column, side, devices, compile): each side as it runs by default and at its best here;
    the two flax APIs, linen ("flax") and NNX ("nnx"), alike."""
    columns = [("lightning", "lightning", 1, False)]
    if args.compile:
        columns.append(("lightning + torch.compile", "lightning", 1, True))
    for side in FLAX_SIDES:
        columns.append((side, side, 1, False))
        if args.devices > 1:
            columns.append((f"{side}, {args.devices} devices", side, args.devices, False))
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



def nnx_against_linen(results: dict, args: argparse.Namespace) -> str:
    """Each NNX column's raw step, end-to-end rate and time to first step over its linen twin's."""
    def against(column, key):
        return results[column][key] / results[column.replace("nnx", "flax", 1)][key]

    return "; ".join(f"{column} / {column.replace('nnx', 'flax', 1)}: raw step {against(column, 'raw'):.2f}×, "
                     f"end-to-end {against(column, 'e2e'):.2f}×, time to first step "
                     f"{against(column, 'first_step'):.2f}×"
                     for column, side, _, _ in configurations(args) if side == "nnx")


def table(results: dict, args: argparse.Namespace, peak: dict) -> str:
    columns = [c[0] for c in configurations(args)]
    best = {side: max((c for c in columns if results[c]["side"] == side), key=lambda c: results[c]["e2e"])
            for side in SIDES}
    top = max(peak.values())
    flops = next(results[c]["flops_per_image"] for c in columns if "flops_per_image" in results[c])
    others = [side for side in SIDES if side != "lightning"]  # each as a ratio to Lightning
    rows = []

    def row(name, value, fmt="{:,.0f}", ratio=True):
        values = [value(results[c]) for c in columns]
        a = value(results[best["lightning"]])
        cells = " | ".join(fmt.format(v) for v in values)
        ratios = " | ".join(f"{b / a:.2f}×" if ratio and a and b else "–"
                            for b in (value(results[best[side]]) for side in others))
        rows.append(f"| {name} | {cells} | {ratios} |")

    row("raw step (images/s)", lambda r: r["raw"])
    row("end-to-end train.py (images/s)", lambda r: r["e2e"])
    row("end-to-end / raw", lambda r: r["e2e"] / r["raw"], "{:.2f}", ratio=False)
    row("time to first step (s)", lambda r: r["first_step"], "{:.1f}")
    row("FLOP utilisation of the raw step", lambda r: r["raw"] * flops / (top * 1e9), "{:.0%}")
    head = [f"{args.model} at {args.image_size} px, batch {args.batch_size}, fp32, {args.num_workers} "
            f"loader workers; {cpu_name()}",
            "", f"| | {' | '.join(columns)} | "
                f"{' | '.join(f'best {side} / best lightning' for side in others)} |",
            f"| --- |{' ---: |' * (len(columns) + len(others))}"]
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
    tail = ["", f"- best of each side (by end-to-end): {'; '.join(best[side] for side in SIDES)}",
            f"- NNX against linen, as their trainers compile the step: {nnx_against_linen(results, args)}", data,
            f"- {flops / 1e9:.2f} GFLOP per image (XLA's cost analysis of the flax train step, used "
            f"for every side); float32 matmul peak {top:,.0f} GFLOP/s (2048²: torch "
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


def depth_configurations(args: argparse.Namespace) -> list[tuple[str, str, int]]:
    """(column, worker, devices) of the depth table."""
    columns = [("lightning", "raw-lightning", 1), ("flax", "raw-flax", 1),
               ("flax, XLA defaults", "raw-flax-xla-defaults", 1)]
    if args.devices > 1:
        columns.append((f"flax, {args.devices} devices", "raw-flax", args.devices))
    return columns



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


def nnx_overhead_table(results: dict[int, dict[str, dict]], args: argparse.Namespace,
                       steps: dict[int, int]) -> str:
    """The table of --nnx-overhead: `results` is batch size -> form (nnx_forms.FORMS) -> that
    form's measurement; `steps` the timed steps of a window at each batch size."""
    from harness.benchmark.nnx_forms import FORMS

    batches = list(results)
    forms = [form for form in FORMS if form in results[batches[0]]]
    head = f"| form | {' | '.join(f'batch {b}' for b in batches)} |"
    rule = f"| --- |{' ---: |' * len(batches)}"

    def rows(cell) -> list[str]:
        return [f"| {FORMS[form]} | {' | '.join(cell(results[b], form) for b in batches)} |" for form in forms]

    def ms(of_batch, form):
        linen = of_batch.get("linen")
        ratio = f" (×{of_batch[form]['ms'] / linen['ms']:.2f})" if linen else ""
        value = of_batch[form]["ms"]
        return f"{value:,.{1 if value >= 10 else 2}f}{ratio}"

    lines = [f"What NNX costs: {args.model}'s train step in each form, {args.image_size} px, fp32, one "
             f"device; {cpu_name()}", "",
             f"ms per step (× linen's): the median of {args.windows} timed windows of "
             f"{' / '.join(str(steps[b]) for b in batches)} steps, after a first step and 3 more:", "",
             head, rule, *rows(ms), "",
             "host time per call (ms), Python and dispatch: from the call until it returns, on an "
             "idle device (the step itself runs on after it; a step shorter than this waits for it):",
             "", head, rule, *rows(lambda of_batch, form: f"{of_batch[form]['dispatch_ms']:,.2f}"), "",
             "peak memory (MB) / seconds from a built state to the end of the first step (tracing, "
             "compiling, one step):", "", head, rule,
             *rows(lambda of_batch, form: f"{of_batch[form]['peak_mb']:,.0f} / "
                                          f"{of_batch[form]['first_step_s']:.1f}")]
    options = {json.dumps(r["xla_options"], sort_keys=True) for of_batch in results.values()
               for r in of_batch.values()}
    if len(options) > 1:
        jitted = next(r["xla_options"] for r in results[batches[0]].values() if r["xla_options"])
        lines += ["", f"- The jax.jit forms compile with train.py's XLA options ({jitted}); nnx.jit "
                      f"takes no compiler options, so its forms compile with XLA's defaults."]
    return "\n".join(lines)

"""The comparison report's Markdown tables (harness/compare.py writes the report around them):
the verdicts on one judged pair, each seed's cells, and one run per side side by side."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from harness.trials import METRICS, Trial
from harness.verdicts import Scale, compare, judged_pairs


def _fmt(metric: str, value: float) -> str:
    if math.isnan(value):
        return "–"
    if "acc" in metric or "loss" in metric:
        return f"{value:.4f}"
    if metric in ("epochs", "optimizer steps"):
        return f"{value:.0f}"
    return f"{value:,.1f}"


def _ratio(a: float, b: float) -> str:
    ratio = b / a if a and not math.isnan(a) and not math.isnan(b) else math.nan
    return "" if math.isnan(ratio) else f"{ratio:.2f}×"


def pair_table(rows: dict[str, dict[str, float]], paths: dict[str, Path]) -> str:
    """One run per side, metric by metric, with the ratio side / reference of each judged pair
    (flax / lightning for the two default sides)."""
    metrics = list(next(iter(rows.values())))
    pairs = judged_pairs(list(rows))
    lines = ["| | " + " | ".join(rows) + " | " + " | ".join(f"{side} / {ref}" for ref, side in pairs) + " |",
             "| --- | " + " | ".join("---:" for _ in [*rows, *pairs]) + " |"]
    for m in metrics:
        cells = [_fmt(m, rows[side][m]) for side in rows]
        ratios = [_ratio(rows[ref][m], rows[side][m]) for ref, side in pairs]
        lines.append(f"| {m} | " + " | ".join(cells + ratios) + " |")
    lines.append("")
    lines += [f"- {side}: `{path}`" for side, path in paths.items()]
    return "\n".join(lines) + "\n"


def _mean_std(metric: str, values: list[float]) -> str:
    values = [v for v in values if not math.isnan(v)]
    if not values:
        return "–"
    if len(values) == 1:
        return _fmt(metric, values[0])
    return f"{_fmt(metric, float(np.mean(values)))} ± {_fmt(metric, float(np.std(values, ddof=1)))}"


def _difference(verdict, scale: Scale) -> str:
    if math.isnan(verdict.difference):
        return "–"
    if scale.kind == "ratio":
        interval = "" if math.isnan(verdict.low) else f" [{verdict.low:.3f}, {verdict.high:.3f}]"
        return f"{verdict.difference:.3f}×{interval}"
    interval = "" if math.isnan(verdict.low) else f" [{verdict.low:+.2f}, {verdict.high:+.2f}]"
    return f"{verdict.difference:+.2f} pt{interval}"


def verdict_table(by_side: dict[str, list[Trial]], metric_scales: dict[str, Scale], pair: tuple[str, str]) -> str:
    """Metric by metric, the verdict on side against reference for pair = (reference, side)."""
    ref, side = pair
    summaries = {s: [t.summary() for t in by_side[s]] for s in pair}
    n = {s: len(by_side[s]) for s in pair}
    lines = [f"| metric | {ref} (n={n[ref]}) | {side} (n={n[side]}) | "
             f"{side} − {ref} [95% CI] | margin, TOST p | P({side} > {ref}) | verdict |",
             "| --- | ---: | ---: | ---: | ---: | ---: | --- |"]
    for metric in METRICS:
        values = {s: [summary[metric] for summary in summaries[s]] for s in pair}
        scale = metric_scales[metric]
        verdict = compare(values[ref], values[side], scale, name=side)
        tost = "" if math.isnan(verdict.tost_p) else f", p = {verdict.tost_p:.3f}"
        p_higher = "–" if math.isnan(verdict.p_higher) else f"{verdict.p_higher:.2f}"
        lines.append(f"| {metric} | {_mean_std(metric, values[ref])} | "
                     f"{_mean_std(metric, values[side])} | {_difference(verdict, scale)} | "
                     f"{scale.margin_text()}{tost} | {p_higher} | {verdict.text} |")
    return "\n".join(lines) + "\n"


def seed_table(by_side: dict[str, list[Trial]]) -> str:
    """Each seed's test accuracy and speed on every side of `by_side`."""
    seeds = sorted({t.seed for side in by_side for t in by_side[side]})
    cells = {side: {t.seed: t.summary() for t in by_side[side]} for side in by_side}
    columns = [(m, side) for m in ("test/acc", "train images/s") for side in by_side]
    lines = ["| seed | " + " | ".join(f"{side} {m.split()[-1]}" for m, side in columns) + " |",
             "| ---: |" + " ---: |" * len(columns)]
    for seed in seeds:
        row = [_fmt(m, cells[side][seed][m]) if seed in cells[side] else "–" for m, side in columns]
        lines.append(f"| {seed} | " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"

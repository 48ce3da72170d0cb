"""The chosen sides, several seeds each, then the comparison report with its verdicts.

    python -m harness.sweep --seeds 5 --dataset digits --epochs 10 --schedule cosine --warmup-epochs 1
    python -m harness.sweep --seeds 5 6 7 --dataset digits ...     # these seeds, not 0..N-1
    python -m harness.sweep --seeds 5 --sides lightning flax nnx --dataset digits ...  # three sides

--sides picks the sides (default: lightning flax); every flag but --seeds, --sides and the margins
is train.py's and goes to every side unchanged. The runs alternate between the sides (lightning
seed 0, flax seed 0, lightning seed 1, ...), each in its own process, so a machine that slows down
during the sweep slows every side alike. They land in LOGDIR/<side>/<run-name>-<recipe>-seed<N>/,
each with the run's output in sweep.log. Running the same command again skips the runs that
finished and resumes the one that was stopped. At the end, harness/compare.py writes
LOGDIR/compare.md and LOGDIR/compare.png for this recipe and these sides.
"""

from __future__ import annotations

import argparse
import ctypes
import signal
import subprocess
import sys
import time
from pathlib import Path

from harness import compare
from common.config import build_parser, parse_config
from harness.recipes import recipe_id
from common.sides import train_command
from harness.trials import run_trials

_PR_SET_PDEATHSIG = 1


def sweep_flags() -> argparse.ArgumentParser:
    own = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    group = own.add_argument_group("the sweep's own flags")
    group.add_argument("--seeds", type=int, nargs="+", required=True, metavar="N",
                       help="one number: seeds 0..N-1; several: exactly those seeds")
    compare.add_sides_flag(group, "train and compare")
    compare.add_margin_flags(group)
    return own


def _die_with_parent() -> None:
    """In the child: a sweep killed outright takes its run along, instead of leaving it training."""
    try:
        ctypes.CDLL(None).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):  # not Linux: the run outlives a killed sweep
        pass


def plan(seeds: list[int], sides: tuple[str, ...]) -> list[tuple[int, str]]:
    """(seed, side) of every run, in the order the sweep runs them: each seed on every side."""
    return [(seed, side) for seed in seeds for side in sides]


def finished_trial(run_dir: Path, side: str):
    trials = run_trials(run_dir, side) if run_dir.is_dir() else []
    return trials[-1] if trials and trials[-1].finished else None


def has_checkpoint(run_dir: Path) -> bool:
    return any(any(v.iterdir()) for v in run_dir.glob("version_*/checkpoints") if v.is_dir())


def run_one(side: str, train_args: list[str], seed: int, name: str, logdir: Path) -> int:
    """Train one side for one seed; Ctrl-C asks the run to stop at its next step boundary."""
    run_dir = logdir / side / name
    run_dir.mkdir(parents=True, exist_ok=True)
    command = train_command(side, [*train_args, "--seed", str(seed), "--run-name", name])
    if has_checkpoint(run_dir):
        command += ["--resume", "last"]
    with open(run_dir / "sweep.log", "a") as log:
        log.write(f"\n$ {' '.join(command)}\n")
        log.flush()
        # Its own session: the terminal's Ctrl-C reaches the sweep only, which passes on exactly one.
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT,
                                   start_new_session=True, preexec_fn=_die_with_parent)
        interrupts = 0
        while True:
            try:
                return process.wait()
            except KeyboardInterrupt:
                interrupts += 1
                process.send_signal(signal.SIGINT)
                if interrupts == 1:
                    print(f"\nstopping {side} seed {seed} at its next step, after a checkpoint "
                          "(Ctrl-C again to stop it at once)", flush=True)


def last_line(path: Path) -> str:
    lines = [line for line in path.read_text(errors="replace").splitlines() if line.strip()]
    return lines[-1].strip() if lines else "(no output)"


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    own = sweep_flags()
    parser = build_parser("lightning", prog="python -m harness.sweep", parents=[own],
                          description=__doc__.split("\n\n")[0],
                          epilog="Example: python -m harness.sweep --seeds 5 --dataset digits "
                                 "--epochs 10 --schedule cosine --warmup-epochs 1")
    args = parser.parse_args(argv)
    for flag, why in (("seed", "the sweep sets each run's --seed from --seeds"),
                      ("resume", "the sweep resumes stopped runs itself: run the same command again"),
                      ("num_nodes", "run a multi-node sweep's runs by hand on every node")):
        if getattr(args, flag) is not None and not (flag == "num_nodes" and args.num_nodes == 1):
            parser.error(f"--{flag.replace('_', '-')} is not a sweep flag: {why}")
    config = parse_config("lightning", argv, parser)
    sweep_args, train_args = own.parse_known_args(argv)
    seeds = list(range(sweep_args.seeds[0])) if len(sweep_args.seeds) == 1 else sweep_args.seeds
    if not seeds or min(seeds) < 0 or len(set(seeds)) != len(seeds):
        parser.error(f"--seeds: give a positive count or distinct seeds >= 0, got {sweep_args.seeds}")

    logdir = Path(config.logdir)
    prefix = f"{config.run_name}-{recipe_id(config.to_dict())}"
    runs = plan(seeds, sweep_args.sides)
    print(f"sweep: {len(seeds)} seeds x {len(sweep_args.sides)} sides ({', '.join(sweep_args.sides)}) "
          f"of recipe {prefix} into {logdir}", flush=True)
    start = time.perf_counter()
    for i, (seed, side) in enumerate(runs, 1):
        name = f"{prefix}-seed{seed}"
        run_dir = logdir / side / name
        head = f"[{i}/{len(runs)}] {side:<9} seed {seed}:"
        done = finished_trial(run_dir, side)
        if done is not None:
            print(f"{head} finished before, skipped (test/acc {done.summary()['test/acc']:.4f})", flush=True)
            continue
        print(f"{head} training ...", end="", flush=True)
        began = time.perf_counter()
        code = run_one(side, train_args, seed, name, logdir)
        took = time.perf_counter() - began
        if code == 130:
            print(f" stopped after {took:.0f} s with a checkpoint; run the same command again to "
                  "continue: finished runs are skipped and this one resumes", flush=True)
            return 130
        if code != 0:
            print(f" failed (exit {code}) after {took:.0f} s: {last_line(run_dir / 'sweep.log')}", flush=True)
            print(f"error: {side} seed {seed} failed; its output is in {run_dir / 'sweep.log'}. "
                  "Fix the cause and run the same command again (finished runs are kept), or "
                  "leave this seed out with --seeds", file=sys.stderr)
            return 1
        trial = finished_trial(run_dir, side)
        summary = trial.summary() if trial else {"test/acc": float("nan"), "best val/acc": float("nan")}
        print(f" done in {took:.0f} s: best val/acc {summary['best val/acc']:.4f}, "
              f"test/acc {summary['test/acc']:.4f} ({trial.path if trial else run_dir})", flush=True)
    minutes, seconds = divmod(time.perf_counter() - start, 60)
    print(f"sweep: {len(runs)} runs done, this command took {minutes:.0f} min {seconds:.0f} s\n", flush=True)
    return compare.main([str(logdir), "--run", f"{prefix}-seed*", "--out", str(logdir / "compare"),
                         "--sides", *sweep_args.sides,
                         "--acc-margin", str(sweep_args.acc_margin),
                         "--ratio-margin", str(sweep_args.ratio_margin)])


if __name__ == "__main__":
    raise SystemExit(main())

"""Re-break each equivalence trap of docs/design.md, one at a time, in a copy of the project,
and report whether the fast equivalence tests catch it.

    python -m tests.mutations                  # every trap (its duration: docs/testing.md)
    python -m tests.mutations --only nesterov  # the traps whose name holds 'nesterov'

A trap added to docs/design.md's list of traps gets a line in MUTATIONS with the change that
would break it and the tests that must fail. Not part of `pytest`: it runs the suite many times.
Exit status 0 when every mutation is caught, 1 otherwise.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Mutation:
    name: str
    path: str
    old: str
    new: str
    tests: tuple[str, ...]


MODELS = ("tests/test_models.py", "tests/test_convert.py")
OPTIMIZER = "tests/test_optimizer.py::"
SCHEDULES = tuple(OPTIMIZER + test for test in (
    "test_lightning_and_flax_schedules_agree_at_every_step", "test_lambda_lr_advances_once_per_optimizer_step",
    "test_schedules_follow_the_shared_definitions",
    "test_milestones_on_the_same_step_divide_once_each_as_torch_multisteplr_does"))
ONE_SGD_STEP = OPTIMIZER + "test_one_optimizer_step_equals_torch_sgd_with_decay_on_the_kernels"
TRANSFORMS = ("tests/test_data_transforms.py",)
BAD_IMAGE = "tests/test_data_streamed.py::test_a_file_that_fails_to_decode_mid_run_is_replaced_counted_and_named_once"
IMAGENET_INIT = ("tests/test_models.py::test_imagenet_initialisation_is_torchvisions_on_both_sides",)
NNX_MODELS = ("tests/test_nnx_models.py",)
MUTATIONS = (
    Mutation("BatchNorm momentum, Lightning side", "lightning_side/models.py",
             "BN_MOMENTUM = 0.1", "BN_MOMENTUM = 0.9", MODELS),
    Mutation("BatchNorm momentum, flax side", "flax_side/batchnorm.py",
             "momentum: float = 0.9", "momentum: float = 0.1", MODELS),
    Mutation("running variance: flax's biased one", "flax_side/batchnorm.py",
             "unbiased = var * (n / max(n - 1, 1))", "unbiased = var", MODELS),
    Mutation("stride-2 padding: 'SAME'", "flax_side/models.py",
             'padding=PAD_3X3, name="conv1"', 'padding="SAME", name="conv1"', MODELS),
    Mutation("init: flax's truncated He-normal", "flax_side/models.py",
             'variance_scaling(2.0, "fan_in", "normal")', 'variance_scaling(2.0, "fan_in", "truncated_normal")',
             MODELS),
    Mutation("init: normal classifier weight", "flax_side/models.py",
             'dense_init = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")',
             'dense_init = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "normal")', MODELS),
    Mutation("weight decay on every parameter, Lightning side", "lightning_side/module.py",
             'if name == "weight" and isinstance(module, (nn.Conv2d, nn.Linear)):', "if True:",
             (OPTIMIZER + "test_weight_decay_only_on_conv_and_linear_weights[lightning]",)),
    Mutation("weight decay on every parameter, flax side", "flax_side/state.py",
             'path[-1].key == "kernel"', "True",
             (OPTIMIZER + "test_weight_decay_only_on_conv_and_linear_weights[flax]", ONE_SGD_STEP)),
    Mutation("Nesterov off, flax side", "flax_side/state.py",
             "momentum=momentum, nesterov=nesterov),", "momentum=momentum, nesterov=False),",
             (ONE_SGD_STEP,)),
    Mutation("multistep boundary one step late, Lightning side", "lightning_side/schedules.py",
             "return 0.1 ** sum(step >= b for b in boundaries)", "return 0.1 ** sum(step > b for b in boundaries)",
             SCHEDULES),
    Mutation("one-cycle peak one step late, Lightning side", "lightning_side/schedules.py",
             "peak_step = int(pct_start * total)", "peak_step = int(pct_start * total) + 1", SCHEDULES),
    Mutation("ImageNet init: fan_in instead of torchvision's fan_out", "flax_side/torchvision_resnet.py",
             'variance_scaling(2.0, "fan_out", "normal")', 'variance_scaling(2.0, "fan_in", "normal")', MODELS),
    Mutation("ImageNet max-pool padding: 'SAME'", "flax_side/torchvision_resnet.py",
             "strides=(2, 2), padding=((1, 1), (1, 1)))", 'strides=(2, 2), padding="SAME")', MODELS),
    Mutation("ImageNet v1: a bottleneck's stride on its first 1x1", "flax_side/torchvision_resnet.py",
             'self.conv(self.features, 1, 1, "conv1")(x)))\n        out = nn.relu(self.norm(train, "bn2")'
             '(self.conv(self.features, 3, self.stride, "conv2")',
             'self.conv(self.features, 1, self.stride, "conv1")(x)))\n        out = nn.relu(self.norm(train, '
             '"bn2")(self.conv(self.features, 3, 1, "conv2")', MODELS),
    Mutation("ImageNet --zero-init-residual ignored, flax side", "flax_side/torchvision_resnet.py",
             "nn.initializers.zeros if last and self.zero_init_residual",
             "nn.initializers.ones if last and self.zero_init_residual", MODELS),
    Mutation("ImageNet stem init: flax's kaiming_normal (fan_in, truncated)", "flax_side/torchvision_resnet.py",
             "padding=((3, 3), (3, 3)), use_bias=False, kernel_init=conv_init,",
             "padding=((3, 3), (3, 3)), use_bias=False, kernel_init=nn.initializers.kaiming_normal(),",
             IMAGENET_INIT),
    Mutation("ImageNet classifier bias bound 1/fan_in", "flax_side/torchvision_resnet.py",
             "bound = fan_in ** -0.5", "bound = 1.0 / fan_in", IMAGENET_INIT),
    Mutation("streamed crop: a plain resize of the whole photo", "datamodules/transforms.py",
             "out = _crop_resize(_rgb(image), (left * sx, top * sy, (left + w) * sx, (top + h) * sy), size)",
             "out = np.asarray(_rgb(image).resize((size, size), Image.BILINEAR), dtype=np.uint8)", TRANSFORMS),
    Mutation("streamed flip removed", "datamodules/transforms.py",
             "return out[:, ::-1] if mirror else out", "return out", TRANSFORMS),
    Mutation("streamed crop scale from 0.115", "datamodules/transforms.py",
             "SCALE = (0.08, 1.0)", "SCALE = (0.115, 1.0)", TRANSFORMS),
    Mutation("streamed crop scale up to 0.9", "datamodules/transforms.py",
             "SCALE = (0.08, 1.0)", "SCALE = (0.08, 0.9)", TRANSFORMS),
    Mutation("streamed bad image: the damaged file's label", "datamodules/streamed.py",
             "_copy(rng), self.flip), self.labels[j]", "_copy(rng), self.flip), self.labels[index]", (BAD_IMAGE,)),
    Mutation("streamed bad image: the replacement's crop from the failed file's spent generator",
             "datamodules/streamed.py", "_copy(rng), self.flip), self.labels[j]", "rng, self.flip), self.labels[j]",
             (BAD_IMAGE,)),
    Mutation("CPU fusion remedy unwired from the compiled train step", "flax_side/compiled_steps.py",
             "donate_argnums=0, out_shardings=replicated(mesh), compiler_options=compiler_options",
             "donate_argnums=0, out_shardings=replicated(mesh)",
             ("tests/test_precision_and_compile.py::test_the_steps_train_py_compiles_get_the_remedy_from_resnet32_on",)),
    Mutation("CPU fusion remedy only from 6 blocks a stage", "flax_side/compiler_options.py",
             "MIN_BLOCKS_PER_STAGE = 5", "MIN_BLOCKS_PER_STAGE = 6",
             ("tests/test_precision_and_compile.py::test_the_steps_train_py_compiles_get_the_remedy_from_resnet32_on",)),
    Mutation("Lightning checkpoints without AtomicCheckpointIO", "lightning_side/train.py",
             'arguments["plugins"] = [*arguments.get("plugins", []), AtomicCheckpointIO()]',
             'arguments["plugins"] = [*arguments.get("plugins", [])]',
             ("tests/test_disk_faults.py::test_a_lightning_checkpoint_written_through_a_full_disk_is_whole_or_nothing",
              "tests/test_disk_faults.py::test_a_file_size_limit_is_one_line_and_leaves_no_part_of_a_checkpoint")),
    Mutation("NNX BatchNorm momentum: torch's number", "nnx_side/batchnorm.py",
             "MOMENTUM = 0.9", "MOMENTUM = 0.1", NNX_MODELS),
    Mutation("NNX running variance: the biased one", "nnx_side/batchnorm.py",
             "unbiased = var * (n / max(n - 1, 1))", "unbiased = var", NNX_MODELS),
    Mutation("NNX 3x3 padding: 'SAME'", "nnx_side/models.py",
             "self.conv1 = conv(in_features, features, (3, 3), stride, padding=PAD_3X3)",
             'self.conv1 = conv(in_features, features, (3, 3), stride, padding="SAME")', NNX_MODELS),
    Mutation("NNX init: truncated He-normal", "nnx_side/models.py",
             'variance_scaling(2.0, "fan_in", "normal")', 'variance_scaling(2.0, "fan_in", "truncated_normal")',
             NNX_MODELS),
    Mutation("NNX skipped fp16 step: the overflowing update applied", "nnx_side/steps.py",
             "jnp.where(finite, n, o)", "n",
             ("tests/test_loss_scaling.py::test_nnx_fp16_overflow_skips_the_step_and_halves_the_scale",)),
    Mutation("NNX loss scale grows a step late", "nnx_side/loss_scale.py",
             "grow = self.fin_steps[...] == self.growth_interval",
             "grow = self.fin_steps[...] == self.growth_interval + 1",
             ("tests/test_loss_scaling.py::test_nnx_loss_scale_moves_as_linens_dynamic_scale_and_unscales_alike",)),
    Mutation("NNX evaluation in train mode (batch statistics)", "nnx_side/steps.py",
             "    model.eval()\n", "",
             ("tests/test_lockstep.py::test_float64_lockstep_default_recipe",)),
)


def copy_project(destination: Path) -> Path:
    ignore = shutil.ignore_patterns(".git", ".venv", ".ci-venv", "logs", "data", "*.egg-info", "__pycache__",
                                    ".pytest_cache")
    shutil.copytree(ROOT, destination, ignore=ignore)
    return destination


def run_tests(project: Path, tests: tuple[str, ...]) -> tuple[bool, str]:
    """(passed, the last lines of pytest's output), the copy's modules first on the path."""
    env = {**os.environ, "PYTHONPATH": str(project)}
    out = subprocess.run([sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *tests],
                         cwd=project, env=env, capture_output=True, text=True, timeout=1800)
    lines = [line for line in out.stdout.splitlines() if line.strip()]
    if out.returncode == 5:  # none of the tests ran (a slow one, or a name that has changed): not a catch
        return True, "no test ran: " + " ".join(tests)
    return out.returncode == 0, (lines[-1] if lines else out.stderr.strip()[-200:])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.mutations", description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", help="run only the mutations whose name holds this text")
    args = parser.parse_args(argv)
    chosen = [m for m in MUTATIONS if not args.only or args.only.lower() in m.name.lower()]
    if not chosen:
        parser.error(f"--only {args.only!r} matches no mutation")
    rows, missed = [], []
    with tempfile.TemporaryDirectory(prefix="mutations-") as tmp:
        project = copy_project(Path(tmp) / "project")
        baseline_tests = tuple(sorted({t for m in chosen for t in m.tests}))
        passed, summary = run_tests(project, baseline_tests)
        if not passed:
            print(f"error: the unmutated copy already fails ({summary}); fix that first", file=sys.stderr)
            return 2
        for mutation in chosen:
            source = project / mutation.path
            original = source.read_text()
            if original.count(mutation.old) != 1:
                print(f"error: {mutation.name}: the text to change is no longer in {mutation.path} exactly "
                      f"once; update tests/mutations.py", file=sys.stderr)
                return 2
            source.write_text(original.replace(mutation.old, mutation.new))
            start = time.perf_counter()
            try:
                passed, summary = run_tests(project, mutation.tests)
            finally:
                source.write_text(original)
            caught = not passed
            if not caught:
                missed.append(mutation.name)
            rows.append(f"| {mutation.name} | {'caught' if caught else '**missed**'} | {summary} | "
                        f"{time.perf_counter() - start:.0f} s |")
            print(rows[-1], flush=True)
    print("\n| trap re-broken | result | the tests' last line | time |\n| --- | --- | --- | ---: |")
    print("\n".join(rows))
    print(f"\n{len(chosen) - len(missed)} of {len(chosen)} caught" + (f"; missed: {', '.join(missed)}" if missed else ""))
    return 1 if missed else 0


if __name__ == "__main__":
    raise SystemExit(main())

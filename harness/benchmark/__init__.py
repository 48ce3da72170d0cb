"""Throughput of every side, measured honestly and side by side.

    python -m harness.benchmark                          # resnet20, batch 128, fp32, this machine
    python -m harness.benchmark --model resnet56 --devices 2 --steps 50 --no-compile
    python -m harness.benchmark --depth                  # resnet20..110: cost per image against depth
    python -m harness.benchmark --nnx-overhead           # what NNX costs: each way to jit its step

Each measurement runs in a fresh process of its own, so neither side warms the other's caches:

    raw step      model + optimizer step on a synthetic batch already on the device
    end-to-end    train.py on --dataset synthetic (loader, step, logging), the second epoch's
                  perf/train_images_per_sec, so compilation and warm-up stay out
    data          the shared loader alone: augmented batches per second
    first step    seconds from process start to the end of the first raw step (imports,
                  initialisation, compilation)

for each side as it runs by default and at its best on this machine (Lightning with
torch.compile; flax, in linen and in NNX, sharded over every core as host devices, or every GPU),
and prints one table with the ratio of the best of each flax API to the best of Lightning,
end-to-end/raw and NNX against linen, plus FLOP utilisation: FLOPs per image from XLA's cost
analysis of the flax train step, against the faster of torch's and XLA's float32 matmul. Below
it, one convolution per stage timed in both frameworks shows where the step time goes. Figures
differ up to 3x between machines of one kind: compare the ratios of one run.

`--depth` measures instead the raw step of resnet20/32/44/56/110 on both sides (flax also with
XLA's default compiler options, the before of flax_side/compiler_options.py): images/s, cost per
image relative to resnet20, and peak memory, so that growth with depth is compared in one run.

`--nnx-overhead` measures instead what NNX's Python costs: --model's train step (resnet20 by
default) at --overhead-batch-sizes (8, 32, 128: small batches are where Python overhead shows) in
each form of nnx_forms.py -- linen under jax.jit; NNX under nnx.jit, nnx.jit(graph=False),
nnx.cached_partial and nnx.jit_partial(graph=False); NNX as jax.jit over split/merge, the NNX
trainer's form -- each form at each batch size in a fresh process: ms per step (the median of
--windows timed windows) and its ratio to linen's, host time per call, peak memory, and
seconds to the end of the first step (tracing and compiling). Every form computes the same
step (tests/test_benchmark.py proves it, step for step, from one initial state).

The package, by job: measurements.py (the raw steps, the shared loader, the matmul peak),
nnx_forms.py (the forms of --nnx-overhead) and profiles.py (one convolution per stage, the flax
step by kind of XLA operation), each run by command.py in a fresh process of its own; report.py
(the tables); command.py (the flags, and `main`, which runs the measurements and prints the
table); __main__.py (`python -m`).
"""

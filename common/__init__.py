"""What every trainer imports and nothing else needs: the flags, the model tables, run folders,
Ctrl-C, disk faults, and how a run ends (exit codes, error types, the one-line error).

Layers, top to bottom: harness (the tools) -> lightning_side, flax_side -> common -> datamodules.
The common layer imports no side and no tool (tests/test_layers.py holds it to that).
"""

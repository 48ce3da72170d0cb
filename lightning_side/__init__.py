"""The Lightning side of the harness: torch models, the LightningModule, callbacks, train.py."""

SIDE = "lightning"  # its name in common.sides.SIDES, its run folders (logs/lightning/...) and its summary line

"""Which sides a behaviour is tested on.

Three sides, two drivers: the NNX side runs the flax side's driver (flax_side/api.py is all they
differ by: the fresh state, the two steps, the run folder's name). A behaviour of the driver
alone -- what --resume picks, damaged checkpoints, disk faults, Ctrl-C and kills, divergence,
several devices, bad input -- is tested once per driver, on DRIVERS. A behaviour that runs NNX's
own code -- its steps and metrics, optimizer, loss scale, checkpoint items, weight conversion,
--help -- is tested on every side, SIDES. test_layers.py holds the NNX side to that driver.
"""

from common.sides import FLAX_SIDES, SIDES

DRIVERS = ("lightning", "flax")

__all__ = ["DRIVERS", "FLAX_SIDES", "SIDES"]

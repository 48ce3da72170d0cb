"""The ResNets in Flax NNX: stateful modules, the third implementation beside lightning_side/ and
flax_side/, held to the same proof."""

SIDE = "nnx"

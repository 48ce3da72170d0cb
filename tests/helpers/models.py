"""Models as the tests build them without training."""

import functools


def abstract_flax_variables(name: str = "resnet20", num_classes: int = 10) -> dict:
    """The shapes and dtypes of a fresh flax model's variables ({"params", "batch_stats"})."""
    import jax

    from flax_side.models import create_model
    from flax_side.state import initial_variables

    model = create_model(name, num_classes)
    return jax.eval_shape(functools.partial(initial_variables, model, image_shape=(32, 32, 3)),
                          jax.random.key(0))

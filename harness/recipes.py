"""A recipe: every hyperparameter of a run except its seed, so that runs of one recipe can be pooled.

Both trainers save their flags as hparams.yaml in the version folder; the recipe is that mapping
without the flags that say where a run lives or how it was started, which change neither what is
trained nor how.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Mapping

from common.config import TrainConfig

# Not part of the experiment: where the files are, what the run is called, how it was (re)started.
NOT_RECIPE = frozenset({"seed", "logdir", "data_dir", "run_name", "resume", "node_rank",
                        "coordinator_address"})


def recipe_of(hparams: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in sorted(hparams.items()) if k not in NOT_RECIPE}


def recipe_id(recipe: Mapping[str, Any]) -> str:
    """Six hex digits that name a recipe in run names and reports."""
    text = json.dumps(recipe_of(recipe), sort_keys=True, default=str)
    return hashlib.sha1(text.encode()).hexdigest()[:6]


def recipe_flags(recipe: Mapping[str, Any]) -> str:
    """The flags that set this recipe apart from the defaults, as a user would type them."""
    defaults = TrainConfig(model=recipe.get("model", "resnet20")).to_dict()
    flags = []
    for key, value in recipe_of(recipe).items():
        if key in defaults and _same(defaults[key], value):
            continue
        flag = "--" + key.replace("_", "-")
        if isinstance(value, bool):
            flags.append(flag if value else "--no-" + key.replace("_", "-"))
        elif isinstance(value, (list, tuple)):
            flags.append(f"{flag} {' '.join(str(v) for v in value)}")
        elif isinstance(value, float):
            flags.append(f"{flag} {value:g}")
        else:
            flags.append(f"{flag} {value}")
    return " ".join(flags)


def differences(recipes: list[Mapping[str, Any]]) -> list[str]:
    """The keys whose values are not the same in all of `recipes`."""
    keys = sorted({k for r in recipes for k in recipe_of(r)})
    return [k for k in keys if len({json.dumps(r.get(k), default=str) for r in recipes}) > 1]


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return [float(x) for x in a] == [float(x) for x in b]
    return a == b

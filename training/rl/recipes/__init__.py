"""The recipe registry behind ``hysparse recipe list|run``.

A recipe is one file in this folder that calls :func:`register_recipe` at import. It opens with
a docstring stating its objective in formulas and how it departs from GRPO, sets the
``RLConfig`` fields it changes (``overrides``, and ``quick`` for ``--quick``), and may bring its
own pieces: a ``rewards`` hook (token rewards from a ``trainer.StepContext``), advantage
estimators or losses registered with ``algos.register_advantage`` / ``register_loss``, or a
whole ``run`` function (``sft``). Recipes build on the core (``trainer``, ``algos``, ``sft``,
``tasks``), never on each other's files.
"""

from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass, field
from typing import Callable

RECIPES: dict[str, "Recipe"] = {}


@dataclass(frozen=True)
class Recipe:
    """``name``; ``summary`` (one line for ``recipe list``); ``overrides`` / ``quick``: ``RLConfig``
    values (``quick`` on top of ``overrides`` under ``--quick``); ``tasks``: tasks it is meant for;
    ``rewards``: ``fn(StepContext) -> token rewards [N, L]`` (None: the outcome reward); ``run``:
    replaces the RL loop (``fn(args, recipe) -> int``), for recipes that are not RL."""

    name: str
    summary: str
    overrides: dict = field(default_factory=dict)
    quick: dict = field(default_factory=dict)
    tasks: tuple[str, ...] = ("lookup", "arith")
    rewards: Callable | None = None
    run: Callable | None = None
    module: str = ""


def register_recipe(recipe: Recipe) -> Recipe:
    if recipe.name in RECIPES and RECIPES[recipe.name].module != recipe.module:
        raise ValueError(f"recipe {recipe.name!r} is already registered by {RECIPES[recipe.name].module}")
    RECIPES[recipe.name] = recipe
    return recipe


def _discover() -> None:
    for info in pkgutil.iter_modules(__path__):
        if not info.name.startswith("_"):
            importlib.import_module(f"{__name__}.{info.name}")


def list_recipes() -> list[Recipe]:
    _discover()
    return [RECIPES[k] for k in sorted(RECIPES)]


def get_recipe(name: str) -> Recipe:
    _discover()
    if name not in RECIPES:
        raise ValueError(f"recipe: expected one of {sorted(RECIPES)}, got {name!r}")
    return RECIPES[name]

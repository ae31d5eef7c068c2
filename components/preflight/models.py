"""The models a run tunes side by side: the ``models`` pipeline parameter, checked and completed once, before
any work. Each entry becomes one branch of the pipeline's fan-out (prepare -> baseline eval -> train -> tuned
eval -> compare -> gated registration); an empty list means the one model of ``base_model`` and ``recipe``.
"""

from __future__ import annotations

import re
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from components.common.errors import UserError
from components.common.recipes import load_recipe
from components.register.core import check_model_name

_NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,39}$")


class ModelEntry(BaseModel):
    """One model of the run. ``recipe_settings`` apply after the run's own ``recipe_settings``."""

    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)

    name: str = Field(description="short name in the results table and the registered model's name")
    base_model: str = Field(min_length=1)
    recipe: str = Field(min_length=1)
    recipe_settings: list[str] = Field(default_factory=list)
    model_display_name: str = ""


def plan_models(
    models: list[Any],
    *,
    base_model: str,
    recipe: str,
    recipe_settings: list[str],
    model_display_name: str,
    deploy_endpoint: str = "",
) -> list[dict[str, Any]]:
    """The run's model entries, complete: each with its name, recipe settings (the run's, then its own), the
    registered model's name (``<model_display_name>-<name>`` unless the entry gives one) and the endpoint it is
    deployed to when ``deploy_endpoint`` is set (``<deploy_endpoint>-<name>`` when there are several).

    Raises ``UserError`` naming the entry and field that cannot work.
    """
    if not isinstance(models, list):
        raise UserError(f"models must be a list of objects, got {type(models).__name__}")
    if not models:
        entries = [ModelEntry(name=_default_name(recipe), base_model=base_model, recipe=recipe,
                              model_display_name=model_display_name)]
    else:
        entries = [_entry(index, raw) for index, raw in enumerate(models)]
    seen: set[str] = set()
    planned = []
    for index, entry in enumerate(entries):
        where = f"models[{index}]" if models else "recipe"
        if entry.name in seen:
            raise UserError(f"{where}.name {entry.name!r} is used twice: each model needs its own name")
        seen.add(entry.name)
        settings = [*recipe_settings, *entry.recipe_settings]
        try:
            load_recipe(entry.recipe, settings)
        except UserError as error:
            raise UserError(f"{where}: {error}") from None
        display_name = entry.model_display_name or (
            model_display_name if not models else f"{model_display_name}-{entry.name}")
        check_model_name(display_name, f"{where}.model_display_name")
        endpoint = f"{deploy_endpoint}-{entry.name}" if deploy_endpoint and models else deploy_endpoint
        planned.append({"name": entry.name, "base_model": entry.base_model, "recipe": entry.recipe,
                        "recipe_settings": settings, "model_display_name": display_name, "endpoint_name": endpoint})
    return planned


def _default_name(recipe: str) -> str:
    name = re.sub(r"[^a-z0-9-]+", "-", recipe.lower().rsplit("/", 1)[-1].removesuffix(".yaml")).strip("-")
    return name[:40] or "model"


def _entry(index: int, raw: Any) -> ModelEntry:
    if not isinstance(raw, dict):
        raise UserError(f"models[{index}] must be an object with name, base_model and recipe, got "
                        f"{type(raw).__name__}")
    try:
        entry = ModelEntry.model_validate(raw)
    except ValidationError as error:
        first = error.errors()[0]
        field = ".".join(str(part) for part in first["loc"]) or "entry"
        raise UserError(f"models[{index}].{field}: {first['msg']}") from None
    if not _NAME.match(entry.name):
        raise UserError(f"models[{index}].name must be 1-40 lowercase letters, digits or '-', got {entry.name!r}")
    return entry

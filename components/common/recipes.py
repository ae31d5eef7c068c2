"""Recipes: one YAML file per model/hardware, loaded into dataclasses and overridable from the CLI.

A recipe may ``extends: <other recipe>``; its sections are merged key by key over the parent's, so a
variant states only what differs. ``--set section.field=value`` overrides any field (value parsed as YAML).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from components.common.errors import UserError, choices_error
from components.common.prompts import NOTEBOOK_PROMPT_TEMPLATE, validate_template

RECIPE_PACKAGE = "components.recipes"
GENERATION_BACKENDS = ("auto", "vllm", "transformers")


@dataclass
class ModelSpec:
    model_id: str = "google/medgemma-4b-it"
    dtype: str = "bfloat16"
    # Gemma 3 runs correctly with sdpa on current transformers; the notebook's "eager" was a workaround.
    attn_implementation: str = "sdpa"


@dataclass
class DataSpec:
    prompt_template: str = NOTEBOOK_PROMPT_TEMPLATE
    # TRL 1.x does not truncate prompts, so the notebook's max_prompt_length=512 is enforced in data prep.
    max_prompt_tokens: int = 512
    val_size: int = 100
    seed: int = 42


@dataclass
class LoraSpec:
    r: int = 64
    alpha: int = 64
    dropout: float = 0.0
    target_modules: str | list[str] = "all-linear"


@dataclass
class RewardSpec:
    """Weights of the reward functions (0 disables one)."""

    correctness: float = 1.0
    format: float = 0.0


@dataclass
class EvalSpec:
    """The notebook's sampling protocol by default, with a fixed seed: the one place for these values (recipes
    state only what differs; the evaluate step hands them to the generator as ``SamplingSettings``)."""

    do_sample: bool = True
    temperature: float = 0.7
    top_p: float = 0.9
    max_new_tokens: int = 512
    seed: int = 42
    samples_per_question: int = 1
    batch_size: int = 0  # 0: chosen from free memory
    backend: str = "transformers"  # our generator; "vllm" or "auto" (vLLM where importable) on request
    liger_kernels: bool = False  # Liger's fused Gemma kernels in the transformers path, on GPUs (ignored on CPU)

    def decoding(self, top_k: int) -> dict[str, Any]:
        """The decoding a metrics file records, whichever backend generated; ``top_k`` is the model's."""
        decoding: dict[str, Any] = {"do_sample": self.do_sample, "max_new_tokens": self.max_new_tokens, "seed": self.seed,
                                    "samples_per_question": self.samples_per_question}
        if self.do_sample:
            decoding.update({"temperature": self.temperature, "top_p": self.top_p, "top_k": top_k})
        return decoding


@dataclass
class ServingSpec:
    """How the registered model is served: vLLM's flags in Model Garden's container, which register writes into
    the registered model and the deploy step's endpoint then runs with."""

    max_model_len: int = 4096  # prompt + answer tokens; MedQA prompts stay under 512, answers under 512
    gpu_memory_utilization: float = 0.9
    shared_memory_size_mb: int = 16 * 1024  # vLLM's workers share tensors through /dev/shm
    deployment_timeout_s: int = 7200  # the container's first start downloads the weights


@dataclass
class Recipe:
    name: str
    description: str = ""
    generation_backend: str = "transformers"  # our rollout on GPUs, TRL's generate on CPU; or "vllm", "auto"
    model: ModelSpec = field(default_factory=ModelSpec)
    data: DataSpec = field(default_factory=DataSpec)
    lora: LoraSpec = field(default_factory=LoraSpec)
    rewards: RewardSpec = field(default_factory=RewardSpec)
    evaluation: EvalSpec = field(default_factory=EvalSpec)
    serving: ServingSpec = field(default_factory=ServingSpec)
    # Keyword arguments of trl.GRPOConfig, checked against it by the training step.
    train: dict[str, Any] = field(default_factory=dict)

    def validate(self) -> None:
        if self.generation_backend not in GENERATION_BACKENDS:
            raise choices_error("generation_backend", self.generation_backend, GENERATION_BACKENDS)
        if self.evaluation.backend not in GENERATION_BACKENDS:
            raise choices_error("evaluation.backend", self.evaluation.backend, GENERATION_BACKENDS)
        validate_template(self.data.prompt_template)
        for name, value in [
            ("data.max_prompt_tokens", self.data.max_prompt_tokens),
            ("lora.r", self.lora.r),
            ("evaluation.max_new_tokens", self.evaluation.max_new_tokens),
            ("evaluation.samples_per_question", self.evaluation.samples_per_question),
            ("serving.max_model_len", self.serving.max_model_len),
            ("serving.shared_memory_size_mb", self.serving.shared_memory_size_mb),
            ("serving.deployment_timeout_s", self.serving.deployment_timeout_s),
        ]:
            if not isinstance(value, int) or value <= 0:
                raise UserError(f"recipe {self.name!r}: {name} must be a positive integer, got {value!r}")
        if not 0 < self.serving.gpu_memory_utilization <= 1:
            raise UserError(f"recipe {self.name!r}: serving.gpu_memory_utilization must be in (0, 1], "
                            f"got {self.serving.gpu_memory_utilization!r}")
        if self.rewards.correctness < 0 or self.rewards.format < 0:
            raise UserError(f"recipe {self.name!r}: reward weights must be >= 0")
        if self.rewards.correctness == 0 and self.rewards.format == 0:
            raise UserError(f"recipe {self.name!r}: at least one reward weight must be > 0")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


_SECTIONS = {f.name: f.type for f in dataclasses.fields(Recipe)}
_SECTION_CLASSES = {"model": ModelSpec, "data": DataSpec, "lora": LoraSpec, "rewards": RewardSpec,
                    "evaluation": EvalSpec, "serving": ServingSpec}


def available_recipes() -> list[str]:
    return sorted(p.name[: -len(".yaml")] for p in resources.files(RECIPE_PACKAGE).iterdir() if p.name.endswith(".yaml"))


def _read_yaml(name_or_path: str) -> tuple[str, dict[str, Any]]:
    path = Path(name_or_path)
    if name_or_path.endswith((".yaml", ".yml")) and path.is_file():
        text, name = path.read_text(), path.stem
    elif name_or_path in available_recipes():
        text, name = resources.files(RECIPE_PACKAGE).joinpath(f"{name_or_path}.yaml").read_text(), name_or_path
    else:
        raise choices_error("recipe", name_or_path, available_recipes() + ["<path/to/recipe.yaml>"])
    raw = yaml.safe_load(text) or {}
    if not isinstance(raw, dict):
        raise UserError(f"recipe {name_or_path!r} must be a YAML mapping")
    return name, raw


def _merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in update.items():
        merged[key] = _merge(merged[key], value) if isinstance(value, dict) and isinstance(merged.get(key), dict) else value
    return merged


def _resolve(name_or_path: str, seen: tuple[str, ...] = ()) -> tuple[str, dict[str, Any]]:
    if name_or_path in seen:
        raise UserError(f"recipe 'extends' cycle: {' -> '.join(seen + (name_or_path,))}")
    name, raw = _read_yaml(name_or_path)
    parent = raw.pop("extends", None)
    if parent is None:
        return name, raw
    _, parent_raw = _resolve(parent, seen + (name_or_path,))
    parent_raw.pop("description", None)
    return name, _merge(parent_raw, raw)


def parse_overrides(overrides: list[str] | None) -> dict[str, Any]:
    """``["train.learning_rate=1e-4", "lora.r=8"]`` -> nested dict; values are parsed as YAML."""
    nested: dict[str, Any] = {}
    for item in overrides or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UserError(f"override {item!r} must look like section.field=value")
        parts = key.split(".")
        target = nested
        for part in parts[:-1]:
            target = target.setdefault(part, {})
        target[parts[-1]] = _parse_value(value)
    return nested


def _parse_value(text: str) -> Any:
    value = yaml.safe_load(text)
    if isinstance(value, str):
        try:  # YAML 1.1 reads "1e-4" as a string; users mean a number
            return float(value)
        except ValueError:
            return value
    return value


def _build(name: str, raw: dict[str, Any]) -> Recipe:
    kwargs: dict[str, Any] = {"name": raw.pop("name", name)}
    for key, value in raw.items():
        if key not in _SECTIONS or key == "name":
            raise choices_error(f"recipe {name!r} key", key, [k for k in _SECTIONS if k != "name"])
        cls = _SECTION_CLASSES.get(key)
        if cls is None:
            kwargs[key] = value
            continue
        if not isinstance(value, dict):
            raise UserError(f"recipe {name!r}: section {key!r} must be a mapping")
        valid = {f.name for f in dataclasses.fields(cls)}
        for sub in value:
            if sub not in valid:
                raise choices_error(f"recipe {name!r} field {key}.", sub, valid)
        kwargs[key] = cls(**value)
    recipe = Recipe(**kwargs)
    recipe.validate()
    return recipe


def load_recipe(name_or_path: str, overrides: list[str] | None = None) -> Recipe:
    """Load a bundled recipe by name (or a YAML path), apply ``section.field=value`` overrides, validate."""
    name, raw = _resolve(name_or_path)
    return _build(name, _merge(raw, parse_overrides(overrides)))

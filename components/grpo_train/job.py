"""The training job: every setting of one GRPO training run, built once and handed to every launch path.

``TrainingJob.build`` resolves the recipe and its ``section.field=value`` overrides once, together with the
step's own settings (data, outputs, base model, TensorBoard folder...). The job is then serialized once (JSON)
for whatever runs it: ``train_grpo`` in this process (one GPU, or CPU), one torchrun process per GPU on one VM
(``python -m components.grpo_train --job JOB.json``), or the replicas of a Vertex AI custom job (the JSON travels
in their container arguments). Nothing downstream parses the recipe or command-line flags again.

Why a pydantic model and not a ``trl.GRPOConfig`` subclass: the custom-job launcher builds and checks the job
on the slim image, which has neither TRL nor torch; pydantic gives the JSON round trip and the field checks.
The recipe's ``train`` section stays a mapping of ``GRPOConfig`` keyword arguments, checked against
``GRPOConfig`` where TRL is installed (``core.check_train_args``).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from components.common.errors import UserError
from components.common.gcs import GCS_FUSE_ROOT, GCS_SCHEME, is_gcs_uri
from components.common.recipes import Recipe, load_recipe
from components.common.secrets import secret_version_name

ROLLOUTS = ("auto", "static-graph", "trl")
Rollout = Literal["auto", "static-graph", "trl"]


def as_local_path(path_or_uri: str) -> str:
    """A folder files can be written to: a ``gs://`` URI (as Vertex gives TensorBoard's) becomes its ``/gcs/``
    FUSE path, which Vertex mounts in its tasks and custom jobs."""
    return GCS_FUSE_ROOT + path_or_uri[len(GCS_SCHEME):] if is_gcs_uri(path_or_uri) else path_or_uri


def _one_line(error: ValidationError, source: str) -> UserError:
    first = error.errors()[0]
    where = ".".join(str(part) for part in first["loc"]) or "job"
    return UserError(f"{source}: {where}: {first['msg']}")


class TrainingJob(BaseModel):
    """One training run's settings (frozen: a launch path derives a changed copy, never edits this one)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    recipe: Recipe = Field(description="the resolved recipe, overrides applied")
    data_dir: str = Field(description="data prep output (train.jsonl, validation.jsonl)")
    output_dir: str = Field(description="adapter/, merged/, checkpoints/ (resumed from)")
    checkpoint_dir: str | None = Field(None, description="checkpoints (resumed from); None: OUTPUT_DIR/checkpoints")
    model_id: str = Field(description="base model id or path")
    merge: bool = Field(False, description="also write merged bf16 weights for serving")
    hf_token_secret: str = Field("", description="Secret Manager resource name of the Hugging Face token")
    completion_sample_size: int = Field(0, ge=0, description="first N completions to completions_sample.jsonl")
    rollout: Rollout = Field("auto", description="our CUDA-graph generator, TRL's generate, or auto")
    tensorboard_dir: str | None = Field(None, description="TensorBoard event folder; None: no events")
    show_progress: bool = Field(True, description="a progress bar (local runs); log lines only when off")

    @field_validator("recipe")
    @classmethod
    def _valid_recipe(cls, recipe: Recipe) -> Recipe:
        recipe.validate()
        return recipe

    @classmethod
    def build(
        cls,
        recipe: str,
        data_dir: str | Path,
        output_dir: str | Path,
        *,
        overrides: list[str] | None = None,
        model: str | None = None,
        merge: bool = False,
        hf_token_secret: str = "",
        completion_sample_size: int = 0,
        rollout: str = "auto",
        tensorboard_dir: str = "",
        show_progress: bool = True,
        checkpoint_dir: str = "",
    ) -> TrainingJob:
        """The job for recipe ``recipe`` (a name or YAML path) with ``overrides`` applied.

        ``model``: the base model (default: the recipe's). ``tensorboard_dir``: where TensorBoard events go when
        the recipe's ``train.report_to`` names tensorboard (default: ``OUTPUT_DIR/tensorboard``; ``gs://``: through
        its ``/gcs/`` FUSE path). ``checkpoint_dir``: where checkpoints go and are resumed from (default:
        ``OUTPUT_DIR/checkpoints``), e.g. a volume that outlives a retried task where outputs do not.
        """
        spec = load_recipe(recipe, overrides)
        if hf_token_secret:
            secret_version_name(hf_token_secret, "hf_token_secret")  # a bad name or a token fails here, not on a GPU
        report_to = spec.train.get("report_to", [])
        wants_tensorboard = "tensorboard" in ([report_to] if isinstance(report_to, str) else list(report_to))
        try:
            return cls(
                recipe=spec, data_dir=str(data_dir), output_dir=str(output_dir), model_id=model or spec.model.model_id,
                merge=merge, hf_token_secret=hf_token_secret, completion_sample_size=completion_sample_size,
                rollout=rollout, show_progress=show_progress, checkpoint_dir=checkpoint_dir or None,
                tensorboard_dir=as_local_path(tensorboard_dir or f"{output_dir}/tensorboard") if wants_tensorboard else None,
            )
        except ValidationError as err:
            raise _one_line(err, "training job") from None

    @property
    def checkpoints(self) -> Path:
        return Path(self.checkpoint_dir) if self.checkpoint_dir else Path(self.output_dir) / "checkpoints"

    def to_json(self) -> str:
        return self.model_dump_json(indent=1)

    @classmethod
    def from_json(cls, text: str, source: str = "training job") -> TrainingJob:
        try:
            return cls.model_validate_json(text)
        except ValidationError as err:
            raise _one_line(err, source) from None

    def write(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(self.to_json())
        return path

    @classmethod
    def read(cls, path: str | Path) -> TrainingJob:
        path = Path(path)
        if not path.is_file():
            raise UserError(f"training job file {str(path)!r} does not exist")
        return cls.from_json(path.read_text(), f"training job file {str(path)!r}")

    def data_parallel(self, world_size: int) -> TrainingJob:
        """This job for ``world_size`` processes training together, with the same global batch.

        Gradient accumulation (and an explicit ``steps_per_generation``) is divided by the number of processes,
        so ``per_device_train_batch_size x gradient_accumulation_steps x processes`` stays the recipe's.
        """
        if world_size < 1:
            raise UserError(f"world_size must be at least 1, got {world_size}")
        if world_size == 1:
            return self
        name, train = self.recipe.name, dict(self.recipe.train)
        accumulation = int(train.get("gradient_accumulation_steps", 1))  # TrainingArguments' default
        if accumulation % world_size:
            raise UserError(
                f"recipe {name!r}: train.gradient_accumulation_steps={accumulation} is not divisible by the "
                f"{world_size} training processes (GPUs x nodes): use a GPU count that divides it, or set it to a "
                f"multiple of {world_size} (which changes the global batch)"
            )
        train["gradient_accumulation_steps"] = accumulation // world_size
        if train.get("steps_per_generation") is not None:
            steps = int(train["steps_per_generation"])
            if steps % world_size:
                raise UserError(f"recipe {name!r}: train.steps_per_generation={steps} is not divisible by the "
                                f"{world_size} training processes")
            train["steps_per_generation"] = steps // world_size
        if train.get("generation_batch_size") is not None:
            # TRL's rule (GRPOConfig): the generation batch splits into whole per-process micro-batches.
            per_step = int(train.get("per_device_train_batch_size", 8)) * world_size
            if int(train["generation_batch_size"]) % per_step:
                raise UserError(f"recipe {name!r}: train.generation_batch_size={train['generation_batch_size']} "
                                f"is not divisible by per_device_train_batch_size x {world_size} processes ({per_step})")
        # LoRA "all-linear" also adapts Gemma 3's vision tower, which text prompts never reach: DDP must not wait
        # for gradients of those parameters.
        train.setdefault("ddp_find_unused_parameters", True)
        return self.model_copy(update={"recipe": dataclasses.replace(self.recipe, train=train)})

    def for_secondary_rank(self, scratch_dir: str | Path) -> TrainingJob:
        """This job for a process other than rank 0: it writes into ``scratch_dir``, merges nothing, opens no
        TensorBoard file and shows no progress bar (rank 0 alone writes the outputs)."""
        return self.model_copy(update={"output_dir": str(scratch_dir), "merge": False, "tensorboard_dir": None,
                                       "show_progress": False})

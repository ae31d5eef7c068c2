"""The data prep step as a pipeline task: the prepared splits, their fingerprint, and what the Vertex UI shows.

The KFP wrapper (component.py) only hands this module its artifact paths and copies the returned metadata.
"""

from __future__ import annotations

import hashlib
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from components.common.recipes import load_recipe
from components.data_prep.core import prepare_medqa, render_summary, scalar_metrics

PREPARED_SPLITS = ("train", "validation", "test")
SPLIT_FILES = (*PREPARED_SPLITS, "rejected")
FINGERPRINT_CHARS = 16  # 64 bits of sha256: a valid Vertex label value (lowercase hex, at most 63 characters)


def data_fingerprint(prepared_dir: str | Path) -> str:
    """A content hash of the prepared train/validation/test files: the same splits give the same fingerprint."""
    digest = hashlib.sha256()
    for split in PREPARED_SPLITS:
        digest.update(split.encode() + b"\0")
        digest.update((Path(prepared_dir) / f"{split}.jsonl").read_bytes())
        digest.update(b"\0")
    return digest.hexdigest()[:FINGERPRINT_CHARS]


@dataclass
class PreparedOutputs:
    """What the task reports: the fingerprint (its output value) and each artifact's metadata."""

    fingerprint: str
    prepared_metadata: dict[str, Any]
    file_metadata: dict[str, dict[str, Any]]
    metrics: dict[str, float]


def prepare_for_pipeline(
    source: str,
    prepared_dir: str,
    split_paths: Mapping[str, str],
    summary_path: str,
    *,
    recipe: str,
    recipe_settings: list[str],
    tokenizer: str,
    max_reject_rate: float,
    layout: str,
    num_options: int,
    hf_token_secret: str,
) -> PreparedOutputs:
    """Prepare the splits in ``prepared_dir`` with the recipe's data settings (``recipe_settings`` applied), copy
    each split to its own file in ``split_paths`` (train, validation, test, rejected) and write the Markdown summary.

    ``tokenizer``: the model whose processor counts prompt tokens; empty means the recipe's model.
    """
    spec = load_recipe(recipe, recipe_settings)
    stats = prepare_medqa(
        source,
        prepared_dir,
        tokenizer=tokenizer or spec.model.model_id,
        val_size=spec.data.val_size,
        seed=spec.data.seed,
        max_reject_rate=max_reject_rate,
        layout=layout,
        prompt_template=spec.data.prompt_template,
        max_prompt_tokens=spec.data.max_prompt_tokens,
        num_options=num_options,
        hf_token_secret=hf_token_secret or None,
    )
    file_metadata = {}
    for name in SPLIT_FILES:
        Path(split_paths[name]).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(Path(prepared_dir) / f"{name}.jsonl", split_paths[name])
        rows = stats["rejected"]["total"] if name == "rejected" else stats["output_rows"][name]
        file_metadata[name] = {"rows": rows, "format": "jsonl"}
    Path(summary_path).parent.mkdir(parents=True, exist_ok=True)
    Path(summary_path).write_text(render_summary(stats), encoding="utf-8")
    fingerprint = data_fingerprint(prepared_dir)
    return PreparedOutputs(
        fingerprint=fingerprint,
        prepared_metadata={"rows": stats["output_rows"], "layout": stats["layout"], "letters": stats["letters"],
                           "fingerprint": fingerprint},
        file_metadata=file_metadata,
        metrics=scalar_metrics(stats),
    )

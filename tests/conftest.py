"""Shared fixtures: the tiny offline model (built once per session) and the demo data, prepared."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_MEDQA = REPO_ROOT.parent / "shared" / "data" / "medqa"


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> str:
    """A random-init tiny Gemma 3 checkpoint (no warm start: tests check mechanics, not skill)."""
    from components.tiny_model import build_tiny_model

    return str(build_tiny_model(tmp_path_factory.mktemp("tiny_model")))


@pytest.fixture(scope="session")
def warm_tiny_model_dir(tmp_path_factory) -> str:
    """The tiny model after its short format warm start (answers in the <answer>X</answer> format)."""
    from components.tiny_model.core import build_tiny_model, warm_start

    model_dir = build_tiny_model(tmp_path_factory.mktemp("warm_tiny_model"))
    warm_start(model_dir, steps=60)
    return str(model_dir)


@pytest.fixture(scope="session")
def prepared_demo_dir(tmp_path_factory, tiny_model_dir) -> Path:
    """The bundled demo data through the data prep step (train/validation/test.jsonl)."""
    from components.data_prep.core import prepare_medqa
    from components.demo_data import bundled_demo_dir

    out = tmp_path_factory.mktemp("prepared_demo")
    prepare_medqa(str(bundled_demo_dir()), out, tokenizer=tiny_model_dir, val_size=40, seed=42)
    return out

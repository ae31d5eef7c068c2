"""Data prep step: MedQA-style data -> train/validation/test prompts, rejected rows, stats."""

from components.data_prep.core import prepare_medqa

__all__ = ["prepare_medqa"]

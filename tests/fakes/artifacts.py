"""A stand-in for KFP's runtime artifacts, so KFP wrappers can be called as plain functions in tests."""

from __future__ import annotations

from pathlib import Path


class FakeArtifact:
    """What a component body uses of an artifact: ``path``, ``uri``, ``metadata`` and the logging methods."""

    def __init__(self, path: Path):
        self.path = str(path)
        self.uri = str(path)
        self.metadata: dict = {}

    def log_metric(self, key, value):
        self.metadata[key] = value

    def log_confusion_matrix(self, categories, matrix):
        self.metadata["confusion"] = {"categories": categories, "matrix": matrix}

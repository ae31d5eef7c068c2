"""data_fingerprint: a content hash of the prepared splits, valid as a Vertex label value."""

from __future__ import annotations

import re

from components.data_prep.outputs import data_fingerprint
from components.register.core import build_labels


def write_splits(folder, test_text='{"id": "t1"}\n'):
    folder.mkdir(parents=True)
    (folder / "train.jsonl").write_text('{"id": "a"}\n')
    (folder / "validation.jsonl").write_text('{"id": "v"}\n')
    (folder / "test.jsonl").write_text(test_text)
    (folder / "stats.json").write_text("{}")
    return folder


def test_same_splits_same_fingerprint_and_any_change_shows(tmp_path):
    first = data_fingerprint(write_splits(tmp_path / "a"))
    assert first == data_fingerprint(write_splits(tmp_path / "b"))
    assert first != data_fingerprint(write_splits(tmp_path / "c", test_text='{"id": "t2"}\n'))
    (tmp_path / "a" / "stats.json").write_text('{"other": 1}')  # only the splits count
    assert data_fingerprint(tmp_path / "a") == first


def test_fingerprint_is_its_own_label_value(tmp_path):
    fingerprint = data_fingerprint(write_splits(tmp_path / "a"))
    assert re.fullmatch(r"[a-z0-9_-]{1,63}", fingerprint)
    assert build_labels(data_fingerprint=fingerprint) == {"data_fingerprint": fingerprint}

"""Bad inputs to data prep: each is quarantined with its exact reason and detail, or (a file that cannot be
read at all) stops the step with one line naming the file; no good row is lost and every input row is
accounted for (kept + quarantined == input rows)."""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Callable
from pathlib import Path

import pytest

from components.common.errors import UserError
from components.common.jsonl import read_jsonl, write_jsonl
from components.data_prep.core import REJECT_REASONS, prepare_medqa
from test_data_prep import BAD_ROWS, LETTERS, make_splits, medqa_row, to_hf

BAD = 3  # the spoiled train row (0-based); line 4 of train.jsonl
CSV_COLUMNS = ["question", *(f"options.{k}" for k in LETTERS), "answer_idx", "answer", "meta_info"]


def _prepare(src: Path, tmp_path: Path) -> tuple[dict, Path]:
    out = tmp_path / "out"
    return prepare_medqa(str(src), out, tokenizer=None, val_size=5, max_reject_rate=1.0), out


def _write_splits(src: Path, splits: dict[str, list[dict]]) -> Path:
    for split, rows in splits.items():
        write_jsonl(src / f"{split}.jsonl", rows)
    return src


def _csv_lines(rows: list[dict]) -> list[list[str]]:
    return [[row["question"], *(row["options"][k] for k in LETTERS), row["answer_idx"], row["answer"],
             row["meta_info"]] for row in rows]


def _write_csv(path: Path, rows: list[list[str]], *, header: list[str] = CSV_COLUMNS, encoding: str = "utf-8"):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding=encoding) as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)


def assert_accounted(stats: dict, out: Path, lost_train_rows: set[int] = frozenset({BAD})) -> None:
    """Every input row is kept or quarantined, and every good train and test row reaches its output."""
    kept = sum(stats["output_rows"].values()) + stats["dev_unused"]
    assert kept + stats["rejected"]["total"] == sum(stats["input_rows"].values())
    assert stats["rejected"]["total"] == len(read_jsonl(out / "rejected.jsonl"))
    train_rows = {row["meta"]["source_row"] for row in read_jsonl(out / "train.jsonl")}
    assert train_rows == set(range(stats["input_rows"]["train"])) - lost_train_rows
    assert len(read_jsonl(out / "test.jsonl")) == stats["input_rows"]["test"]
    assert stats["output_rows"]["validation"] == 5


def assert_quarantined(out: Path, reason: str, detail: str, row_id: str = f"train-{BAD}") -> dict:
    rejected = read_jsonl(out / "rejected.jsonl")
    assert [(r["split"], r["row"], r["id"], r["reason"], r["detail"]) for r in rejected] == [
        ("train", BAD, row_id, reason, detail)
    ]
    return rejected[0]


# ------------------------------------------------------------------ wrong types in a readable row


def _set(field: str, value) -> Callable[[dict], None]:
    return lambda row: row.update({field: value})


def _set_option(letter: str, value) -> Callable[[dict], None]:
    return lambda row: row["options"].update({letter: value})


WRONG_VALUES = [
    ("answer-list", _set("answer_idx", ["A", "B"]), "wrong_type",
     "answer letter is a list, expected one of A, B, C, D"),
    ("answer-dict", _set("answer_idx", {"letter": "A"}), "wrong_type",
     "answer letter is an object, expected one of A, B, C, D"),
    ("answer-number", _set("answer_idx", 2), "wrong_type", "answer letter is a number, expected one of A, B, C, D"),
    ("question-number", _set("question", 42), "wrong_type", "question is a number, expected text"),
    ("question-list", _set("question", ["What", "now?"]), "wrong_type", "question is a list, expected text"),
    ("question-null", _set("question", None), "missing_question", "no question field"),
    ("option-true", _set_option("D", True), "wrong_type", "option D is a boolean, expected text"),
    ("option-dict", _set_option("B", {"text": "Remedy"}), "wrong_type", "option B is an object, expected text"),
    ("option-nan", _set_option("C", math.nan), "missing_option", "option C is empty"),
    ("options-text", _set("options", "A) one B) two"), "wrong_type",
     "options is text, expected letter: text pairs or a list"),
    ("options-number", _set("options", 4), "wrong_type", "options is a number, expected letter: text pairs or a list"),
    ("answer-text-list", _set("answer", ["Remedy"]), "wrong_type", "answer text is a list, expected text"),
    ("id-object", _set("id", {"n": 3}), "wrong_type", "id is an object, expected text or an integer"),
]


@pytest.mark.parametrize("spoil,reason,detail", [c[1:] for c in WRONG_VALUES], ids=[c[0] for c in WRONG_VALUES])
def test_a_wrong_typed_field_is_quarantined_with_its_type(tmp_path, spoil, reason, detail):
    splits = make_splits()
    spoil(splits["train"][BAD])
    stats, out = _prepare(_write_splits(tmp_path / "src", splits), tmp_path)
    rejected = assert_quarantined(out, reason, detail)
    assert json.dumps(rejected["raw"]) == json.dumps(splits["train"][BAD])  # the row as it was (NaN != NaN)
    assert stats["rejected"]["by_reason"] == {reason: 1}
    assert_accounted(stats, out)


def test_hf_layout_data_that_is_not_an_object_is_a_wrong_type(tmp_path):
    splits = {s: [to_hf(row, s, i) for i, row in enumerate(rows)] for s, rows in make_splits().items()}
    splits["train"][BAD]["data"] = ["Question", "Options"]
    stats, out = _prepare(_write_splits(tmp_path / "src", splits), tmp_path)
    assert_quarantined(out, "wrong_type", "data is a list, expected an object")
    assert_accounted(stats, out)


# ------------------------------------------------------------------ unreadable lines of JSON Lines files


def _spoil_line(path: Path, line_number: int, new: bytes) -> None:
    lines = path.read_bytes().splitlines(keepends=True)
    lines[line_number - 1] = new + b"\n"
    path.write_bytes(b"".join(lines))


def _latin1_line() -> bytes:
    row = medqa_row("train", BAD)
    row["question"] = row["question"].replace("Synthetic", "Synthétique")
    return json.dumps(row, ensure_ascii=False).encode("latin-1")


UNREADABLE_LINES = [
    ("latin-1", _latin1_line(), "not_utf8", "train.jsonl: line 4 is not UTF-8 (byte 0xe9 at column 20)"),
    ("stray-byte", b'{"question": "\xff"}', "not_utf8", "train.jsonl: line 4 is not UTF-8 (byte 0xff at column 15)"),
    ("truncated", b'{"question": "Synthetic case", "options": ', "invalid_json",
     "train.jsonl: line 4 is not valid JSON (Expecting value)"),
    ("array", b'["question", "options"]', "not_an_object", "train.jsonl: line 4 is not a JSON object (it is a list)"),
    ("text", b'"just a string"', "not_an_object", "train.jsonl: line 4 is not a JSON object (it is text)"),
]


@pytest.mark.parametrize("line,reason,detail", [c[1:] for c in UNREADABLE_LINES], ids=[c[0] for c in UNREADABLE_LINES])
def test_an_unreadable_jsonl_line_is_quarantined_naming_file_and_line(tmp_path, line, reason, detail):
    src = _write_splits(tmp_path / "src", make_splits())
    _spoil_line(src / "train.jsonl", BAD + 1, line)
    stats, out = _prepare(src, tmp_path)
    rejected = assert_quarantined(out, reason, detail)
    assert rejected["raw"]["line"] == BAD + 1
    assert rejected["raw"]["text"] == line.decode("utf-8", errors="backslashreplace")  # the bytes, kept as escapes
    assert stats["input_rows"]["train"] == 30
    assert_accounted(stats, out)


def test_jsonl_with_a_byte_order_mark_keeps_every_row(tmp_path):
    src = _write_splits(tmp_path / "src", make_splits())
    (src / "train.jsonl").write_bytes(b"\xef\xbb\xbf" + (src / "train.jsonl").read_bytes())
    stats, out = _prepare(src, tmp_path)
    assert read_jsonl(out / "rejected.jsonl") == []
    assert_accounted(stats, out, lost_train_rows=set())


def test_json_lines_saved_as_json_quarantine_a_bad_line_too(tmp_path):
    src = _write_splits(tmp_path / "src", make_splits())
    (src / "train.jsonl").rename(src / "train.json")
    _spoil_line(src / "train.json", BAD + 1, b'{"question": "\xff"}')
    stats, out = _prepare(src, tmp_path)
    assert_quarantined(out, "not_utf8", "train.json: line 4 is not UTF-8 (byte 0xff at column 15)")
    assert_accounted(stats, out)


def test_a_json_array_item_that_is_not_an_object_is_quarantined(tmp_path):
    splits = make_splits()
    src = _write_splits(tmp_path / "src", splits)
    rows: list = list(splits["train"])
    rows[BAD] = "a bare string"
    (src / "train.jsonl").unlink()
    (src / "train.json").write_text(json.dumps(rows))
    stats, out = _prepare(src, tmp_path)
    rejected = assert_quarantined(out, "not_an_object", "train.json: item 3 is not a JSON object (it is text)")
    assert rejected["raw"] == {"item": "a bare string"}
    assert_accounted(stats, out)


# ------------------------------------------------------------------ CSV and whole-file formats


def _csv_source(tmp_path: Path, train_rows: list[list[str]], **kwargs) -> Path:
    splits = make_splits()
    src = _write_splits(tmp_path / "src", {"dev": splits["dev"], "test": splits["test"]})
    _write_csv(src / "train.csv", train_rows, **kwargs)
    return src


def test_csv_with_a_byte_order_mark_reads_like_one_without(tmp_path):
    train = _csv_lines(make_splits()["train"])
    stats, out = _prepare(_csv_source(tmp_path / "bom", train, encoding="utf-8-sig"), tmp_path / "bom")
    assert (tmp_path / "bom" / "src" / "train.csv").read_bytes().startswith(b"\xef\xbb\xbf")
    _, reference = _prepare(_csv_source(tmp_path / "plain", train), tmp_path / "plain")
    assert read_jsonl(out / "rejected.jsonl") == []
    assert (out / "train.jsonl").read_bytes() == (reference / "train.jsonl").read_bytes()
    assert_accounted(stats, out, lost_train_rows=set())


@pytest.mark.parametrize("cells,detail", [
    (lambda row: [*row, "an extra cell"], "train.csv: line 5 has 9 cells, the header 8"),
    (lambda row: row[:5], "train.csv: line 5 has 5 cells, the header 8"),
], ids=["extra-cell", "missing-cells"])
def test_a_csv_line_with_the_wrong_cell_count_is_quarantined(tmp_path, cells, detail):
    train = _csv_lines(make_splits()["train"])
    train[BAD] = cells(train[BAD])
    stats, out = _prepare(_csv_source(tmp_path, train), tmp_path)
    rejected = assert_quarantined(out, "wrong_cell_count", detail)
    assert rejected["raw"] == {"line": 5, "cells": train[BAD]}
    assert_accounted(stats, out)


def test_csv_with_a_byte_that_is_not_utf8_is_one_line_naming_file_and_offset(tmp_path):
    src = _csv_source(tmp_path, _csv_lines(make_splits()["train"]))
    data = (src / "train.csv").read_bytes()
    offset = data.index(b"Synthetic case train 3")
    (src / "train.csv").write_bytes(data[:offset] + b"\xe9" + data[offset + 1:])
    with pytest.raises(UserError) as caught:
        _prepare(src, tmp_path)
    assert str(caught.value) == (
        f"{src / 'train.csv'}: byte offset {offset} (line 5) is not UTF-8 (byte 0xe9); save the file as UTF-8"
    )


def test_a_json_array_with_a_byte_that_is_not_utf8_is_one_line_naming_file_and_offset(tmp_path):
    splits = make_splits()
    src = _write_splits(tmp_path / "src", splits)
    (src / "train.jsonl").unlink()
    data = json.dumps(splits["train"]).encode("utf-8").replace(b"Synthetic case train 3", b"Synth\xffic case train 3")
    (src / "train.json").write_bytes(data)
    with pytest.raises(UserError) as caught:
        _prepare(src, tmp_path)
    offset = data.index(b"\xff")
    assert str(caught.value) == (
        f"{src / 'train.json'}: byte offset {offset} (line 1) is not UTF-8 (byte 0xff); save the file as UTF-8"
    )


@pytest.mark.parametrize("header,message", [
    (["question", "options", "options.A", "options.B", "options.C", "answer_idx", "answer"],
     "column 'options.A' cannot sit inside column 'options'; rename one of them"),
    (["question", "options.A", "options.B", "options.C", "options.D", "answer_idx", "answer_idx"],
     "column(s) answer_idx appear more than once in the header"),
], ids=["nested-under-a-value", "repeated"])
def test_a_csv_header_that_cannot_be_folded_is_one_line(tmp_path, header, message):
    src = _csv_source(tmp_path, [], header=header)
    with pytest.raises(UserError) as caught:
        _prepare(src, tmp_path)
    assert str(caught.value) == f"{src / 'train.csv'}: {message}"


def test_a_broken_parquet_file_is_one_line(tmp_path):
    src = _write_splits(tmp_path / "src", make_splits())
    (src / "train.jsonl").unlink()
    (src / "train.parquet").write_bytes(b"PAR1 this is not parquet")
    with pytest.raises(UserError, match=r"train.parquet: not a readable parquet file \(ArrowInvalid: "):
        _prepare(src, tmp_path)


def test_the_cli_prints_an_unreadable_file_in_one_line(tmp_path, capsys):
    from components.data_prep.__main__ import main

    src = _csv_source(tmp_path, _csv_lines(make_splits()["train"]))
    (src / "train.csv").write_bytes((src / "train.csv").read_bytes() + b"\xff\n")
    assert main(["--source", str(src), "--output-dir", str(tmp_path / "out"), "--model", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"error: {src / 'train.csv'}: byte offset ")


# ------------------------------------------------------------------ many at once, and the catalogue


def test_many_bad_rows_in_every_split_leave_every_good_row_and_add_up(tmp_path):
    splits = make_splits(n_train=40, n_dev=30, n_test=20)
    splits["train"][1]["answer_idx"] = ["A"]
    splits["train"][2]["question"] = 7
    splits["dev"][4]["options"]["A"] = True
    splits["test"][5]["answer"] = {"text": "x"}
    src = _write_splits(tmp_path / "src", splits)
    _spoil_line(src / "train.jsonl", 10, b"\xff\xfe")
    _spoil_line(src / "dev.jsonl", 3, b"[]")
    stats, out = _prepare(src, tmp_path)
    by_row = {(r["split"], r["row"]): r["reason"] for r in read_jsonl(out / "rejected.jsonl")}
    assert by_row == {
        ("train", 1): "wrong_type", ("train", 2): "wrong_type", ("train", 9): "not_utf8",
        ("dev", 2): "not_an_object", ("dev", 4): "wrong_type", ("test", 5): "wrong_type",
    }
    assert stats["input_rows"] == {"train": 40, "dev": 30, "test": 20}
    assert stats["output_rows"] == {"train": 37, "validation": 5, "test": 19}
    assert stats["dev_unused"] == 23
    kept = sum(stats["output_rows"].values()) + stats["dev_unused"]
    assert kept + stats["rejected"]["total"] == 90


def test_every_reject_reason_is_exercised():
    exercised = (
        {reason for reason, _ in BAD_ROWS}
        | {case[2] for case in WRONG_VALUES}
        | {case[2] for case in UNREADABLE_LINES}
        | {"wrong_cell_count"}
        | {"duplicate_id", "duplicate_question", "leakage", "prompt_too_long"}  # tests/test_data_prep.py
    )
    assert exercised == set(REJECT_REASONS)

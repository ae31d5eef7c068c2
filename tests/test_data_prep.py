"""Data prep on synthetic fixtures: reject reasons, both layouts, all file formats, the token budget,
the notebook's validation split, determinism, the sources (HF, gs://), the CLI and the KFP wrapper.
Unreadable rows and wrong types: tests/test_bad_inputs_data_prep.py."""

from __future__ import annotations

import copy
import csv
import json
from pathlib import Path

import pytest

from components.common.errors import UserError
from components.common.jsonl import read_jsonl, write_jsonl
from components.common.prompts import NOTEBOOK_PROMPT_TEMPLATE
from components.data_prep.core import count_prompt_tokens, normalize_stem, prepare_medqa
from fakes.artifacts import FakeArtifact

LETTERS = "ABCD"
# The KFP wrapper's output artifacts (what the pipeline wires onward).
WRAPPER_OUTPUTS = ("prepared_data", "train_data", "validation_data", "test_data", "rejected_rows", "prep_metrics",
                   "prep_summary")
WORDS = ["amber", "basalt", "cobalt", "dune", "ember", "fjord", "garnet", "harbor", "indigo", "juniper"]


def medqa_row(split: str, i: int, n_options: int = 4) -> dict:
    """A synthetic question in the original MedQA release layout, unique per (split, i)."""
    letters = "ABCDEFGH"[:n_options]
    options = {letter: f"Remedy {split}-{i}-{letter}" for letter in letters}
    answer = letters[i % n_options]
    finding = f"a {WORDS[i % len(WORDS)]} patient with finding {i * 7 + len(split)}"
    stem = f"Synthetic case {split} {i}: {finding}. Which remedy?"
    return {"question": stem, "options": options, "answer_idx": answer, "answer": options[answer], "meta_info": "step1"}


def to_hf(row: dict, split: str, i: int) -> dict:
    """The same question in the layout of the Hugging Face dataset ``openlifescienceai/medqa``."""
    return {
        "id": f"{split}-{i}",
        "subject_name": row["meta_info"],
        "data": {
            "Question": row["question"],
            "Options": row["options"],
            "Correct Answer": row["answer"],
            "Correct Option": row["answer_idx"],
        },
    }


def make_splits(n_train: int = 30, n_dev: int = 20, n_test: int = 10, n_options: int = 4) -> dict[str, list[dict]]:
    return {
        split: [medqa_row(split, i, n_options) for i in range(n)]
        for split, n in (("train", n_train), ("dev", n_dev), ("test", n_test))
    }


def write_source(folder: Path, splits: dict[str, list[dict]], dev_name: str = "dev") -> Path:
    for split, rows in splits.items():
        write_jsonl(folder / f"{dev_name if split == 'dev' else split}.jsonl", rows)
    return folder


def prepare(tmp_path: Path, splits: dict[str, list[dict]], **kwargs) -> tuple[dict, Path]:
    out = tmp_path / "out"
    kwargs.setdefault("val_size", 5)
    kwargs.setdefault("tokenizer", None)
    stats = prepare_medqa(str(write_source(tmp_path / "src", splits)), out, **kwargs)
    return stats, out


@pytest.fixture(scope="module")
def tiny_processor(tiny_model_dir):
    """The tiny offline Gemma 3 checkpoint's processor, loaded the way the step loads the real model's."""
    from components.common.modeling import load_processor

    return tiny_model_dir, load_processor(tiny_model_dir)


# ------------------------------------------------------------------ outputs and the prompt


def test_outputs_follow_the_row_contract_and_the_notebook_prompt(tmp_path):
    splits = make_splits()
    stats, out = prepare(tmp_path, splits)
    for name in ("train", "validation", "test", "rejected"):
        assert (out / f"{name}.jsonl").is_file()
    assert json.loads((out / "stats.json").read_text()) == stats
    train = read_jsonl(out / "train.jsonl")
    assert [r["id"] for r in train] == [f"train-{i}" for i in range(30)]  # file order, no realidx -> split-row
    first, source = train[0], splits["train"][0]
    assert set(first) == {"id", "prompt", "answer", "letters", "meta"}
    expected_text = NOTEBOOK_PROMPT_TEMPLATE.replace("[QUESTION]", source["question"]).replace(
        "[OPTIONS]", " ".join(f"({k}) {v}" for k, v in source["options"].items())
    )
    assert first["prompt"] == [{"role": "user", "content": expected_text}]
    assert first["answer"] == source["answer_idx"] and first["letters"] == list(LETTERS)
    assert first["meta"] == {"source_split": "train", "source_row": 0, "meta_info": "step1"}
    assert stats["output_rows"] == {"train": 30, "validation": 5, "test": 10}
    assert stats["dev_unused"] == 15 and stats["rejected"]["total"] == 0
    assert stats["answer_letters"]["train"] == {
        letter: sum(r["answer_idx"] == letter for r in splits["train"]) for letter in LETTERS
    }
    assert stats["token_budget_checked"] is False and stats["prompt_tokens"] is None


def test_validation_is_the_notebooks_dev_shuffle_and_select(tmp_path):
    import datasets

    splits = make_splits(n_dev=40)
    for i, row in enumerate(splits["dev"]):
        row["realidx"] = i
    _, out = prepare(tmp_path, splits, val_size=12, seed=42)
    notebook = datasets.Dataset.from_list(splits["dev"]).shuffle(seed=42).select(range(12))
    assert [r["id"] for r in read_jsonl(out / "validation.jsonl")] == [f"dev-{i}" for i in notebook["realidx"]]


def test_same_seed_same_bytes_other_seed_other_validation(tmp_path):
    splits = make_splits(n_dev=40)
    prepare_medqa(str(write_source(tmp_path / "src", splits)), tmp_path / "a", tokenizer=None, val_size=10, seed=7)
    prepare_medqa(str(tmp_path / "src"), tmp_path / "b", tokenizer=None, val_size=10, seed=7)
    prepare_medqa(str(tmp_path / "src"), tmp_path / "c", tokenizer=None, val_size=10, seed=8)
    for name in ("train.jsonl", "validation.jsonl", "test.jsonl", "rejected.jsonl", "stats.json"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    assert (tmp_path / "a" / "validation.jsonl").read_bytes() != (tmp_path / "c" / "validation.jsonl").read_bytes()


# ------------------------------------------------------------------ quarantine


def _drop_option(row):
    del row["options"]["C"]


def _blank_option(row):
    row["options"]["B"] = "  "


def _rekey_options(row):
    row["options"] = {k.lower(): v for k, v in row["options"].items()}


def _fifth_option(row):
    row["options"]["E"] = "An extra remedy"


def _answer_not_a_letter(row):
    row["answer_idx"] = "F"


def _answer_missing(row):
    del row["answer_idx"]


def _answer_text_disagrees(row):
    row["answer"] = "A remedy that is not the keyed option"


BAD_ROWS = [
    ("missing_question", lambda row: row.update(question="   ")),
    ("missing_question", lambda row: row.pop("question")),
    ("missing_option", lambda row: row.pop("options")),
    ("missing_option", _drop_option),
    ("missing_option", _blank_option),
    ("bad_option_letters", _rekey_options),
    ("bad_option_letters", _fifth_option),
    ("answer_not_in_options", _answer_not_a_letter),
    ("answer_not_in_options", _answer_missing),
    ("answer_text_mismatch", _answer_text_disagrees),
]


@pytest.mark.parametrize("reason,spoil", BAD_ROWS, ids=[f"{r}-{i}" for i, (r, _) in enumerate(BAD_ROWS)])
def test_each_bad_row_is_quarantined_with_its_reason(tmp_path, reason, spoil):
    splits = make_splits()
    original_question = splits["train"][3]["question"]
    spoil(splits["train"][3])
    stats, out = prepare(tmp_path, splits, max_reject_rate=1.0)
    rejected = read_jsonl(out / "rejected.jsonl")
    assert [(r["split"], r["row"], r["id"], r["reason"]) for r in rejected] == [("train", 3, "train-3", reason)]
    assert rejected[0]["raw"] == json.loads(json.dumps(splits["train"][3]))  # nothing is lost
    assert (
        rejected[0]["detail"]
        and "Synthetic case" not in rejected[0]["detail"]
        and original_question not in json.dumps(rejected[0]["detail"])
    )
    assert stats["output_rows"]["train"] == 29 and stats["rejected"]["by_reason"] == {reason: 1}
    assert "train-3" not in {r["id"] for r in read_jsonl(out / "train.jsonl")}


def test_duplicates_within_a_split_keep_the_first(tmp_path):
    splits = make_splits()
    duplicate = copy.deepcopy(splits["train"][2])
    duplicate["question"] = "  " + duplicate["question"].upper().replace(":", " ;") + " "  # same normalised stem
    splits["train"].append(duplicate)
    splits["test"].append(copy.deepcopy(splits["test"][0]) | {"realidx": 0})
    splits["test"][0]["realidx"] = 99
    stats, out = prepare(tmp_path, splits, max_reject_rate=1.0)
    by_key = {(r["split"], r["row"]): r for r in read_jsonl(out / "rejected.jsonl")}
    assert by_key[("train", 30)]["reason"] == "duplicate_question"
    assert "row 2" in by_key[("train", 30)]["detail"]
    assert by_key[("test", 10)]["reason"] == "duplicate_question"
    assert stats["output_rows"]["train"] == 30 and stats["output_rows"]["test"] == 10


def test_duplicate_ids_are_quarantined(tmp_path):
    splits = make_splits()
    splits["test"][4]["realidx"] = 1
    splits["test"][1]["realidx"] = 1
    _, out = prepare(tmp_path, splits, max_reject_rate=1.0)
    assert [(r["row"], r["id"], r["reason"]) for r in read_jsonl(out / "rejected.jsonl")] == [
        (4, "test-1", "duplicate_id")
    ]


def test_train_and_dev_questions_seen_in_test_or_validation_are_leakage(tmp_path):
    splits = make_splits(n_dev=8)
    splits["train"][5]["question"] = splits["test"][2]["question"].lower()  # normalised stems match
    splits["dev"][1]["question"] = splits["test"][3]["question"]
    # dev rows: all but dev-1 are usable; with val_size 7 every one of them is in validation
    splits["train"][6]["question"] = splits["dev"][4]["question"] + " "
    stats, out = prepare(tmp_path, splits, val_size=7, max_reject_rate=1.0)
    rejected = {(r["split"], r["row"]): r for r in read_jsonl(out / "rejected.jsonl")}
    assert {key: r["reason"] for key, r in rejected.items()} == {
        ("train", 5): "leakage",
        ("train", 6): "leakage",
        ("dev", 1): "leakage",
    }
    assert rejected[("train", 5)]["detail"] == "question also in test"
    assert rejected[("train", 6)]["detail"] == "question also in validation"
    validation_ids = {r["id"] for r in read_jsonl(out / "validation.jsonl")}
    assert "dev-1" not in validation_ids and len(validation_ids) == 7
    train_stems = {normalize_stem(r["prompt"][0]["content"]) for r in read_jsonl(out / "train.jsonl")}
    test_stems = {normalize_stem(r["prompt"][0]["content"]) for r in read_jsonl(out / "test.jsonl")}
    assert not train_stems & test_stems
    assert stats["rejected"]["by_split_reason"] == {"train": {"leakage": 2}, "dev": {"leakage": 1}, "test": {}}


def test_reject_rate_above_the_limit_fails_after_writing_the_evidence(tmp_path):
    splits = make_splits(n_train=20)
    splits["train"][0]["answer_idx"] = "Z"
    splits["train"][1]["question"] = ""
    with pytest.raises(
        UserError, match=r"split 'train': 2 of 20 rows rejected \(10\.0%\), above max_reject_rate 5\.0%"
    ):
        prepare(tmp_path, splits, max_reject_rate=0.05)
    out = tmp_path / "out"
    assert len(read_jsonl(out / "rejected.jsonl")) == 2
    assert json.loads((out / "stats.json").read_text())["reject_rate"]["train"] == 0.1
    assert not (out / "train.jsonl").exists()  # a failed step leaves no split for a later step to pick up
    stats, _ = prepare(tmp_path, splits, max_reject_rate=0.1)
    assert stats["output_rows"]["train"] == 18


def test_too_few_usable_dev_rows_for_val_size_is_an_error(tmp_path):
    with pytest.raises(UserError, match="val_size 30 exceeds the 20 usable dev rows"):
        prepare(tmp_path, make_splits(n_dev=20), val_size=30)


# ------------------------------------------------------------------ token budget


def test_prompt_tokens_are_counted_as_trl_counts_them(tiny_processor):
    _, processor = tiny_processor
    prompts = [
        [{"role": "user", "content": NOTEBOOK_PROMPT_TEMPLATE.replace("[QUESTION]", "x " * n)}] for n in (1, 50, 300)
    ]
    counted = count_prompt_tokens(prompts, processor)
    # GRPOTrainer: processing_class.apply_chat_template(prompts, add_generation_prompt=True, tokenize=True)
    for prompt, n_tokens in zip(prompts, counted, strict=True):
        ids = processor.apply_chat_template([prompt], add_generation_prompt=True, tokenize=True, return_dict=True)[
            "input_ids"
        ][0]
        assert n_tokens == len(ids)
    assert counted[0] < counted[1] < counted[2]
    assert count_prompt_tokens(prompts, processor.tokenizer) == counted  # a bare tokenizer counts the same


def test_prompts_over_the_budget_are_quarantined(tmp_path, tiny_processor):
    model_dir, processor = tiny_processor
    splits = make_splits()
    splits["train"][7]["question"] += " The history is long." * 120
    splits["test"][2]["question"] += " The history is long." * 120
    stats, out = prepare(tmp_path, splits, tokenizer=model_dir, max_prompt_tokens=512, max_reject_rate=0.2)
    rejected = read_jsonl(out / "rejected.jsonl")
    assert [(r["split"], r["row"], r["reason"]) for r in rejected] == [
        ("train", 7, "prompt_too_long"),
        ("test", 2, "prompt_too_long"),
    ]
    assert rejected[0]["detail"].endswith("prompt tokens > 512")
    assert stats["token_budget_checked"] is True and stats["tokenizer"] == model_dir
    longest = max(count_prompt_tokens([r["prompt"] for r in read_jsonl(out / "train.jsonl")], processor))
    assert stats["prompt_tokens"]["train"]["max"] == longest <= 512
    assert stats["prompt_tokens"]["train"]["p50"] <= stats["prompt_tokens"]["train"]["p95"] <= longest


# ------------------------------------------------------------------ layouts and formats


def test_hf_layout_gives_the_same_prompts_as_the_medqa_layout(tmp_path):
    splits = make_splits()
    hf_splits = {split: [to_hf(row, split, i) for i, row in enumerate(rows)] for split, rows in splits.items()}
    medqa_stats, medqa_out = prepare(tmp_path / "m", splits)
    hf_stats, hf_out = prepare(tmp_path / "h", hf_splits)
    assert (medqa_stats["layout"], hf_stats["layout"]) == ("medqa", "hf")
    for split in ("train", "validation", "test"):
        medqa_rows, hf_rows = read_jsonl(medqa_out / f"{split}.jsonl"), read_jsonl(hf_out / f"{split}.jsonl")
        assert [(r["id"], r["prompt"], r["answer"], r["meta"]) for r in medqa_rows] == [
            (r["id"], r["prompt"], r["answer"], r["meta"]) for r in hf_rows
        ]


def test_hf_layout_bad_rows_are_quarantined_too(tmp_path):
    splits = make_splits()
    hf_splits = {split: [to_hf(row, split, i) for i, row in enumerate(rows)] for split, rows in splits.items()}
    hf_splits["train"][0]["data"]["Correct Option"] = "E"
    hf_splits["train"][1]["data"]["Correct Answer"] = "Something else"
    hf_splits["train"][2]["data"] = None
    _, out = prepare(tmp_path, hf_splits, max_reject_rate=1.0)
    reasons = [(r["row"], r["id"], r["reason"]) for r in read_jsonl(out / "rejected.jsonl")]
    assert reasons == [
        (0, "train-0", "answer_not_in_options"),
        (1, "train-1", "answer_text_mismatch"),
        (2, "train-2", "missing_question"),
    ]


def test_unknown_layout_names_the_fields_found(tmp_path):
    splits = {split: [{"prompt": "q", "label": 1}] for split in ("train", "dev", "test")}
    with pytest.raises(UserError, match="unknown data layout: fields found: label, prompt"):
        prepare(tmp_path, splits)
    with pytest.raises(
        UserError, match="layout 'hf' requested but no row has a 'data' object; fields found: answer, answer_idx"
    ):
        prepare(tmp_path, make_splits(), layout="hf")
    with pytest.raises(UserError, match="unknown layout 'squad'; valid choices: auto, hf, medqa"):
        prepare(tmp_path, make_splits(), layout="squad")


def _write_as(folder: Path, splits: dict[str, list[dict]], suffix: str) -> None:
    folder.mkdir(parents=True)
    for split, rows in splits.items():
        name = "validation" if split == "dev" else split
        path = folder / f"{name}{suffix}"
        if suffix == ".json":
            path.write_text(json.dumps(rows))
        elif suffix == ".parquet":
            import pyarrow as pa
            import pyarrow.parquet as pq

            pq.write_table(pa.Table.from_pylist(rows), path)
        elif suffix == ".csv":
            columns = ["question", *(f"options.{k}" for k in LETTERS), "answer_idx", "answer", "meta_info"]
            with open(path, "w", newline="", encoding="utf-8") as handle:
                writer = csv.writer(handle)
                writer.writerow(columns)
                for row in rows:
                    writer.writerow(
                        [
                            row["question"],
                            *(row["options"][k] for k in LETTERS),
                            row["answer_idx"],
                            row["answer"],
                            row["meta_info"],
                        ]
                    )


@pytest.mark.parametrize("suffix", [".json", ".parquet", ".csv"])
def test_every_file_format_gives_the_same_splits(tmp_path, suffix):
    splits = make_splits()
    _, reference = prepare(tmp_path / "jsonl", splits)
    _write_as(tmp_path / "src", splits, suffix)
    prepare_medqa(str(tmp_path / "src"), tmp_path / "out", tokenizer=None, val_size=5)
    for split in ("train", "validation", "test"):
        assert (tmp_path / "out" / f"{split}.jsonl").read_bytes() == (reference / f"{split}.jsonl").read_bytes()


def test_missing_or_ambiguous_split_files_are_named(tmp_path):
    write_jsonl(tmp_path / "src" / "train.jsonl", make_splits()["train"])
    write_jsonl(tmp_path / "src" / "test.jsonl", make_splits()["test"])
    with pytest.raises(
        UserError,
        match=r"no file for split 'dev' \(one of dev.jsonl, .*validation.csv\); it holds: test.jsonl, train.jsonl",
    ):
        prepare_medqa(str(tmp_path / "src"), tmp_path / "out", tokenizer=None)
    write_jsonl(tmp_path / "src" / "dev.jsonl", make_splits()["dev"])
    write_jsonl(tmp_path / "src" / "validation.jsonl", make_splits()["dev"])
    with pytest.raises(UserError, match="several files for split 'dev': dev.jsonl, validation.jsonl"):
        prepare_medqa(str(tmp_path / "src"), tmp_path / "out", tokenizer=None)


# ------------------------------------------------------------------ other multiple-choice data


def test_five_option_data_keeps_its_letters(tmp_path):
    splits = make_splits(n_options=5)
    stats, out = prepare(tmp_path, splits)
    assert stats["letters"] == list("ABCDE")
    row = read_jsonl(out / "train.jsonl")[4]
    assert row["letters"] == list("ABCDE") and row["answer"] == "E"
    assert row["prompt"][0]["content"].endswith("(D) Remedy train-4-D (E) Remedy train-4-E\n")


def test_mixed_option_counts_in_parquet_follow_the_most_common(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    splits = make_splits()
    splits["train"][0] = medqa_row("train", 0, n_options=5)
    (tmp_path / "src").mkdir()
    for split, rows in splits.items():
        pq.write_table(pa.Table.from_pylist(rows), tmp_path / "src" / f"{split}.parquet")  # 4-option rows get E: None
    stats, out = (
        prepare_medqa(str(tmp_path / "src"), tmp_path / "out", tokenizer=None, val_size=5, max_reject_rate=1.0),
        tmp_path / "out",
    )
    assert stats["letters"] == list(LETTERS)
    assert [(r["row"], r["reason"]) for r in read_jsonl(out / "rejected.jsonl")] == [(0, "bad_option_letters")]
    assert stats["output_rows"]["train"] == 29
    # Forcing five options: the padded E of every 4-option row is an empty option, so no dev row is left.
    with pytest.raises(UserError, match="val_size 5 exceeds the 0 usable dev rows"):
        prepare_medqa(
            str(tmp_path / "src"), tmp_path / "out5", tokenizer=None, val_size=5, num_options=5, max_reject_rate=1.0
        )
    rejected = read_jsonl(tmp_path / "out5" / "rejected.jsonl")
    assert len(rejected) == 59 and {r["reason"] for r in rejected} == {"missing_option"}
    # train.parquet has an E column (null for 4-option rows); dev and test files have none
    assert {r["detail"] for r in rejected if r["split"] == "train"} == {"option E is empty"}
    assert {r["detail"] for r in rejected if r["split"] != "train"} == {"option(s) E absent"}


def test_the_bundled_demo_data_prepares_cleanly_with_the_tiny_tokenizer(tmp_path, tiny_processor):
    import components.demo_data

    model_dir, _ = tiny_processor
    demo_dir = Path(components.demo_data.__file__).parent
    stats = prepare_medqa(str(demo_dir), tmp_path / "out", tokenizer=model_dir, val_size=40)
    assert stats["layout"] == "medqa" and stats["rejected"]["total"] == 0
    assert stats["output_rows"] == {"train": 480, "validation": 40, "test": 240}
    assert stats["prompt_tokens"]["test"]["max"] <= 512


# ------------------------------------------------------------------ sources


def test_hugging_face_source_loads_train_dev_test_with_the_secret_token(tmp_path, monkeypatch):
    import datasets

    splits = make_splits()
    hf = datasets.DatasetDict(
        {
            split: datasets.Dataset.from_list([to_hf(r, split, i) for i, r in enumerate(rows)])
            for split, rows in splits.items()
        }
    )
    calls = []

    def fake_load_dataset(path, **kwargs):
        calls.append((path, kwargs))
        return hf

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    monkeypatch.setattr("components.common.secrets.read_secret", lambda name, **kw: f"token-from-{name}")
    secret = "projects/p/secrets/hf-token"
    stats = prepare_medqa(
        "openlifescienceai/medqa", tmp_path / "out", tokenizer=None, val_size=5, hf_token_secret=secret
    )
    assert calls == [("openlifescienceai/medqa", {"token": f"token-from-{secret}"})]
    assert stats["layout"] == "hf" and stats["output_rows"] == {"train": 30, "validation": 5, "test": 10}
    assert "token-from" not in (tmp_path / "out" / "stats.json").read_text()


def test_a_token_passed_as_the_secret_name_is_refused(tmp_path):
    with pytest.raises(UserError, match="hf_token_secret must be a Secret Manager resource name, not a token value"):
        prepare_medqa("openlifescienceai/medqa", tmp_path, tokenizer=None, hf_token_secret="hf_" + "a1" * 20)


def test_gcs_source_is_downloaded_and_read(tmp_path, monkeypatch):
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage

    from tests.fakes.gcs import FakeGcs

    splits = make_splits()
    with FakeGcs() as gcs:
        monkeypatch.setenv("STORAGE_EMULATOR_HOST", gcs.endpoint)
        client = storage.Client(project="test", credentials=AnonymousCredentials())
        bucket = client.create_bucket("medqa-bucket")
        for split, rows in splits.items():
            bucket.blob(f"data/medqa/{split}.jsonl").upload_from_string("".join(json.dumps(r) + "\n" for r in rows))
        bucket.blob("data/medqa/old/train.jsonl").upload_from_string("not json\n")  # sub-folders are ignored
        monkeypatch.setattr("components.common.gcs.storage_client", lambda *a, **k: client)
        stats = prepare_medqa("gs://medqa-bucket/data/medqa", tmp_path / "out", tokenizer=None, val_size=5)
        assert stats["output_rows"] == {"train": 30, "validation": 5, "test": 10}
        with pytest.raises(UserError, match="no objects found under gs://medqa-bucket/nothing"):
            prepare_medqa("gs://medqa-bucket/nothing", tmp_path / "out2", tokenizer=None)


def test_unreadable_sources_and_bad_parameters_are_clear_errors(tmp_path):
    with pytest.raises(
        UserError, match="neither an existing local folder, a gs:// prefix nor a Hugging Face dataset id"
    ):
        prepare_medqa(str(tmp_path / "absent"), tmp_path / "out", tokenizer=None)
    src = write_source(tmp_path / "src", make_splits())
    for kwargs, message in [
        ({"val_size": 0}, "val_size must be a positive integer, got 0"),
        ({"seed": -1}, "seed must be a non-negative integer"),
        ({"max_reject_rate": 1.5}, "max_reject_rate must be between 0 and 1"),
        ({"max_prompt_tokens": 0}, "max_prompt_tokens must be a positive integer"),
        ({"prompt_template": "no placeholders"}, "missing placeholder"),
        ({"num_options": 1}, "num_options must be 0"),
    ]:
        with pytest.raises(UserError, match=message):
            prepare_medqa(str(src), tmp_path / "out", tokenizer=None, **kwargs)
    (src / "test.jsonl").unlink()
    (src / "test.json").write_text("5")
    with pytest.raises(UserError, match=r"test.json: expected a JSON array of objects \(or JSON Lines\), found a num"):
        prepare_medqa(str(src), tmp_path / "out", tokenizer=None)


# ------------------------------------------------------------------ CLI and KFP wrapper


def test_cli_prepares_with_the_recipe_and_reports_errors_in_one_line(tmp_path, tiny_processor, capsys):
    from components.data_prep.__main__ import main

    model_dir, _ = tiny_processor
    src = write_source(tmp_path / "src", make_splits(n_dev=50))
    out = tmp_path / "out"
    assert main(["--source", str(src), "--output-dir", str(out), "--recipe", "tiny-cpu", "--model", model_dir]) == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert printed == {
        "output_rows": {"train": 30, "validation": 40, "test": 10},
        "rejected": {},
    }  # tiny-cpu: val_size 40
    stats = json.loads((out / "stats.json").read_text())
    assert stats["token_budget_checked"] and stats["max_prompt_tokens"] == 512
    assert main(["--source", str(src), "--output-dir", str(out), "--model", model_dir, "--val-size", "60"]) == 2
    err = capsys.readouterr().err
    assert err == "error: val_size 60 exceeds the 50 usable dev rows\n"


def test_logs_hold_counts_not_question_text(tmp_path, caplog):
    splits = make_splits()
    splits["train"][0]["answer_idx"] = "Z"
    with caplog.at_level("DEBUG"):
        prepare(tmp_path, splits, max_reject_rate=1.0)
    assert caplog.text and "Synthetic case" not in caplog.text and "Remedy" not in caplog.text


def test_kfp_wrapper_writes_every_artifact(tmp_path, tiny_processor):
    from components.data_prep.component import prepare_medqa_component

    model_dir, _ = tiny_processor
    splits = make_splits(n_dev=50)
    splits["train"][0]["answer_idx"] = "Z"
    src = write_source(tmp_path / "src", splits)
    artifacts = {name: FakeArtifact(tmp_path / "artifacts" / name) for name in WRAPPER_OUTPUTS}
    fingerprint = prepare_medqa_component(
        **artifacts,
        source=str(src),
        recipe="tiny-cpu",
        tokenizer_model=FakeArtifact(Path(model_dir)),
        max_reject_rate=0.1,
    )
    prepared = Path(artifacts["prepared_data"].path)
    from components.data_prep.outputs import data_fingerprint

    assert fingerprint == data_fingerprint(prepared) == artifacts["prepared_data"].metadata["fingerprint"]
    assert {p.name for p in prepared.iterdir()} == {
        "train.jsonl",
        "validation.jsonl",
        "test.jsonl",
        "rejected.jsonl",
        "stats.json",
    }
    for name, split in (
        ("train_data", "train"),
        ("validation_data", "validation"),
        ("test_data", "test"),
        ("rejected_rows", "rejected"),
    ):
        assert Path(artifacts[name].path).read_bytes() == (prepared / f"{split}.jsonl").read_bytes()
    assert artifacts["train_data"].metadata == {"rows": 29, "format": "jsonl"}
    assert artifacts["rejected_rows"].metadata["rows"] == 1
    metrics = artifacts["prep_metrics"].metadata
    assert metrics["rows_validation"] == 40 and metrics["rejected_answer_not_in_options"] == 1
    assert metrics["train_prompt_tokens_max"] <= 512
    summary = Path(artifacts["prep_summary"].path).read_text()
    assert "| answer_not_in_options | 1 |" in summary and "| train → train | 30 | 1 | 3.33% | 29 |" in summary
    assert "Synthetic case" not in summary


def test_kfp_wrapper_compiles_with_its_outputs():
    from kfp import dsl

    from components.data_prep.component import prepare_medqa_component

    component = dsl.component(prepare_medqa_component, base_image="python:3.11", install_kfp_package=False)
    spec = component.component_spec
    assert set(WRAPPER_OUTPUTS) | {"Output"} == set(spec.outputs)  # Output: the data fingerprint
    assert spec.inputs["tokenizer_model"].optional and spec.inputs["hf_token_secret"].default == ""

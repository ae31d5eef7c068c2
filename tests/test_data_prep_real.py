"""Data prep on the real MedQA test questions in ../shared/data/medqa (skipped when that folder is absent).

Rows are read from there at test time and written only under tmp_path; none are copied into the repository.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from components.common.jsonl import read_jsonl, write_jsonl
from components.data_prep.core import prepare_medqa

MEDQA_DIR = Path(__file__).resolve().parents[2] / "shared" / "data" / "medqa"
pytestmark = pytest.mark.skipif(
    not (MEDQA_DIR / "medqa_us4_test.jsonl").is_file(), reason=f"real MedQA questions not found in {MEDQA_DIR}"
)

# The notebook's `big_prompt` and `process_medqa`, transcribed literally: the reference the step must match.
NOTEBOOK_BIG_PROMPT = """Answer the given question. Think step by step.
You can directly provide the answer (A single letter) inside <answer> and </answer> (e.g. <answer>A</answer>), without further additions.
Question: [QUESTION]
[OPTIONS]
"""


def notebook_prompt(x: dict) -> list[dict]:
    return [
        {
            "role": "user",
            "content": NOTEBOOK_BIG_PROMPT.replace("[QUESTION]", x["data"]["Question"]).replace(
                "[OPTIONS]",
                f"(A) {x['data']['Options']['A']} (B) {x['data']['Options']['B']} (C) {x['data']['Options']['C']} (D) {x['data']['Options']['D']}",
            ),
        }
    ]


def variant(rows: list[dict], tag: str) -> list[dict]:
    """Real questions made distinct from the test split (a different stem), for train/dev fixtures."""
    return [dict(row, question=f"{tag} {i}. {row['question']}") for i, row in enumerate(rows)]


@pytest.fixture(scope="module")
def real():
    return {
        name: read_jsonl(MEDQA_DIR / f"{name}.jsonl")
        for name in ("medqa_us4_test", "medqa_us4_test_hard", "medqa_hfstyle_test", "medqa_hfstyle_sample50")
    }


def test_prompts_are_the_notebooks_character_for_character_in_both_layouts(tmp_path, real):
    hf_test = real["medqa_hfstyle_test"]
    us4_test = real["medqa_us4_test"]
    hf_dev = real["medqa_hfstyle_sample50"]
    write_jsonl(
        tmp_path / "hf" / "train.jsonl",
        [
            dict(r, id=f"t{i}", data=dict(r["data"], Question=f"Variant {i}. " + r["data"]["Question"]))
            for i, r in enumerate(hf_test[:300])
        ],
    )
    write_jsonl(
        tmp_path / "hf" / "dev.jsonl",
        [dict(r, data=dict(r["data"], Question="Dev copy. " + r["data"]["Question"])) for r in hf_dev],
    )
    write_jsonl(tmp_path / "hf" / "test.jsonl", hf_test)
    hf_stats = prepare_medqa(str(tmp_path / "hf"), tmp_path / "hf_out", tokenizer=None, val_size=50)
    assert hf_stats["layout"] == "hf" and hf_stats["rejected"]["total"] == 0
    hf_rows = read_jsonl(tmp_path / "hf_out" / "test.jsonl")
    assert [r["prompt"] for r in hf_rows] == [notebook_prompt(x) for x in hf_test]
    assert [r["answer"] for r in hf_rows] == [x["data"]["Correct Option"] for x in hf_test]
    assert [r["id"] for r in hf_rows] == [x["id"] for x in hf_test]

    write_jsonl(tmp_path / "us4" / "train.jsonl", variant(us4_test[:300], "Variant"))
    write_jsonl(tmp_path / "us4" / "dev.jsonl", variant(real["medqa_us4_test_hard"], "Dev copy"))
    write_jsonl(tmp_path / "us4" / "test.jsonl", us4_test)
    us4_stats = prepare_medqa(str(tmp_path / "us4"), tmp_path / "us4_out", tokenizer=None, val_size=50)
    assert us4_stats["layout"] == "medqa" and us4_stats["rejected"]["total"] == 0
    us4_rows = read_jsonl(tmp_path / "us4_out" / "test.jsonl")
    assert [r["prompt"] for r in us4_rows] == [r["prompt"] for r in hf_rows]  # same questions, same prompts
    assert [r["meta"]["meta_info"] for r in us4_rows] == [x["subject_name"] for x in hf_test]
    assert us4_stats["output_rows"] == {"train": 300, "validation": 50, "test": 1273}


def test_train_copies_of_test_questions_are_caught_as_leakage(tmp_path, real):
    hard = real["medqa_us4_test_hard"]
    # Re-spaced and re-cased copies of real test questions: the normalised stem still matches.
    disguised = [dict(row, question="  " + row["question"].upper().replace(" ", "  ")) for row in hard[:10]]
    write_jsonl(tmp_path / "src" / "train.jsonl", variant(hard[10:], "Variant") + disguised)
    write_jsonl(tmp_path / "src" / "dev.jsonl", variant(hard, "Dev copy"))
    write_jsonl(tmp_path / "src" / "test.jsonl", real["medqa_us4_test"])
    stats = prepare_medqa(str(tmp_path / "src"), tmp_path / "out", tokenizer=None, val_size=20, max_reject_rate=0.15)
    rejected = read_jsonl(tmp_path / "out" / "rejected.jsonl")
    assert [(r["row"], r["reason"], r["detail"]) for r in rejected] == [
        (90 + i, "leakage", "question also in test") for i in range(10)
    ]
    assert stats["output_rows"]["train"] == 90 and stats["output_rows"]["test"] == 1273


def test_real_prompt_token_percentiles_with_the_tiny_gemma_tokenizer(tmp_path, real):
    from components.tiny_model.core import build_tiny_model

    build_tiny_model(str(tmp_path / "tiny"))
    us4 = real["medqa_us4_test"]
    write_jsonl(tmp_path / "src" / "train.jsonl", variant(us4[:200], "Variant"))
    write_jsonl(tmp_path / "src" / "dev.jsonl", variant(real["medqa_us4_test_hard"], "Dev copy"))
    write_jsonl(tmp_path / "src" / "test.jsonl", us4)
    # The tiny tokenizer (BPE trained on the synthetic demo corpus) splits real medical text finely, so its
    # counts run about 2x Gemma's; a 1024-token budget keeps most rows while still exercising the check.
    stats = prepare_medqa(
        str(tmp_path / "src"),
        tmp_path / "out",
        tokenizer=str(tmp_path / "tiny"),
        val_size=20,
        max_prompt_tokens=1024,
        max_reject_rate=1.0,
    )
    tokens = stats["prompt_tokens"]["test"]
    assert tokens["min"] <= tokens["p50"] <= tokens["p90"] <= tokens["p95"] <= tokens["p99"] <= tokens["max"] <= 1024
    too_long = [r for r in read_jsonl(tmp_path / "out" / "rejected.jsonl") if r["split"] == "test"]
    assert too_long and {r["reason"] for r in too_long} == {"prompt_too_long"}
    assert all(int(r["detail"].split()[0]) > 1024 for r in too_long)
    assert stats["output_rows"]["test"] + len(too_long) == 1273
    saved = json.loads((tmp_path / "out" / "stats.json").read_text())
    assert saved["prompt_tokens"] == stats["prompt_tokens"]

import json
import logging
from pathlib import Path

import pytest

from components.common.answers import notebook_extract_answer
from components.common.errors import UserError
from components.common.jsonl import read_jsonl, write_jsonl
from components.common.prompts import render_prompt
from components.evaluate.__main__ import main
from components.evaluate.core import evaluate_model, load_questions, summarize
from components.evaluate.outputs import render_summary, ui_metrics
from fakes.artifacts import FakeArtifact


@pytest.fixture(scope="module")
def tiny_model(tiny_model_dir):
    return tiny_model_dir


def _rows(count: int) -> list[dict]:
    rows = []
    for i in range(count):
        options = {"A": f"drug {i}", "B": "rest", "C": "surgery", "D": "observation"}
        rows.append(
            {
                "id": f"q{i}",
                "prompt": render_prompt(f"Patient {i} has fever and cough for {i + 2} days. Next step?", options),
                "answer": "ABCD"[i % 4],
                "letters": ["A", "B", "C", "D"],
                "meta": {"meta_info": "step1" if i % 2 else "step2&3"},
            }
        )
    return rows


@pytest.fixture()
def test_file(tmp_path):
    path = tmp_path / "test.jsonl"
    write_jsonl(path, _rows(6))
    return path


def test_evaluate_writes_the_contract_files(tiny_model, test_file, tmp_path, caplog):
    caplog.set_level(logging.INFO)
    out = tmp_path / "eval"
    metrics = evaluate_model(tiny_model, test_file, out, recipe="tiny-cpu", overrides=["evaluation.max_new_tokens=8"])
    saved = json.loads((out / "metrics.json").read_text())
    assert saved == metrics
    for key in ("n", "accuracy", "ci_low", "ci_high", "format_rate", "truncation_rate", "confusion", "accuracy_by_meta",
                "mean_completion_tokens", "backend", "decoding"):
        assert key in metrics
    assert metrics["n"] == 6 and metrics["backend"] == "transformers"
    assert metrics["decoding"]["do_sample"] is True and metrics["decoding"]["temperature"] == 0.7
    predictions = read_jsonl(out / "predictions.jsonl")
    assert [p["id"] for p in predictions] == [f"q{i}" for i in range(6)]
    expected_fields = {"id", "gold", "extracted", "correct", "notebook_correct", "truncated", "tokens", "completion"}
    assert expected_fields <= set(predictions[0])
    assert metrics["accuracy"] == pytest.approx(sum(p["correct"] for p in predictions) / 6)
    assert all(p["notebook_correct"] is (notebook_extract_answer(p["completion"]) == p["gold"]) for p in predictions)
    assert metrics["notebook_accuracy"] == pytest.approx(sum(p["notebook_correct"] for p in predictions) / 6)
    assert metrics["notebook_ci_low"] <= metrics["notebook_accuracy"] <= metrics["notebook_ci_high"]
    assert all(1 <= p["tokens"] <= 8 for p in predictions)
    assert metrics["truncation_rate"] == pytest.approx(sum(p["truncated"] for p in predictions) / 6)
    assert set(metrics["accuracy_by_meta"]["meta_info"]) == {"step1", "step2&3"}
    # Completions and questions stay out of the logs.
    logged = caplog.text
    assert all(p["completion"] not in logged for p in predictions if len(p["completion"]) > 3)
    assert "fever and cough" not in logged


def test_sampling_is_reproducible_with_the_seed(tiny_model, test_file, tmp_path):
    first = evaluate_model(tiny_model, test_file, tmp_path / "a", recipe="tiny-cpu", overrides=["evaluation.max_new_tokens=6"])
    second = evaluate_model(tiny_model, test_file, tmp_path / "b", recipe="tiny-cpu", overrides=["evaluation.max_new_tokens=6"])
    assert read_jsonl(tmp_path / "a" / "predictions.jsonl") == read_jsonl(tmp_path / "b" / "predictions.jsonl")
    assert first["accuracy"] == second["accuracy"]


def test_k_samples_and_greedy_option(tiny_model, test_file, tmp_path):
    metrics = evaluate_model(
        tiny_model, test_file, tmp_path / "k", recipe="tiny-cpu",
        overrides=["evaluation.max_new_tokens=4", "evaluation.samples_per_question=3"], limit=4,
    )
    predictions = read_jsonl(tmp_path / "k" / "predictions.jsonl")
    assert len(predictions) == 12 and sorted({p["sample"] for p in predictions}) == [0, 1, 2]
    assert len(metrics["accuracy_per_sample"]) == 3 and metrics["accuracy_std_across_samples"] >= 0
    greedy = evaluate_model(tiny_model, test_file, tmp_path / "g", recipe="tiny-cpu",
                            overrides=["evaluation.do_sample=false", "evaluation.max_new_tokens=4"])
    assert greedy["decoding"] == {"do_sample": False, "max_new_tokens": 4, "seed": 42, "samples_per_question": 1, "batch_size": 64}


def _prediction(qid: str, gold: str, extracted: str | None, *, notebook_correct: bool, truncated: bool,
                tokens: int) -> dict:
    return {"id": qid, "gold": gold, "extracted": extracted, "correct": extracted == gold,
            "notebook_correct": notebook_correct, "truncated": truncated, "tokens": tokens}


def test_summarize_counts_formats_confusion_and_meta():
    rows = _rows(4)
    predictions = [
        _prediction("q0", "A", "A", notebook_correct=True, truncated=False, tokens=10),
        _prediction("q1", "B", None, notebook_correct=True, truncated=True, tokens=512),  # a bare "B"
        _prediction("q2", "C", "A", notebook_correct=False, truncated=False, tokens=20),
        _prediction("q3", "D", "D", notebook_correct=False, truncated=False, tokens=30),  # "<answer>d</answer>"
    ]
    metrics = summarize(rows, predictions, 1)
    assert metrics["accuracy"] == 0.5 and metrics["format_rate"] == 0.75 and metrics["truncation_rate"] == 0.25
    assert metrics["notebook_accuracy"] == 0.5 and metrics["notebook_ci_low"] < 0.5 < metrics["notebook_ci_high"]
    assert metrics["ci_low"] < 0.5 < metrics["ci_high"]
    assert metrics["confusion"]["matrix"]["B"]["none"] == 1 and metrics["confusion"]["matrix"]["C"]["A"] == 1
    assert metrics["accuracy_by_meta"]["meta_info"] == {"step1": {"accuracy": 0.5, "n": 2}, "step2&3": {"accuracy": 0.5, "n": 2}}
    assert metrics["mean_completion_tokens"] == pytest.approx(143)


def test_evaluation_card_and_ui_metrics_show_both_scores_labelled():
    result = summarize(_rows(2), [
        _prediction("q0", "A", "A", notebook_correct=True, truncated=False, tokens=4),
        _prediction("q1", "B", None, notebook_correct=True, truncated=False, tokens=1),
    ], 1) | {"backend": "transformers", "decoding": {"do_sample": False}}
    card = render_summary(result, "m", with_adapter=False)
    assert "| accuracy, strict (gate) |" in card and "| accuracy, notebook's extraction |" in card
    assert "| 0.500 |" in card and "| 1.000 |" in card
    assert ui_metrics(result)["notebook_accuracy"] == 1.0 and ui_metrics(result)["accuracy"] == 0.5


def test_bad_input_names_the_row_and_field(tmp_path):
    rows = _rows(2)
    del rows[1]["answer"]
    write_jsonl(tmp_path / "bad.jsonl", rows)
    with pytest.raises(UserError, match=r"bad.jsonl line 2: field 'answer': missing"):
        load_questions(tmp_path / "bad.jsonl")
    rows = _rows(2)
    rows[0]["answer"] = "E"
    write_jsonl(tmp_path / "bad2.jsonl", rows)
    with pytest.raises(UserError, match=r"bad2.jsonl line 1: answer 'E' is not one of letters"):
        load_questions(tmp_path / "bad2.jsonl")
    write_jsonl(tmp_path / "dup.jsonl", _rows(1) + _rows(1))
    with pytest.raises(UserError, match="duplicate id 'q0'"):
        load_questions(tmp_path / "dup.jsonl")
    with pytest.raises(UserError, match="limit must be >= 0"):
        load_questions(tmp_path / "dup.jsonl", limit=-1)


def test_cli_reports_user_errors_in_one_line(tiny_model, test_file, tmp_path, capsys):
    code = main(["--model", tiny_model, "--data", str(test_file), "--output-dir", str(tmp_path / "o"),
                 "--recipe", "tiny-cpu", "--set", "evaluation.backend=tensorrt"])
    assert code == 2
    assert "evaluation.backend" in capsys.readouterr().err
    assert main(["--model", tiny_model, "--data", str(tmp_path / "missing.jsonl"), "--output-dir", str(tmp_path / "o")]) == 2


def test_cli_runs_with_limit(tiny_model, test_file, tmp_path):
    out = tmp_path / "cli"
    assert main(["--model", tiny_model, "--data", str(test_file), "--output-dir", str(out), "--recipe", "tiny-cpu",
                 "--limit", "2", "--set", "evaluation.max_new_tokens=3"]) == 0
    assert json.loads((out / "metrics.json").read_text())["n"] == 2


def test_kfp_wrapper_writes_evaluation_folder_and_ui_artifacts(tiny_model, test_file, tmp_path):
    from components.evaluate.component import evaluate_model_component

    evaluation, metrics, confusion, summary = (FakeArtifact(tmp_path / n) for n in ("evaluation", "metrics", "confusion", "summary.md"))
    evaluate_model_component(
        FakeArtifact(test_file.parent), evaluation, metrics, confusion, summary, model_id=tiny_model, adapter=None,
        recipe="tiny-cpu", recipe_settings="evaluation.max_new_tokens=3,evaluation.do_sample=false", limit=3,
    )
    assert (Path(evaluation.path) / "predictions.jsonl").is_file()
    assert metrics.metadata["n"] == 3 and "accuracy[meta_info=step1]" in metrics.metadata
    matrix = confusion.metadata["confusion"]["matrix"]
    assert confusion.metadata["confusion"]["categories"] == ["A", "B", "C", "D", "none"]
    assert len(matrix) == 5 and all(len(r) == 5 for r in matrix) and sum(map(sum, matrix)) == 3
    assert "| accuracy, strict (gate) |" in Path(summary.path).read_text()


def test_kfp_wrapper_compiles():
    from kfp import dsl

    from components.evaluate.component import evaluate_model_component

    component = dsl.component(evaluate_model_component, base_image="python:3.11", install_kfp_package=False)
    inputs = component.component_spec.inputs
    assert inputs["adapter"].optional and inputs["limit"].default == 0

"""Bad inputs to evaluate, compare, register and training, and to the artifact schemas: each is refused with
one exact line (CLI: ``error: ...`` on stderr, exit 2), and nothing half-written is left behind.

Data prep's bad inputs (quarantine reasons) are in test_bad_inputs_data_prep.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import ValidationError

from components.common.artifacts import (
    SCHEMA_VERSION,
    ChampionDecision,
    Comparison,
    ModelSummary,
    PreparedRow,
    RunSummary,
    parse_document,
    read_rows,
    validate_row,
)
from components.common.errors import UserError, exit_on_user_error
from components.common.prompts import render_prompt
from components.compare.__main__ import main as compare_main
from components.register.__main__ import main as register_main

QUESTION = "A 23-year-old pregnant woman at 22 weeks gestation presents with burning upon urination."


# ---------------------------------------------------------------------------------------------- helpers


def prediction(qid: str, correct: bool = True, **changes) -> dict:
    row = {"id": qid, "gold": "A", "extracted": "A" if correct else "B", "correct": correct,
           "notebook_correct": correct is True, "truncated": False, "tokens": 12, "completion": "The answer is A"}
    row.update(changes)
    return {k: v for k, v in row.items() if v is not ...}


def write_lines(path: Path, rows: list) -> Path:
    """Rows as JSON Lines; a ``str`` row is written as it is (a hand-broken line)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")
    return path


def metrics(**changes) -> dict:
    document = {"schema_version": 1, "model": "base", "n": 3, "samples": 3, "accuracy": 0.5, "ci_low": 0.1,
                "ci_high": 0.9, "notebook_accuracy": 0.5, "notebook_ci_low": 0.1, "notebook_ci_high": 0.9,
                "format_rate": 1.0}
    document.update(changes)
    return {k: v for k, v in document.items() if v is not ...}


def good_evaluation(folder: Path, pattern: tuple[bool, ...] = (True, False, True)) -> Path:
    write_lines(folder / "predictions.jsonl", [prediction(f"q{i}", ok) for i, ok in enumerate(pattern)])
    (folder / "metrics.json").write_text(json.dumps(metrics()))
    return folder


def run_compare(tmp_path: Path, capsys, *extra: str) -> str:
    """The compare CLI on tmp_path/base and tmp_path/tuned; returns its stderr after checking exit code 2."""
    out = tmp_path / "out"
    code = compare_main(["--baseline", str(tmp_path / "base"), "--tuned", str(tmp_path / "tuned"),
                         "--output-dir", str(out), *extra])
    err = capsys.readouterr().err
    assert code == 2, err
    assert not (out / "comparison.json").exists()  # nothing half-written
    return err


COMPARISON = {
    "schema_version": 1, "model": "base", "tuned_model": "tuned", "baseline_accuracy": 0.5, "tuned_accuracy": 0.75,
    "delta": 0.25, "delta_ci_low": 0.1, "delta_ci_high": 0.4, "test": "mcnemar_exact", "p_value": 0.01,
    "favours": "tuned", "passes_gate": True, "margin": 0.0, "alpha": 0.05, "n": 4,
    "samples_per_question": {"baseline": 1, "tuned": 1}, "questions_baseline_better": 0,
    "questions_tuned_better": 1, "bootstrap": {"resamples": 10, "seed": 0, "confidence": 0.95},
}


def run_register(tmp_path: Path, capsys, comparison_text: str, *extra: str) -> str:
    adapter = tmp_path / "adapter"
    adapter.mkdir(exist_ok=True)
    (adapter / "adapter_config.json").write_text("{}")
    (tmp_path / "comparison.json").write_text(comparison_text)
    argv = [str(adapter), str(tmp_path / "comparison.json"), str(tmp_path / "registry"), "--model-name", "m",
            "--recipe", "r", "--pipeline-run", "run-1", *extra]
    code = register_main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    assert not (tmp_path / "registry").exists()  # no version, no alias moved
    return err


# ---------------------------------------------------------------------------------------------- compare


BAD_PREDICTION_ROWS = [
    ("correct-is-text", prediction("q1") | {"correct": "False"},
     "line 2: field 'correct': expected a boolean, got 'False'"),
    ("correct-is-a-number", prediction("q1") | {"correct": 1}, "line 2: field 'correct': expected a boolean, got 1"),
    ("correct-is-long-text", prediction("q1") | {"correct": QUESTION},
     "line 2: field 'correct': expected a boolean, got a string of 88 characters"),
    ("notebook-correct-is-text", prediction("q1", notebook_correct="true"),
     "line 2: field 'notebook_correct': expected a boolean, got 'true'"),
    ("tokens-is-text", prediction("q1", tokens="12"), "line 2: field 'tokens': expected an integer, got '12'"),
    ("tokens-is-negative", prediction("q1", tokens=-1),
     "line 2: field 'tokens': input should be greater than or equal to 0, got -1"),
    ("tokens-is-a-float", prediction("q1", tokens=12.0), "line 2: field 'tokens': expected an integer, got 12.0"),
    ("id-missing", prediction("q1", id=...), "line 2: field 'id': missing"),
    ("id-is-a-number", prediction("q1") | {"id": 7}, "line 2: field 'id': expected a string, got 7"),
    ("id-is-empty", prediction(""), "line 2: field 'id': string should have at least 1 character, got ''"),
    ("misspelt-field", prediction("q1", corect=True), "line 2: field 'corect': unexpected field"),
    ("extracted-is-a-list", prediction("q1", extracted=["A"]), "line 2: field 'extracted': expected a string, got a list"),
    ("two-problems", prediction("q1", correct="yes", truncated="no"),
     "line 2: field 'correct': expected a boolean, got 'yes' (and 1 more problem)"),
    ("row-is-a-list", ["q1", True], "line 2: expected a JSON object, got a list"),
    ("truncated-line", '{"id": "q1", "gold": "A", "correct": tr', "line 2: not valid JSON (Expecting value)"),
]


@pytest.mark.parametrize(("row", "message"), [case[1:] for case in BAD_PREDICTION_ROWS],
                         ids=[case[0] for case in BAD_PREDICTION_ROWS])
def test_compare_refuses_a_bad_prediction_row(tmp_path, capsys, row, message):
    good_evaluation(tmp_path / "base")
    tuned = write_lines(tmp_path / "tuned" / "predictions.jsonl", [prediction("q0"), row, prediction("q2")])
    assert run_compare(tmp_path, capsys) == f"error: {tuned} {message}\n"


def test_compare_refuses_duplicated_prediction_rows(tmp_path, capsys):
    good_evaluation(tmp_path / "base")
    tuned = write_lines(tmp_path / "tuned" / "predictions.jsonl",
                        [prediction("q0"), prediction("q1"), prediction("q2"), prediction("q1", correct=False)])
    assert run_compare(tmp_path, capsys) == (
        f"error: {tuned} row 4: duplicated prediction for id 'q1' (also row 2)\n"
    )


def test_compare_refuses_a_repeated_sample(tmp_path, capsys):
    good_evaluation(tmp_path / "base")
    rows = [prediction(f"q{i}", sample=s) for i in range(3) for s in range(2)] + [prediction("q2", sample=1)]
    tuned = write_lines(tmp_path / "tuned" / "predictions.jsonl", rows)
    assert run_compare(tmp_path, capsys) == (
        f"error: {tuned} row 7: duplicated prediction for id 'q2' sample 1 (also row 6)\n"
    )


def test_compare_refuses_a_sample_field_on_some_rows_only(tmp_path, capsys):
    good_evaluation(tmp_path / "base")
    tuned = write_lines(tmp_path / "tuned" / "predictions.jsonl",
                        [prediction("q0", sample=0), prediction("q1"), prediction("q2", sample=0)])
    assert run_compare(tmp_path, capsys) == (
        f"error: {tuned} row 2: field 'sample': some rows have it and some do not\n"
    )


def test_compare_refuses_questions_with_different_sample_counts(tmp_path, capsys):
    good_evaluation(tmp_path / "base")
    rows = [prediction("q0", sample=0), prediction("q0", sample=1), prediction("q1", sample=0),
            prediction("q2", sample=0), prediction("q2", sample=1)]
    tuned = write_lines(tmp_path / "tuned" / "predictions.jsonl", rows)
    assert run_compare(tmp_path, capsys) == (
        f"error: {tuned}: questions have different numbers of samples ([1, 2]), e.g. id 'q1' has 1\n"
    )


def test_compare_refuses_samples_that_do_not_start_at_zero(tmp_path, capsys):
    good_evaluation(tmp_path / "base")
    tuned = write_lines(tmp_path / "tuned" / "predictions.jsonl",
                        [prediction(f"q{i}", sample=s) for i in range(3) for s in (1, 2)])
    assert run_compare(tmp_path, capsys) == f"error: {tuned}: field 'sample' must run 0..1 for every question\n"


def test_compare_refuses_an_empty_predictions_file(tmp_path, capsys):
    good_evaluation(tmp_path / "base")
    tuned = write_lines(tmp_path / "tuned" / "predictions.jsonl", [])
    assert run_compare(tmp_path, capsys) == f"error: {tuned} holds no predictions\n"


def test_compare_refuses_undecodable_bytes(tmp_path, capsys):
    good_evaluation(tmp_path / "base")
    tuned = tmp_path / "tuned" / "predictions.jsonl"
    tuned.parent.mkdir()
    tuned.write_bytes(json.dumps(prediction("q0")).encode() + b"\n\xff\xfe\n")
    assert run_compare(tmp_path, capsys) == f"error: {tuned} line 2: not UTF-8 text (byte 1 of the line)\n"


BAD_METRICS = [
    ("truncated", json.dumps(metrics())[:40], "not valid JSON (Unterminated string starting at: line 1 column 40)"),
    ("empty", "", "not valid JSON (Expecting value: line 1 column 1)"),
    ("a-list", "[1, 2]", "expected a JSON object, got a list"),
    ("no-schema-version", json.dumps(metrics(schema_version=...)), "field 'schema_version': missing (expected 1)"),
    ("future-schema-version", json.dumps(metrics(schema_version=2)), "field 'schema_version': input should be 1, got 2"),
    ("schema-version-as-text", json.dumps(metrics(schema_version="1")),
     "field 'schema_version': input should be 1, got '1'"),
    ("accuracy-as-text", json.dumps(metrics(accuracy="0.5")), "field 'accuracy': expected a number, got '0.5'"),
    ("accuracy-above-one", json.dumps(metrics(accuracy=50)),
     "field 'accuracy': input should be less than or equal to 1, got 50"),
    ("model-missing", json.dumps(metrics(model=...)), "field 'model': missing"),
    ("notebook-accuracy-missing", json.dumps(metrics(notebook_accuracy=...)), "field 'notebook_accuracy': missing"),
    ("notebook-accuracy-as-text", json.dumps(metrics(notebook_accuracy="0.5")),
     "field 'notebook_accuracy': expected a number, got '0.5'"),
]


@pytest.mark.parametrize(("text", "message"), [case[1:] for case in BAD_METRICS], ids=[c[0] for c in BAD_METRICS])
def test_compare_refuses_a_bad_metrics_json(tmp_path, capsys, text, message):
    good_evaluation(tmp_path / "base")
    good_evaluation(tmp_path / "tuned")
    (tmp_path / "tuned" / "metrics.json").write_text(text)
    assert run_compare(tmp_path, capsys) == f"error: {tmp_path / 'tuned' / 'metrics.json'}: {message}\n"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--alpha", "0"], "alpha must be in (0, 1], got 0.0"),
        (["--alpha", "1.5"], "alpha must be in (0, 1], got 1.5"),
        (["--margin", "nan"], "margin must be a finite number, got nan"),
        (["--margin", "inf"], "margin must be a finite number, got inf"),
    ],
)
def test_compare_refuses_bad_gate_parameters(tmp_path, capsys, argv, message):
    good_evaluation(tmp_path / "base")
    good_evaluation(tmp_path / "tuned")
    assert run_compare(tmp_path, capsys, *argv) == f"error: {message}\n"


# ---------------------------------------------------------------------------------------------- register


BAD_COMPARISONS = [
    ("p-value-null", json.dumps(COMPARISON | {"p_value": None}), "field 'p_value': expected a number, got null"),
    ("p-value-text", json.dumps(COMPARISON | {"p_value": "0.01"}), "field 'p_value': expected a number, got '0.01'"),
    ("p-value-above-one", json.dumps(COMPARISON | {"p_value": 1.5}),
     "field 'p_value': input should be less than or equal to 1, got 1.5"),
    ("p-value-nan", json.dumps(COMPARISON | {"p_value": float("nan")}),
     "field 'p_value': input should be a finite number, got nan"),
    ("gate-as-text", json.dumps(COMPARISON | {"passes_gate": "false"}),
     "field 'passes_gate': expected a boolean, got 'false'"),
    ("gate-as-number", json.dumps(COMPARISON | {"passes_gate": 0}), "field 'passes_gate': expected a boolean, got 0"),
    ("unknown-test", json.dumps(COMPARISON | {"test": "t-test"}),
     "field 'test': input should be 'mcnemar_exact' or 'paired_sign_flip', got 't-test'"),
    ("n-as-float", json.dumps(COMPARISON | {"n": 4.0}), "field 'n': expected an integer, got 4.0"),
    ("unexpected-field", json.dumps(COMPARISON | {"passes": True}), "field 'passes': unexpected field"),
    ("bare-number", "0.01", "expected a JSON object, got 0.01"),
    ("bare-string", '"passed"', "expected a JSON object, got 'passed'"),
    ("truncated", json.dumps(COMPARISON)[:25], "not valid JSON (Unterminated string starting at: line 1 column 23)"),
]


@pytest.mark.parametrize(("text", "message"), [c[1:] for c in BAD_COMPARISONS], ids=[c[0] for c in BAD_COMPARISONS])
def test_register_refuses_a_bad_comparison(tmp_path, capsys, text, message):
    assert run_register(tmp_path, capsys, text) == f"error: comparison_path: {tmp_path / 'comparison.json'}: {message}\n"


def test_register_refuses_duplicated_challenger_predictions(tmp_path, capsys):
    predictions = write_lines(tmp_path / "eval" / "predictions.jsonl",
                              [prediction("q0"), prediction("q1"), prediction("q0")])
    err = run_register(tmp_path, capsys, json.dumps(COMPARISON), "--predictions", str(tmp_path / "eval"))
    assert err == f"error: {predictions} row 3: duplicated prediction for id 'q0' (also row 1)\n"


def test_register_refuses_predictions_from_another_evaluation(tmp_path, capsys):
    predictions = write_lines(tmp_path / "eval" / "predictions.jsonl", [prediction(f"q{i}") for i in range(3)])
    err = run_register(tmp_path, capsys, json.dumps(COMPARISON), "--predictions", str(predictions))
    assert err == (f"error: predictions_path: {predictions} covers 3 questions but the comparison has n = 4: "
                   "they come from different evaluations\n")


def test_register_refuses_missing_predictions(tmp_path, capsys):
    err = run_register(tmp_path, capsys, json.dumps(COMPARISON), "--predictions", str(tmp_path / "nowhere"))
    assert err == (f"error: predictions_path: '{tmp_path / 'nowhere'}' not found "
                   "(expected evaluate's predictions.jsonl)\n")


# ---------------------------------------------------------------------------------------------- evaluate, training


def prepared_row(qid: str = "q0", **changes) -> dict:
    row = {"id": qid, "prompt": render_prompt(QUESTION, {"A": "a", "B": "b", "C": "c", "D": "d"}), "answer": "A",
           "letters": ["A", "B", "C", "D"], "meta": {"meta_info": "step1"}}
    row.update(changes)
    return {k: v for k, v in row.items() if v is not ...}


BAD_PREPARED_ROWS = [
    ("prompt-is-text", prepared_row(prompt=QUESTION), "field 'prompt': expected a list, got a string of 88 characters"),
    ("prompt-is-empty", prepared_row(prompt=[]), "field 'prompt': list should have at least 1 item after validation, "
     "not 0, got a list"),
    ("message-without-content", prepared_row(prompt=[{"role": "user"}]), "field 'prompt.0.content': missing"),
    ("answer-not-a-letter", prepared_row(answer="E"), "answer 'E' is not one of letters ['A', 'B', 'C', 'D']"),
    ("answer-is-a-number", prepared_row(answer=0), "field 'answer': expected a string, got 0"),
    ("one-letter", prepared_row(letters=["A"]), "field 'letters': list should have at least 2 items after validation, "
     "not 1, got a list"),
    ("meta-is-a-list", prepared_row(meta=["step1"]), "field 'meta': expected an object, got a list"),
]


@pytest.mark.parametrize(("row", "message"), [c[1:] for c in BAD_PREPARED_ROWS], ids=[c[0] for c in BAD_PREPARED_ROWS])
def test_evaluate_refuses_a_bad_prepared_row(tmp_path, capsys, row, message):
    from components.evaluate.__main__ import main as evaluate_main

    data = write_lines(tmp_path / "test.jsonl", [prepared_row("q9"), row])
    code = evaluate_main(["--model", str(tmp_path / "no-model"), "--data", str(data), "--output-dir",
                          str(tmp_path / "out"), "--recipe", "tiny-cpu"])
    assert (code, capsys.readouterr().err) == (2, f"error: {data} line 2: {message}\n")
    assert not (tmp_path / "out").exists()


def test_evaluate_refuses_duplicated_question_ids(tmp_path, capsys):
    from components.evaluate.__main__ import main as evaluate_main

    data = write_lines(tmp_path / "test.jsonl", [prepared_row("q0"), prepared_row("q1"), prepared_row("q0")])
    code = evaluate_main(["--model", "m", "--data", str(data), "--output-dir", str(tmp_path / "out"),
                          "--recipe", "tiny-cpu"])
    assert (code, capsys.readouterr().err) == (2, f"error: {data} row 3: duplicate id 'q0' (also row 1)\n")


def test_training_refuses_a_bad_prepared_row(tmp_path):
    from components.grpo_train.core import load_split

    data = write_lines(tmp_path / "train.jsonl", [prepared_row("q0"), prepared_row("q1", letters="ABCD")])
    with pytest.raises(UserError) as raised:
        load_split(tmp_path, "train")
    assert str(raised.value) == f"{data} line 2: field 'letters': expected a list, got 'ABCD'"


def test_training_refuses_an_empty_split(tmp_path):
    from components.grpo_train.core import load_split

    data = write_lines(tmp_path / "train.jsonl", [])
    with pytest.raises(UserError) as raised:
        load_split(tmp_path, "train")
    assert str(raised.value) == f"{data}: holds no rows"


def test_training_keeps_every_good_row(tmp_path):
    from components.grpo_train.core import load_split

    write_lines(tmp_path / "train.jsonl", [prepared_row(f"q{i}") for i in range(5)])
    dataset = load_split(tmp_path, "train")
    assert len(dataset) == 5 and dataset.column_names == ["prompt", "answer", "letters"]


# ---------------------------------------------------------------------------------------------- schemas


def test_prepared_rows_round_trip_and_good_rows_around_a_bad_one_are_not_the_problem(tmp_path):
    rows = [prepared_row(f"q{i}") for i in range(3)]
    path = write_lines(tmp_path / "rows.jsonl", rows)
    assert [row.model_dump(mode="json") for row in read_rows(PreparedRow, path)] == rows
    write_lines(path, [rows[0], prepared_row("q1", answer="Z"), rows[2]])
    with pytest.raises(UserError, match=r"rows.jsonl line 2: answer 'Z'"):  # line 2 named: lines 1 and 3 are fine
        read_rows(PreparedRow, path)


def test_a_long_string_in_a_bad_field_is_described_not_quoted():
    with pytest.raises(UserError) as raised:
        validate_row(PreparedRow, prepared_row(answer=QUESTION), "test.jsonl line 1")
    assert str(raised.value) == (
        "test.jsonl line 1: answer (a string of 88 characters) is not one of letters ['A', 'B', 'C', 'D']"
    )


def test_run_summary_is_strict():
    model = ModelSummary(name="medgemma-4b", baseline_accuracy=0.267, baseline_ci=[0.2, 0.33], tuned_accuracy=0.583,
                         tuned_ci=[0.52, 0.64], p_value=3.78e-14, registered=True,
                         registered_at="registry/m/versions/1")
    summary = RunSummary(state="SUCCEEDED", models=[model])
    assert parse_document(RunSummary, summary.model_dump_json(), "summary.json") == summary
    assert summary.model_dump()["schema_version"] == SCHEMA_VERSION
    with pytest.raises(UserError) as raised:
        parse_document(RunSummary, json.dumps({"schema_version": 1, "state": "FAILED",
                                               "models": [{"name": "m", "p_value": "0.01"}]}), "s.json")
    assert str(raised.value) == "s.json: field 'models.0.p_value': expected a number, got '0.01'"
    with pytest.raises(UserError) as raised:
        parse_document(RunSummary, json.dumps({"schema_version": 1, "state": "FAILED",
                                               "models": [{"name": "m", "baseline_ci": [0.1]}]}), "s.json")
    assert str(raised.value) == ("s.json: field 'models.0.baseline_ci': list should have at least 2 items after "
                                 "validation, not 1, got a list")
    with pytest.raises(UserError) as raised:  # a summary from before the per-model blocks is not read as empty
        parse_document(RunSummary, json.dumps({"schema_version": 1, "state": "FAILED", "p_value": 0.01}), "s.json")
    assert "p_value" in str(raised.value)


def test_comparison_and_decision_schemas_refuse_what_a_typo_would_make():
    with pytest.raises(ValidationError):
        Comparison.model_validate(COMPARISON | {"favours": "both"})
    with pytest.raises(ValidationError):
        ChampionDecision(rule="beats_base", becomes_champion=True, reason="x")


def test_user_errors_in_a_component_are_one_line_but_internal_errors_keep_their_traceback(capsys):
    with pytest.raises(SystemExit) as exited:
        with exit_on_user_error():
            raise UserError("alpha must be in (0, 1], got 0")
    assert exited.value.code == 2
    assert capsys.readouterr().err == "error: alpha must be in (0, 1], got 0\n"
    with pytest.raises(ZeroDivisionError):
        with exit_on_user_error():
            1 / 0  # noqa: B018


def test_a_gcs_object_that_does_not_exist_is_one_line(monkeypatch):
    from google.auth.credentials import AnonymousCredentials

    from components.common import gcs
    from fakes.gcs import FakeGcs

    with FakeGcs(default_bucket="bucket") as server:
        monkeypatch.setenv("STORAGE_EMULATOR_HOST", server.endpoint)
        client = gcs.storage_client("p", AnonymousCredentials())
        with pytest.raises(UserError) as raised:
            gcs.download_text("gs://no-such-bucket/x/predictions.jsonl", client, "champion predictions")
        assert str(raised.value) == ("champion predictions: gs://no-such-bucket/x/predictions.jsonl not found "
                                     "(no such bucket or object)")
        with pytest.raises(UserError) as raised:
            gcs.upload_file(__file__, "gs://no-such-bucket/x/predictions.jsonl", client, "staging_uri")
        assert str(raised.value) == ("staging_uri: bucket 'no-such-bucket' does not exist or these credentials "
                                     "cannot see it (NotFound)")

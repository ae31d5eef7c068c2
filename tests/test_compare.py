import json
from pathlib import Path

import pytest

from components.common.errors import UserError
from components.common.jsonl import write_json, write_jsonl
from components.compare.__main__ import main
from components.compare.core import compare_evaluations
from fakes.artifacts import FakeArtifact


def _write_eval(folder: Path, correct_by_id: dict[str, bool], model: str = "google/medgemma-4b-it") -> Path:
    rows = [
        {"id": qid, "gold": "A", "extracted": "A" if ok else "B", "correct": ok, "truncated": False, "tokens": 10}
        for qid, ok in correct_by_id.items()
    ]
    write_jsonl(folder / "predictions.jsonl", rows)
    write_json(folder / "metrics.json", {"model": model, "n": len(rows), "accuracy": sum(correct_by_id.values()) / len(rows)})
    return folder


def test_compare_counts_discordant_pairs_and_gates(tmp_path):
    ids = [f"q{i}" for i in range(100)]
    baseline = {qid: i < 50 for i, qid in enumerate(ids)}  # 50% right
    tuned = {qid: i < 50 or i >= 80 for i, qid in enumerate(ids)}  # 70%: 20 questions gained, none lost
    result = compare_evaluations(
        _write_eval(tmp_path / "base", baseline), _write_eval(tmp_path / "tuned", tuned), tmp_path / "out", margin=0.1
    )
    assert result["n"] == 100
    assert result["baseline_accuracy"] == pytest.approx(0.5) and result["tuned_accuracy"] == pytest.approx(0.7)
    assert result["delta"] == pytest.approx(0.2)
    assert (result["baseline_only_correct"], result["tuned_only_correct"]) == (0, 20)
    assert result["p_value"] == pytest.approx(2 * 0.5**20)
    assert result["delta_ci_low"] < 0.2 < result["delta_ci_high"]
    assert result["passes_gate"] is True
    saved = json.loads((tmp_path / "out" / "comparison.json").read_text())
    assert saved == result
    report = (tmp_path / "out" / "report.md").read_text()
    assert "| google/medgemma-4b-it | 50.0% | 70.0% | +20.0 pt |" in report


def test_gate_fails_below_margin_or_without_significance(tmp_path):
    ids = [f"q{i}" for i in range(40)]
    baseline = {qid: i < 20 for i, qid in enumerate(ids)}
    tuned = {qid: i < 21 for i, qid in enumerate(ids)}  # +1 question: tiny, not significant
    base_dir, tuned_dir = _write_eval(tmp_path / "b", baseline), _write_eval(tmp_path / "t", tuned)
    lenient = compare_evaluations(base_dir, tuned_dir, tmp_path / "o1", margin=0.0, alpha=0.05)
    assert lenient["p_value"] == 1.0 and lenient["passes_gate"] is False
    strict_margin = compare_evaluations(base_dir, tuned_dir, tmp_path / "o2", margin=0.05, alpha=1.0)
    assert strict_margin["passes_gate"] is False


def test_mismatched_question_sets_name_counts_and_ids(tmp_path):
    base = _write_eval(tmp_path / "b", {"q1": True, "q2": False, "q3": True})
    tuned = _write_eval(tmp_path / "t", {"q1": True, "q2": True, "q9": True})
    with pytest.raises(UserError, match=r"1 only in baseline \(e.g. \['q3'\]\), 1 only in tuned \(e.g. \['q9'\]\)"):
        compare_evaluations(base, tuned, tmp_path / "out")


def test_k_samples_per_question_use_fractions(tmp_path):
    rows = lambda pattern: [  # noqa: E731
        {"id": f"q{i // 2}", "correct": ok, "gold": "A", "extracted": None, "truncated": False, "tokens": 1}
        for i, ok in enumerate(pattern)
    ]
    write_jsonl(tmp_path / "b" / "predictions.jsonl", rows([True, False, False, False]))
    write_jsonl(tmp_path / "t" / "predictions.jsonl", rows([True, True, True, False]))
    result = compare_evaluations(tmp_path / "b", tmp_path / "t", tmp_path / "o")
    assert result["baseline_accuracy"] == pytest.approx(0.25) and result["tuned_accuracy"] == pytest.approx(0.75)
    assert result["model"] == "baseline"  # no metrics.json: a neutral label


def test_cli_writes_comparison_and_reports_bad_input_in_one_line(tmp_path, capsys):
    base = _write_eval(tmp_path / "b", {"q1": True, "q2": False})
    tuned = _write_eval(tmp_path / "t", {"q1": True, "q2": True})
    assert main(["--baseline", str(base), "--tuned", str(tuned), "--output-dir", str(tmp_path / "o")]) == 0
    assert (tmp_path / "o" / "comparison.json").is_file()
    assert main(["--baseline", str(tmp_path / "missing"), "--tuned", str(tuned), "--output-dir", str(tmp_path / "o")]) == 2
    assert "has no predictions.jsonl" in capsys.readouterr().err
    assert main(["--baseline", str(base), "--tuned", str(tuned), "--output-dir", str(tmp_path / "o"), "--alpha", "0"]) == 2


def test_kfp_wrapper_returns_the_gate_and_writes_artifacts(tmp_path):
    from components.compare.component import compare_evaluations_component

    base = _write_eval(tmp_path / "b", {f"q{i}": i < 10 for i in range(30)})
    tuned = _write_eval(tmp_path / "t", {f"q{i}": i < 25 for i in range(30)})
    comparison, metrics, report = (FakeArtifact(tmp_path / "art" / name) for name in ("comparison", "metrics", "report"))
    passed = compare_evaluations_component(
        FakeArtifact(base), FakeArtifact(tuned), comparison, metrics, report, margin=0.1, alpha=0.05
    )
    assert passed is True
    assert json.loads(Path(comparison.path).read_text())["passes_gate"] is True
    assert metrics.metadata["delta"] == pytest.approx(0.5)
    assert "Before (baseline)" in Path(report.path).read_text()


def test_kfp_wrapper_compiles_with_a_single_bool_output():
    from kfp import dsl

    from components.compare.component import compare_evaluations_component

    component = dsl.component(compare_evaluations_component, base_image="python:3.11", install_kfp_package=False)
    outputs = component.component_spec.outputs
    assert outputs["Output"].type == "Boolean"
    assert {"comparison", "comparison_metrics", "report"} <= set(outputs)

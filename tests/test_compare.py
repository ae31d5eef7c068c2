import json
import math
from pathlib import Path

import pytest

from components.common.errors import UserError
from components.common.jsonl import write_json, write_jsonl
from components.compare.__main__ import main
from components.compare.core import compare_evaluations
from fakes.artifacts import FakeArtifact


def _write_eval(folder: Path, correct_by_id: dict[str, bool], model: str = "google/medgemma-4b-it",
                notebook_correct_by_id: dict[str, bool] | None = None) -> Path:
    """An evaluate folder; the notebook's score is the strict one unless ``notebook_correct_by_id`` is given."""
    notebook = notebook_correct_by_id or correct_by_id
    rows = [
        {"id": qid, "gold": "A", "extracted": "A" if ok else "B", "correct": ok, "notebook_correct": notebook[qid],
         "truncated": False, "tokens": 10}
        for qid, ok in correct_by_id.items()
    ]
    write_jsonl(folder / "predictions.jsonl", rows)
    accuracy = sum(correct_by_id.values()) / len(rows)
    write_json(folder / "metrics.json", {"schema_version": 1, "model": model, "n": len(rows), "samples": len(rows),
                                         "accuracy": accuracy, "ci_low": 0.0, "ci_high": 1.0,
                                         "notebook_accuracy": sum(notebook.values()) / len(rows),
                                         "notebook_ci_low": 0.0, "notebook_ci_high": 1.0, "format_rate": 1.0})
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
    assert (result["questions_baseline_better"], result["questions_tuned_better"]) == (0, 20)
    assert (result["test"], result["favours"], result["schema_version"]) == ("mcnemar_exact", "tuned", 1)
    assert result["p_value"] == pytest.approx(2 * 0.5**20)
    assert result["delta_ci_low"] < 0.2 < result["delta_ci_high"]
    assert result["passes_gate"] is True
    saved = json.loads((tmp_path / "out" / "comparison.json").read_text())
    assert saved == result
    report = (tmp_path / "out" / "report.md").read_text()
    assert "| google/medgemma-4b-it | 50.0% | 70.0% | +20.0 pt |" in report
    assert "| 50.0% | 70.0% | 100 |" in report  # the notebook's extraction agrees here


def test_notebook_score_is_carried_and_never_gated(tmp_path):
    ids = [f"q{i}" for i in range(100)]
    baseline = {qid: i < 50 for i, qid in enumerate(ids)}
    tuned = {qid: i < 50 or i >= 80 for i, qid in enumerate(ids)}
    # The notebook's looser rule also counts bare letters: a higher score, and one that falls after tuning.
    baseline_notebook = {qid: i < 90 for i, qid in enumerate(ids)}
    tuned_notebook = {qid: i < 40 for i, qid in enumerate(ids)}
    result = compare_evaluations(
        _write_eval(tmp_path / "base", baseline, notebook_correct_by_id=baseline_notebook),
        _write_eval(tmp_path / "tuned", tuned, notebook_correct_by_id=tuned_notebook), tmp_path / "out", margin=0.1,
    )
    assert result["baseline_notebook_accuracy"] == pytest.approx(0.9)
    assert result["tuned_notebook_accuracy"] == pytest.approx(0.4)
    assert result["passes_gate"] is True  # the gate reads the strict score only
    report = (tmp_path / "out" / "report.md").read_text()
    assert "| strict (gate): before | strict (gate): after |" in report
    assert "| notebook's extraction: before | notebook's extraction: after |" in report
    assert "| 90.0% | 40.0% | 100 |" in report


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
        {"id": f"q{i // 2}", "sample": i % 2, "correct": ok, "gold": "A", "extracted": None, "truncated": False,
         "tokens": 1}
        for i, ok in enumerate(pattern)
    ]
    write_jsonl(tmp_path / "b" / "predictions.jsonl", rows([True, False, False, False]))
    write_jsonl(tmp_path / "t" / "predictions.jsonl", rows([True, True, True, False]))
    result = compare_evaluations(tmp_path / "b", tmp_path / "t", tmp_path / "o")
    assert result["baseline_accuracy"] == pytest.approx(0.25) and result["tuned_accuracy"] == pytest.approx(0.75)
    assert result["model"] == "baseline"  # no metrics.json: a neutral label
    # predictions written without notebook_correct: no notebook score, and the report says n/a
    assert result["baseline_notebook_accuracy"] is None and result["tuned_notebook_accuracy"] is None
    assert "| n/a | n/a |" in (tmp_path / "o" / "report.md").read_text()


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
    assert "strict (gate): before" in Path(report.path).read_text()


def test_kfp_wrapper_compiles_with_a_single_bool_output():
    from kfp import dsl

    from components.compare.component import compare_evaluations_component

    component = dsl.component(compare_evaluations_component, base_image="python:3.11", install_kfp_package=False)
    outputs = component.component_spec.outputs
    assert outputs["Output"].type == "Boolean"
    assert {"comparison", "comparison_metrics", "report"} <= set(outputs)


def _write_k_samples(folder: Path, correct_counts: list[int], k: int) -> Path:
    """Question i gets ``correct_counts[i]`` correct samples out of ``k``."""
    rows = [
        {"id": f"q{i}", "sample": s, "gold": "A", "extracted": "A" if s < right else "B", "correct": s < right,
         "truncated": False, "tokens": 3}
        for i, right in enumerate(correct_counts)
        for s in range(k)
    ]
    write_jsonl(folder / "predictions.jsonl", rows)
    return folder


def test_with_k_samples_the_test_measures_the_delta_not_majority_votes(tmp_path):
    # 40 questions the baseline wins by majority (2/3 vs 1/3), 60 the tuned model gains a third (0/3 -> 1/3):
    # the delta is positive, majority-vote McNemar would be 40:0 for the baseline.
    baseline = _write_k_samples(tmp_path / "b", [2] * 40 + [0] * 60, k=3)
    tuned = _write_k_samples(tmp_path / "t", [1] * 40 + [1] * 60, k=3)
    result = compare_evaluations(baseline, tuned, tmp_path / "o", alpha=0.05)
    assert result["delta"] == pytest.approx((60 - 40) / 3 / 100)
    assert (result["test"], result["favours"]) == ("paired_sign_flip", "tuned")
    assert (result["questions_baseline_better"], result["questions_tuned_better"]) == (40, 60)
    assert result["samples_per_question"] == {"baseline": 3, "tuned": 3}
    # Every difference is +-1/3, so the exact null is a fair binomial: P(|2B - 100| >= 20), B ~ Bin(100, 1/2).
    exact = sum(math.comb(100, b) for b in range(101) if abs(2 * b - 100) >= 20) / 2**100
    assert result["p_value"] == pytest.approx(exact, abs=0.004)
    assert result["p_value"] > 0.05 and result["passes_gate"] is False


def test_with_k_samples_a_real_gain_passes_and_a_loss_never_does(tmp_path):
    baseline = _write_k_samples(tmp_path / "b", [1] * 100, k=4)
    better = _write_k_samples(tmp_path / "t", [3] * 70 + [1] * 30, k=4)
    gain = compare_evaluations(baseline, better, tmp_path / "o1")
    assert gain["favours"] == "tuned" and gain["p_value"] < 1e-4 and gain["passes_gate"] is True
    loss = compare_evaluations(better, baseline, tmp_path / "o2", margin=-1.0)  # any delta clears this margin
    assert loss["favours"] == "baseline" and loss["p_value"] < 1e-4 and loss["passes_gate"] is False
    assert "p (paired sign-flip)" in (tmp_path / "o1" / "report.md").read_text()


def test_one_sample_baseline_against_k_sample_tuned_uses_the_sign_flip_test(tmp_path):
    baseline = _write_eval(tmp_path / "b", {f"q{i}": i < 50 for i in range(100)})
    tuned = _write_k_samples(tmp_path / "t", [2] * 100, k=2)
    result = compare_evaluations(baseline, tuned, tmp_path / "o")
    assert result["samples_per_question"] == {"baseline": 1, "tuned": 2}
    assert result["test"] == "paired_sign_flip" and result["delta"] == pytest.approx(0.5)

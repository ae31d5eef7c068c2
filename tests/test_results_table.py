"""The results-table step: one model_result.json per model, then table.json/.md/.html; its CLI, its KFP wrappers
and the two of them under kfp.local in a dsl.ParallelFor joined by dsl.Collected."""

import json
import re
from pathlib import Path

import pytest
from fakes.artifacts import FakeArtifact

from components.common.artifacts import (
    EvaluationMetrics,
    ModelResult,
    Prediction,
    ResultsTable,
    read_document,
    write_document,
    write_rows,
)
from components.common.errors import UserError
from components.compare.core import compare_evaluations
from components.evaluate.core import summarize
from components.register.core import register_model
from components.results_table.__main__ import main
from components.results_table.core import (
    COLUMNS,
    NOTEBOOK_LABEL,
    STRICT_LABEL,
    collect_model_result,
    registered_version,
    write_results_table,
)

N_QUESTIONS = 40
STRICT_IN_MARKDOWN = r"strict: one \<answer\> tag; what the reward and the gate use"
NOTEBOOK_IN_MARKDOWN = r"notebook's rule: text after the last \<answer\>; reported only"


def write_evaluation(folder: Path, model: str, strict_right: int, bare_letters: int, adapter: str | None = None,
                     first_id: int = 0) -> Path:
    """An evaluate output folder as the evaluate step writes it (its own summarize() and schema): the first
    ``strict_right`` questions answered in the format and right; the next ``bare_letters`` a bare right letter
    (right for the notebook's rule only); the rest in the format and wrong."""
    rows, predictions = [], []
    for i in range(N_QUESTIONS):
        qid = f"q{first_id + i:02d}"
        rows.append({"id": qid, "prompt": [], "answer": "A", "letters": ["A", "B", "C", "D"]})
        formatted = not strict_right <= i < strict_right + bare_letters
        extracted = None if not formatted else "A" if i < strict_right else "B"
        predictions.append({"id": qid, "gold": "A", "extracted": extracted, "correct": extracted == "A",
                            "notebook_correct": i < strict_right + bare_letters, "truncated": False, "tokens": 12,
                            "completion": ""})
    metrics = summarize(rows, predictions, 1) | {"model": model, "adapter": adapter, "recipe": "tiny-cpu"}
    write_rows(folder / "predictions.jsonl", (Prediction(**p) for p in predictions))
    write_document(folder / "metrics.json", EvaluationMetrics(**metrics))
    return folder


def make_model_run(root: Path, model: str, baseline_right: int, tuned_right: int, bare_letters: int = 4,
                   first_id: int = 0) -> dict:
    """One model's baseline and tuned evaluations and their real comparison (gate: margin 0, alpha 0.05)."""
    baseline = write_evaluation(root / "baseline", model, baseline_right, bare_letters, first_id=first_id)
    tuned = write_evaluation(root / "tuned", model, tuned_right, bare_letters, adapter=str(root / "adapter"),
                             first_id=first_id)
    comparison = compare_evaluations(baseline, tuned, root / "compare")
    return {"baseline": baseline, "tuned": tuned, "compare": root / "compare", "comparison": comparison}


def register_in_folder(root: Path, run: dict) -> str:
    """The register step's file registry: the resource name it returns for the tuned model."""
    adapter = root / "adapter"
    adapter.mkdir(parents=True, exist_ok=True)
    (adapter / "adapter_config.json").write_text(json.dumps({"r": 8, "base_model_name_or_path": "base"}))
    (adapter / "adapter_model.safetensors").write_bytes(b"\x00" * 64)
    result = register_model(str(adapter), str(run["compare"]), str(root.parent / "registry"), model_name="m",
                            base_model="base", recipe="tiny-cpu", data_fingerprint="", pipeline_run="run-1",
                            serving_mode="adapter", predictions_path=str(run["tuned"]))
    return result.resource_name


@pytest.fixture
def two_models(tmp_path) -> list[Path]:
    """Two models' model_result.json: one passed the gate and was registered, one did not pass."""
    tuned_well = make_model_run(tmp_path / "medgemma", "medgemma", baseline_right=10, tuned_right=30)
    assert tuned_well["comparison"]["passes_gate"] is True
    tuned_badly = make_model_run(tmp_path / "gemma", "gemma", baseline_right=20, tuned_right=21)
    assert tuned_badly["comparison"]["passes_gate"] is False
    registered = register_in_folder(tmp_path / "medgemma", tuned_well)
    paths = []
    for name, base, run, where in (("medgemma-4b", "google/medgemma-4b-it", tuned_well, registered),
                                   ("gemma-3-4b", "google/gemma-3-4b-it", tuned_badly, "")):
        path = tmp_path / "results" / name / "model_result.json"
        collect_model_result(name, base, "tiny-cpu", run["baseline"], run["tuned"], run["compare"], where, path)
        paths.append(path)
    return paths


def test_model_result_carries_both_scores_the_comparison_and_the_registration(tmp_path):
    run = make_model_run(tmp_path / "m", "medgemma", baseline_right=10, tuned_right=30, bare_letters=6)
    registered = register_in_folder(tmp_path / "m", run)
    output = tmp_path / "out" / "model_result.json"
    result = collect_model_result("medgemma-4b", "google/medgemma-4b-it", "medgemma-4b", run["baseline"],
                                  run["tuned"], run["compare"], registered, output)
    assert read_document(ModelResult, output) == result
    saved = json.loads(output.read_text())
    baseline = json.loads((run["baseline"] / "metrics.json").read_text())
    tuned = json.loads((run["tuned"] / "metrics.json").read_text())
    assert saved["baseline"]["strict"] == {key: baseline[key] for key in ("accuracy", "ci_low", "ci_high")}
    assert saved["tuned"]["notebook"] == {"accuracy": tuned["notebook_accuracy"], "ci_low": tuned["notebook_ci_low"],
                                          "ci_high": tuned["notebook_ci_high"]}
    assert (saved["baseline"]["strict"]["accuracy"], saved["baseline"]["notebook"]["accuracy"]) == (0.25, 0.4)
    assert saved["tuned"]["format_rate"] == pytest.approx(34 / 40)  # the 6 bare letters are not in the format
    comparison = run["comparison"]
    for key in ("delta", "delta_ci_low", "delta_ci_high", "test", "p_value", "n", "passes_gate"):
        assert saved[key] == comparison[key], key
    assert (saved["delta"], saved["test"], saved["passes_gate"]) == (0.5, "mcnemar_exact", True)
    assert saved["registered"] == registered and saved["registered_version"] == "1"
    assert Path(registered).is_dir()


def test_a_model_that_failed_the_gate_is_not_registered(tmp_path):
    run = make_model_run(tmp_path / "m", "gemma", baseline_right=20, tuned_right=20)
    result = collect_model_result("gemma", "g", "r", run["baseline"], run["tuned"], run["compare"], "",
                                  tmp_path / "o.json")
    assert (result.passes_gate, result.registered, result.registered_version) == (False, None, None)
    with pytest.raises(UserError, match=r"^registered is 'x', but .*comparison.json says the tuned model failed"):
        collect_model_result("gemma", "g", "r", run["baseline"], run["tuned"], run["compare"], "x", tmp_path / "p.json")


def test_registered_version_of_each_registry():
    assert registered_version("projects/p/locations/us-central1/models/123@4") == "4"
    assert registered_version("/runs/pipeline_root/registry/medgemma-grpo/versions/12") == "12"
    assert registered_version("gs://bucket/registry/medgemma-grpo/versions/3") == "3"
    assert registered_version("projects/p/locations/us-central1/models/123") is None
    assert registered_version("/somewhere/else") is None


def test_the_table_says_whether_every_model_answered_the_same_test_questions(tmp_path, two_models):
    same = write_results_table(two_models, tmp_path / "same")
    assert same.models[0].test_questions == same.models[1].test_questions is not None
    note = f"Every model was evaluated on the same {N_QUESTIONS} test questions ({same.models[0].test_questions})."
    assert note in (tmp_path / "same" / "table.md").read_text() and note in (tmp_path / "same" / "table.html").read_text()

    other = make_model_run(tmp_path / "other", "other", baseline_right=10, tuned_right=30, first_id=100)
    path = tmp_path / "results" / "other" / "model_result.json"
    collect_model_result("other", "other/model", "tiny-cpu", other["baseline"], other["tuned"], other["compare"], "",
                         path)
    mixed = (tmp_path / "mixed").joinpath("table.md")
    write_results_table([*two_models, path], mixed.parent)
    assert "evaluated on different test questions" in mixed.read_text() and "Every model" not in mixed.read_text()


def test_rows_follow_the_planned_order_whatever_order_they_were_collected_in(tmp_path, two_models):
    table = write_results_table(list(reversed(two_models)), tmp_path / "t", order=["medgemma-4b", "gemma-3-4b"])
    assert [m.name for m in table.models] == ["medgemma-4b", "gemma-3-4b"]
    with pytest.raises(UserError, match="model results for 'gemma-3-4b', which the run did not plan"):
        write_results_table(two_models, tmp_path / "u", order=["medgemma-4b"])


def test_table_json_markdown_and_html_show_every_model_in_order_with_both_labelled_scores(tmp_path, two_models):
    table = write_results_table(two_models, tmp_path / "table")
    assert [m.name for m in table.models] == ["medgemma-4b", "gemma-3-4b"]
    assert read_document(ResultsTable, tmp_path / "table" / "table.json") == table
    passed, failed = table.models
    assert passed.passes_gate and passed.registered and passed.registered_version == "1"
    assert not failed.passes_gate and failed.registered is None

    markdown = (tmp_path / "table" / "table.md").read_text()
    assert STRICT_IN_MARKDOWN in markdown and NOTEBOOK_IN_MARKDOWN in markdown
    rows = [line for line in markdown.splitlines() if line.startswith("| ") and not line.startswith("| --- ")]
    header, first, second = rows
    assert "Strict: baseline \\[95% CI\\]" in header and "Notebook's rule: tuned \\[95% CI\\]" in header
    assert first.startswith("| medgemma-4b | google/medgemma-4b-it | tiny-cpu | 40 | 25.0% \\[")
    assert "| 75.0% \\[" in first  # tuned, strict
    assert "| 35.0% \\[" in first and "| 85.0% \\[" in first  # the notebook's rule counts the 4 bare letters
    assert "+50.0 pt \\[" in first and "exact McNemar, p = " in first and "| passed |" in first
    assert "version 1: " + passed.registered.replace("_", "\\_") + " |" in first  # Markdown-escaped
    assert second.startswith("| gemma-3-4b |") and "| failed | not registered |" in second
    assert all(len(re.findall(r"(?<!\\)\|", row)) == len(COLUMNS) + 1 for row in rows)

    page = (tmp_path / "table" / "table.html").read_text()
    assert page.startswith("<!DOCTYPE html>") and "<script" not in page and "http" not in page  # self-contained
    assert "strict: one &lt;answer&gt; tag; what the reward and the gate use" in page
    assert "notebook&#x27;s rule: text after the last &lt;answer&gt;; reported only" in page
    assert page.index("<td>medgemma-4b</td>") < page.index("<td>gemma-3-4b</td>")
    assert f"<td>version 1: {passed.registered}</td>" in page and page.count("<tr>") == 3 and page.count("<th>") == len(COLUMNS)


def test_strings_from_the_run_are_escaped_in_markdown_and_html(tmp_path):
    run = make_model_run(tmp_path / "m", "m", baseline_right=10, tuned_right=12)
    name = '<script>alert("x")</script> | **bold** & co'
    collect_model_result(name, "base<b>", "r|s", run["baseline"], run["tuned"], run["compare"], "",
                         tmp_path / "r.json")
    write_results_table([tmp_path / "r.json"], tmp_path / "t")
    page = (tmp_path / "t" / "table.html").read_text()
    assert "<script>" not in page and "<b>" not in page
    assert "<td>&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; | **bold** &amp; co</td>" in page
    markdown = (tmp_path / "t" / "table.md").read_text()
    assert r"| \<script\>alert(" in markdown and r"\| \*\*bold\*\* & co |" in markdown
    assert r"| base\<b\> | r\|s |" in markdown
    row = [line for line in markdown.splitlines() if line.startswith("| \\<script")][0]
    assert len(re.findall(r"(?<!\\)\|", row)) == len(COLUMNS) + 1
    assert json.loads((tmp_path / "t" / "table.json").read_text())["models"][0]["name"] == name  # JSON keeps it


def test_duplicate_model_names_are_refused(tmp_path, two_models):
    copy = tmp_path / "copy" / "model_result.json"
    copy.parent.mkdir()
    copy.write_text(two_models[0].read_text())
    with pytest.raises(UserError) as err:
        write_results_table([two_models[0], two_models[1], copy.parent], tmp_path / "t")
    message = str(err.value)
    assert message == (f"model_results: model name 'medgemma-4b' appears in both {two_models[0]} and {copy}; "
                       "every model of a run needs its own name")
    assert not (tmp_path / "t").exists()
    table = json.loads(two_models[0].read_text())
    (tmp_path / "table.json").write_text(json.dumps({"schema_version": 1, "models": [table, table]}))
    with pytest.raises(UserError, match=r"table.json: model name 'medgemma-4b' appears twice \(models 1 and 2\)$"):
        read_document(ResultsTable, tmp_path / "table.json")


def test_bad_or_missing_files_are_one_line_naming_the_file(tmp_path, two_models):
    def error(call, *args) -> str:
        with pytest.raises(UserError) as err:
            call(*args)
        assert "\n" not in str(err.value)
        return str(err.value)

    missing = tmp_path / "nowhere"
    assert error(write_results_table, [two_models[0], missing], tmp_path / "t") == (
        f"model_results: '{missing}' not found (expected the model-result step's model_result.json)")
    assert error(write_results_table, [two_models[0], missing / "model_result.json"], tmp_path / "t") == (
        f"model_results: '{missing / 'model_result.json'}' not found (expected the model-result step's "
        "model_result.json)")
    broken = tmp_path / "broken.json"
    broken.write_text('{"schema_version": 1, "name": ')
    assert error(write_results_table, [two_models[0], broken], tmp_path / "t").startswith(
        f"{broken}: not valid JSON (")
    wrong = json.loads(two_models[1].read_text())
    wrong["tuned"]["format_rate"] = "0.9"
    broken.write_text(json.dumps(wrong))
    assert error(write_results_table, [broken], tmp_path / "t") == (
        f"{broken}: field 'tuned.format_rate': expected a number, got '0.9'")
    assert error(write_results_table, [], tmp_path / "t").startswith("model_results: no model results given")
    assert not (tmp_path / "t").exists()

    run = make_model_run(tmp_path / "m", "m", baseline_right=10, tuned_right=12)
    args = ["m", "b", "r", run["baseline"], run["tuned"], run["compare"], "", tmp_path / "o.json"]
    assert error(collect_model_result, *args[:5], missing, *args[6:]) == (
        f"comparison: '{missing}' not found (expected compare's comparison.json)")
    metrics = json.loads((run["tuned"] / "metrics.json").read_text())
    del metrics["format_rate"]
    (run["tuned"] / "metrics.json").write_text(json.dumps(metrics))
    assert error(collect_model_result, *args) == f"{run['tuned'] / 'metrics.json'}: field 'format_rate': missing"
    (run["tuned"] / "metrics.json").unlink()
    assert error(collect_model_result, *args) == (
        f"tuned_evaluation: '{run['tuned'] / 'metrics.json'}' not found (expected evaluate's metrics.json)")
    assert not (tmp_path / "o.json").exists()


def test_a_comparison_of_other_evaluations_is_refused(tmp_path):
    """A mis-wired loop (one model's evaluations with another's comparison) must not make a row."""
    first = make_model_run(tmp_path / "a", "a", baseline_right=10, tuned_right=30)
    second = make_model_run(tmp_path / "b", "b", baseline_right=12, tuned_right=30)
    with pytest.raises(UserError, match=r"^.*/b/compare/comparison.json: baseline_accuracy 0.3 differs from "
                                        r".*/a/baseline/metrics.json's 0.25: the comparison was not made from this "
                                        r"baseline evaluation$"):
        collect_model_result("a", "b", "r", first["baseline"], first["tuned"], second["compare"], "", tmp_path / "o")
    with pytest.raises(UserError, match=r"^name must be a non-empty string, got ' '$"):
        collect_model_result(" ", "b", "r", first["baseline"], first["tuned"], first["compare"], "", tmp_path / "o")


def test_cli_writes_a_model_result_and_the_table(tmp_path, capsys):
    run = make_model_run(tmp_path / "m", "m", baseline_right=10, tuned_right=30)
    out = tmp_path / "rows" / "one.json"
    assert main(["model-result", "--name", "one", "--base-model", "b", "--recipe", "tiny-cpu", "--baseline",
                 str(run["baseline"]), "--tuned", str(run["tuned"] / "metrics.json"), "--comparison",
                 str(run["compare"]), "--output", str(out)]) == 0
    assert read_document(ModelResult, out).registered is None
    assert main(["table", str(out), "--output-dir", str(tmp_path / "table")]) == 0
    printed = capsys.readouterr().out
    assert printed == (tmp_path / "table" / "table.md").read_text() and "| one | b | tiny-cpu | 40 |" in printed
    assert main(["table", str(tmp_path / "missing.json"), "--output-dir", str(tmp_path / "t2")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: model_results: ") and "missing.json" in err and err.count("\n") == 1


def test_kfp_wrappers_write_their_artifacts(tmp_path):
    from components.results_table.component import model_result_component, results_table_component

    runs = [make_model_run(tmp_path / name, name, baseline_right=10, tuned_right=right)
            for name, right in (("a", 30), ("b", 11))]
    rows = []
    for name, run in zip(("a", "b"), runs):
        row = FakeArtifact(tmp_path / "art" / name / "model_result")
        model_result_component(name=name, base_model="base", recipe="tiny-cpu",
                               baseline_evaluation=FakeArtifact(run["baseline"]),
                               tuned_evaluation=FakeArtifact(run["tuned"]), comparison=FakeArtifact(run["compare"]),
                               registered="", model_result=row)
        rows.append(row)
    assert rows[0].metadata["delta"] == pytest.approx(0.5) and rows[0].metadata["passes_gate"] is True
    assert rows[1].metadata["registered"] == "" and rows[1].metadata["baseline_accuracy"] == 0.25
    table, page, document = (FakeArtifact(tmp_path / "art" / name) for name in ("md", "html", "json"))
    results_table_component(model_results=rows, table=table, table_html=page, table_json=document)
    # The rows the run summary reads (an exit task takes no inputs): ModelSummary's fields.
    assert [row["name"] for row in document.metadata["models"]] == ["a", "b"]
    assert document.metadata["models"][0]["delta"] == pytest.approx(0.5) and document.metadata["models"][1]["registered"] is False
    assert STRICT_IN_MARKDOWN in Path(table.path).read_text()
    assert "<td>b</td>" in Path(page.path).read_text()
    assert [m["name"] for m in json.loads(Path(document.path).read_text())["models"]] == ["a", "b"]


def test_the_list_of_artifacts_input_compiles():
    from kfp import dsl

    from components.results_table.component import results_table_component

    component = dsl.component(results_table_component, base_image="python:3.11", install_kfp_package=False)
    spec = component.pipeline_spec.components["comp-results-table-component"].input_definitions
    assert spec.artifacts["model_results"].is_artifact_list


def test_under_kfp_local_a_parallel_for_feeds_the_table_through_collected(tmp_path):
    """Both wrappers as pipeline tasks: one row per loop item, dsl.Collected of the rows into the table."""
    from kfp import dsl, local

    from components.results_table.component import model_result_component, results_table_component

    models = []
    for name, right in (("first", 30), ("second", 11)):
        run = make_model_run(tmp_path / "runs" / name, name, baseline_right=10, tuned_right=right)
        # Not "name": a loop item's .name is the KFP channel's own name ("models-loop-item"), not the item's key.
        models.append({"model_name": name, "baseline": str(run["baseline"]), "tuned": str(run["tuned"]),
                       "comparison": str(run["compare"])})
    row = dsl.component(model_result_component, base_image="python:3.11", install_kfp_package=False)
    table = dsl.component(results_table_component, base_image="python:3.11", install_kfp_package=False)

    @dsl.pipeline(name="results-table-local")
    def results(models: list):
        with dsl.ParallelFor(models) as model:
            artifacts = {key: dsl.importer(artifact_uri=getattr(model, key), artifact_class=dsl.Artifact).output
                         for key in ("baseline", "tuned", "comparison")}
            rows = row(name=model.model_name, base_model="base", recipe="tiny-cpu",
                       baseline_evaluation=artifacts["baseline"], tuned_evaluation=artifacts["tuned"],
                       comparison=artifacts["comparison"], registered="")
        table(model_results=dsl.Collected(rows.outputs["model_result"]))

    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(tmp_path / "root"))
    results(models=models)
    [written] = list((tmp_path / "root").rglob("table_json"))
    document = read_document(ResultsTable, written)
    assert [m.name for m in document.models] == ["first", "second"]  # kfp.local collects in iteration order
    assert [m.passes_gate for m in document.models] == [True, False]
    assert "<td>second</td>" in (written.parent / "table_html").read_text()
    assert STRICT_IN_MARKDOWN in (written.parent / "table").read_text()

"""The run summary the exit task writes: from a kfp.local run folder and from Vertex's PipelineJob task details."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fakes.vertex import FakeVertex
from google.auth.credentials import AnonymousCredentials

from components.common.artifacts import RunSummary, read_document
from components.run_summary.__main__ import main
from components.run_summary.core import (
    RunTasks,
    TaskResult,
    build_summary,
    render_summary,
    summarize_run,
    tasks_from_local_run,
    tasks_from_vertex,
)

BASELINE = {"accuracy": 0.267, "ci_low": 0.215, "ci_high": 0.326, "notebook_accuracy": 0.301, "n": 240}
TUNED = {"accuracy": 0.583, "ci_low": 0.52, "ci_high": 0.644, "notebook_accuracy": 0.59, "n": 240}
COMPARISON = {"baseline_accuracy": 0.267, "tuned_accuracy": 0.583, "delta": 0.317, "delta_ci_low": 0.25,
              "delta_ci_high": 0.38, "p_value": 1.2e-15, "n": 240, "passes_gate": 1.0}
REGISTRATION = {"resource_name": "projects/p/locations/l/models/7@2", "version": "2", "aliases": ["champion"]}


def write_task(run_dir: Path, task: str, artifacts: dict[str, dict] | None, parameters: dict | None = None) -> None:
    """A task folder as kfp.local leaves it: executor_output.json once the task succeeded, nothing if it failed."""
    folder = run_dir / task
    folder.mkdir(parents=True)
    if artifacts is None:
        return
    output = {"artifacts": {name: {"artifacts": [{"name": name, "uri": str(folder / name), "metadata": metadata}]}
                            for name, metadata in artifacts.items()},
              "parameterValues": parameters or {}}
    (folder / "executor_output.json").write_text(json.dumps(output))


def branch(run_dir: Path, index: int = 0) -> Path:
    """kfp.local's folder for one model of the fan-out (one item of the dsl.ParallelFor)."""
    return run_dir / f"for-loop-2-iteration-{index}"


def entry(name: str) -> dict:
    return {"name": name, "base_model": "google/medgemma-4b-it", "recipe": "medgemma-4b"}


def finished_run(run_dir: Path, registration: dict | None = REGISTRATION, index: int = 0, name: str = "medgemma-4b") -> Path:
    if index == 0:
        write_task(run_dir, "check-parameters", {}, {"Output": "one-vm"})
        write_task(run_dir, "plan-models", {}, {"Output": [entry(name)]})
    model = branch(run_dir, index)
    write_task(model, "model-entry", {}, entry(name))
    write_task(model, "prepare-data", {"prepared_data": {"fingerprint": "0123abcd4567ef89"}}, {"Output": "0123abcd4567ef89"})
    write_task(model, "baseline-eval", {"metrics": BASELINE})
    write_task(model, "train", {"training_metrics": {}})
    write_task(model, "tuned-eval", {"metrics": TUNED})
    write_task(model, "compare", {"comparison_metrics": COMPARISON, "comparison": {"test": "mcnemar_exact"}})
    if registration is not None:
        write_task(model, "register", {"registered_model": registration})
    return run_dir


def one_model(**tasks: TaskResult) -> RunTasks:
    return RunTasks({}, [{name.replace("_", "-"): task for name, task in tasks.items()}])


def test_a_finished_local_run_is_summarized_and_written(tmp_path):
    run_dir = finished_run(tmp_path / "medgemma-grpo-2026")
    summary = summarize_run("SUCCEEDED", "local-pipeline-exit-handler-1", run_dir / "run-summary" / "summary")
    assert summary.state == "SUCCEEDED" and summary.failed_task is None
    [model] = summary.models
    assert model.name == "medgemma-4b" and model.base_model == "google/medgemma-4b-it"
    assert model.baseline_ci == [0.215, 0.326] and model.tuned_ci == [0.52, 0.644]
    assert model.p_value == 1.2e-15 and model.n == 240 and model.passes_gate is True
    assert model.test == "mcnemar_exact"
    assert model.registered_at == REGISTRATION["resource_name"] and model.data_fingerprint == "0123abcd4567ef89"
    written = run_dir / "run-summary" / "summary"
    assert read_document(RunSummary, written / "summary.json") == summary
    table = (written / "summary.md").read_text()
    assert "baseline               0.267  [0.215, 0.326]" in table
    assert "model             medgemma-4b (google/medgemma-4b-it, recipe medgemma-4b)" in table
    assert model.baseline_notebook_accuracy == 0.301 and model.tuned_notebook_accuracy == 0.59
    assert "notebook's scoring     0.301 -> 0.590   (baseline -> tuned; reported, never gated)" in table
    assert "registered        projects/p/locations/l/models/7@2 (version 2)" in table


def test_a_failed_run_names_the_step_that_failed(tmp_path):
    run_dir = tmp_path / "run"
    write_task(run_dir, "check-parameters", {}, {"Output": "one-vm"})
    write_task(run_dir, "plan-models", {}, {"Output": [entry("medgemma-4b")]})
    write_task(branch(run_dir), "model-entry", {}, entry("medgemma-4b"))
    write_task(branch(run_dir), "prepare-data", {"prepared_data": {}})
    write_task(branch(run_dir), "baseline-eval", {"metrics": BASELINE})
    write_task(branch(run_dir), "train", None)  # started, never finished
    summary = summarize_run("FAILED", "local-pipeline-exit-handler-1", run_dir / "run-summary" / "summary",
                            error_message="Task exit-handler-1 failed.")
    [model] = summary.models
    assert summary.failed_task == "train" and model.tuned_accuracy is None and not model.registered
    table = render_summary(summary)
    assert table.splitlines()[0] == "run               FAILED (failed task: train, model medgemma-4b)"
    assert "tuned (GRPO)             n/a" in table and "registered        not registered" in table
    assert "notebook's scoring     0.301 -> n/a" in table


def test_a_gate_that_did_not_pass_says_so():
    summary = build_summary("SUCCEEDED", one_model(compare=TaskResult("SUCCEEDED", {"comparison_metrics": {**COMPARISON, "passes_gate": 0.0}})))
    assert "not registered (gate not passed)" in render_summary(summary)


def test_vertex_task_details_are_read_from_the_pipeline_job():
    job = "projects/p/locations/europe-west4/pipelineJobs/medgemma-grpo-1"
    details = [
        {"taskName": "baseline-eval", "state": "SUCCEEDED", "outputs": {"metrics": {"artifacts": [{"metadata": BASELINE}]}}},
        {"taskName": "tuned-eval", "state": "SUCCEEDED", "outputs": {"metrics": {"artifacts": [{"metadata": TUNED}]}}},
        {"taskName": "compare", "state": "SUCCEEDED",
         "outputs": {"comparison_metrics": {"artifacts": [{"metadata": COMPARISON}]}}},
        {"taskName": "register", "state": "FAILED"},
    ]
    with FakeVertex() as vertex:
        vertex.state.pipeline_jobs["medgemma-grpo-1"] = {"name": job, "jobDetail": {"taskDetails": details}}
        tasks = tasks_from_vertex(job, api_endpoint=vertex.endpoint, credentials=AnonymousCredentials())
        assert vertex.requests_to("GET", r"/pipelineJobs/medgemma-grpo-1$")
    summary = build_summary("FAILED", tasks)
    assert summary.failed_task == "register"
    assert summary.models[0].tuned_ci == [0.52, 0.644] and summary.models[0].delta_ci == [0.25, 0.38]


def test_cli_prints_a_local_runs_summary(tmp_path, capsys):
    run_dir = finished_run(tmp_path / "run")
    assert main([str(run_dir), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["models"][0]["registered_version"] == "2"
    assert main([str(tmp_path / "missing")]) == 2
    assert "neither a run folder" in capsys.readouterr().err


@pytest.mark.e2e
def test_a_bad_parameter_stops_the_local_run_in_its_first_task_and_the_summary_says_so(tmp_path):
    """Through kfp.local: train_accelerator_count 0 fails check-parameters; the exit task still runs."""
    from kfp import local

    from pipelines.medgemma_grpo import build_pipeline

    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(tmp_path), raise_on_error=False)
    build_pipeline(target="local")(recipe="tiny-cpu", train_accelerator_count=0, registry_uri=str(tmp_path / "reg"))
    [run_dir] = [p for p in tmp_path.iterdir() if p.name.startswith("medgemma-grpo-")]
    summary = json.loads((run_dir / "run-summary" / "summary" / "summary.json").read_text())
    assert summary["state"] == "FAILED" and summary["failed_task"] == "check-parameters"
    assert not (run_dir / "prepare-data").exists()  # nothing ran after the check


def test_a_step_that_failed_without_a_trace_is_the_first_one_missing(tmp_path):
    """kfp.local writes nothing for a task that failed before its outputs: the first step due and absent failed
    (the route recorded by check-parameters says which training step was due)."""
    run_dir = tmp_path / "run"
    write_task(run_dir, "check-parameters", {}, {"Output": "custom-job"})
    write_task(run_dir, "plan-models", {}, {"Output": [entry("medgemma-4b")]})
    write_task(branch(run_dir), "model-entry", {}, entry("medgemma-4b"))
    write_task(branch(run_dir), "prepare-data", {"prepared_data": {}})
    write_task(branch(run_dir), "baseline-eval", {"metrics": BASELINE})
    assert build_summary("FAILED", tasks_from_local_run(run_dir)).failed_task == "train-custom-job"
    assert build_summary("SUCCEEDED", tasks_from_local_run(run_dir)).failed_task is None


def test_the_p_value_line_names_the_compare_steps_test():
    def table(test):
        compare = TaskResult("SUCCEEDED", {"comparison_metrics": COMPARISON, "comparison": {"test": test}})
        return render_summary(build_summary("SUCCEEDED", one_model(compare=compare)))

    assert "McNemar p-value   1.20e-15   (n = 240 paired questions)" in table("mcnemar_exact")
    assert "sign-flip p-value 1.20e-15   (n = 240 paired questions)" in table("paired_sign_flip")


def test_a_deployed_run_names_the_endpoint_and_the_smoke_test_numbers(tmp_path):
    run_dir = finished_run(tmp_path / "run")
    write_task(branch(run_dir), "deploy", {"deployment": {"endpoint": "projects/p/locations/l/endpoints/9", "backend": "vertex"}})
    write_task(branch(run_dir), "smoke-test", {"metrics": {"n": 20.0, "format_rate": 1.0, "accuracy": 0.55,
                                                   "latency_p50_s": 0.41, "latency_p95_s": 0.9, "errors": 0.0}})
    summary = summarize_run("SUCCEEDED", "local", run_dir / "run-summary" / "summary")
    [model] = summary.models
    assert model.deployed_to == "projects/p/locations/l/endpoints/9"
    assert model.smoke_test.model_dump() == {"n": 20, "format_rate": 1.0, "accuracy": 0.55, "latency_p50_s": 0.41,
                                               "latency_p95_s": 0.9}
    assert read_document(RunSummary, run_dir / "run-summary" / "summary" / "summary.json") == summary
    table = render_summary(summary)
    assert "deployed          projects/p/locations/l/endpoints/9" in table
    assert "smoke test        20 prompts: format rate 1.00, accuracy 0.55, latency p50 0.41 s, p95 0.90 s" in table


def test_a_failed_smoke_test_is_the_failed_step(tmp_path):
    run_dir = finished_run(tmp_path / "run")
    write_task(branch(run_dir), "deploy", {"deployment": {"endpoint": "e"}})
    write_task(branch(run_dir), "smoke-test", None)  # kfp.local leaves no output for a task that raised
    summary = summarize_run("FAILED", "local", run_dir / "run-summary" / "summary")
    assert summary.failed_task == "smoke-test" and summary.models[0].smoke_test is None


def test_each_model_of_the_fan_out_gets_its_own_block(tmp_path):
    run_dir = finished_run(tmp_path / "run")
    finished_run(run_dir, registration=None, index=1, name="gemma-3-4b")
    write_task(branch(run_dir, 1), "not-registered", {}, {"Output": ""})
    summary = summarize_run("SUCCEEDED", "local", run_dir / "run-summary" / "summary")
    assert [model.name for model in summary.models] == ["medgemma-4b", "gemma-3-4b"]
    assert summary.models[0].registered and not summary.models[1].registered
    table = render_summary(summary)
    assert table.count("tuned (GRPO)") == 2 and "model             gemma-3-4b" in table


def test_a_failure_in_the_second_model_is_named(tmp_path):
    run_dir = finished_run(tmp_path / "run")
    write_task(branch(run_dir, 1), "model-entry", {}, entry("gemma-3-4b"))
    write_task(branch(run_dir, 1), "prepare-data", None)
    summary = build_summary("FAILED", tasks_from_local_run(run_dir))
    assert summary.failed_task == "prepare-data" and summary.failed_model == "gemma-3-4b"
    assert summary.models[0].registered
    assert render_summary(summary).splitlines()[0] == "run               FAILED (failed task: prepare-data, model gemma-3-4b)"


def test_the_results_tables_numbers_are_used_when_it_ran(tmp_path):
    """On Vertex several models' steps share task names: the results table's task has each model's numbers."""
    table_row = {"name": "gemma-3-4b", "base_model": "google/gemma-3-4b-it", "recipe": "gemma-3-4b",
                 "baseline_accuracy": 0.479, "tuned_accuracy": 0.535, "n": 1273.0, "registered": False}
    tasks = RunTasks({"results-table": TaskResult("SUCCEEDED", {"table_json": {"models": [table_row]}})}, [],
                     {"compare": TaskResult("SUCCEEDED")})
    summary = build_summary("SUCCEEDED", tasks)
    assert summary.models[0].name == "gemma-3-4b" and summary.models[0].tuned_accuracy == 0.535


def test_several_models_on_vertex_without_a_table_name_the_failed_step_and_invent_no_numbers():
    job = "projects/p/locations/europe-west4/pipelineJobs/medgemma-grpo-2"
    compare = {"taskName": "compare", "state": "SUCCEEDED",
               "outputs": {"comparison_metrics": {"artifacts": [{"metadata": COMPARISON}]}}}
    details = [compare, {**compare}, {"taskName": "tuned-eval", "state": "SUCCEEDED"},
               {"taskName": "tuned-eval", "state": "FAILED"}]
    with FakeVertex() as vertex:
        vertex.state.pipeline_jobs["medgemma-grpo-2"] = {"name": job, "jobDetail": {"taskDetails": details}}
        tasks = tasks_from_vertex(job, api_endpoint=vertex.endpoint, credentials=AnonymousCredentials())
    summary = build_summary("FAILED", tasks)
    assert summary.failed_task == "tuned-eval" and summary.models == []


def detail(task_id: int, parent: int, name: str, state: str = "SUCCEEDED", artifacts: dict | None = None,
           parameters: dict | None = None) -> dict:
    """One PipelineTaskDetail as the REST API returns it: output parameters live in the execution's metadata."""
    return {"taskId": str(task_id), "parentTaskId": str(parent), "taskName": name, "state": state,
            "outputs": {key: {"artifacts": [{"metadata": value}]} for key, value in (artifacts or {}).items()},
            "execution": {"metadata": {f"output:{key}": value for key, value in (parameters or {}).items()}}}


def test_several_models_on_vertex_are_told_apart_by_the_dag_holding_each_model_entry():
    job = "projects/p/locations/europe-west4/pipelineJobs/medgemma-grpo-3"
    planned = [entry("medgemma-4b"), entry("gemma-3-4b")]
    details = [
        detail(1, 0, "exit-handler-1"), detail(2, 1, "check-parameters", parameters={"Output": "one-vm"}),
        detail(3, 1, "plan-models", parameters={"Output": planned}), detail(4, 1, "each-model"),
        # The second model's iteration first: the summary keeps plan-models' order.
        detail(20, 4, "each-model"), detail(21, 20, "model-entry", parameters=entry("gemma-3-4b")),
        detail(22, 20, "compare", artifacts={"comparison_metrics": {**COMPARISON, "passes_gate": 0.0}}),
        detail(23, 20, "tuned-eval", state="FAILED"),
        detail(10, 4, "each-model"), detail(11, 10, "model-entry", parameters=entry("medgemma-4b")),
        detail(12, 10, "compare", artifacts={"comparison_metrics": COMPARISON}),
        detail(13, 10, "condition-branches-6"), detail(14, 13, "gate-passed"),
        detail(15, 14, "register", artifacts={"registered_model": REGISTRATION}),
    ]
    with FakeVertex() as vertex:
        vertex.state.pipeline_jobs["medgemma-grpo-3"] = {"name": job, "jobDetail": {"taskDetails": details}}
        tasks = tasks_from_vertex(job, api_endpoint=vertex.endpoint, credentials=AnonymousCredentials())
    summary = build_summary("FAILED", tasks)
    assert [model.name for model in summary.models] == ["medgemma-4b", "gemma-3-4b"]
    medgemma, gemma = summary.models
    assert medgemma.registered and medgemma.registered_version == "2" and medgemma.base_model == "google/medgemma-4b-it"
    assert gemma.passes_gate is False and not gemma.registered
    assert (summary.failed_task, summary.failed_model) == ("tuned-eval", "gemma-3-4b")

"""How a pipeline run ended, in one summary: its state, the step that failed (if one did) and, for each model
of the run, baseline and tuned accuracy with their CIs, the delta and its p-value, the same two accuracies
scored the notebook's way (reported, never gated) and where the model was registered; when a model was
deployed, the endpoint and the smoke test's numbers.

The pipeline's exit task builds it; it cannot take the steps' outputs as inputs (KFP forbids an exit task
any dependency), so it reads what each step recorded as its artifacts' metadata: on Vertex from the
PipelineJob's task details, under kfp.local from the run folder (``<run>/<task>/executor_output.json``). The
per-model numbers come from each model's steps; where those cannot be told apart, from the results table's
task.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from components.common.artifacts import ModelSummary, RunSummary, SmokeTestNumbers, write_document
from components.common.vertex import init_vertex

logger = logging.getLogger(__name__)

# The pipeline's steps by task name, in run order (pipelines/medgemma_grpo.py names them): the run's own, then
# each model's branch of the fan-out, then the table over all of them.
RUN_STEPS = ("check-parameters", "plan-models")
MODEL_STEPS = ("model-entry", "prepare-data", "baseline-eval", "train", "train-custom-job", "tuned-model",
               "tuned-eval", "compare", "register", "not-registered", "deploy", "smoke-test", "model-result")
TABLE_STEP = "results-table"
SUCCEEDED = "SUCCEEDED"
SUMMARY_FILE = "summary.json"
_ITERATION = re.compile(r"^for-loop-\d+-iteration-(\d+)$")  # kfp.local's folder for one item of a dsl.ParallelFor


@dataclass
class TaskResult:
    """One task of the run: its final state and each output artifact's metadata (name -> dict)."""

    state: str
    artifacts: dict[str, dict[str, Any]] = field(default_factory=dict)
    parameters: dict[str, Any] = field(default_factory=dict)


@dataclass
class RunTasks:
    """The run's tasks: those outside the fan-out by name, and each model's branch by name (in item order).
    ``unattributed``: several models' steps that cannot be told apart (Vertex), the failed one of each name."""

    run: dict[str, TaskResult]
    branches: list[dict[str, TaskResult]]
    unattributed: dict[str, TaskResult] = field(default_factory=dict)


def _task_from_folder(task_dir: Path) -> TaskResult:
    output_file = task_dir / "executor_output.json"
    if not output_file.is_file():
        return TaskResult("FAILED")
    output = json.loads(output_file.read_text(encoding="utf-8"))
    artifacts = {name: (entry.get("artifacts") or [{}])[0].get("metadata", {})
                 for name, entry in output.get("artifacts", {}).items()}
    return TaskResult(SUCCEEDED, artifacts, output.get("parameterValues", {}))


def tasks_from_local_run(run_dir: str | Path) -> RunTasks:
    """kfp.local's run folder: a folder per task that started (``executor_output.json`` once it succeeded), the
    fan-out's tasks under a folder per item."""
    run: dict[str, TaskResult] = {}
    branches: dict[int, dict[str, TaskResult]] = {}
    for task_dir in sorted(p for p in Path(run_dir).iterdir() if p.is_dir()):
        if iteration := _ITERATION.match(task_dir.name):
            branches[int(iteration[1])] = {sub.name: _task_from_folder(sub)
                                           for sub in sorted(task_dir.iterdir()) if sub.is_dir()}
        else:
            run[task_dir.name] = _task_from_folder(task_dir)
    return RunTasks(run, [branches[index] for index in sorted(branches)])


def tasks_from_vertex(job_resource_name: str, *, api_endpoint: str | None = None, credentials: Any = None) -> RunTasks:
    """The PipelineJob's task details: each task's state, its output artifacts' metadata and its output
    parameters (Vertex keeps them in the task's execution metadata as ``output:<name>``).

    A model's steps appear once per model. Each model's branch is the set of tasks under the DAG that holds its
    ``model-entry`` task (``parent_task_id``); where the branches cannot be told apart that way, one model's steps
    are its branch, and with several the failed step is still named while the per-model numbers come from the
    results table's task.
    """
    from google.cloud import aiplatform

    parts = job_resource_name.split("/")  # projects/P/locations/L/pipelineJobs/J
    init_vertex(parts[1], parts[3], api_endpoint, credentials)
    job = aiplatform.PipelineJob.get(job_resource_name)
    details = [type(detail).to_dict(detail, use_integers_for_enums=False) for detail in job.task_details]
    run = {detail["task_name"]: _vertex_task(detail) for detail in details if detail["task_name"] not in MODEL_STEPS}
    in_models = [(detail, _vertex_task(detail)) for detail in details if detail["task_name"] in MODEL_STEPS]
    if branches := _branches_by_parent(details, in_models):
        return RunTasks(run, _in_planned_order(branches, run.get("plan-models")))
    per_model: dict[str, list[TaskResult]] = {}
    for detail, task in in_models:
        per_model.setdefault(detail["task_name"], []).append(task)
    if all(len(found) == 1 for found in per_model.values()):
        return RunTasks(run, [{name: found[0] for name, found in per_model.items()}] if per_model else [])
    # Several models: each step by name, a failed one first, so that the failed step is still named.
    failed_first = {name: min(found, key=lambda task: task.state in (SUCCEEDED, "SKIPPED"))
                    for name, found in per_model.items()}
    return RunTasks(run, [], failed_first)


def _vertex_task(detail: dict[str, Any]) -> TaskResult:
    """One task detail's state, output artifacts' metadata and output parameters."""
    artifacts = {name: (entry.get("artifacts") or [{}])[0].get("metadata") or {}
                 for name, entry in (detail.get("outputs") or {}).items()}
    metadata = (detail.get("execution") or {}).get("metadata") or {}
    parameters = {key.removeprefix("output:"): value for key, value in metadata.items() if key.startswith("output:")}
    return TaskResult(detail.get("state") or "STATE_UNSPECIFIED", artifacts, parameters)


def _entry(branch: dict[str, TaskResult]) -> dict[str, Any]:
    """The branch's model entry (model-entry's outputs: name, base_model, recipe, ...); empty before it ran."""
    return branch["model-entry"].parameters if "model-entry" in branch else {}


def _in_planned_order(branches: list[dict[str, TaskResult]], plan: TaskResult | None) -> list[dict[str, TaskResult]]:
    """The branches in the order plan-models listed the models (its output parameter), where it recorded one."""
    planned = plan.parameters.get("Output") if plan is not None else None
    planned = json.loads(planned) if isinstance(planned, str) else planned
    names = [entry.get("name") for entry in planned if isinstance(entry, dict)] if isinstance(planned, list) else []

    def position(branch: dict[str, TaskResult]) -> int:
        name = _entry(branch).get("name")
        return names.index(name) if name in names else len(names)

    return sorted(branches, key=position)


def _branches_by_parent(details: list[dict[str, Any]],
                        in_models: list[tuple[dict[str, Any], TaskResult]]) -> list[dict[str, TaskResult]]:
    """Each model's tasks, grouped under the DAG holding its model-entry task, in model-entry order; [] when the
    details do not tell the models apart (no parent IDs, or several model-entry tasks under one parent)."""
    parent_of = {detail.get("task_id"): detail.get("parent_task_id") for detail in details}
    roots = [detail.get("parent_task_id") for detail, _ in in_models if detail["task_name"] == "model-entry"]
    if len(roots) < 2 or None in roots or len(set(roots)) != len(roots):
        return []
    branches: list[dict[str, TaskResult]] = [{} for _ in roots]
    for detail, task in in_models:
        ancestor, seen = detail.get("parent_task_id"), set()
        while ancestor is not None and ancestor not in roots and ancestor not in seen:
            seen.add(ancestor)
            ancestor = parent_of.get(ancestor)
        if ancestor in roots:
            branches[roots.index(ancestor)][detail["task_name"]] = task
    return branches


def _interval(metadata: dict[str, Any], low: str, high: str) -> list[float] | None:
    return [metadata[low], metadata[high]] if low in metadata and high in metadata else None


def _recorded_failure(steps: tuple[str, ...], tasks: dict[str, TaskResult]) -> str | None:
    return next((step for step in steps if step in tasks and tasks[step].state not in (SUCCEEDED, "SKIPPED")), None)


def _first_missing(steps: tuple[str, ...], tasks: dict[str, TaskResult]) -> str | None:
    """The first step the run should have reached and did not (kfp.local keeps no record of a task that failed
    before writing outputs); the training route and the gate say which branches were not taken."""
    not_taken = set()
    route = tasks["check-parameters"].parameters.get("Output") if "check-parameters" in tasks else None
    if route:
        not_taken.add("train-custom-job" if route == "one-vm" else "train")
    comparison = tasks["compare"].artifacts.get("comparison_metrics", {}) if "compare" in tasks else {}
    if comparison:
        not_taken.add("register" if not comparison.get("passes_gate") else "not-registered")
    if "register" in not_taken or "register" in tasks:  # deploy runs only after a registration, when asked
        not_taken |= {"deploy", "smoke-test"} - set(tasks)
    return next((step for step in steps if step not in not_taken and step not in tasks), None)


def _failed_step(state: str, tasks: RunTasks) -> tuple[str | None, str | None]:
    """(the step that failed, the model whose branch it is in): the run's own steps, then each model's branch
    in order, then the results table."""
    groups = [(RUN_STEPS, tasks.run, None)]
    groups += [(MODEL_STEPS, {**tasks.run, **branch}, _entry(branch).get("name"))
               for branch in tasks.branches or [tasks.unattributed]]
    groups.append(((TABLE_STEP,), tasks.run, None))
    recorded = next(((step, model) for steps, group, model in groups
                     if (step := _recorded_failure(steps, group))), None)
    if recorded or state == SUCCEEDED:
        return recorded or (None, None)
    return next(((step, model) for steps, group, model in groups if (step := _first_missing(steps, group))),
                (None, None))


def _smoke_test_numbers(metrics: dict[str, Any]) -> SmokeTestNumbers | None:
    """The smoke test's logged metrics (absent: it did not run or did not finish)."""
    if "n" not in metrics:
        return None
    return SmokeTestNumbers(n=int(metrics["n"]),  # Vertex hands metrics back as floats
                            **{key: metrics.get(key) for key in ("format_rate", "accuracy", "latency_p50_s",
                                                                 "latency_p95_s")})


def _model_summary(branch: dict[str, TaskResult], index: int) -> ModelSummary:
    """One model's numbers from what its branch's steps recorded."""

    def artifact(task: str, name: str) -> dict[str, Any]:
        result = branch.get(task)
        return result.artifacts.get(name, {}) if result is not None else {}

    entry = _entry(branch)
    baseline, tuned = artifact("baseline-eval", "metrics"), artifact("tuned-eval", "metrics")
    comparison = artifact("compare", "comparison_metrics")
    registration = artifact("register", "registered_model")
    passes_gate = comparison.get("passes_gate")
    deployment, smoke = artifact("deploy", "deployment"), artifact("smoke-test", "metrics")
    return ModelSummary(
        name=entry.get("name") or f"model {index + 1}",
        base_model=entry.get("base_model"),
        recipe=entry.get("recipe"),
        data_fingerprint=artifact("prepare-data", "prepared_data").get("fingerprint"),
        baseline_accuracy=comparison.get("baseline_accuracy", baseline.get("accuracy")),
        baseline_ci=_interval(baseline, "ci_low", "ci_high"),
        tuned_accuracy=comparison.get("tuned_accuracy", tuned.get("accuracy")),
        tuned_ci=_interval(tuned, "ci_low", "ci_high"),
        baseline_notebook_accuracy=baseline.get("notebook_accuracy"),
        tuned_notebook_accuracy=tuned.get("notebook_accuracy"),
        delta=comparison.get("delta"),
        delta_ci=_interval(comparison, "delta_ci_low", "delta_ci_high"),
        test=artifact("compare", "comparison").get("test"),
        p_value=comparison.get("p_value"),
        n=int(comparison["n"]) if "n" in comparison else None,  # Vertex hands metrics back as floats
        passes_gate=bool(passes_gate) if passes_gate is not None else None,
        registered=bool(registration.get("resource_name")),
        registered_at=registration.get("resource_name"),
        registered_version=registration.get("version"),
        registered_aliases=registration.get("aliases"),
        deployed_to=deployment.get("endpoint"),
        smoke_test=_smoke_test_numbers(smoke),
    )


def build_summary(state: str, tasks: RunTasks, error_message: str | None = None) -> RunSummary:
    """The summary from what the tasks recorded; a value a step did not get to record is None."""
    table = tasks.run.get(TABLE_STEP)
    if tasks.branches or table is None or table.state != SUCCEEDED:
        models = [_model_summary(branch, index) for index, branch in enumerate(tasks.branches)]
    else:  # several models' steps on Vertex: the results table's rows
        models = [ModelSummary.model_validate({**row, "n": int(row["n"])})  # Vertex hands numbers back as floats
                  for row in table.artifacts.get("table_json", {}).get("models", [])]
    failed_task, failed_model = _failed_step(state, tasks)
    return RunSummary(state=state, failed_task=failed_task, failed_model=failed_model, error=error_message or None,
                      models=models)


NOTEBOOK_LABEL = "notebook's scoring"  # the notebook's answer extraction (notebook_extract_answer)
P_VALUE_LABELS = {"mcnemar_exact": "McNemar p-value", "paired_sign_flip": "sign-flip p-value", None: "p-value"}


def _number(value: Any, form: str = ".3f") -> str:
    return format(value, form) if isinstance(value, (int, float)) else "n/a"


def _render_model(model: ModelSummary) -> list[str]:
    def ci(bounds: list[float] | None) -> str:
        return f"[{bounds[0]:.3f}, {bounds[1]:.3f}]" if bounds else ""

    if model.registered:
        where = f"{model.registered_at} (version {model.registered_version})"
    elif model.passes_gate is False:
        where = "not registered (gate not passed)"
    else:
        where = "not registered"
    n = f"   (n = {model.n} paired questions)" if model.n is not None else ""
    about = ", ".join(part for part in (model.base_model, model.recipe and f"recipe {model.recipe}") if part)
    lines = [
        f"{'model':18}{model.name}" + (f" ({about})" if about else ""),
        f"{'':18}{'accuracy':>10}  95% CI   (strict scoring: the reward's and the gate's)",
        f"{'baseline':18}{_number(model.baseline_accuracy):>10}  {ci(model.baseline_ci)}",
        f"{'tuned (GRPO)':18}{_number(model.tuned_accuracy):>10}  {ci(model.tuned_ci)}",
        f"{'delta':18}{_number(model.delta, '+.3f'):>10}  {ci(model.delta_ci)}",
        f"{P_VALUE_LABELS[model.test]:18}{_number(model.p_value, '.2e')}{n}",
        f"{NOTEBOOK_LABEL:18}{_number(model.baseline_notebook_accuracy):>10} -> "
        f"{_number(model.tuned_notebook_accuracy)}   (baseline -> tuned; reported, never gated)",
        f"{'registered':18}{where}",
    ]
    if model.deployed_to:
        lines.append(f"{'deployed':18}{model.deployed_to}")
    if smoke := model.smoke_test:
        lines.append(f"{'smoke test':18}{smoke.n} prompts: format rate {_number(smoke.format_rate, '.2f')}, "
                     f"accuracy {_number(smoke.accuracy, '.2f')}, latency p50 {_number(smoke.latency_p50_s, '.2f')} s, "
                     f"p95 {_number(smoke.latency_p95_s, '.2f')} s")
    return lines


def render_summary(summary: RunSummary) -> str:
    """The summary as a fixed-width table (what the run log and the local run print): a block per model."""
    failed = summary.failed_task and f"failed task: {summary.failed_task}" + (
        f", model {summary.failed_model}" if summary.failed_model else "")
    state = summary.state + (f" ({failed})" if failed else "")
    lines = [f"{'run':18}{state}"]
    for model in summary.models:
        lines += ["", *_render_model(model)]
    return "\n".join(lines)


def summarize_run(
    state: str,
    job_resource_name: str,
    summary_dir: str | Path,
    *,
    error_message: str | None = None,
    api_endpoint: str | None = None,
    credentials: Any = None,
) -> RunSummary:
    """Build the run's summary, log it, and write ``summary.json`` and ``summary.md`` into ``summary_dir``.

    ``job_resource_name``: ``projects/P/locations/L/pipelineJobs/J`` on Vertex; anything else means a kfp.local
    run, whose run folder holds ``summary_dir``'s parent (``<run>/<this task>/<output>``).
    """
    summary_dir = Path(summary_dir)
    if job_resource_name.startswith("projects/"):
        tasks = tasks_from_vertex(job_resource_name, api_endpoint=api_endpoint, credentials=credentials)
    else:
        tasks = tasks_from_local_run(summary_dir.parents[1])
    summary = build_summary(state, tasks, error_message)
    table = render_summary(summary)
    logger.info("run summary\n%s", table)
    summary_dir.mkdir(parents=True, exist_ok=True)
    write_document(summary_dir / SUMMARY_FILE, summary)
    (summary_dir / "summary.md").write_text(f"# Run summary\n\n```\n{table}\n```\n", encoding="utf-8")
    return summary

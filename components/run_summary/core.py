"""How a pipeline run ended, in one summary: its state, the step that failed (if one did), baseline and tuned
accuracy with their CIs, the delta and its p-value, the same two accuracies scored the notebook's way
(reported, never gated), where the model was registered and, when it was deployed,
the endpoint and the smoke test's numbers.

The pipeline's exit task builds it; it cannot take the steps' outputs as inputs (KFP forbids an exit task
any dependency), so it reads what each step recorded as its artifacts' metadata: on Vertex from the
PipelineJob's task details, under kfp.local from the run folder (``<run>/<task>/executor_output.json``).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from components.common.artifacts import RunSummary, SmokeTestNumbers, write_document
from components.common.vertex import init_vertex

logger = logging.getLogger(__name__)

# The pipeline's steps by task name, in run order (pipelines/medgemma_grpo.py names them).
STEPS = ("check-parameters", "prepare-data", "baseline-eval", "train", "train-custom-job", "tuned-model",
         "tuned-eval", "compare", "register", "deploy", "smoke-test")
SUCCEEDED = "SUCCEEDED"
SUMMARY_FILE = "summary.json"


@dataclass
class TaskResult:
    """One task of the run: its final state and each output artifact's metadata (name -> dict)."""

    state: str
    artifacts: dict[str, dict[str, Any]] = field(default_factory=dict)
    parameters: dict[str, Any] = field(default_factory=dict)


def tasks_from_local_run(run_dir: str | Path) -> dict[str, TaskResult]:
    """kfp.local's run folder: a folder per task that started; ``executor_output.json`` once it succeeded."""
    tasks = {}
    for task_dir in sorted(p for p in Path(run_dir).iterdir() if p.is_dir()):
        output_file = task_dir / "executor_output.json"
        if not output_file.is_file():
            tasks[task_dir.name] = TaskResult("FAILED")
            continue
        output = json.loads(output_file.read_text(encoding="utf-8"))
        artifacts = {name: (entry.get("artifacts") or [{}])[0].get("metadata", {})
                     for name, entry in output.get("artifacts", {}).items()}
        tasks[task_dir.name] = TaskResult(SUCCEEDED, artifacts, output.get("parameterValues", {}))
    return tasks


def tasks_from_vertex(job_resource_name: str, *, api_endpoint: str | None = None, credentials: Any = None) -> dict[str, TaskResult]:
    """The PipelineJob's task details: each task's state and its output artifacts' metadata."""
    from google.cloud import aiplatform

    parts = job_resource_name.split("/")  # projects/P/locations/L/pipelineJobs/J
    init_vertex(parts[1], parts[3], api_endpoint, credentials)
    job = aiplatform.PipelineJob.get(job_resource_name)
    tasks = {}
    for detail in job.task_details:
        detail = type(detail).to_dict(detail, use_integers_for_enums=False)
        artifacts = {name: (entry.get("artifacts") or [{}])[0].get("metadata") or {}
                     for name, entry in (detail.get("outputs") or {}).items()}
        tasks[detail["task_name"]] = TaskResult(detail.get("state") or "STATE_UNSPECIFIED", artifacts)
    return tasks


def _interval(metadata: dict[str, Any], low: str, high: str) -> list[float] | None:
    return [metadata[low], metadata[high]] if low in metadata and high in metadata else None


def _failed_step(state: str, tasks: dict[str, TaskResult]) -> str | None:
    """The step that failed: one recorded as failed, else (kfp.local keeps no record of a task that failed
    before writing outputs) the first step the run should have reached and did not finish."""
    failed = [step for step in STEPS if step in tasks and tasks[step].state not in (SUCCEEDED, "SKIPPED")]
    if failed or state == SUCCEEDED:
        return failed[0] if failed else None
    not_taken = set()
    route = tasks["check-parameters"].parameters.get("Output") if "check-parameters" in tasks else None
    if route:
        not_taken.add("train-custom-job" if route == "one-vm" else "train")
    comparison = tasks["compare"].artifacts.get("comparison_metrics", {}) if "compare" in tasks else {}
    if comparison and not comparison.get("passes_gate"):
        not_taken.add("register")
    if "register" in not_taken or "register" in tasks:  # deploy runs only after a registration, when asked
        not_taken |= {"deploy", "smoke-test"} - set(tasks)
    return next((step for step in STEPS if step not in not_taken and step not in tasks), None)


def _smoke_test_numbers(metrics: dict[str, Any]) -> SmokeTestNumbers | None:
    """The smoke test's logged metrics (absent: it did not run or did not finish)."""
    if "n" not in metrics:
        return None
    return SmokeTestNumbers(n=int(metrics["n"]),  # Vertex hands metrics back as floats
                            **{key: metrics.get(key) for key in ("format_rate", "accuracy", "latency_p50_s",
                                                                 "latency_p95_s")})


def build_summary(state: str, tasks: dict[str, TaskResult], error_message: str | None = None) -> RunSummary:
    """The summary from what the tasks recorded; a value a step did not get to record is None."""

    def artifact(task: str, name: str) -> dict[str, Any]:
        result = tasks.get(task)
        return result.artifacts.get(name, {}) if result is not None else {}

    baseline, tuned = artifact("baseline-eval", "metrics"), artifact("tuned-eval", "metrics")
    comparison = artifact("compare", "comparison_metrics")
    registration = artifact("register", "registered_model")
    prepared = artifact("prepare-data", "prepared_data")
    deployment, smoke = artifact("deploy", "deployment"), artifact("smoke-test", "metrics")
    passes_gate = comparison.get("passes_gate")
    return RunSummary(
        state=state,
        failed_task=_failed_step(state, tasks),
        error=error_message or None,
        data_fingerprint=prepared.get("fingerprint"),
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


NOTEBOOK_LABEL = "notebook's scoring"  # the notebook's answer extraction (notebook_extract_answer)
P_VALUE_LABELS = {"mcnemar_exact": "McNemar p-value", "paired_sign_flip": "sign-flip p-value", None: "p-value"}


def render_summary(summary: RunSummary) -> str:
    """The summary as a fixed-width table (what the run log and the local run print)."""

    def number(value: Any, form: str = ".3f") -> str:
        return format(value, form) if isinstance(value, (int, float)) else "n/a"

    def ci(bounds: list[float] | None) -> str:
        return f"[{bounds[0]:.3f}, {bounds[1]:.3f}]" if bounds else ""

    state = summary.state + (f" (failed task: {summary.failed_task})" if summary.failed_task else "")
    if summary.registered:
        where = f"{summary.registered_at} (version {summary.registered_version})"
    elif summary.passes_gate is False:
        where = "not registered (gate not passed)"
    else:
        where = "not registered"
    n = f"   (n = {summary.n} paired questions)" if summary.n is not None else ""
    deployed = [f"{'deployed':18}{summary.deployed_to}"] if summary.deployed_to else []
    smoke = summary.smoke_test
    if smoke:
        deployed.append(f"{'smoke test':18}{smoke.n} prompts: format rate {number(smoke.format_rate, '.2f')}, "
                        f"accuracy {number(smoke.accuracy, '.2f')}, latency p50 {number(smoke.latency_p50_s, '.2f')} s, "
                        f"p95 {number(smoke.latency_p95_s, '.2f')} s")
    return "\n".join([
        f"{'run':18}{state}",
        f"{'':18}{'accuracy':>10}  95% CI   (strict scoring: the reward's and the gate's)",
        f"{'baseline':18}{number(summary.baseline_accuracy):>10}  {ci(summary.baseline_ci)}",
        f"{'tuned (GRPO)':18}{number(summary.tuned_accuracy):>10}  {ci(summary.tuned_ci)}",
        f"{'delta':18}{number(summary.delta, '+.3f'):>10}  {ci(summary.delta_ci)}",
        f"{P_VALUE_LABELS[summary.test]:18}{number(summary.p_value, '.2e')}{n}",
        f"{NOTEBOOK_LABEL:18}{number(summary.baseline_notebook_accuracy):>10} -> "
        f"{number(summary.tuned_notebook_accuracy)}   (baseline -> tuned; reported, never gated)",
        f"{'registered':18}{where}",
        *deployed,
    ])


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

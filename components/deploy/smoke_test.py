"""Smoke-test a deployment: N prepared test prompts through the endpoint, answers read as training and eval read them.

Records p50/p95 latency, format rate and accuracy on those N in ``smoke_test.json``; fails (after rolling the
traffic back to the version that held it before, when there was one) when any request errored or the format
rate is below ``min_format_rate``. Logs and the report carry counts and timings only, never prompt or answer text.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from components.common.answers import extract_answer
from components.common.artifacts import Deployment, artifact_file
from components.common.errors import UserError
from components.common.jsonl import read_jsonl, write_json
from components.common.recipes import Recipe, load_recipe
from components.deploy.chat import ChatClient, EndpointError, OpenAIServer, Transport, VertexPredict
from components.deploy.core import load_deployment, rollback, undeploy

log = logging.getLogger(__name__)

REPORT_FILE = "smoke_test.json"
SERVER_LOG_FILE = "local_server.log"


class SmokeTestFailed(UserError):
    """The endpoint errored or answered out of format: one line saying which, and what was rolled back."""


def load_prompts(data_path: str | Path, count: int) -> list[dict[str, Any]]:
    """The first ``count`` rows of data prep's test.jsonl (a file, or the folder holding it), checked."""
    if count < 1:
        raise UserError(f"prompts must be >= 1, got {count}")
    path = artifact_file(data_path, "test.jsonl", "test_data", "data prep")
    rows = read_jsonl(path)[:count]
    if not rows:
        raise UserError(f"test_data: {path} holds no rows")
    for number, row in enumerate(rows, start=1):
        missing = [key for key in ("id", "prompt", "answer", "letters") if key not in row]
        if missing:
            raise UserError(f"test_data: {path.name} row {number} lacks {', '.join(missing)}")
        if not (isinstance(row["prompt"], list) and row["prompt"]):
            raise UserError(f"test_data: {path.name} row {number} (id {row['id']!r}): 'prompt' must be chat messages")
    return rows


def percentile(values: list[float], fraction: float) -> float:
    """Nearest-rank percentile (a value that was measured)."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(fraction * len(ordered)) - 1)]


@contextlib.contextmanager
def open_transport(deployment: Deployment, *, work_dir: Path, api_endpoint: str | None,
                   credentials: Any, timeout_s: float) -> Iterator[Transport]:
    """Vertex: the endpoint's predict route. Folder endpoint: a local server over the new version's files."""
    if deployment.backend == "vertex":
        from components.deploy.core import vertex_endpoint

        yield VertexPredict(vertex_endpoint(deployment.endpoint, api_endpoint, credentials), timeout_s=timeout_s)
    else:
        from components.deploy.local_server import transformers_serve

        with transformers_serve(deployment.model_uri, log_path=work_dir / SERVER_LOG_FILE) as base_url:
            yield OpenAIServer(base_url, timeout_s=timeout_s)


def run_prompts(client: ChatClient, rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Send every prompt once; the metrics over them (failed requests count as errors, not as answers)."""
    latencies, errors, formatted, correct, served_by = [], [], 0, 0, []
    for row in rows:
        try:
            answer = client.complete(row["prompt"])
        except EndpointError as err:
            errors.append(str(err))
            continue
        latencies.append(answer.latency_s)
        served_by.append(answer.served_by)
        extracted = extract_answer(answer.text, row["letters"])
        formatted += extracted is not None
        correct += extracted == row["answer"]
    answered = len(latencies)
    return {
        "n": len(rows),
        "answered": answered,
        "errors": len(errors),
        "first_error": errors[0] if errors else None,
        "format_rate": formatted / len(rows),
        "accuracy": correct / len(rows),
        "latency_p50_s": round(percentile(latencies, 0.5), 4) if latencies else None,
        "latency_p95_s": round(percentile(latencies, 0.95), 4) if latencies else None,
        "served_by": {key: served_by.count(key) for key in sorted(set(served_by)) if key},
    }


def smoke_test(
    deployment_path: str | Path,
    test_data: str | Path,
    output_dir: str | Path,
    *,
    recipe: str,
    overrides: list[str] | None = None,
    prompts: int = 20,
    min_format_rate: float = 0.9,
    undeploy_after: bool = False,
    request_timeout_s: float = 120.0,
    api_endpoint: str | None = None,
    credentials: Any = None,
) -> dict[str, Any]:
    """Smoke-test the deployment in ``deployment_path``; write and return the report, or raise SmokeTestFailed."""
    if not 0 <= min_format_rate <= 1:
        raise UserError(f"min_format_rate must be in [0, 1], got {min_format_rate}")
    deployment = load_deployment(deployment_path)
    rows = load_prompts(test_data, prompts)
    spec = load_recipe(recipe, overrides)
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    log.info("smoke test: %d prompts through %s (%s backend)", len(rows), deployment.endpoint, deployment.backend)

    report: dict[str, Any] = {"endpoint": deployment.endpoint, "deployed_model_id": deployment.deployed_model_id,
                              "model": deployment.model, "backend": deployment.backend,
                              "min_format_rate": min_format_rate, "rolled_back": False, "undeployed": False}
    try:
        failure = _send_prompts(deployment, rows, spec, report, work_dir=output_dir, api_endpoint=api_endpoint,
                                credentials=credentials, timeout_s=request_timeout_s)
        report["passed"] = failure is None
        if failure is not None:
            report["rolled_back"] = rollback(deployment, api_endpoint=api_endpoint, credentials=credentials)
            after = ("traffic rolled back to the previous version" if report["rolled_back"]
                     else "no previous version to roll back to")
            raise SmokeTestFailed(f"smoke test failed on {deployment.endpoint}: {failure}; {after}")
    finally:
        if undeploy_after and not report["rolled_back"]:
            undeploy(deployment, api_endpoint=api_endpoint, credentials=credentials)
            report["undeployed"] = True
        write_json(output_dir / REPORT_FILE, report)
    return report


def _send_prompts(deployment: Deployment, rows: list[dict[str, Any]], spec: Recipe, report: dict[str, Any], *,
                  work_dir: Path, api_endpoint: str | None, credentials: Any, timeout_s: float) -> str | None:
    """Fill ``report`` with the prompts' metrics; what failed, or None."""
    decoding = spec.evaluation
    try:
        with open_transport(deployment, work_dir=work_dir, api_endpoint=api_endpoint, credentials=credentials,
                            timeout_s=timeout_s) as transport:
            client = ChatClient(transport, max_tokens=decoding.max_new_tokens,
                                temperature=decoding.temperature if decoding.do_sample else 0.0,
                                top_p=decoding.top_p if decoding.do_sample else 1.0, seed=decoding.seed)
            report.update(run_prompts(client, rows))
    except EndpointError as err:  # the endpoint never answered (a local server that did not start)
        return str(err)
    log.info("smoke test: %d/%d answered, format rate %.3f, accuracy %.3f, latency p50 %s s p95 %s s",
             report["answered"], report["n"], report["format_rate"], report["accuracy"],
             report["latency_p50_s"], report["latency_p95_s"])
    return _failure(report, report["min_format_rate"])


def _failure(report: dict[str, Any], min_format_rate: float) -> str | None:
    if report["errors"]:
        return f"{report['errors']} of {report['n']} requests failed (first: {report['first_error']})"
    if report["format_rate"] < min_format_rate:
        return (f"format rate {report['format_rate']:.3f} is below min_format_rate {min_format_rate} "
                f"({report['n']} prompts)")
    return None

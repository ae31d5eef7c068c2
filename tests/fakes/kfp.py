"""A loopback stand-in for the Kubeflow Pipelines v2 REST API (``/apis/v2beta1``), recording what kfp.Client sends.

It answers exactly what ``kfp.Client(host=...).create_run_from_pipeline_package`` and ``get_run``
call: the health check, experiments listed by a ``display_name`` EQUALS filter and created, runs created (the
pipeline spec inline) and read back. A created run reads back as ``final_state`` (``SUCCEEDED`` unless a test sets
another).
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import parse_qs, urlsplit

from fakes.loopback import LoopbackServer, RecordedRequest

API = "/apis/v2beta1"


@dataclass
class _State:
    requests: list[RecordedRequest] = field(default_factory=list)
    experiments: dict[str, dict[str, Any]] = field(default_factory=dict)  # id -> experiment
    runs: dict[str, dict[str, Any]] = field(default_factory=dict)  # id -> run
    lock: threading.Lock = field(default_factory=threading.Lock)


def _display_name_filter(filter_text: str) -> str | None:
    if not filter_text:
        return None
    [predicate] = json.loads(filter_text)["predicates"]
    if predicate["key"] != "display_name" or predicate["operation"] not in ("EQUALS", 1):
        raise ValueError(f"fake KFP: unsupported filter {filter_text!r}")
    return predicate["stringValue"]


class FakeKfp(LoopbackServer):
    """``with FakeKfp() as kfp_api: kfp.Client(host=kfp_api.endpoint)``; ``kfp_api.requests`` lists the calls."""

    def __init__(self) -> None:
        self._state = state = _State()
        self.final_state = "SUCCEEDED"  # what a created run reads back as
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def _reply(self, status: int, body: dict[str, Any]) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _handle(self, method: str) -> None:
                url = urlsplit(self.path)
                query = {key: values[-1] for key, values in parse_qs(url.query).items()}
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length)) if length else None
                with state.lock:
                    state.requests.append(RecordedRequest(method, url.path, query, body))
                    status, reply = self._route(method, url.path, query, body)
                self._reply(status, reply)

            def _route(self, method, path, query, body):
                if (method, path) == ("GET", f"{API}/healthz"):
                    return 200, {"multi_user": False}
                if (method, path) == ("GET", f"{API}/experiments"):
                    wanted = _display_name_filter(query.get("filter", ""))
                    found = [e for e in state.experiments.values() if wanted in (None, e["display_name"])]
                    return 200, {"experiments": found, "total_size": len(found)}
                if (method, path) == ("POST", f"{API}/experiments"):
                    experiment = {**body, "experiment_id": f"exp-{len(state.experiments) + 1}",
                                  "created_at": "2026-12-06T00:00:00Z", "storage_state": "AVAILABLE"}
                    state.experiments[experiment["experiment_id"]] = experiment
                    return 200, experiment
                if (method, path) == ("POST", f"{API}/runs"):
                    if not body.get("pipeline_spec") or not body.get("experiment_id"):
                        return 400, {"error": "a run needs a pipeline_spec and an experiment_id", "code": 3}
                    run = {**body, "run_id": f"run-{len(state.runs) + 1}", "state": "PENDING",
                           "created_at": "2026-12-06T00:00:00Z", "storage_state": "AVAILABLE"}
                    state.runs[run["run_id"]] = run
                    return 200, run
                if method == "GET" and path.startswith(f"{API}/runs/"):
                    run = state.runs.get(path.rsplit("/", 1)[1])
                    if run is None:
                        return 404, {"error": "run not found", "code": 5}
                    return 200, {**run, "state": fake.final_state, "finished_at": "2026-12-06T01:00:00Z"}
                return 404, {"error": f"fake KFP: no route for {method} {path}", "code": 5}

            def do_GET(self) -> None:
                self._handle("GET")

            def do_POST(self) -> None:
                self._handle("POST")

        super().__init__(Handler)

    @property
    def requests(self) -> list[RecordedRequest]:
        with self._state.lock:
            return list(self._state.requests)

    @property
    def runs(self) -> list[dict[str, Any]]:
        with self._state.lock:
            return list(self._state.runs.values())

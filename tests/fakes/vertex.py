"""A loopback stand-in for the Vertex AI REST API (v1), recording what the real aiplatform SDK sends.

It implements just what the register step and pipelines/submit.py call, with the service's documented
semantics where the tests depend on them: model versions numbered per model, the first version always
``default``, an alias given to a new version taken from the old one, list filters on ``display_name`` and
``labels.KEY``. Point the SDK at it with ``aiplatform.init(api_transport="rest",
api_endpoint=server.endpoint)``; the ``http://`` scheme is what makes the REST transport use plain HTTP.
"""

from __future__ import annotations

import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from fakes.loopback import LoopbackServer

_LOCATION = r"projects/(?P<project>[^/]+)/locations/(?P<location>[^/]+)"
_MODEL = _LOCATION + r"/models/(?P<model>[^/@:]+)(@(?P<version>[^/:]+))?"


@dataclass
class RecordedRequest:
    method: str
    path: str
    query: dict[str, str]
    body: Any


@dataclass
class _State:
    requests: list[RecordedRequest] = field(default_factory=list)
    pipeline_jobs: dict[str, dict[str, Any]] = field(default_factory=dict)
    # model id -> list of versions (dicts in REST JSON form), version i at index i - 1
    models: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    evaluations: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # "id@version" -> evaluations
    lock: threading.Lock = field(default_factory=threading.Lock)


def _matches(filter_text: str, resource: dict[str, Any]) -> bool:
    """``display_name="x" AND labels.k="v"`` style filters (the subset the SDK callers here use)."""
    for clause in filter(None, (c.strip() for c in re.split(r"\s+AND\s+", filter_text or ""))):
        key, _, value = clause.partition("=")
        key, value = key.strip(), value.strip().strip('"')
        if key in ("display_name", "displayName"):
            actual = resource.get("displayName")
        elif key.startswith("labels."):
            actual = resource.get("labels", {}).get(key[len("labels.") :])
        else:
            raise ValueError(f"fake Vertex: unsupported filter clause {clause!r}")
        if actual != value:
            return False
    return True


class FakeVertex(LoopbackServer):
    """Start with ``with FakeVertex() as vertex:``; ``vertex.endpoint`` is the ``http://`` API endpoint.

    ``handler``: a subclass of this module's handler, for a test that serves more of the API.
    """

    def __init__(self, handler: type | None = None, **handler_attributes) -> None:
        self.state = _State()
        handler = type("Handler", (handler or _Handler,), {"state": self.state, **handler_attributes})
        super().__init__(handler)

    @property
    def requests(self) -> list[RecordedRequest]:
        return list(self.state.requests)

    def requests_to(self, method: str, path_pattern: str) -> list[RecordedRequest]:
        return [r for r in self.requests if r.method == method and re.search(path_pattern, r.path)]

    def model_versions(self, model_id: str) -> list[dict[str, Any]]:
        return self.state.models[model_id]


class _Handler(BaseHTTPRequestHandler):
    state: _State

    def log_message(self, format: str, *args: Any) -> None:  # keep pytest output clean
        pass

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def _dispatch(self, method: str) -> None:
        parts = urlsplit(self.path)
        path = unquote(parts.path)
        query = {key: values[0] for key, values in parse_qs(parts.query).items()}
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        body = json.loads(raw) if raw else None
        with self.state.lock:
            self.state.requests.append(RecordedRequest(method, path, query, body))
            try:
                status, payload = self._route(method, path.removeprefix("/v1/"), query, body)
            except KeyError as err:
                status, payload = 404, {"error": {"code": 404, "message": f"not found: {err}", "status": "NOT_FOUND"}}
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    # ------------------------------------------------------------------ routes

    def _route(self, method: str, path: str, query: dict[str, str], body: Any) -> tuple[int, Any]:
        routes = [
            ("POST", _LOCATION + r"/pipelineJobs$", self._create_pipeline_job),
            ("GET", _LOCATION + r"/pipelineJobs/(?P<job>[^/]+)$", self._get_pipeline_job),
            ("GET", _LOCATION + r"/models$", self._list_models),
            ("POST", _LOCATION + r"/models:upload$", self._upload_model),
            ("GET", _MODEL + r":listVersions$", self._list_versions),
            ("POST", _MODEL + r"/evaluations:import$", self._import_evaluation),
            ("GET", _MODEL + r"/evaluations$", self._list_evaluations),
            ("GET", _MODEL + r"$", self._get_model),
        ]
        for route_method, pattern, handler in routes:
            match = re.fullmatch(pattern, path)
            if match and method == route_method:
                return 200, handler(match.groupdict(), query, body)
        return 404, {"error": {"code": 404, "message": f"fake Vertex has no route {method} {path}"}}

    def _create_pipeline_job(self, ids: dict[str, str], query: dict[str, str], body: Any) -> Any:
        job_id = query.get("pipelineJobId", f"job-{len(self.state.pipeline_jobs) + 1}")
        job = {**body, "name": f"projects/{ids['project']}/locations/{ids['location']}/pipelineJobs/{job_id}"}
        job["state"] = "PIPELINE_STATE_PENDING"
        self.state.pipeline_jobs[job_id] = job
        return job

    def _get_pipeline_job(self, ids: dict[str, str], query: dict[str, str], body: Any) -> Any:
        job = self.state.pipeline_jobs[ids["job"]]
        job["state"] = "PIPELINE_STATE_SUCCEEDED"  # the run "finishes" when first polled
        return job

    def _list_models(self, ids: dict[str, str], query: dict[str, str], body: Any) -> Any:
        defaults = [self._default_version(model_id) for model_id in self.state.models]
        return {"models": [m for m in defaults if _matches(query.get("filter", ""), m)]}

    def _default_version(self, model_id: str) -> dict[str, Any]:
        return next(v for v in self.state.models[model_id] if "default" in v["versionAliases"])

    def _upload_model(self, ids: dict[str, str], query: dict[str, str], body: Any) -> Any:
        requested = body["model"]
        parent = body.get("parentModel")
        if parent:
            model_id = parent.rsplit("/", 1)[-1]
            versions = self.state.models[model_id]
        else:
            model_id = str(1000 + len(self.state.models))
            versions = self.state.models.setdefault(model_id, [])
        aliases = list(requested.get("versionAliases", []))
        if not versions and "default" not in aliases:
            aliases.append("default")  # the first version is always the default
        for older in versions:  # an alias names one version: the new one takes it
            older["versionAliases"] = [a for a in older["versionAliases"] if a not in aliases]
        version_id = str(len(versions) + 1)
        name = f"projects/{ids['project']}/locations/{ids['location']}/models/{model_id}"
        versions.append({**requested, "name": name, "versionId": version_id, "versionAliases": aliases})
        return {
            "name": f"{name}/operations/upload-{version_id}",
            "done": True,
            "response": {
                "@type": "type.googleapis.com/google.cloud.aiplatform.v1.UploadModelResponse",
                "model": name,
                "modelVersionId": version_id,
            },
        }

    def _version(self, ids: dict[str, str]) -> dict[str, Any]:
        versions = self.state.models[ids["model"]]
        wanted = ids.get("version")
        if not wanted:
            return self._default_version(ids["model"])
        return next(v for v in versions if v["versionId"] == wanted or wanted in v["versionAliases"])

    def _get_model(self, ids: dict[str, str], query: dict[str, str], body: Any) -> Any:
        return self._version(ids)

    def _list_versions(self, ids: dict[str, str], query: dict[str, str], body: Any) -> Any:
        versions = self.state.models[ids["model"]]
        return {"models": [v for v in versions if _matches(query.get("filter", ""), v)]}

    def _evaluation_key(self, ids: dict[str, str]) -> str:
        return f"{ids['model']}@{self._version(ids)['versionId']}"

    def _import_evaluation(self, ids: dict[str, str], query: dict[str, str], body: Any) -> Any:
        key = self._evaluation_key(ids)
        evaluations = self.state.evaluations.setdefault(key, [])
        name = f"projects/{ids['project']}/locations/{ids['location']}/models/{ids['model']}/evaluations/{len(evaluations) + 1}"
        evaluation = {**body["modelEvaluation"], "name": name}
        evaluations.append(evaluation)
        return evaluation

    def _list_evaluations(self, ids: dict[str, str], query: dict[str, str], body: Any) -> Any:
        return {"modelEvaluations": self.state.evaluations.get(self._evaluation_key(ids), [])}

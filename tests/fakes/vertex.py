"""A loopback stand-in for the Vertex AI REST API (v1), recording what the real aiplatform SDK sends.

It implements just what the register and deploy steps and pipelines/submit.py call, with the service's documented
semantics where the tests depend on them: model versions numbered per model, the first version always
``default``, an alias given to a new version taken from the old one, list filters on ``display_name`` and
``labels.KEY``; endpoints with deployed models and a traffic split (key ``"0"`` in a deploy request names
the model being deployed; a deployed model that is undeployed leaves the split), and ``:predict`` answered
by ``predict_reply(instance, deployed_model)`` from the deployed model that the traffic split picks. Point the SDK at it with ``aiplatform.init(api_transport="rest",
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

from fakes.loopback import LoopbackServer, RecordedRequest

_LOCATION = r"projects/(?P<project>[^/]+)/locations/(?P<location>[^/]+)"
_MODEL = _LOCATION + r"/models/(?P<model>[^/@:]+)(@(?P<version>[^/:]+))?"
_ENDPOINT = _LOCATION + r"/endpoints/(?P<endpoint>[^/:]+)"


@dataclass
class _State:
    requests: list[RecordedRequest] = field(default_factory=list)
    pipeline_jobs: dict[str, dict[str, Any]] = field(default_factory=dict)
    # model id -> list of versions (dicts in REST JSON form), version i at index i - 1
    models: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    evaluations: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # "id@version" -> evaluations
    endpoints: dict[str, dict[str, Any]] = field(default_factory=dict)  # endpoint id -> Endpoint (REST JSON)
    next_deployed_model_id: int = 5000
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

    def answer_predictions_with(self, reply) -> None:
        """``reply(instance, deployed_model)``: the prediction, or ``(status, message)`` to fail the request."""
        self._server.RequestHandlerClass.predict_reply = staticmethod(reply)

    def endpoint_named(self, display_name: str) -> dict[str, Any]:
        return next(e for e in self.state.endpoints.values() if e["displayName"] == display_name)


def _done(name: str, response_type: str, response: dict[str, Any]) -> dict[str, Any]:
    """A long-running operation that has already finished (the SDK then reads ``response`` without polling)."""
    return {"name": name, "done": True,
            "response": {"@type": f"type.googleapis.com/google.cloud.aiplatform.v1.{response_type}", **response}}


class _Handler(BaseHTTPRequestHandler):
    state: _State
    predict_reply: Any = None  # set by FakeVertex.answer_predictions_with

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
            ("GET", _LOCATION + r"/endpoints$", self._list_endpoints),
            ("POST", _LOCATION + r"/endpoints$", self._create_endpoint),
            ("GET", _ENDPOINT + r"$", self._get_endpoint),
            ("POST", _ENDPOINT + r":deployModel$", self._deploy_model),
            ("POST", _ENDPOINT + r":undeployModel$", self._undeploy_model),
            ("POST", _ENDPOINT + r":predict$", self._predict),
        ]
        for route_method, pattern, handler in routes:
            match = re.fullmatch(pattern, path)
            if match and method == route_method:
                result = handler(match.groupdict(), query, body)
                return result if isinstance(result, tuple) else (200, result)
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
        # A model with a custom serving container deploys on dedicated machines only.
        versions.append({**requested, "name": name, "versionId": version_id, "versionAliases": aliases,
                         "supportedDeploymentResourcesTypes": ["DEDICATED_RESOURCES"]})
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

    # ------------------------------------------------------------------ endpoints

    def _list_endpoints(self, ids: dict[str, str], query: dict[str, str], body: Any) -> Any:
        return {"endpoints": [e for e in self.state.endpoints.values() if _matches(query.get("filter", ""), e)]}

    def _create_endpoint(self, ids: dict[str, str], query: dict[str, str], body: Any) -> Any:
        endpoint_id = str(7000 + len(self.state.endpoints))
        name = f"projects/{ids['project']}/locations/{ids['location']}/endpoints/{endpoint_id}"
        self.state.endpoints[endpoint_id] = {**body, "name": name, "deployedModels": [], "trafficSplit": {}}
        return _done(f"{name}/operations/create", "Endpoint", self.state.endpoints[endpoint_id])

    def _get_endpoint(self, ids: dict[str, str], query: dict[str, str], body: Any) -> Any:
        return self.state.endpoints[ids["endpoint"]]

    def _deploy_model(self, ids: dict[str, str], query: dict[str, str], body: Any) -> Any:
        endpoint = self.state.endpoints[ids["endpoint"]]
        deployed_id = str(self.state.next_deployed_model_id)
        self.state.next_deployed_model_id += 1
        requested = body["deployedModel"]
        model, _, version = requested["model"].partition("@")
        deployed = {**requested, "id": deployed_id, "model": model, "modelVersionId": version or "1"}
        endpoint["deployedModels"].append(deployed)
        split = {(deployed_id if key == "0" else key): value for key, value in body.get("trafficSplit", {}).items()}
        if sum(split.values()) != 100:
            return 400, {"error": {"code": 400, "message": f"traffic split must sum to 100, got {split}"}}
        endpoint["trafficSplit"] = split
        return _done(f"{endpoint['name']}/operations/deploy-{deployed_id}", "DeployModelResponse",
                     {"deployedModel": deployed})

    def _undeploy_model(self, ids: dict[str, str], query: dict[str, str], body: Any) -> Any:
        endpoint = self.state.endpoints[ids["endpoint"]]
        deployed_id = body["deployedModelId"]
        endpoint["deployedModels"] = [m for m in endpoint["deployedModels"] if m["id"] != deployed_id]
        split = body.get("trafficSplit") or {}
        if endpoint["deployedModels"] and sum(split.values()) != 100:
            return 400, {"error": {"code": 400, "message": f"traffic split must sum to 100, got {split}"}}
        endpoint["trafficSplit"] = split
        return _done(f"{endpoint['name']}/operations/undeploy-{deployed_id}", "UndeployModelResponse", {})

    def _predict(self, ids: dict[str, str], query: dict[str, str], body: Any) -> Any:
        endpoint = self.state.endpoints[ids["endpoint"]]
        split = endpoint["trafficSplit"]
        if not split:
            return 400, {"error": {"code": 400, "message": "the endpoint has no deployed model with traffic"}}
        # Deterministic stand-in for the weighted pick: the n-th request goes where n falls in the split.
        position = sum(1 for r in self.state.requests if r.path.endswith(":predict")) * 37 % 100
        for deployed_id, share in sorted(split.items()):
            position -= share
            if position < 0:
                break
        deployed = next(m for m in endpoint["deployedModels"] if m["id"] == deployed_id)
        reply = self.predict_reply(body["instances"][0], deployed)
        if isinstance(reply, tuple):
            status, message = reply
            return status, {"error": {"code": status, "message": message}}
        return {"predictions": [reply], "deployedModelId": deployed_id, "model": deployed["model"],
                "modelVersionId": deployed["modelVersionId"]}

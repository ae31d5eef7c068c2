"""Submit the compiled pipeline to Vertex AI Pipelines, or to a self-hosted Kubeflow Pipelines cluster, and print
where to watch the run.

    python pipelines/compile.py --output medgemma_grpo_pipeline.yaml ...
    python pipelines/submit.py --project P --region us-central1 --pipeline-root gs://BUCKET/pipeline-root \\
        --service-account runner@P.iam.gserviceaccount.com --hf-token-secret projects/P/secrets/hf-token \\
        --param recipe=medgemma-4b-h100 --labels team=ml,purpose=medqa --wait

The Hugging Face token is never a parameter value: ``--hf-token-secret`` passes the Secret Manager
*resource name*, which the steps read at run time with the run's service account
(components/common/secrets.py). A ``--param`` value that looks like a token is refused.

``--encryption-key``, ``--network`` and ``--service-account`` set the PipelineJob's own and also fill the
template's parameters of the same names (unless ``--param`` gives them), so that the training custom job and the
registered model get them too. Every other parameter keeps the template's default, as in a console run.

A self-hosted KFP cluster (a template compiled with ``--target kfp``; docs/kfp.md)::

    python pipelines/compile.py --target kfp --output medgemma_grpo_kfp.yaml ...
    python pipelines/submit.py --target kfp --host http://localhost:8080 --template medgemma_grpo_kfp.yaml \
        --experiment medgemma-grpo --param recipe=medgemma-4b-h100 --wait

goes through ``kfp.Client(host=...).create_run_from_pipeline_package``; ``--service-account`` is then the run's
Kubernetes service account, and the Vertex-only flags (project, region, CMEK, network, labels, job id) are refused.

Rerunning: in the Google Cloud console open Vertex AI > Pipelines > Runs, select the run and press
"Clone" (the form comes filled with the same template, parameters, service account, network and CMEK key;
change what you need and submit). With caching on, finished steps whose inputs did not change are reused,
so a clone of a failed run resumes after the last successful step. Or rerun this command (a new job id).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # run as a script from anywhere: make `components` importable
    sys.path.insert(0, str(REPO_ROOT))

from components.common.errors import UserError, choices_error, cli_main  # noqa: E402
from components.common.secrets import looks_like_token, secret_version_name  # noqa: E402
from components.preflight.core import TARGETS as ALL_TARGETS  # noqa: E402

DEFAULT_TEMPLATE = REPO_ROOT / "medgemma_grpo_pipeline.yaml"  # what `python pipelines/compile.py` writes
HF_TOKEN_SECRET_PARAMETER = "hf_token_secret"
_LABEL = re.compile(r"^[a-z][a-z0-9_-]{0,62}$")
_LABEL_VALUE = re.compile(r"^[a-z0-9_-]{0,63}$")
_JOB_ID = re.compile(r"^[a-z0-9][a-z0-9-]{0,127}$")
TARGETS = tuple(target for target in ALL_TARGETS if target != "local")  # kfp.local runs via run_local.py
# Flags only Vertex AI Pipelines understands; a KFP submission refuses them. Each target's own required flags.
VERTEX_ONLY_FLAGS = ("project", "region", "encryption_key", "network", "labels", "job_id", "api_endpoint")
KFP_ONLY_FLAGS = ("host", "experiment", "namespace")
REQUIRED_FLAGS = {"vertex": ("project", "region", "pipeline_root"), "kfp": ("host",)}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python pipelines/submit.py",
        description="Submit the compiled MedGemma GRPO pipeline to Vertex AI Pipelines or a self-hosted KFP cluster.",
        epilog="Rerun a finished or failed run from the console: Vertex AI > Pipelines > Runs > Clone.",
    )
    parser.add_argument("--target", choices=TARGETS, default="vertex",
                        help="vertex: Vertex AI Pipelines (default); kfp: a self-hosted Kubeflow Pipelines cluster")
    parser.add_argument("--template", type=Path, default=DEFAULT_TEMPLATE, help="compiled pipeline YAML")
    parser.add_argument("--project", help="Google Cloud project (vertex; required there)")
    parser.add_argument("--region", help="Vertex AI region (vertex; required there)")
    parser.add_argument("--pipeline-root", help="gs:// folder for the run's artifacts (vertex: required; kfp: "
                                                "optional, the cluster's default otherwise)")
    parser.add_argument("--host", help="KFP API endpoint, e.g. http://localhost:8080 (kfp; required there)")
    parser.add_argument("--experiment", default=None, help="KFP experiment (kfp; default: the pipeline's name)")
    parser.add_argument("--namespace", default=None, help="Kubernetes namespace of a multi-user KFP (kfp)")
    parser.add_argument("--service-account", default=None,
                        help="service account the run's steps use (kfp: a Kubernetes service account)")
    parser.add_argument("--encryption-key", default=None,
                        help="CMEK: projects/P/locations/L/keyRings/R/cryptoKeys/K")
    parser.add_argument("--network", default=None, help="VPC to peer with: projects/NUMBER/global/networks/NAME")
    parser.add_argument("--labels", action="append", default=[], metavar="K=V[,K=V]",
                        help="job labels (repeatable)")
    parser.add_argument("--enable-caching", action=argparse.BooleanOptionalAction, default=None,
                        help="override the per-step caching compiled into the template")
    parser.add_argument("--param", action="append", default=[], metavar="KEY=VALUE",
                        help="pipeline parameter override (repeatable; VALUE as JSON when it parses)")
    parser.add_argument("--hf-token-secret", default=None,
                        help=f"Secret Manager name of the HF token, passed as parameter {HF_TOKEN_SECRET_PARAMETER}")
    parser.add_argument("--display-name", default=None)
    parser.add_argument("--job-id", default=None, help="job id (default: pipeline name + UTC time)")
    parser.add_argument("--api-endpoint", default=None,
                        help="API endpoint, e.g. us-central1-aiplatform.googleapis.com or a private endpoint")
    parser.add_argument("--wait", action="store_true", help="block until the run finishes")
    return parser


def load_template(path: Path, target: str = "vertex") -> dict[str, Any]:
    """The pipeline spec of a template compiled for ``target``: a KFP template carries a Kubernetes platform spec."""
    import yaml

    if not path.is_file():
        raise UserError(f"--template {str(path)!r} not found; compile it first with `python pipelines/compile.py`")
    spec, *platform = list(yaml.safe_load_all(path.read_text(encoding="utf-8"))) or [None]
    if not isinstance(spec, dict) or "root" not in spec or "pipelineInfo" not in spec:
        raise UserError(f"--template {str(path)!r} is not a compiled KFP pipeline spec")
    compiled_for = "kfp" if any("kubernetes" in (doc or {}).get("platforms", {}) for doc in platform) else "vertex"
    if compiled_for != target:
        raise UserError(f"--template {str(path)!r} was compiled for {compiled_for}, not {target}: compile it with "
                        f"`python pipelines/compile.py --target {target}`")
    return spec


def declared_parameters(spec: dict[str, Any]) -> dict[str, str]:
    """Parameter name -> KFP parameter type (STRING, NUMBER_INTEGER, NUMBER_DOUBLE, BOOLEAN, LIST, STRUCT)."""
    parameters = spec["root"].get("inputDefinitions", {}).get("parameters", {})
    return {name: info.get("parameterType", "STRING") for name, info in parameters.items()}


def parse_labels(items: list[str]) -> dict[str, str]:
    labels: dict[str, str] = {}
    for item in items:
        for pair in filter(None, item.split(",")):
            key, sep, value = pair.partition("=")
            key, value = key.strip(), value.strip()
            if not sep or not _LABEL.match(key) or not _LABEL_VALUE.match(value):
                raise UserError(
                    f"--labels {pair!r}: want key=value, key starting with a lowercase letter, both of lowercase "
                    "letters, digits, '_' or '-' (at most 63 characters)"
                )
            labels[key] = value
    return labels


def _typed_value(name: str, text: str, parameter_type: str) -> Any:
    try:
        parsed = json.loads(text)
    except json.JSONDecodeError:
        parsed = text
    expected = {
        "STRING": str,
        "NUMBER_INTEGER": int,
        "NUMBER_DOUBLE": (int, float),
        "BOOLEAN": bool,
        "LIST": list,
        "STRUCT": dict,
    }.get(parameter_type, object)
    if parameter_type == "STRING":
        return text  # a string parameter takes the text as given ("42" stays "42")
    if isinstance(parsed, bool) and parameter_type != "BOOLEAN" or not isinstance(parsed, expected):
        raise UserError(f"--param {name}: expected {parameter_type.lower()}, got {text!r}")
    return float(parsed) if parameter_type == "NUMBER_DOUBLE" else parsed


def parse_params(items: list[str], declared: dict[str, str]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for item in items:
        name, sep, text = item.partition("=")
        name = name.strip()
        if not sep or not name:
            raise UserError(f"--param {item!r}: want KEY=VALUE")
        if name not in declared:
            raise choices_error("--param name", name, declared)
        if looks_like_token(text) or ("token" in name.lower() and "secret" not in name.lower()):
            raise UserError(
                f"--param {name}: tokens are never pipeline parameters; store the token in Secret Manager and "
                "pass --hf-token-secret projects/P/secrets/NAME"
            )
        values[name] = _typed_value(name, text, declared[name])
    return values


# Run settings that also steer what the run creates itself (the training custom job, the registered model):
# submit passes its flag to the PipelineJob and, when the template declares it, to this parameter.
RUN_SETTING_PARAMETERS = {"encryption_key": "encryption_key", "network": "network", "service_account": "service_account"}


def check_target_flags(args: argparse.Namespace) -> None:
    """Each target's required flags given, and none of the other target's."""
    for flag in REQUIRED_FLAGS[args.target]:
        if not getattr(args, flag):
            raise UserError(f"--{flag.replace('_', '-')} is required with --target {args.target}")
    for flag in VERTEX_ONLY_FLAGS if args.target == "kfp" else KFP_ONLY_FLAGS:
        if getattr(args, flag):
            other = "vertex" if args.target == "kfp" else "kfp"
            raise UserError(f"--{flag.replace('_', '-')} is a --target {other} flag, not a {args.target} one")


def run_parameters(args: argparse.Namespace, spec: dict[str, Any]) -> dict[str, Any]:
    """The parameter values to send: ``--param``, ``--hf-token-secret``, and the run settings the template declares."""
    declared = declared_parameters(spec)
    parameter_values = parse_params(args.param, declared)
    for flag, parameter in RUN_SETTING_PARAMETERS.items():
        value = getattr(args, flag)
        if value and args.target == "vertex" and parameter in declared and parameter not in parameter_values:
            parameter_values[parameter] = value
    if args.hf_token_secret:
        if HF_TOKEN_SECRET_PARAMETER not in declared:
            raise UserError(f"--hf-token-secret: the template declares no {HF_TOKEN_SECRET_PARAMETER} parameter")
        parameter_values[HF_TOKEN_SECRET_PARAMETER] = secret_version_name(args.hf_token_secret, "--hf-token-secret")
    return parameter_values


def submit(args: argparse.Namespace, *, credentials: Any = None) -> Any:
    """Submit to the flags' target and return the PipelineJob (vertex) or the run (kfp).

    ``credentials`` (vertex) defaults to Application Default Credentials.
    """
    check_target_flags(args)
    spec = load_template(args.template, args.target)
    parameter_values = run_parameters(args, spec)
    if args.target == "kfp":
        return submit_to_kfp(args, spec, parameter_values)
    return submit_to_vertex(args, spec, parameter_values, credentials)


def submit_to_kfp(args: argparse.Namespace, spec: dict[str, Any], parameter_values: dict[str, Any]) -> Any:
    """``kfp.Client.create_run_from_pipeline_package``: the run (in experiment ``--experiment``) and its UI link."""
    import kfp

    pipeline_name = spec["pipelineInfo"]["name"]
    client = kfp.Client(host=args.host)
    run = client.create_run_from_pipeline_package(
        str(args.template),
        arguments=parameter_values,
        run_name=args.display_name or f"{pipeline_name} {datetime.now(timezone.utc):%Y-%m-%d %H:%M:%S}",
        experiment_name=args.experiment or pipeline_name,
        namespace=args.namespace,
        pipeline_root=args.pipeline_root,
        enable_caching=args.enable_caching,
        service_account=args.service_account,
    )
    print(f"Submitted KFP run {run.run_id}")
    print(f"Console: {args.host.rstrip('/')}/#/runs/details/{run.run_id}")
    if args.wait:
        state = wait_for_kfp_run(client, run.run_id)
        print(f"Finished: {state}")
        if state != "SUCCEEDED":
            raise UserError(f"KFP run {run.run_id} ended {state}")
    return run


KFP_FINAL_STATES = ("SUCCEEDED", "SKIPPED", "FAILED", "CANCELED")  # the KFP v2 API's RuntimeState


def wait_for_kfp_run(client: Any, run_id: str, poll_seconds: float = 30.0) -> str:
    """The run's final state. (``kfp.Client.wait_for_run_completion`` never returns for a cancelled run.)"""
    import time

    while (state := (client.get_run(run_id).state or "").upper()) not in KFP_FINAL_STATES:
        time.sleep(poll_seconds)
    return state


def submit_to_vertex(args: argparse.Namespace, spec: dict[str, Any], parameter_values: dict[str, Any],
                     credentials: Any) -> Any:
    """An ``aiplatform.PipelineJob`` built from the flags, submitted."""
    from google.cloud import aiplatform

    from components.common.gcs import split_gcs_uri

    split_gcs_uri(args.pipeline_root, "--pipeline-root")
    labels = parse_labels(args.labels)
    pipeline_name = spec["pipelineInfo"]["name"]
    job_id = args.job_id or f"{pipeline_name}-{datetime.now(timezone.utc):%Y%m%d%H%M%S}"
    if not _JOB_ID.match(job_id):
        raise UserError(f"--job-id must be lowercase letters, digits and '-', at most 128, got {job_id!r}")

    init_kwargs: dict[str, Any] = {"project": args.project, "location": args.region}
    if args.api_endpoint:
        init_kwargs["api_endpoint"] = args.api_endpoint
        if args.api_endpoint.startswith("http://"):
            init_kwargs["api_transport"] = "rest"  # plain HTTP (e.g. a local proxy) needs the REST transport
    if credentials is not None:
        init_kwargs["credentials"] = credentials
    aiplatform.init(**init_kwargs)

    job = aiplatform.PipelineJob(
        display_name=args.display_name or pipeline_name,
        template_path=str(args.template),
        job_id=job_id,
        pipeline_root=args.pipeline_root,
        parameter_values=parameter_values,
        enable_caching=args.enable_caching,
        encryption_spec_key_name=args.encryption_key,
        labels=labels or None,
    )
    job.submit(service_account=args.service_account, network=args.network)
    print(f"Submitted {job.resource_name}")
    print(f"Console: {job._dashboard_uri()}")  # the SDK's own URL builder (private but stable since v1)
    if args.wait:
        job.wait()
        print(f"Finished: {job.state.name}")
    return job


@cli_main
def main(argv: list[str] | None = None) -> None:
    submit(build_parser().parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())

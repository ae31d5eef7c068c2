"""pipelines/submit.py against loopback servers: the Vertex REST stand-in and gcp-storage-emulator.

Most tests submit a small pipeline with the same kinds of parameters, compiled here; the last one submits the
real compiled pipeline.
"""

import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from fakes.gcs import FakeGcs
from fakes.secret_manager import FakeSecretManager
from fakes.vertex import FakeVertex
from google.auth.credentials import AnonymousCredentials

from components.common.secrets import read_secret

from pipelines import submit as submit_module

REPO_ROOT = Path(__file__).resolve().parents[1]

PROJECT, REGION, BUCKET = "test-project", "europe-west4", "runs-bucket"
SECRET = f"projects/{PROJECT}/secrets/hf-token"
TOKEN = "hf_" + "Zq8" * 12  # shaped like a real token; only the fake Secret Manager holds it
CMEK = f"projects/{PROJECT}/locations/{REGION}/keyRings/ml/cryptoKeys/pipelines"
NETWORK = "projects/123456/global/networks/ml-vpc"
SERVICE_ACCOUNT = f"runner@{PROJECT}.iam.gserviceaccount.com"


def compile_small_pipeline(path: Path) -> None:
    from kfp import compiler, dsl

    @dsl.component(base_image="python:3.11-slim")
    def train(recipe: str, learning_rate: float, max_steps: int, use_vllm: bool, hf_token_secret: str) -> str:
        return recipe

    @dsl.pipeline(name="medgemma-grpo")
    def pipeline(
        recipe: str = "tiny-cpu",
        learning_rate: float = 1e-5,
        max_steps: int = 10,
        use_vllm: bool = False,
        hf_token_secret: str = "",
    ):
        train(recipe=recipe, learning_rate=learning_rate, max_steps=max_steps, use_vllm=use_vllm,
              hf_token_secret=hf_token_secret)

    compiler.Compiler().compile(pipeline, str(path))


@pytest.fixture(scope="module")
def template(tmp_path_factory):
    path = tmp_path_factory.mktemp("template") / "medgemma_grpo_pipeline.yaml"
    compile_small_pipeline(path)
    return path


@pytest.fixture(scope="module")
def gcs_server():
    with FakeGcs(default_bucket=BUCKET) as server:
        yield server


@pytest.fixture
def ownership_lookups(gcs_server, monkeypatch):
    """PipelineJob.submit() checks that an existing pipeline-root bucket belongs to the project: it compares the
    bucket's projectNumber (from GCS, here the emulator) with Cloud Resource Manager's answer. Resource
    Manager is reached over gRPC at a fixed public endpoint, so that one lookup is answered in-process."""
    from google.cloud.aiplatform.utils import resource_manager_utils

    asked = []

    def get_project_number(project_id, credentials=None):
        asked.append(project_id)
        return gcs_server.project_number

    monkeypatch.setattr(resource_manager_utils, "get_project_number", get_project_number)
    return asked


@pytest.fixture
def vertex(gcs_server, ownership_lookups, monkeypatch):
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", gcs_server.endpoint)  # submit() checks the bucket first
    with FakeVertex() as server:
        yield server


def run_submit(vertex, template, *extra):
    argv = ["--template", str(template), "--project", PROJECT, "--region", REGION,
            "--pipeline-root", f"gs://{BUCKET}/pipeline-root", "--api-endpoint", vertex.endpoint, *extra]
    return submit_module.submit(submit_module.build_parser().parse_args(argv), credentials=AnonymousCredentials())


def created_job(vertex):
    [request] = vertex.requests_to("POST", r"/pipelineJobs$")
    return request


def test_submit_sends_spec_parameters_and_run_settings(vertex, template, capsys, caplog, ownership_lookups):
    run_submit(
        vertex, template,
        "--service-account", SERVICE_ACCOUNT, "--encryption-key", CMEK, "--network", NETWORK,
        "--labels", "team=ml-platform,purpose=medqa", "--labels", "cost_center=42",
        "--param", "recipe=medgemma-4b-h100", "--param", "learning_rate=3e-6", "--param", "max_steps=500",
        "--param", "use_vllm=true", "--hf-token-secret", SECRET, "--job-id", "medgemma-grpo-test-1",
        "--display-name", "medqa nightly",
    )
    request = created_job(vertex)
    assert request.path == f"/v1/projects/{PROJECT}/locations/{REGION}/pipelineJobs"
    assert request.query["pipelineJobId"] == "medgemma-grpo-test-1"
    job = request.body
    compiled = yaml.safe_load(template.read_text())
    assert job["pipelineSpec"]["pipelineInfo"] == compiled["pipelineInfo"]
    assert job["pipelineSpec"]["root"] == compiled["root"]
    assert job["pipelineSpec"]["deploymentSpec"] == compiled["deploymentSpec"]
    assert job["runtimeConfig"]["gcsOutputDirectory"] == f"gs://{BUCKET}/pipeline-root"
    assert job["runtimeConfig"]["parameterValues"] == {
        "recipe": "medgemma-4b-h100",
        "learning_rate": 3e-6,
        "max_steps": 500,
        "use_vllm": True,
        "hf_token_secret": f"{SECRET}/versions/latest",
    }
    assert job["serviceAccount"] == SERVICE_ACCOUNT
    assert job["encryptionSpec"] == {"kmsKeyName": CMEK}
    assert job["network"] == NETWORK
    assert {"team": "ml-platform", "purpose": "medqa", "cost_center": "42"}.items() <= job["labels"].items()
    assert job["displayName"] == "medqa nightly"
    assert ownership_lookups == [PROJECT]  # the pipeline-root bucket was checked (and passed) before the POST
    assert "Error when trying to get or create a GCS bucket" not in caplog.text
    out = capsys.readouterr().out
    assert (f"https://console.cloud.google.com/vertex-ai/locations/{REGION}/pipelines/runs/medgemma-grpo-test-1"
            f"?project={PROJECT}") in out


def test_no_enable_caching_turns_caching_off_in_every_task(vertex, template):
    run_submit(vertex, template, "--no-enable-caching")
    tasks = created_job(vertex).body["pipelineSpec"]["root"]["dag"]["tasks"]
    assert tasks and all(task["cachingOptions"].get("enableCache", False) is False for task in tasks.values())


def test_enable_caching_turns_caching_on(vertex, template):
    run_submit(vertex, template, "--enable-caching")
    tasks = created_job(vertex).body["pipelineSpec"]["root"]["dag"]["tasks"]
    assert all(task["cachingOptions"]["enableCache"] is True for task in tasks.values())


def test_default_job_id_and_parameters_come_from_the_template(vertex, template):
    job = run_submit(vertex, template)
    request = created_job(vertex)
    assert request.query["pipelineJobId"].startswith("medgemma-grpo-")
    assert request.body["runtimeConfig"].get("parameterValues", {}) == {}
    assert "serviceAccount" not in request.body and "network" not in request.body
    assert job.resource_name.endswith(request.query["pipelineJobId"])


def test_wait_blocks_until_the_run_finishes(vertex, template, capsys):
    run_submit(vertex, template, "--wait", "--job-id", "waited-run")
    assert vertex.requests_to("GET", r"/pipelineJobs/waited-run$")
    assert "Finished: PIPELINE_STATE_SUCCEEDED" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--param", "epochs=3"], "unknown --param name 'epochs'; valid choices: hf_token_secret, learning_rate, "
                                  "max_steps, recipe, use_vllm"),
        (["--param", "max_steps=ten"], "--param max_steps: expected number_integer, got 'ten'"),
        (["--param", "use_vllm=1"], "--param use_vllm: expected boolean, got '1'"),
        (["--param", "recipe"], "--param 'recipe': want KEY=VALUE"),
        (["--param", f"recipe={TOKEN}"], "--param recipe: tokens are never pipeline parameters"),
        (["--param", "hf_token_secret=x", "--param", "hf_token=abc"], "unknown --param name 'hf_token'"),
        (["--hf-token-secret", TOKEN], "--hf-token-secret must be a Secret Manager resource name, not a token value"),
        (["--hf-token-secret", "hf-token"], "--hf-token-secret must look like projects/PROJECT/secrets/NAME"),
        (["--labels", "Team=ml"], "--labels 'Team=ml': want key=value"),
        (["--job-id", "Bad_ID"], "--job-id must be lowercase letters, digits and '-'"),
    ],
)
def test_bad_flags_fail_before_anything_is_sent(vertex, template, capsys, extra, message):
    argv = ["--template", str(template), "--project", PROJECT, "--region", REGION,
            "--pipeline-root", f"gs://{BUCKET}/root", "--api-endpoint", vertex.endpoint, *extra]
    assert submit_module.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {message}")
    assert TOKEN not in err
    assert vertex.requests == []


def test_template_and_pipeline_root_are_checked(vertex, tmp_path, template, capsys):
    assert submit_module.main(["--template", str(tmp_path / "none.yaml"), "--project", PROJECT, "--region", REGION,
                               "--pipeline-root", f"gs://{BUCKET}/root"]) == 2
    assert "compile it first with `python pipelines/compile.py`" in capsys.readouterr().err
    assert submit_module.main(["--template", str(template), "--project", PROJECT, "--region", REGION,
                               "--pipeline-root", "/local/root"]) == 2
    assert "--pipeline-root must start with gs://" in capsys.readouterr().err


def test_cli_help_documents_rerun_from_console():
    result = subprocess.run([sys.executable, str(REPO_ROOT / "pipelines" / "submit.py"), "--help"],
                            capture_output=True, text=True, check=True)
    assert "--no-enable-caching" in result.stdout and "Clone" in result.stdout


def test_token_never_appears_in_logs_yaml_or_submitted_parameters(vertex, template, capsys, caplog, monkeypatch):
    """The token travels only from Secret Manager into the running step, never through the submission."""
    monkeypatch.delenv("HF_TOKEN", raising=False)
    with FakeSecretManager({SECRET: TOKEN}) as secret_manager, caplog.at_level(logging.DEBUG):
        run_submit(vertex, template, "--hf-token-secret", SECRET, "--service-account", SERVICE_ACCOUNT)
        # What a step does at run time with the parameter it was given:
        parameter = created_job(vertex).body["runtimeConfig"]["parameterValues"]["hf_token_secret"]
        value = read_secret(parameter, credentials=AnonymousCredentials(), endpoint=secret_manager.endpoint)
    assert value == TOKEN  # the run-time path works ...
    assert secret_manager.accessed == [f"{SECRET}/versions/latest"]
    output = capsys.readouterr()
    submitted = json.dumps([r.body for r in vertex.requests]) + json.dumps([r.query for r in vertex.requests])
    for where, text in {
        "submitted requests": submitted,
        "compiled YAML": template.read_text(),
        "stdout": output.out,
        "stderr": output.err,
        "logs": caplog.text,
    }.items():
        assert TOKEN not in text, f"token leaked into {where}"  # ... and the token is nowhere else
    assert f"{SECRET}/versions/latest" in submitted  # the name (not the value) is what was sent


def test_real_compiled_pipeline_submits_without_token_or_question_text(vertex, tmp_path, monkeypatch, caplog, capsys):
    """The shipped template: compiled with a token in the environment, it holds neither the token nor any
    question text, declares the secret-name parameter, and is submitted with the template's own defaults (no
    parameter patched in); the run settings reach the parameters of the same names."""
    output = tmp_path / "medgemma_grpo_pipeline.yaml"
    env = {**__import__("os").environ, "HF_TOKEN": TOKEN}
    subprocess.run([sys.executable, str(REPO_ROOT / "pipelines" / "compile.py"), "--output", str(output),
                    "--base-image", "base:test", "--trainer-image", "trainer:test"],
                   check=True, env=env, cwd=REPO_ROOT, capture_output=True)
    text = output.read_text()
    questions = [json.loads(line)["question"] for line in
                 (REPO_ROOT / "components" / "demo_data" / "test.jsonl").read_text().splitlines()[:20]]
    assert TOKEN not in text
    assert not [q for q in questions if q in text]
    declared = submit_module.declared_parameters(yaml.safe_load(text))
    assert submit_module.HF_TOKEN_SECRET_PARAMETER in declared

    with caplog.at_level(logging.DEBUG):
        run_submit(vertex, output, "--hf-token-secret", SECRET, "--encryption-key", CMEK, "--network", NETWORK,
                   "--service-account", SERVICE_ACCOUNT)
    job = created_job(vertex).body
    assert job["pipelineSpec"]["root"] == yaml.safe_load(text)["root"]
    assert job["runtimeConfig"]["parameterValues"] == {
        "hf_token_secret": f"{SECRET}/versions/latest",
        "encryption_key": CMEK,
        "network": NETWORK,
        "service_account": SERVICE_ACCOUNT,
    }
    assert job["encryptionSpec"] == {"kmsKeyName": CMEK} and job["network"] == NETWORK
    assert job["serviceAccount"] == SERVICE_ACCOUNT
    assert TOKEN not in json.dumps(job) + caplog.text + capsys.readouterr().out

"""pipelines/submit.py --target kfp against a loopback server speaking the KFP v2 REST API (tests/fakes/kfp.py):
the real kfp.Client, the real compiled pipeline (the kfp target), what reaches the wire."""

from __future__ import annotations

import pytest
import yaml
from fakes.kfp import API, FakeKfp

from pipelines import submit as submit_module

BASE, TRAINER = "registry.example/p/base:1", "registry.example/p/trainer:1"
TOKEN = "hf_" + "Zq8" * 12  # shaped like a real token


@pytest.fixture(scope="module")
def kfp_template(tmp_path_factory):
    from pipelines.compile import main

    path = tmp_path_factory.mktemp("kfp") / "medgemma_grpo_kfp.yaml"
    assert main(["--target", "kfp", "--output", str(path), "--base-image", BASE, "--trainer-image", TRAINER,
                 "--train-accelerator-type", "nvidia-h100-80gb"]) == 0
    return path


@pytest.fixture
def kfp_api(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.config/kfp/context.json of this machine's user
    for name in ("KF_PIPELINES_ENDPOINT", "KF_PIPELINES_UI_ENDPOINT", "KF_PIPELINES_DEFAULT_EXPERIMENT_NAME",
                 "KF_PIPELINES_OVERRIDE_EXPERIMENT_NAME"):
        monkeypatch.delenv(name, raising=False)
    with FakeKfp() as server:
        yield server


def test_submit_creates_the_experiment_and_a_run_of_the_compiled_spec(kfp_api, kfp_template, capsys):
    argv = ["--target", "kfp", "--host", kfp_api.endpoint, "--template", str(kfp_template),
            "--param", "recipe=medgemma-4b-h100", "--param", "eval_question_limit=200",
            "--service-account", "pipeline-runner", "--display-name", "medqa h100", "--no-enable-caching", "--wait"]
    assert submit_module.main(argv) == 0

    calls = [(r.method, r.path) for r in kfp_api.requests]
    assert calls == [("GET", f"{API}/healthz"), ("GET", f"{API}/experiments"), ("POST", f"{API}/experiments"),
                     ("POST", f"{API}/runs"), ("GET", f"{API}/runs/run-1")]
    assert kfp_api.requests[2].body["display_name"] == "medgemma-grpo"  # the experiment: the pipeline's name
    [run] = kfp_api.runs
    assert run["display_name"] == "medqa h100" and run["service_account"] == "pipeline-runner"
    assert run["experiment_id"] == "exp-1"
    assert run["runtime_config"]["parameters"] == {"recipe": "medgemma-4b-h100", "eval_question_limit": 200}
    # The spec sent inline is the compiled file, the Kubernetes platform spec included, caching turned off.
    documents = list(yaml.safe_load_all(kfp_template.read_text()))
    sent = run["pipeline_spec"]
    assert sent["pipeline_spec"]["pipelineInfo"] == documents[0]["pipelineInfo"]
    assert sent["platform_spec"] == documents[1]
    tasks = sent["pipeline_spec"]["root"]["dag"]["tasks"]
    assert tasks and all(task["cachingOptions"] == {} for task in tasks.values())  # enable_cache false: omitted
    out = capsys.readouterr().out
    assert "Submitted KFP run run-1" in out
    assert f"Console: {kfp_api.endpoint}/#/runs/details/run-1" in out
    assert "Finished: SUCCEEDED" in out


def test_a_second_submission_reuses_the_experiment(kfp_api, kfp_template):
    argv = ["--target", "kfp", "--host", kfp_api.endpoint, "--template", str(kfp_template), "--experiment", "medqa"]
    assert submit_module.main(argv) == 0
    assert submit_module.main(argv) == 0
    posts = [r.path for r in kfp_api.requests if r.method == "POST"]
    assert posts == [f"{API}/experiments", f"{API}/runs", f"{API}/runs"]
    assert {run["experiment_id"] for run in kfp_api.runs} == {"exp-1"}


@pytest.mark.parametrize(("extra", "message"), [
    (["--project", "p"], "--project is a --target vertex flag, not a kfp one"),
    (["--encryption-key", "projects/p/locations/l/keyRings/r/cryptoKeys/k"], "--encryption-key is a --target vertex"),
    (["--labels", "team=ml"], "--labels is a --target vertex flag"),
    (["--param", f"recipe={TOKEN}"], "--param recipe: tokens are never pipeline parameters"),
    (["--param", "train_nodes=2"], None),  # accepted here; the run's check-parameters task refuses it
])
def test_bad_flags_fail_before_anything_is_sent(kfp_api, kfp_template, capsys, extra, message):
    argv = ["--target", "kfp", "--host", kfp_api.endpoint, "--template", str(kfp_template), *extra]
    if message is None:
        assert submit_module.main(argv) == 0
        assert kfp_api.runs[0]["runtime_config"]["parameters"] == {"train_nodes": 2}
        return
    assert submit_module.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {message}") and TOKEN not in err
    assert kfp_api.requests == []


def test_each_target_needs_its_own_template_and_flags(kfp_api, kfp_template, tmp_path, capsys):
    from pipelines.compile import main

    assert submit_module.main(["--target", "kfp", "--template", str(kfp_template)]) == 2
    assert "--host is required with --target kfp" in capsys.readouterr().err
    vertex_template = tmp_path / "vertex.yaml"
    assert main(["--output", str(vertex_template)]) == 0
    assert submit_module.main(["--target", "kfp", "--host", kfp_api.endpoint, "--template", str(vertex_template)]) == 2
    assert "was compiled for vertex, not kfp: compile it with `python pipelines/compile.py --target kfp`" in \
        capsys.readouterr().err
    assert submit_module.main(["--template", str(kfp_template), "--project", "p", "--region", "europe-west4",
                               "--pipeline-root", "gs://b/root"]) == 2
    assert "was compiled for kfp, not vertex" in capsys.readouterr().err
    assert submit_module.main(["--template", str(kfp_template), "--host", kfp_api.endpoint]) == 2
    assert "--project is required with --target vertex" in capsys.readouterr().err
    assert kfp_api.requests == []


@pytest.mark.parametrize("state", ["FAILED", "CANCELED"])
def test_waiting_on_a_run_that_did_not_succeed_fails_the_command(kfp_api, kfp_template, capsys, state):
    kfp_api.final_state = state
    argv = ["--target", "kfp", "--host", kfp_api.endpoint, "--template", str(kfp_template), "--wait"]
    assert submit_module.main(argv) == 2
    assert f"KFP run run-1 ended {state}" in capsys.readouterr().err

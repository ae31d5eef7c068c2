"""The run's first task: a parameter value that cannot work fails here, in one line naming the parameter."""

from __future__ import annotations

import json

import pytest

from components.common.errors import UserError
from components.preflight.__main__ import main
from components.preflight.core import CUSTOM_JOB, ONE_VM, check_run_parameters, training_route

GOOD = dict(
    recipe="medgemma-4b", recipe_settings=[], train_accelerator_type="NVIDIA_H100_80GB", train_accelerator_count=8,
    train_nodes=1, train_on_spot=False, eval_accelerator_type="NVIDIA_TESLA_A100", eval_accelerator_count=1,
    eval_question_limit=0, gate_margin=0.0, gate_alpha=0.05, registry_uri="vertex://",
    model_display_name="medgemma-grpo", registered_weights="adapter",
)


@pytest.mark.parametrize(("nodes", "spot", "route"), [(1, False, ONE_VM), (2, False, CUSTOM_JOB), (1, True, CUSTOM_JOB)])
def test_several_vms_or_spot_train_as_a_custom_job(nodes, spot, route):
    assert training_route(nodes, spot) == route
    assert check_run_parameters(**{**GOOD, "train_nodes": nodes, "train_on_spot": spot}) == route


@pytest.mark.parametrize(("change", "message"), [
    ({"recipe": "medgemma-5b"}, "unknown recipe 'medgemma-5b'"),
    ({"recipe_settings": ["lora.r=0"]}, "recipe 'medgemma-4b': lora.r must be a positive integer"),
    ({"train_accelerator_count": 0}, "train_accelerator_count must be at least 1, got 0"),
    ({"eval_accelerator_count": 0}, "eval_accelerator_count must be at least 1, got 0"),
    ({"train_accelerator_type": "A100"}, "unknown train_accelerator_type 'A100'; valid choices:"),
    ({"train_nodes": 0}, "train_nodes must be at least 1"),
    ({"eval_question_limit": -1}, "eval_question_limit must be 0"),
    ({"gate_alpha": 5.0}, "gate_alpha must be between 0 and 1"),
    ({"gate_margin": 2.0}, "gate_margin is an accuracy difference between -1 and 1"),
    ({"registry_uri": "gs://bucket/models"}, "registry_uri: a gs:// registry is not supported"),
    ({"registry_uri": "vertex://my-project"}, "registry_uri must look like vertex://projects/PROJECT/locations/REGION"),
    ({"model_display_name": "my model"}, "model_display_name must be 1-128 letters"),
    ({"registered_weights": "full"}, "unknown registered_weights 'full'; valid choices: adapter, merged"),
    ({"hf_token_secret": "hf_" + "Ab1" * 12}, "hf_token_secret must be a Secret Manager resource name"),
    ({"encryption_key": "my-key"}, "encryption_key must look like projects/P/locations/L/keyRings/R/cryptoKeys/K"),
    ({"network": "default"}, "network must look like projects/PROJECT_NUMBER/global/networks/NAME"),
    ({"service_account": "runner"}, "service_account must look like NAME@PROJECT.iam.gserviceaccount.com"),
    ({"tensorboard": "tb-1", "service_account": "runner@p.iam.gserviceaccount.com"},
     "tensorboard must look like projects/P/locations/L/tensorboards/ID"),
    ({"tensorboard": "projects/p/locations/l/tensorboards/1"}, "tensorboard needs service_account"),
])
def test_a_value_that_cannot_work_is_named_in_one_line(change, message):
    with pytest.raises(UserError) as raised:
        check_run_parameters(**{**GOOD, **change})
    assert str(raised.value).startswith(message) and "\n" not in str(raised.value)


def test_cli_checks_a_parameters_file(tmp_path, capsys):
    path = tmp_path / "params.json"
    path.write_text(json.dumps({**GOOD, "train_on_spot": True, "base_model": "ignored"}))
    assert main([str(path)]) == 0
    assert capsys.readouterr().out.strip() == CUSTOM_JOB
    path.write_text(json.dumps({**GOOD, "train_accelerator_count": 0}))
    assert main([str(path)]) == 2
    assert capsys.readouterr().err.strip() == "error: train_accelerator_count must be at least 1, got 0"


DEPLOYMENT = dict(deploy_endpoint="medqa", deploy_machine_type="g2-standard-12", deploy_accelerator_type="NVIDIA_L4",
                  deploy_accelerator_count=1, deploy_min_replicas=1, deploy_max_replicas=2, deploy_traffic_percentage=10)


def test_a_deploy_of_an_adapter_or_with_bad_settings_fails_before_training():
    merged = {**GOOD, "registered_weights": "merged"}
    assert check_run_parameters(**merged, **DEPLOYMENT) == ONE_VM
    assert check_run_parameters(**GOOD, **{**DEPLOYMENT, "deploy_endpoint": ""}) == ONE_VM  # no deploy: not checked
    with pytest.raises(UserError, match="serving_mode 'adapter' cannot be deployed"):
        check_run_parameters(**GOOD, **DEPLOYMENT)
    with pytest.raises(UserError, match="min_replica_count <= max_replica_count"):
        check_run_parameters(**merged, **{**DEPLOYMENT, "deploy_min_replicas": 3})
    with pytest.raises(UserError, match="traffic_percentage must be 1-100"):
        check_run_parameters(**merged, **{**DEPLOYMENT, "deploy_traffic_percentage": 0})
    with pytest.raises(UserError, match="^smoke_test_prompts must be at least 1, got 0$"):
        check_run_parameters(**merged, **DEPLOYMENT, smoke_test_prompts=0)
    with pytest.raises(UserError, match=r"^smoke_test_min_format_rate must be between 0 and 1, got 1.5$"):
        check_run_parameters(**merged, **DEPLOYMENT, smoke_test_min_format_rate=1.5)


KFP = {"target": "kfp", "kfp_volume_path": "/mnt/medgemma-grpo",
       "kfp_gpu_types": {"train_accelerator_type": "nvidia-h100-80gb", "eval_accelerator_type": "nvidia-l4"}}
GOOD_ON_KFP = {**GOOD, "train_accelerator_type": "nvidia-h100-80gb", "eval_accelerator_type": "nvidia-l4",
               "registry_uri": "/mnt/medgemma-grpo/registry", **KFP}


def test_on_kfp_node_labels_and_a_folder_on_the_volume_train_on_one_vm():
    assert check_run_parameters(**GOOD_ON_KFP) == ONE_VM


@pytest.mark.parametrize(("change", "message"), [
    ({"train_nodes": 2}, "train_nodes: 2 training VMs need a Vertex AI custom job"),
    ({"train_on_spot": True}, "train_on_spot: Spot training is a Vertex AI custom job"),
    ({"encryption_key": "projects/p/locations/l/keyRings/r/cryptoKeys/k"}, "encryption_key: a setting of the Vertex"),
    ({"network": "projects/1/global/networks/n"}, "network: a setting of the Vertex AI training custom job"),
    ({"service_account": "runner@p.iam.gserviceaccount.com"}, "service_account: a setting of the Vertex"),
    ({"tensorboard": "projects/p/locations/l/tensorboards/1"}, "tensorboard: a setting of the Vertex"),
    ({"registry_uri": "vertex://"}, "registry_uri: the Vertex AI Model Registry is not used from self-hosted KFP"),
    ({"registry_uri": "/tmp/registry"}, "registry_uri: '/tmp/registry' is not under /mnt/medgemma-grpo"),
    ({"registry_uri": "/mnt/medgemma-grpo-other"}, "registry_uri: '/mnt/medgemma-grpo-other' is not under"),
    ({"registry_uri": "/mnt/medgemma-grpo/../registry"}, "registry_uri: '/mnt/medgemma-grpo/../registry' is not under"),
    ({"deploy_endpoint": "e"}, "deploy_endpoint: deploying goes to a Vertex AI endpoint"),
    ({"eval_accelerator_type": "NVIDIA_L4"}, "eval_accelerator_type: this KFP pipeline was compiled to place the "
                                            "task on nodes labelled 'nvidia-l4', got 'NVIDIA_L4'; recompile with "
                                            "--eval-accelerator-type NVIDIA_L4"),
    ({"target": "gke"}, "unknown target 'gke'"),
])
def test_on_kfp_what_only_vertex_has_is_refused_in_one_line(change, message):
    with pytest.raises(UserError) as raised:
        check_run_parameters(**{**GOOD_ON_KFP, **change})
    assert str(raised.value).startswith(message) and "\n" not in str(raised.value)


def test_vertex_keeps_its_accelerator_names():
    with pytest.raises(UserError, match="unknown train_accelerator_type 'nvidia-h100-80gb'"):
        check_run_parameters(**{**GOOD_ON_KFP, "target": "vertex"})

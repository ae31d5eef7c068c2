"""Every bundled recipe loads, validates and maps onto TRL's GRPOConfig; overrides and errors behave."""

from __future__ import annotations

import dataclasses

import pytest

from components.common.errors import UserError
from components.common.recipes import available_recipes, load_recipe, parse_overrides
from components.grpo_train.core import check_train_args

EXPECTED = {"medgemma-4b", "gemma-3-4b", "medgemma-4b-h100", "tiny-cpu"}


def test_expected_recipes_are_bundled():
    assert EXPECTED <= set(available_recipes())


@pytest.mark.parametrize("name", available_recipes())
def test_recipe_loads_and_builds_a_grpo_config(name, tmp_path):
    from trl import GRPOConfig

    recipe = load_recipe(name)
    check_train_args(recipe)
    args = dict(recipe.train)
    args.pop("report_to", None)
    # CPU here: the step switches bf16 off on CPU; everything else must be accepted by TRL as written.
    config = GRPOConfig(output_dir=str(tmp_path), report_to="none", **{**args, "bf16": False, "use_cpu": True})
    batch = config.per_device_train_batch_size * config.gradient_accumulation_steps
    assert batch % config.num_generations == 0, "completions per step must be whole groups"


@pytest.mark.parametrize("name", ["medgemma-4b", "gemma-3-4b"])
def test_notebook_recipes_reproduce_the_notebook(name):
    recipe = load_recipe(name)
    train = recipe.train
    assert (train["learning_rate"], train["optim"]) == (3e-5, "adamw_torch_fused")
    assert (train["per_device_train_batch_size"], train["gradient_accumulation_steps"]) == (4, 64)
    assert (train["num_generations"], train["max_completion_length"], train["num_train_epochs"]) == (4, 512, 1)
    assert (recipe.lora.r, recipe.lora.alpha, recipe.lora.target_modules) == (64, 64, "all-linear")
    assert train["bf16"] and train["activation_checkpointing"]
    assert train["activation_checkpointing_kwargs"] == {"use_reentrant": False}
    assert (train["vllm_mode"], train["vllm_gpu_memory_utilization"]) == ("colocate", 0.35)
    assert (train["eval_steps"], train["save_steps"]) == (10, 10)
    assert recipe.data.max_prompt_tokens == 512 and recipe.data.val_size == 100 and recipe.data.seed == 42
    # TRL 0.21's defaults, pinned explicitly (TRL 1.x changed them).
    assert (train["loss_type"], train["beta"], train["scale_rewards"]) == ("bnpo", 0.04, "group")
    assert (recipe.evaluation.temperature, recipe.evaluation.top_p, recipe.evaluation.max_new_tokens) == (0.7, 0.9, 512)


def test_gemma_variant_differs_only_in_model():
    medgemma, gemma = load_recipe("medgemma-4b"), load_recipe("gemma-3-4b")
    assert gemma.model.model_id == "google/gemma-3-4b-it"
    assert dataclasses.replace(gemma, name=medgemma.name, description=medgemma.description,
                               model=medgemma.model) == medgemma


def test_h100_variant_keeps_completions_per_step():
    base, h100 = load_recipe("medgemma-4b"), load_recipe("medgemma-4b-h100")

    def per_step(recipe):
        return recipe.train["per_device_train_batch_size"] * recipe.train["gradient_accumulation_steps"]

    assert per_step(h100) == per_step(base) == 256


def test_overrides_reach_every_section():
    recipe = load_recipe("tiny-cpu", ["train.learning_rate=1e-4", "lora.r=8", "evaluation.do_sample=false",
                                      "train.report_to=[]", "rewards.format=0.5"])
    assert recipe.train["learning_rate"] == 1e-4
    assert recipe.lora.r == 8 and recipe.evaluation.do_sample is False and recipe.rewards.format == 0.5


def test_parse_overrides_nests_and_types():
    assert parse_overrides(["a.b=3", "a.c=x", "d.e=1e-3"]) == {"a": {"b": 3, "c": "x"}, "d": {"e": 0.001}}


@pytest.mark.parametrize(
    ("name", "overrides", "message"),
    [
        ("no-such-recipe", [], "unknown recipe 'no-such-recipe'; valid choices: "),
        ("tiny-cpu", ["lora.rank=8"], "field lora."),
        ("tiny-cpu", ["nonsense.x=1"], "key 'nonsense'"),
        ("tiny-cpu", ["lora.r=0"], "lora.r must be a positive integer"),
        ("tiny-cpu", ["generation_backend=tensorrt"], "unknown generation_backend 'tensorrt'"),
        ("tiny-cpu", ["data.prompt_template=no placeholders"], "missing placeholder"),
        ("tiny-cpu", ["rewards.correctness=0"], "at least one reward weight"),
        ("tiny-cpu", ["novalue"], "must look like section.field=value"),
    ],
)
def test_bad_recipes_give_one_line_errors(name, overrides, message):
    with pytest.raises(UserError) as caught:
        load_recipe(name, overrides)
    assert message in str(caught.value) and "\n" not in str(caught.value)


def test_unknown_recipe_error_lists_the_bundled_ones():
    with pytest.raises(UserError) as caught:
        load_recipe("medgemma")
    for name in EXPECTED:
        assert name in str(caught.value)


def test_train_args_are_checked_against_trl():
    with pytest.raises(UserError, match="max_prompt_length"):
        check_train_args(load_recipe("tiny-cpu", ["train.max_prompt_length=512"]))
    with pytest.raises(UserError, match="set by the training step"):
        check_train_args(load_recipe("tiny-cpu", ["train.use_vllm=true"]))


def test_recipe_file_path_and_extends(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("extends: tiny-cpu\ntrain:\n  max_steps: 3\n")
    recipe = load_recipe(str(path))
    assert recipe.name == "mine" and recipe.train["max_steps"] == 3
    assert recipe.train["learning_rate"] == load_recipe("tiny-cpu").train["learning_rate"]


def test_liger_kernels_run_on_gpus_only(tmp_path, monkeypatch):
    import importlib.util

    from components.grpo_train import core

    recipe = load_recipe("medgemma-4b")
    assert recipe.train["use_liger_kernel"]
    config = core._grpo_config(recipe, tmp_path, "transformers", [1.0], "cpu")
    assert config.use_liger_kernel is False  # Triton kernels: dropped on CPU, the unfused math runs instead
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "liger_kernel" else find_spec(name, *a))
    with pytest.raises(UserError, match="train.use_liger_kernel but liger-kernel is not installed"):
        core._grpo_config(recipe, tmp_path, "transformers", [1.0], "cuda")
    # Evaluation asks for them on its own (GPU only, checked before any model is touched).
    from components.common.modeling import apply_liger_kernels

    assert recipe.evaluation.liger_kernels and not load_recipe("tiny-cpu").evaluation.liger_kernels
    with pytest.raises(UserError, match="evaluation.liger_kernels but liger-kernel is not installed"):
        apply_liger_kernels(model=None)

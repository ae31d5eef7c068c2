"""The ``models`` parameter: checked and completed once (plan-models), before the fan-out."""

from __future__ import annotations

import pytest

from components.common.errors import UserError
from components.preflight.models import plan_models

RUN = {"base_model": "google/medgemma-4b-it", "recipe": "medgemma-4b", "recipe_settings": ["train.max_steps=50"],
       "model_display_name": "medgemma-grpo"}


def test_no_models_means_the_one_model_of_base_model_and_recipe():
    [entry] = plan_models([], **RUN, deploy_endpoint="ep")
    assert entry == {"name": "medgemma-4b", "base_model": "google/medgemma-4b-it", "recipe": "medgemma-4b",
                     "recipe_settings": ["train.max_steps=50"], "model_display_name": "medgemma-grpo",
                     "endpoint_name": "ep"}


def test_several_models_get_their_own_settings_names_and_endpoints():
    models = [{"name": "medgemma", "base_model": "google/medgemma-4b-it", "recipe": "medgemma-4b"},
              {"name": "gemma", "base_model": "google/gemma-3-4b-it", "recipe": "gemma-3-4b",
               "recipe_settings": ["lora.r=16"], "model_display_name": "gemma-grpo"}]
    medgemma, gemma = plan_models(models, **RUN, deploy_endpoint="ep")
    assert medgemma["model_display_name"] == "medgemma-grpo-medgemma" and medgemma["endpoint_name"] == "ep-medgemma"
    # The run's settings first, the model's own after them (they win).
    assert gemma["recipe_settings"] == ["train.max_steps=50", "lora.r=16"]
    assert gemma["model_display_name"] == "gemma-grpo" and gemma["endpoint_name"] == "ep-gemma"
    assert plan_models(models, **RUN)[0]["endpoint_name"] == ""


@pytest.mark.parametrize(("models", "message"), [
    ("medgemma-4b", "models must be a list of objects, got str"),
    (["medgemma-4b"], "models[0] must be an object with name, base_model and recipe, got str"),
    ([{"name": "a", "recipe": "medgemma-4b"}], "models[0].base_model: Field required"),
    ([{"name": "a", "base_model": "m", "recipe": "medgemma-4b", "lr": 1}], "models[0].lr: Extra inputs"),
    ([{"name": "A b", "base_model": "m", "recipe": "medgemma-4b"}], "models[0].name must be 1-40 lowercase"),
    ([{"name": "a", "base_model": "m", "recipe": "medgemma-4b"}, {"name": "a", "base_model": "n", "recipe": "gemma-3-4b"}],
     "models[1].name 'a' is used twice"),
    ([{"name": "a", "base_model": "m", "recipe": "no-such-recipe"}], "models[0]: "),
    ([{"name": "a", "base_model": "m", "recipe": "medgemma-4b", "recipe_settings": ["lora.r=0"]}],
     "models[0]: recipe 'medgemma-4b': lora.r must be a positive integer"),
    ([{"name": "a", "base_model": "m", "recipe": "medgemma-4b", "recipe_settings": "lora.r=8"}],
     "models[0].recipe_settings: Input should be a valid list"),
    ([{"name": "a", "base_model": "m", "recipe": "medgemma-4b", "model_display_name": "bad name"}],
     "models[0].model_display_name must be"),
])
def test_a_bad_entry_is_named_in_one_line(models, message):
    with pytest.raises(UserError) as error:
        plan_models(models, **RUN)
    assert message in str(error.value) and "\n" not in str(error.value)

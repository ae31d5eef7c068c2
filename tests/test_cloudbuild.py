"""cloudbuild.yaml: step order, substitutions declared and documented, and its step scripts run here (bash)
where they need no cloud: the substitution check, the compile step against the images "just pushed", and the
skipped submit step."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parents[1]
CONFIG = yaml.safe_load((REPO_ROOT / "cloudbuild.yaml").read_text(encoding="utf-8"))
STEPS = {step["id"]: step for step in CONFIG["steps"]}
ORDER = ["check-substitutions", "tests", "build-trainer", "build-base", "push-images", "compile",
         "upload-template", "submit-run"]
BUILT_IN = {"PROJECT_ID", "COMMIT_SHA", "BUILD_ID", "PROJECT_NUMBER", "LOCATION", "SHORT_SHA"}
COMMIT = "0123456789abcdef0123456789abcdef01234567"


def _predecessors(step_id: str) -> set[str]:
    """Every step that finishes before ``step_id`` starts (Cloud Build: waitFor, else all earlier steps)."""
    ids = [step["id"] for step in CONFIG["steps"]]
    direct = STEPS[step_id].get("waitFor")
    if direct is None:
        direct = ids[: ids.index(step_id)]
    assert "-" not in direct, f"{step_id} starts at the beginning of the build"
    found = set(direct)
    for dep in direct:
        found |= _predecessors(dep)
    return found


def test_steps_run_tests_then_build_push_compile_upload_submit():
    assert [step["id"] for step in CONFIG["steps"]] == ORDER
    assert _predecessors("tests") == {"check-substitutions"}
    for build in ("build-trainer", "build-base"):
        assert "tests" in _predecessors(build)
    assert {"build-trainer", "build-base"} <= _predecessors("push-images")
    assert "push-images" in _predecessors("compile")
    assert "compile" in _predecessors("upload-template")
    assert "upload-template" in _predecessors("submit-run")


def test_pipeline_steps_run_in_the_base_image_just_built_and_build_results_list_both_images():
    for step_id in ("compile", "upload-template", "submit-run"):
        assert STEPS[step_id]["name"] == "${_BASE_IMAGE}:${COMMIT_SHA}"
    assert CONFIG["images"] == ["${_TRAINER_IMAGE}:${COMMIT_SHA}", "${_BASE_IMAGE}:${COMMIT_SHA}"]
    assert 'docker build -f containers/trainer/Dockerfile -t "${_TRAINER_IMAGE}:${COMMIT_SHA}" .' in \
        STEPS["build-trainer"]["script"]
    assert 'docker build -f containers/base/Dockerfile -t "${_BASE_IMAGE}:${COMMIT_SHA}" .' in \
        STEPS["build-base"]["script"]
    # Substitutions reach `script` only as environment variables.
    assert CONFIG["options"]["automapSubstitutions"] is True
    assert CONFIG["options"]["dynamicSubstitutions"] is True


def _referenced_substitutions() -> set[str]:
    text = (REPO_ROOT / "cloudbuild.yaml").read_text(encoding="utf-8")
    return set(re.findall(r"\$\{?(_[A-Z0-9_]+)", text))


def test_every_substitution_is_declared_and_documented():
    declared = set(CONFIG["substitutions"])
    assert _referenced_substitutions() <= declared
    docs = (REPO_ROOT / "containers" / "README.md").read_text(encoding="utf-8")
    undocumented = sorted(name for name in declared if f"`{name}`" not in docs)
    assert undocumented == [], f"containers/README.md does not document {undocumented}"
    readme = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    assert "containers/README.md" in readme, "README.md should point to the Cloud Build substitutions"


def _substitutions(**overrides) -> dict[str, str]:
    """The build's substitution values as Cloud Build maps them into a step's environment."""
    values = {"PROJECT_ID": "my-project", "COMMIT_SHA": COMMIT, **CONFIG["substitutions"], **overrides}
    expanded = {}
    for name, value in values.items():  # dynamicSubstitutions: ${VAR} inside values
        expanded[name] = re.sub(r"\$\{(\w+)\}", lambda m: expanded.get(m.group(1), values[m.group(1)]), str(value))
    return expanded


# What the base image lacks (containers/lock.py BASE_EXCLUDED and what needs them).
NOT_IN_BASE_IMAGE = ("torch", "trl", "peft", "accelerate", "vllm", "triton", "torchvision")


def _run_step(step_id: str, cwd: Path, as_base_image: bool = False, **overrides) -> subprocess.CompletedProcess:
    env = {
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "HOME": str(cwd),
        **_substitutions(**overrides),
    }
    if as_base_image:
        # Steps named after the base image run there: make the torch stack unimportable for every `python`
        # the script starts (None in sys.modules: import fails, importlib.util.find_spec answers None).
        site = cwd / "base-image-site"
        site.mkdir()
        (site / "sitecustomize.py").write_text(f"import sys\nfor _name in {NOT_IN_BASE_IMAGE!r}:\n"
                                               "    sys.modules[_name] = None\n")
        env["PYTHONPATH"] = str(site)
    return subprocess.run(["bash", "-c", STEPS[step_id]["script"]], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)


@pytest.mark.parametrize("overrides, message", [
    ({"COMMIT_SHA": ""}, "COMMIT_SHA is empty or not a commit id"),
    ({"_SUBMIT_RUN": "yes"}, "_SUBMIT_RUN must be true or false"),
    ({"_SUBMIT_RUN": "true"}, "_SUBMIT_RUN=true needs _PIPELINE_ROOT=gs://"),
])
def test_check_step_stops_a_misconfigured_build_early(tmp_path, overrides, message):
    result = _run_step("check-substitutions", tmp_path, **overrides)
    assert result.returncode == 2
    assert message in result.stderr


def test_check_step_accepts_a_good_build_and_names_the_images(tmp_path):
    result = _run_step("check-substitutions", tmp_path, _SUBMIT_RUN="true", _PIPELINE_ROOT="gs://bucket/root")
    assert result.returncode == 0, result.stderr
    image = f"us-central1-docker.pkg.dev/my-project/medgemma-grpo/trainer:{COMMIT}"
    assert image in result.stdout


def test_compile_step_builds_a_template_that_runs_the_images_just_pushed(tmp_path):
    for entry in ("pipelines", "containers", "components", "pyproject.toml"):
        (tmp_path / entry).symlink_to(REPO_ROOT / entry)
    # What push-images leaves behind: the pushed images by digest.
    substitutions = _substitutions()
    trainer = f"{substitutions['_TRAINER_IMAGE']}@sha256:{'a' * 64}"
    base = f"{substitutions['_BASE_IMAGE']}@sha256:{'b' * 64}"
    (tmp_path / "cloudbuild-out").mkdir()
    (tmp_path / "cloudbuild-out" / "trainer-image.txt").write_text(trainer + "\n")
    (tmp_path / "cloudbuild-out" / "base-image.txt").write_text(base + "\n")

    result = _run_step("compile", tmp_path, as_base_image=True)
    assert result.returncode == 0, result.stdout + result.stderr

    for template in ("pipeline.yaml", "pipeline-kfp.yaml"):  # Vertex's, and self-hosted KFP's
        spec = next(yaml.safe_load_all((tmp_path / "cloudbuild-out" / template).read_text()))
        images = {executor["container"]["image"] for executor in spec["deploymentSpec"]["executors"].values()}
        assert images == {trainer, base}
    kfp_documents = list(yaml.safe_load_all((tmp_path / "cloudbuild-out" / "pipeline-kfp.yaml").read_text()))
    assert "kubernetes" in kfp_documents[1]["platforms"]


def test_submit_step_is_skipped_unless_asked(tmp_path):
    result = _run_step("submit-run", tmp_path)
    assert result.returncode == 0, result.stderr
    assert "submit-run skipped (_SUBMIT_RUN=false)" in result.stdout


def test_upload_step_tags_the_template_with_the_commit(tmp_path):
    script = STEPS["upload-template"]["script"]
    assert '--tag "commit-${COMMIT_SHA}"' in script
    assert '--host "https://${_REGION}-kfp.pkg.dev/${PROJECT_ID}/${_KFP_REPO}"' in script
    assert "--template cloudbuild-out/pipeline.yaml" in script

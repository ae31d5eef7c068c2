"""Sibling projections (q, k and v; gate and up) read as one matmul over their weights stacked by rows.

Only projections that compute a plain bias-free matmul are fused (no live adapter, bias, quantization or hook
that the fused matmul would skip). Weights that already lie one after the other in one tensor are taken as
they lie (the rollout's LoRA merge writes them so); others are copied once per generator.
"""

from __future__ import annotations

import contextlib
import functools

# Sibling projections that the generator reads as one matmul: (the layer's submodule, its projections). In a
# decode step k and v alone are matmuls too small to use the GPU's memory bandwidth.
FUSED_PROJECTIONS: tuple[tuple[str, tuple[str, ...]], ...] = (("self_attn", ("q_proj", "k_proj", "v_proj")),)
# The MLP's siblings that decode_layer.DecodeLayer reads as one matmul (in the model's own MLP, Liger's GeGLU
# would copy the two strided halves).
GATE_UP = ("mlp", ("gate_proj", "up_proj"))
# Every group the generator reads as one matmul: weights stacked so by the caller are taken without a copy.
STACKED_PROJECTIONS = FUSED_PROJECTIONS + (GATE_UP,)


def plain_linear_weight(module):
    """The weight of the bias-free linear map that ``module`` computes now, or None if it computes more or
    otherwise (a live LoRA adapter, a bias, a quantized layer, hooks that the fused matmul would skip)."""
    import torch

    if hasattr(module, "get_base_layer"):
        # A PEFT adapter layer computes its base weight alone when its adapters are either off or merged into
        # it; when both, its forward first unmerges them, changing the weight.
        if module.disable_adapters == module.merged or has_hooks(module):
            return None
        module = module.get_base_layer()
    if type(module) is not torch.nn.Linear or module.bias is not None or has_hooks(module):
        return None
    return module.weight


def has_hooks(module) -> bool:
    return bool(module._forward_hooks or module._forward_pre_hooks or hasattr(module, "_hf_hook"))


def fused_weight_bytes(fusable: list[tuple]) -> int:
    """Memory the concatenated weights of these groups (``fusable_projections``) take: those that ``stacked``
    has to copy."""
    return sum(stacked_copy_bytes(weights) for *_, weights in fusable)


def stacked(weights):
    """The weights stacked by rows (one matmul's weight): a view where they already lie that way, one after the
    other in one tensor (the rollout merges its LoRA weights so), else a copy."""
    import torch

    if not stacked_copy_bytes(weights):
        first = weights[0]
        return first.as_strided((sum(w.shape[0] for w in weights), *first.shape[1:]), first.stride())
    return torch.cat(weights)


def stacked_copy_bytes(weights) -> int:
    """What ``stacked(weights)`` allocates: 0 for a view."""
    first, offset = weights[0], weights[0].storage_offset()
    for w in weights:
        if (not w.is_contiguous() or w.dtype != first.dtype or w.shape[1:] != first.shape[1:]
                or w.untyped_storage().data_ptr() != first.untyped_storage().data_ptr() or w.storage_offset() != offset):
            return sum(w.numel() * w.element_size() for w in weights)
        offset += w.numel()
    return 0


def fusable_projections(language_model, groups=FUSED_PROJECTIONS) -> list[tuple]:
    """``(parent, names, weights)`` for every group in every decoder layer whose projections are all plain."""
    found = []
    for layer in language_model.layers:
        for parent_name, names in groups:
            parent = getattr(layer, parent_name, None)
            weights = [plain_linear_weight(getattr(parent, name, None)) for name in names]
            if parent is not None and all(w is not None for w in weights):
                found.append((parent, names, weights))
    return found


class FusedProjections:
    """Sibling projections as one matmul over their concatenated weights; each member returns its slice.

    The members replace the projections only while the generator runs the model (``swapped_in``). A member
    called with an input the group has not seen runs the whole matmul on it, so each returns its own
    projection of its own input, whatever the call order. The concatenated weights are taken when the generator
    is built (a copy, unless they already lie one after the other): the rollout builds it inside the LoRA
    merge, so it holds the merged weights.
    """

    def __init__(self, parent, names, weights):
        self.parent, self.names = parent, names
        self.weight = stacked([w.detach() for w in weights])
        self.sizes = [w.shape[0] for w in weights]
        self.input = self.outputs = None
        self.waiting: set[int] = set()
        self.members = [_fused_member_class()(self, index) for index in range(len(names))]

    def output(self, x, index: int):
        import torch

        if self.input is not x:
            self.input, self.outputs = x, torch.nn.functional.linear(x, self.weight).split(self.sizes, dim=-1)
            self.waiting = set(range(len(self.sizes)))
        output = self.outputs[index]
        self.waiting.discard(index)
        if not self.waiting:  # every member has its slice: hold nothing (a prefill chunk's outputs are large)
            self.input = self.outputs = None
        return output

    @contextlib.contextmanager
    def swapped_in(self):
        originals = [getattr(self.parent, name) for name in self.names]
        try:
            for name, member in zip(self.names, self.members):
                setattr(self.parent, name, member)
            yield
        finally:
            for name, original in zip(self.names, originals):
                setattr(self.parent, name, original)
            self.input = self.outputs = None


@functools.cache
def _fused_member_class():
    """A module (the model's attributes take only modules) standing for one projection of a fused group."""
    import torch

    class FusedMember(torch.nn.Module):
        def __init__(self, group, index):
            super().__init__()
            self.group, self.index = group, index  # the group is no module: not registered as a submodule

        def forward(self, x):
            return self.group.output(x, self.index)

    return FusedMember



"""How many rows a batch takes: the static KV cache and the sampling buffers per row, from free device memory."""

from __future__ import annotations

# Upper bound for the batch size chosen from free memory: past it the static cache read per step, not the
# number of steps, sets the time (see docs/performance.md).
MAX_AUTO_BATCH = 512
CPU_BATCH = 8
# Tokens per prefill forward (rows x positions): bounds prefill activations whatever the batch.
PREFILL_TOKENS = 65_536


def head_dim(text_config) -> int:
    return getattr(text_config, "head_dim", None) or text_config.hidden_size // text_config.num_attention_heads


def kv_bytes_per_token(text_config, dtype_bytes: int) -> int:
    return 2 * text_config.num_hidden_layers * text_config.num_key_value_heads * head_dim(text_config) * dtype_bytes


def auto_batch_size(model, *, cache_len: int, num_rows: int, memory_fraction: float = 0.9, extra_bytes: int = 0) -> int:
    """Rows per batch from free device memory (static KV cache + sampling buffers per row), less ``extra_bytes``
    that the generator takes besides; CPU: a fixed small batch."""
    device = next(model.parameters()).device
    if device.type != "cuda":
        return max(1, min(CPU_BATCH, num_rows))
    free = free_device_bytes(device, count_cached=True)
    text_config = model.config.get_text_config()
    dtype_bytes = next(model.parameters()).element_size()
    per_row = cache_len * kv_bytes_per_token(text_config, dtype_bytes) + sampling_bytes_per_row(text_config)
    # Prefill activations of one chunk (MLP intermediates dominate), whatever the batch size.
    prefill = PREFILL_TOKENS * (3 * text_config.intermediate_size + 4 * text_config.hidden_size) * dtype_bytes
    rows = (int(free * memory_fraction) - prefill - extra_bytes) // per_row
    return max(1, min(rows, MAX_AUTO_BATCH, num_rows))


def free_device_bytes(device, *, count_cached: bool) -> int:
    """Device memory this process can still get, within its ``set_per_process_memory_fraction`` cap (free memory
    reports the card, not the cap). ``count_cached``: its own cached blocks not in use count as free (the
    allocator hands them out first, and releases its cache itself before it would fail an allocation)."""
    import torch

    free, total = torch.cuda.mem_get_info(device)
    reserved, allocated = torch.cuda.memory_reserved(device), torch.cuda.memory_allocated(device)
    held = allocated if count_cached else reserved
    if count_cached:
        free += reserved - allocated
    cap = torch.cuda.get_per_process_memory_fraction(device) if hasattr(torch.cuda, "get_per_process_memory_fraction") else 1.0
    if cap < 1.0:
        free = min(free, int(cap * total) - held)
    return free


def sampling_bytes_per_row(text_config) -> int:
    """A decode step's transient memory per row: fp32 logits and their top-k/sort copies (~6 x vocab x 4 bytes)."""
    return 6 * text_config.vocab_size * 4


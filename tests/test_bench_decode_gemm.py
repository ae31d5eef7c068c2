"""bench/bench_decode_gemm.py: the matmul shapes it times are the decode step's (it runs on a GPU only)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

import bench_decode_gemm  # noqa: E402


def test_shapes_are_the_4b_decode_steps_matmuls_with_qkv_fused():
    shapes = bench_decode_gemm.decode_matmul_shapes()
    assert shapes == {
        "qkv": (4096, 2560, 34),  # 8 query heads + 2 x 4 key/value heads of 256
        "o_proj": (2560, 2048, 34),
        "gate|up": (10240, 2560, 68),  # two matmuls a layer
        "down": (2560, 10240, 34),
        "lm_head": (262_208, 2560, 1),
    }
    weights = sum(out * inp * calls for out, inp, calls in shapes.values())
    assert 3.8e9 < weights < 3.9e9  # every weight read once a step: the 4B's text model, 7.8 GB in bf16

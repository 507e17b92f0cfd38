"""Numerical precision guards for the statistics (not for the model's own forward)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch


@contextmanager
def full_fp32_matmul() -> Iterator[None]:
    """fp32 matmuls in full IEEE precision inside the block, whatever the user enabled globally.

    `torch.set_float32_matmul_precision("high")` (or `allow_tf32`) makes fp32 matmuls run in TF32 on
    CUDA (10-bit mantissa) and may use bf16 passes on CPU: fine for a model's forward, not for attention
    probabilities whose small entries the entropy depends on.
    """
    previous = torch.get_float32_matmul_precision()
    if previous == "highest":
        yield
        return
    torch.set_float32_matmul_precision("highest")
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(previous)

"""Numeric precision of the CLIP passes on CUDA: strict fp32 (the default, for fidelity), TF32
matrix units, or bf16 / fp16 weights. The CPU computes in fp32 only."""
from __future__ import annotations

import contextlib
from typing import Iterator, Optional

import torch

from .errors import ZsrisError

#: Precisions that compute on a copy of the model whose weights have this dtype. Casting the
#: weights once, rather than autocasting, keeps every matrix product on the half-precision
#: units without a per-call cast of the weights (on an H100, ViT-L/14's encode_image over 100
#: crops: 38-44 ms with bf16 weights, 57 ms under autocast).
HALF_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def check_precision(precision: str, device: torch.device) -> None:
    """Refuse a reduced precision off CUDA, rather than silently computing in fp32."""
    if precision != "fp32" and device.type != "cuda":
        raise ZsrisError(f"--precision {precision} needs a CUDA device; on {device.type} zsris computes in fp32")


def weight_dtype(precision: str) -> Optional[torch.dtype]:
    """The dtype of the model copy that ``precision`` computes with; None: the fp32 model."""
    return HALF_DTYPES.get(precision)


@contextlib.contextmanager
def compute_precision(precision: str, device: torch.device) -> Iterator[None]:
    """Run the block with TF32 matrix units on for every precision but fp32. fp32 turns TF32 off
    for matmuls and convolutions (cuDNN allows it by default), so that "fp32" means strict fp32;
    the previous flags come back after."""
    if device.type != "cuda":
        yield
        return
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = precision != "fp32"
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved

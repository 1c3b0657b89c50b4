"""Numeric precision of the CLIP passes on CUDA: strict fp32 (the default, for fidelity), TF32
matrix units, or autocast to bf16 / fp16. The CPU computes in fp32 only."""
from __future__ import annotations

import contextlib
from typing import Iterator

import torch

from .errors import ZsrisError

_AUTOCAST = {"bf16": torch.bfloat16, "fp16": torch.float16}


def check_precision(precision: str, device: torch.device) -> None:
    """Refuse a reduced precision off CUDA, rather than silently computing in fp32."""
    if precision != "fp32" and device.type != "cuda":
        raise ZsrisError(f"--precision {precision} needs a CUDA device; on {device.type} zsris computes in fp32")


@contextlib.contextmanager
def compute_precision(precision: str, device: torch.device) -> Iterator[None]:
    """Run the block at ``precision``. fp32 turns TF32 off for matmuls and convolutions (cuDNN
    allows it by default), so that "fp32" means strict fp32; the previous flags come back after."""
    if device.type != "cuda":
        yield
        return
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = precision != "fp32"
    autocast = (torch.autocast("cuda", dtype=_AUTOCAST[precision]) if precision in _AUTOCAST
                else contextlib.nullcontext())
    try:
        with autocast:
            yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved

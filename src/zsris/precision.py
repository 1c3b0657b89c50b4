"""Numeric precision of the CLIP passes: strict fp32 (the default, for fidelity) everywhere; on
CUDA also TF32 matrix units or bf16 / fp16 weights; on a CPU whose cores have bf16 instructions
(AVX512-BF16, or AMX's tile units: Intel Xeon since Cooper Lake / Sapphire Rapids, AMD Zen 4)
bf16 weights, which oneDNN runs on those units (ViT-B/32 over 100 crops on 2 such cores: 4.7 s
in fp32, 1.5 s in bf16)."""
from __future__ import annotations

import contextlib
import functools
from pathlib import Path
from typing import Iterator, Optional

import torch

from .errors import ZsrisError

#: Precisions that compute on a copy of the model whose weights have this dtype. Casting the
#: weights once, rather than autocasting, keeps every matrix product on the half-precision
#: units without a per-call cast of the weights (on an H100, ViT-L/14's encode_image over 100
#: crops: 38-44 ms with bf16 weights, 57 ms under autocast).
HALF_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


#: The CPU flags (as /proc/cpuinfo names them) whose instructions compute bf16 products.
CPU_BF16_FLAGS = ("amx_bf16", "avx512_bf16")


@functools.lru_cache(maxsize=1)
def cpu_bf16_units() -> tuple[str, ...]:
    """Which of :data:`CPU_BF16_FLAGS` this CPU has: torch's own probes where it has them, else
    the kernel's list of flags (Linux). Empty: bf16 would be emulated, slower than fp32."""
    probes = {"amx_bf16": getattr(torch.cpu, "_is_amx_tile_supported", None),
              "avx512_bf16": getattr(torch.cpu, "_is_avx512_bf16_supported", None)}
    if all(probe is not None for probe in probes.values()):
        return tuple(flag for flag, probe in probes.items() if probe())
    try:
        flags = set(Path("/proc/cpuinfo").read_text().split())
    except OSError:
        return ()
    return tuple(flag for flag in CPU_BF16_FLAGS if flag in flags)


def check_precision(precision: str, device: torch.device) -> None:
    """Refuse a precision the device cannot compute, rather than silently computing in fp32 (or
    emulating bf16 slower than fp32)."""
    if precision == "fp32" or device.type == "cuda":
        return
    if device.type == "cpu" and precision == "bf16":
        if not cpu_bf16_units():
            raise ZsrisError("--precision bf16 on the CPU needs bf16 instructions (AVX512-BF16 or AMX-BF16), "
                             "which this CPU lacks; use fp32 (the default)")
        return
    on = "the CPU computes in fp32 or bf16" if device.type == "cpu" else f"{device.type} computes in fp32"
    raise ZsrisError(f"--precision {precision} needs a CUDA device; {on}")


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

"""Reading model checkpoints without running code from them.

A ``.pt`` / ``.pth`` / ``.bin`` file is a pickle, and unpickling can call any function. torch's
``weights_only`` unpickler admits only tensors and plain containers, but third-party loaders
(open_clip's ``load_openai_model``, segment-anything's ``build_sam``) call ``torch.load``
without it, and then ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1`` in the user's environment turns it
off. So every checkpoint zsris opens is read here, with ``weights_only=True`` passed
explicitly (which that variable cannot override), and only the resulting tensors are handed on.
"""
from __future__ import annotations

import pickle
import re
import zipfile
from pathlib import Path
from typing import Any

import torch

from .errors import WeightsError


def is_torchscript_archive(path: Path) -> bool:
    """OpenAI's released CLIP ``.pt`` files are TorchScript archives (a zip with code/ and constants.pkl)."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(name.endswith("constants.pkl") for name in archive.namelist())


def refusal(path: Path, what: str, error: Exception) -> WeightsError:
    """One line naming what the pickle wanted to run, instead of torch's advice to unpickle it anyway."""
    found = re.search(r"GLOBAL ([\w.]+)", str(error))
    if found is None:
        return WeightsError(f"{what} {path} is not a readable checkpoint (its pickle is malformed)")
    return WeightsError(f"{what} {path} is refused: it is not plain weights (it references {found.group(1)}); "
                        f"zsris loads only tensors from checkpoints, never code")


def read_state_dict(path: Path, what: str = "checkpoint") -> dict[str, torch.Tensor]:
    """The tensors of a checkpoint: safetensors, a TorchScript archive, or a ``torch.save``d
    state dict (optionally under ``state_dict`` / ``model``, with DataParallel's ``module.``)."""
    if not path.is_file():
        raise WeightsError(f"{what} {path} does not exist")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path), device="cpu")
        if is_torchscript_archive(path):
            return dict(torch.jit.load(str(path), map_location="cpu").state_dict())
        loaded: Any = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        raise refusal(path, what, error) from None
    except WeightsError:
        raise
    except Exception as error:  # noqa: BLE001 - a corrupt or foreign file, whatever the loader raised
        first = (str(error).strip().splitlines() or [type(error).__name__])[0][:200]
        raise WeightsError(f"{what} {path} is not a readable checkpoint ({first})") from None
    for key in ("state_dict", "model"):
        if isinstance(loaded, dict) and isinstance(loaded.get(key), dict):
            loaded = loaded[key]
    if not isinstance(loaded, dict) or not all(isinstance(v, torch.Tensor) for v in loaded.values()):
        raise WeightsError(f"{what} {path} holds no state dict of tensors")
    if loaded and all(k.startswith("module.") for k in loaded):
        loaded = {k[len("module."):]: v for k, v in loaded.items()}
    return loaded

"""Finding model checkpoints, and reading them without running code from them.

:func:`find_checkpoint` is the one look-up of a proposal generator's weights (SAM, SAM 2.1, SAM 3,
FreeSOLO), by the generator's entry in :data:`zsris.proposals.configs.CHECKPOINT_SOURCES`: the
generators load what it finds, and ``zsris weights`` reports it.

A ``.pt`` / ``.pth`` / ``.bin`` file is a pickle, and unpickling can call any function. torch's
``weights_only`` unpickler admits only tensors and plain containers, but third-party loaders
(open_clip's ``load_openai_model``, segment-anything's ``build_sam``) call ``torch.load``
without it, and then ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1`` in the user's environment turns it
off. So every checkpoint zsris opens is read here, with ``weights_only=True`` passed
explicitly (which that variable cannot override), and only the resulting tensors are handed on.
"""
from __future__ import annotations

import os
import pickle
import re
import socket
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

import torch

from .errors import WeightsError
from .images import file_problem

if TYPE_CHECKING:
    from .proposals.configs import CheckpointSource


@dataclass(frozen=True)
class FoundCheckpoint:
    """A generator's checkpoint as found: ``path`` (a file, a folder, ``random``, or a hub id
    that transformers downloads) and its ``origin``: ``given`` (the flag or argument), ``env``
    (the environment variable), ``cache`` (the Hugging Face cache) or ``hub`` (downloaded, or
    to download). A given one (or the environment's) is as the user wrote it: whether it is
    there is for its loader, or ``zsris weights``, to say."""

    path: str
    origin: str

    @property
    def given(self) -> bool:
        return self.origin in ("given", "env")


def network_reachable(host: str = "huggingface.co", timeout: float = 3.0) -> bool:
    """Whether ``host`` (the Hugging Face hub) can be reached, False under ``HF_HUB_OFFLINE``: a DNS
    lookup answers in milliseconds offline, where open_clip's own retries take a minute."""
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False"):
        return False
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(timeout)
    try:
        socket.getaddrinfo(host, 443)
        return True
    except OSError:
        return False
    finally:
        socket.setdefaulttimeout(previous)


def find_checkpoint(source: "CheckpointSource", given: Optional[str], model: str = "",
                    online: bool = True) -> Optional[FoundCheckpoint]:
    """The checkpoint of the generator ``source`` describes, in its model size ``model``:
    ``given``, else its environment variable, else (weights on the hub) the hub's copy in the
    Hugging Face cache (a folder in the transformers format, or the file), else, when ``online``
    and the hub answers, the hub id (transformers downloads a folder itself) or the downloaded
    file. None where there is none: the generator says, in its own words, where to get it."""
    if given:
        return FoundCheckpoint(given, "given")
    if os.environ.get(source.env):
        return FoundCheckpoint(os.environ[source.env], "env")
    if not source.hub:
        return None
    from huggingface_hub import hf_hub_download, try_to_load_from_cache

    repo = source.where[model]
    cached = try_to_load_from_cache(repo, source.file)
    if isinstance(cached, str):
        return FoundCheckpoint(str(Path(cached).parent) if source.folder else cached, "cache")
    if not online or not network_reachable():
        return None
    if source.folder:
        return FoundCheckpoint(repo, "hub")
    try:
        return FoundCheckpoint(hf_hub_download(repo, source.file), "hub")
    except Exception:  # noqa: BLE001 - a refused or broken download means "not here", as no network does
        return None


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


def check_weights_file(path: Path, what: str) -> None:
    """Refuse, in one line saying what it is instead, a weights path that is not a regular file
    (a folder, a pipe or a device, a link loop), before anything opens it."""
    problem = file_problem(path)
    if problem == "no such file":
        raise WeightsError(f"{what} {path} does not exist")
    if problem == "is a directory":
        raise WeightsError(f"{what} {path} is a directory: pass the weights file in it")
    if problem is not None:
        raise WeightsError(f"{what} {path} is {problem}")


def read_state_dict(path: Path, what: str = "checkpoint") -> dict[str, torch.Tensor]:
    """The tensors of a checkpoint: safetensors, a TorchScript archive, or a ``torch.save``d
    state dict (optionally under ``state_dict`` / ``model``, with DataParallel's ``module.``)."""
    check_weights_file(path, what)
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

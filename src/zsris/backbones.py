"""CLIP backbones through open_clip: named models with pretrained tags, local checkpoints, or
random weights of the real architecture; and CLIPs in the transformers format (``hf:``, see
:mod:`zsris.hf_clip`), converted into open_clip's.

Weights are resolved in this order: an explicit ``weights`` argument (a path, or ``"random"``),
the ``ZSRIS_CLIP_WEIGHTS`` environment variable, then the pretrained tag (default ``openai``)
looked up in the Hugging Face cache and, when the network is reachable, downloaded. When none
of these works the error says exactly which flag and variable to set.
"""
from __future__ import annotations

import copy
import logging
import os
import pickle
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import open_clip
import torch
from torch import nn

from .checkpoints import check_weights_file, network_reachable, read_state_dict, refusal
from .config import DEFAULT_BACKBONE, DEFAULT_PRETRAINED, WEIGHTS_ENV
from .errors import WeightsError, ZsrisError
from .hf_clip import hub_id, is_hf_name, load_converted
from .visual import is_vit

RANDOM = "random"
HF = "transformers"  # a WeightsSource kind: a CLIP in the transformers format (hf:...)

#: ImageNet statistics. The reference implementation normalises with these (not CLIP's own)
#: and fills the background of local crops with the mean *in normalised space*.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Preprocess:
    """How pixels become CLIP input: per-channel statistics, the background fill of local crops,
    whether tensor resizes antialias, and the shorter side the image is first resized to (PIL,
    bilinear) before anything else, if any.

    ``fill`` is given in the *normalised* space, as the reference code applies it.
    """

    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    fill: tuple[float, float, float]
    antialias: bool = True
    short_side: Optional[int] = None


def preprocess_preset(name: str, model: Optional[nn.Module] = None) -> Preprocess:
    """``reference``: what the authors' code does under today's torchvision (ImageNet
    statistics, ImageNet-mean fill in normalised space, antialiased tensor resizes from the
    original image). ``paper``: the authors' image path as it ran in their environment
    (torchvision 0.11): their dataset's PIL resize to a shorter side of 800 first, then tensor
    resizes without antialiasing, back to the original size for the masks and crops and to the
    CLIP input for the global pass. ``clip``: the model's own statistics, the fill being
    ImageNet-mean grey pixels normalised with them."""
    if name == "reference":
        return Preprocess(IMAGENET_MEAN, IMAGENET_STD, IMAGENET_MEAN)
    if name == "paper":
        return Preprocess(IMAGENET_MEAN, IMAGENET_STD, IMAGENET_MEAN, antialias=False, short_side=800)
    if name == "clip":
        mean = tuple(getattr(getattr(model, "visual", None), "image_mean", None) or open_clip.OPENAI_DATASET_MEAN)
        std = tuple(getattr(getattr(model, "visual", None), "image_std", None) or open_clip.OPENAI_DATASET_STD)
        fill = tuple((m - mu) / s for m, mu, s in zip(IMAGENET_MEAN, mean, std))
        return Preprocess(mean, std, fill)  # type: ignore[arg-type]
    raise ValueError(f"unknown preprocessing {name!r}: use 'reference', 'paper' or 'clip'")


@dataclass
class ClipBackbone:
    """A loaded CLIP model with what the feature extractors need to know about it."""

    model: nn.Module
    tokenizer: Callable
    name: str
    weights: str
    input_size: int
    casts: dict[torch.dtype, nn.Module] = field(default_factory=dict, repr=False, compare=False)

    def model_in(self, dtype: Optional[torch.dtype]) -> nn.Module:
        """The model with its weights in ``dtype`` (None: the fp32 model itself); a cast copy is
        made once and shared by every segmenter of this backbone."""
        if dtype is None or dtype == torch.float32:
            return self.model
        if dtype not in self.casts:
            self.casts[dtype] = in_place_activations(_keep_fp32_norms(copy.deepcopy(self.model).to(dtype)))
        return self.casts[dtype]

    @property
    def is_vit(self) -> bool:
        return is_vit(self.model)

    @property
    def is_random(self) -> bool:
        return self.weights == RANDOM

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def context_length(self) -> int:
        return int(getattr(self.model, "context_length", 77))


def _keep_fp32_norms(model: nn.Module) -> nn.Module:
    """``model`` with open_clip's fp32 LayerNorms (the variant a state dict in OpenAI's layout
    builds) back in fp32: they normalise in fp32 whatever their input, and a CPU refuses fp32
    activations with half-precision weights ("mixed dtype")."""
    from open_clip.transformer import LayerNormFp32

    for module in model.modules():
        if isinstance(module, LayerNormFp32):
            module.float()
    return model


class InPlaceQuickGELU(nn.Module):
    """OpenAI CLIP's activation, ``x * sigmoid(1.702 x)``, computed in place as
    ``silu(1.702 x) / 1.702`` (the same function): no temporaries. On the CPU's bf16 units, where
    the matrix products got four times faster, open_clip's three allocations per call had become
    a tenth of the pass. Its input, a linear layer's fresh output, is overwritten, so it is used
    only there (:func:`in_place_activations`) and, with gradients wanted, computes out of place."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled() and x.requires_grad:
            return x * torch.sigmoid(1.702 * x)
        x = x.mul_(1.702)
        nn.functional.silu(x, inplace=True)
        return x.mul_(1 / 1.702)


def in_place_activations(model: nn.Module) -> nn.Module:
    """``model`` (a reduced-precision copy) with every open_clip ``QuickGELU`` that directly follows
    a linear layer in a sequence (each transformer block's MLP) replaced by
    :class:`InPlaceQuickGELU`. The fp32 model is never given it: it keeps open_clip's own arithmetic,
    the authors'."""
    quick_gelu = open_clip.transformer.QuickGELU
    for sequence in [m for m in model.modules() if isinstance(m, nn.Sequential)]:
        names = list(sequence._modules)
        for before, name in zip(names, names[1:]):
            if isinstance(sequence._modules[name], quick_gelu) and isinstance(sequence._modules[before], nn.Linear):
                sequence._modules[name] = InPlaceQuickGELU()
    return model


def canonical_name(name: str) -> str:
    """open_clip spells ``ViT-B/32`` as ``ViT-B-32``; accept both."""
    candidate = name.replace("/", "-")
    available = open_clip.list_models()
    if candidate not in available:
        raise WeightsError(
            f"unknown CLIP backbone {name!r}; choose one of open_clip's models, e.g. ViT-B/32, ViT-B/16, RN50"
        )
    return candidate


def _missing_weights_message(name: str, pretrained: str, reason: str) -> str:
    return (
        f"no weights for CLIP {name} ({pretrained}): {reason}. Point --weights (or the "
        f"{WEIGHTS_ENV} environment variable) at a local checkpoint (OpenAI .pt, torch state dict, "
        f"open_clip .bin/.safetensors), put the open_clip weights in the Hugging Face cache "
        f"(HF_HOME), or use --weights random for an untrained model (its masks mean nothing); "
        f"`zsris weights` shows where they are looked for"
    )


def _create(name: str, pretrained: Optional[str], quick_gelu: bool) -> nn.Module:
    """open_clip logs 'initialized randomly' on the root logger; zsris says that itself, once."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.CRITICAL)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return open_clip.create_model(name, pretrained=pretrained, force_quick_gelu=quick_gelu)
    finally:
        root.setLevel(level)


def _load_openai(path: Path) -> nn.Module:
    """OpenAI's own format (a TorchScript archive or its state dict), read without unpickling
    code; the architecture is rebuilt from the weights, as the reference ``clip.load`` does and
    as ``open_clip.load_openai_model`` would (which calls ``torch.load`` unguarded)."""
    from open_clip.model import build_model_from_openai_state_dict

    state_dict = read_state_dict(path, "CLIP checkpoint")
    model = build_model_from_openai_state_dict(state_dict).float()
    model.visual.image_mean = open_clip.OPENAI_DATASET_MEAN
    model.visual.image_std = open_clip.OPENAI_DATASET_STD
    return model


def _load_from_path(name: str, path: Path, quick_gelu: bool) -> nn.Module:
    check_weights_file(path, "CLIP weights file")
    errors = []
    if path.suffix == ".pt":
        try:
            return _load_openai(path)
        except WeightsError:
            raise
        except Exception as error:  # noqa: BLE001 - not OpenAI's layout: try open_clip's own below
            errors.append(f"as OpenAI checkpoint: {error}")
    try:
        # open_clip reads the file with weights_only=True. The activation is not in a state dict:
        # it is the one the pretrained tag was trained with (QuickGELU for OpenAI's, GELU for
        # LAION's and DataComp's ...), as weights_source decided.
        return _create(name, str(path), quick_gelu=quick_gelu)
    except pickle.UnpicklingError as error:
        raise refusal(path, "CLIP checkpoint", error) from None
    except Exception as error:  # noqa: BLE001 - report every attempt below
        errors.append(f"as {name}: {error}")
    raise WeightsError(f"cannot load CLIP weights from {path}: " + "; ".join(first_reason(e) for e in errors))


def first_reason(message: str, limit: int = 300) -> str:
    """The line of an error message that says what is wrong. torch's state-dict errors open with
    "Error(s) in loading state_dict for CLIP:" and name the missing, unexpected or mis-shaped
    tensors below it: keep the heading and the first of those, cut to ``limit`` characters."""
    lines = [line.strip() for line in str(message).splitlines() if line.strip()]
    if not lines:
        return ""
    first = lines[0]
    if "Error(s) in loading state_dict" in first and len(lines) > 1:
        first = f"{first} {lines[1]}"
    return first if len(first) <= limit else first[: limit - 3] + "..."


HF_WEIGHT_FILES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")


def cached_pretrained_file(cfg: dict) -> Optional[Path]:
    """The local file of a pretrained tag, if the Hugging Face cache or open_clip's URL cache has it."""
    hub_id = (cfg.get("hf_hub") or "").rstrip("/")
    if hub_id:
        from huggingface_hub import try_to_load_from_cache

        for filename in HF_WEIGHT_FILES:
            found = try_to_load_from_cache(hub_id, filename)
            if isinstance(found, str):
                return Path(found)
    url = cfg.get("url") or ""
    if url:
        local = Path(os.path.expanduser("~/.cache/clip")) / os.path.basename(url)
        if local.is_file():
            return local
    return None


@dataclass(frozen=True)
class WeightsSource:
    """Where the weights of a CLIP backbone come from, decided without loading anything.

    ``kind`` is ``random``, ``path`` (a local checkpoint named by --weights or the environment),
    ``pretrained`` (an open_clip tag: ``hub`` is its Hugging Face repository, ``url`` the
    original release, ``path`` the local copy when one is cached), or ``transformers`` (an
    ``hf:`` backbone: ``tag`` its hub id or folder, ``path`` its config.json when here).
    """

    backbone: str
    kind: str
    tag: str
    path: Optional[Path] = None
    hub: str = ""
    url: str = ""
    quick_gelu: bool = False

    @property
    def available(self) -> bool:
        """True when loading needs no network."""
        return self.kind == RANDOM or (self.path is not None and self.path.is_file())


def weights_source(name: str = DEFAULT_BACKBONE, pretrained: str = DEFAULT_PRETRAINED,
                   weights: Optional[str] = None) -> WeightsSource:
    """Resolve ``weights`` (a path or ``"random"``), then ``$ZSRIS_CLIP_WEIGHTS``, then the
    pretrained tag, as :func:`load_backbone` does; unknown backbones and tags are refused."""
    if is_hf_name(name):
        return _hf_weights_source(name, weights)
    arch = canonical_name(name)
    weights = weights or os.environ.get(WEIGHTS_ENV) or None
    openai_gelu = bool((open_clip.get_pretrained_cfg(arch, "openai") or {}).get("quick_gelu", False))
    if weights == RANDOM:
        return WeightsSource(arch, RANDOM, RANDOM, quick_gelu=openai_gelu)
    cfg = open_clip.get_pretrained_cfg(arch, pretrained)
    tags = [tag for model, tag in open_clip.list_pretrained() if model == arch]
    if not cfg and pretrained == DEFAULT_PRETRAINED and tags:  # not an OpenAI model: its own first tag
        pretrained = tags[0]
        cfg = open_clip.get_pretrained_cfg(arch, pretrained)
    if not cfg:
        known = ", ".join(tags) or "none"
        raise WeightsError(f"CLIP {arch} has no pretrained tag {pretrained!r} (known tags: {known}); with "
                           f"--weights FILE the tag says how the file was trained (its activation)")
    if weights:
        return WeightsSource(arch, "path", str(weights), Path(weights).expanduser(),
                             quick_gelu=bool(cfg.get("quick_gelu", False)))
    hub = (cfg.get("hf_hub") or "").rstrip("/")
    return WeightsSource(arch, "pretrained", pretrained, cached_pretrained_file(cfg), hub, cfg.get("url") or "",
                         bool(cfg.get("quick_gelu", False)))


def _hf_weights_source(name: str, weights: Optional[str]) -> WeightsSource:
    """Where a transformers CLIP (``hf:...``) comes from: random, a local folder, or the hub id's
    copy in the Hugging Face cache (its folder, when there)."""
    where = hub_id(name)
    if weights == RANDOM:
        return WeightsSource(name, RANDOM, RANDOM)
    folder = Path(where).expanduser()
    if folder.is_dir():
        return WeightsSource(name, HF, where, folder / "config.json")
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(where, "config.json")
    return WeightsSource(name, HF, where, Path(found) if isinstance(found, str) else None, where)


def _load_pretrained(source: WeightsSource) -> nn.Module:
    if source.path is not None:
        if source.path.suffix == ".pt":
            return _load_openai(source.path)
        return _create(source.backbone, str(source.path), source.quick_gelu)
    # Offline, open_clip's own download retries for about a minute before failing: ask DNS first.
    if not network_reachable():
        raise WeightsError(_missing_weights_message(source.backbone, source.tag,
                                                    "not in the local cache and no network"))
    try:
        return _create(source.backbone, source.tag, source.quick_gelu)
    except Exception as error:  # noqa: BLE001 - any download failure means the same to the user
        raise WeightsError(_missing_weights_message(source.backbone, source.tag, str(error).splitlines()[0])) from None


def load_backbone(
    name: str = DEFAULT_BACKBONE,
    pretrained: str = DEFAULT_PRETRAINED,
    weights: Optional[str] = None,
    device: str | torch.device = "cpu",
    seed: int = 0,
) -> ClipBackbone:
    """Build the CLIP backbone ``name`` in eval mode on ``device``.

    ``weights`` is a checkpoint path, ``"random"`` (the real architecture with random weights,
    seeded, for tests and speed measurements) or None (``$ZSRIS_CLIP_WEIGHTS``, then ``pretrained``).
    """
    if is_hf_name(name):
        model, tag = load_converted(name, weights, network=network_reachable(), seed=seed)
        return _ready(model, device, open_clip.tokenizer.SimpleTokenizer(context_length=model.context_length),
                      name, tag)
    source = weights_source(name, pretrained, weights)
    if source.kind == RANDOM:
        torch.manual_seed(seed)
        model = _create(source.backbone, None, source.quick_gelu)
    elif source.kind == "path":
        model = _load_from_path(source.backbone, source.path, source.quick_gelu)
        _check_finite(model, str(source.path))
    else:
        model = _load_pretrained(source)
        _check_finite(model, f"{source.backbone} ({source.tag})")
    return _ready(model, device, text_tokenizer(source.backbone, model, source.kind == RANDOM), source.backbone,
                  source.tag)


def _check_finite(model: nn.Module, where: str) -> None:
    """Refuse weights holding NaN or infinity: every score would be NaN, and every answer arbitrary."""
    for name, tensor in model.state_dict().items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise WeightsError(f"{where}: the weight {name} holds NaN or infinite values; the checkpoint is damaged")


class StandInTokenizer:
    """OpenAI's BPE with its ids folded into a smaller vocabulary, padded to the model's context:
    text for a randomly initialised model whose own tokenizer (a SentencePiece vocabulary on the
    hub, such as SigLIP's) is not on this machine. The model's work per sentence is the same;
    what the ids mean is not, which random weights make moot."""

    def __init__(self, context_length: int, vocab_size: int) -> None:
        self.inner = open_clip.tokenizer.SimpleTokenizer(context_length=context_length)
        self.context_length, self.vocab_size = context_length, vocab_size

    def __call__(self, texts: str | list[str], context_length: Optional[int] = None) -> torch.Tensor:
        return self.inner(texts, context_length or self.context_length) % self.vocab_size

    def encode(self, text: str) -> list[int]:
        """The BPE ids of ``text`` before folding (their count is what the context must hold)."""
        return self.inner.encode(text)


def text_tokenizer(arch: str, model: nn.Module, random: bool) -> Callable:
    """``arch``'s own tokenizer. One kept on the Hugging Face hub (SigLIP's) is read from the cache,
    downloaded when online; where it is missing, a trained model is refused in one line saying how
    to get it, and a random one gets :class:`StandInTokenizer`, with a warning."""
    hub = ((open_clip.get_model_config(arch) or {}).get("text_cfg") or {}).get("hf_tokenizer_name")
    if not hub:
        return open_clip.get_tokenizer(arch)
    try:
        return open_clip.get_tokenizer(arch, local_files_only=not network_reachable())
    except (OSError, ValueError) as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        if not random:
            raise WeightsError(f"{arch}'s tokenizer ({hub}) is not here ({reason}); download it once with "
                               f"`hf download {hub}`") from None
    vocab = int(model.token_embedding.num_embeddings if hasattr(model, "token_embedding")
                else model.text.token_embedding.num_embeddings)
    warnings.warn(f"zsris: {arch}'s tokenizer ({hub}) is not here: random weights tokenise with a stand-in "
                  f"(OpenAI's BPE folded into {vocab:,} ids)", stacklevel=3)
    return StandInTokenizer(int(getattr(model, "context_length", 77)), vocab)


def _ready(model: nn.Module, device: str | torch.device, tokenizer: Callable, name: str, weights: str) -> ClipBackbone:
    """The backbone of a built model: fp32, eval mode, frozen, on ``device``."""
    model = model.float().eval().to(device)
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    size = model.visual.image_size
    input_size = int(size[0] if isinstance(size, (tuple, list)) else size)
    return ClipBackbone(model, tokenizer, name, weights, input_size)


def resolve_device(device: str = "auto") -> torch.device:
    """``auto`` picks CUDA when present, else the CPU; any other device must exist here."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as error:
        raise ZsrisError(f"unknown device {device!r}: {error}") from None
    if resolved.type == "cpu":
        return resolved
    if resolved.type == "cuda":
        available, count = torch.cuda.is_available(), torch.cuda.device_count()
    else:
        backend = getattr(torch.backends, resolved.type, None) or getattr(torch, resolved.type, None)
        is_available = getattr(backend, "is_available", None)
        available = bool(is_available()) if callable(is_available) else False
        count = 1
    if not available:
        raise ZsrisError(f"device {device!r} asked for, but {resolved.type} is not available here; "
                         f"use --device cpu or auto")
    if resolved.index is not None and resolved.index >= count:
        raise ZsrisError(f"device {device!r} asked for, but this machine has {count} {resolved.type} device(s)")
    return resolved

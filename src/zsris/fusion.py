"""How the paper's parts are combined: global with local visual features (alpha), the sentence
with its noun phrase (beta). Both follow one rule, and the two ``fusion`` modes decide where
L2 normalisation happens."""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor


def fuse(first: Tensor, second: Tensor, weight: float, normalize_parts: bool) -> Tensor:
    """``weight * first + (1 - weight) * second``, optionally L2-normalising each part first."""
    if normalize_parts:
        first = F.normalize(first, dim=-1)
        second = F.normalize(second, dim=-1)
    return weight * first + (1 - weight) * second


def fuse_visual(global_features: Tensor, local_features: Tensor, alpha: float, fusion: str, is_vit: bool) -> Tensor:
    """The L2-normalised visual feature of each proposal.

    ``reference`` fuses raw ViT features, as the authors' code does; its ResNet path normalises
    the local feature first. ``normalized`` normalises both parts first."""
    if fusion == "normalized":
        fused = fuse(global_features, local_features, alpha, normalize_parts=True)
    else:
        local = local_features if is_vit else F.normalize(local_features, dim=-1)
        fused = fuse(global_features, local, alpha, normalize_parts=False)
    return F.normalize(fused, dim=-1)


def fuse_text(sentences: Tensor, phrases: Tensor, beta: float, fusion: str, is_vit: bool) -> Tensor:
    """The L2-normalised text feature of each expression: the authors' code normalises the parts
    on its ResNet path only; ``normalized`` always does."""
    normalize_parts = fusion == "normalized" or not is_vit
    return F.normalize(fuse(sentences, phrases, beta, normalize_parts), dim=-1)

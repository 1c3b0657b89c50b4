"""The paper's method: global-local CLIP features (Yu, Seo and Son, CVPR 2023; docs/method.md).

Each proposal is seen in its surroundings (the global feature: the mask applied to the tokens of
the last ``k`` ViT blocks, or to a ResNet's attention pool) and alone (the local feature: CLIP on
its background-filled crop); the two are fused with ``alpha``. Each expression is its sentence
and its target noun phrase, fused with ``beta``. A proposal's score is the cosine of the two.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from .. import visual
from ..config import SegmenterConfig
from ..encoder import ClipEncoder
from ..fusion import fuse_text, fuse_visual
from ..preprocess import ImageTensors
from ..scoring import ScoreTable
from ..text import ParsedExpression
from ..types import ImageFeatures, Proposals


class GlobalLocal:
    """The paper's scoring on ``encoder``, with its weights ``alpha`` (global against local) and
    ``beta`` (sentence against noun phrase) and where ``fusion`` normalises."""

    name = "global-local"

    def __init__(self, encoder: ClipEncoder, alpha: float, beta: float, fusion: str) -> None:
        self.encoder = encoder
        self.alpha = alpha
        self.beta = beta
        self.fusion = fusion
        self.is_vit = encoder.backbone.is_vit

    def features(self, images: Sequence[ImageTensors], proposals: Sequence[Proposals]) -> list[ImageFeatures]:
        """Global, local and fused features of each image's proposals, in shared passes."""
        masks = [visual.masks_on(p, self.encoder.device) for p in proposals]  # once, as bool
        boxes = [torch.from_numpy(p.boxes) for p in proposals]
        found = self.encoder.visual(images, masks, boxes)
        return [ImageFeatures(p, g, loc, self.fuse_visual(g, loc))
                for p, g, loc in zip(proposals, found["global"], found["local"])]

    def join(self, proposals: Proposals, parts: Sequence[ImageFeatures]) -> ImageFeatures:
        return ImageFeatures(proposals, *(torch.cat([getattr(f, name) for f in parts]) for name in
                                          ("global_features", "local_features", "visual_features")))

    def fuse_visual(self, global_features: Tensor, local_features: Tensor) -> Tensor:
        """The fused, L2-normalised visual feature of each proposal (see :mod:`zsris.fusion`)."""
        return fuse_visual(global_features, local_features, self.alpha, self.fusion, self.is_vit)

    def text_features(self, parsed: Sequence[ParsedExpression]) -> Tensor:
        """Fused, L2-normalised text features ``[E, D]``: one forward pass for the sentences and
        their noun phrases together."""
        both = self.encoder.text([*(p.sentence for p in parsed), *(p.noun_phrase for p in parsed)])
        sentences, phrases = both[:len(parsed)], both[len(parsed):]
        return fuse_text(sentences, phrases, self.beta, self.fusion, self.is_vit)

    def scores(self, features: ImageFeatures, parsed: Sequence[ParsedExpression], phrases: bool) -> ScoreTable:
        """Fused, global and local cosines; with ``phrases``, each noun phrase alone against the
        fused visual features (the sentence's own words of place mean little to CLIP)."""
        text = self.text_features(parsed)
        table = ScoreTable((text @ features.visual_features.T).cpu(),
                           (text @ F.normalize(features.global_features, dim=-1).T).cpu(),
                           (text @ F.normalize(features.local_features, dim=-1).T).cpu())
        if phrases:
            alone = self.encoder.text(p.noun_phrase for p in parsed)
            table.phrase = (F.normalize(alone, dim=-1) @ features.visual_features.T).cpu()
        return table


def from_config(config: SegmenterConfig, encoder: ClipEncoder) -> GlobalLocal:
    """The registry's factory."""
    return GlobalLocal(encoder, config.alpha, config.beta, config.fusion)

"""The paper's method: global-local CLIP features (Yu, Seo and Son, CVPR 2023; docs/method.md),
with the ablations of its Table 1 as settings, and the cropping baseline.

Each proposal is seen in its surroundings (the global feature: the mask applied to the tokens of
the last ``k`` ViT blocks, or to a ResNet's attention pool) and alone (the local feature: CLIP on
its background-filled crop); the two are fused with ``alpha``. Each expression is its sentence
and its target noun phrase, fused with ``beta``. A proposal's score is the cosine of the two.

Settings (the paper's by default): ``visual`` which visual features (``global-local``,
``global`` or ``local`` alone), ``text`` which text features (``sentence-phrase``, ``sentence``
or ``phrase`` alone), ``masking`` how the global feature sees the mask
(:data:`zsris.methods.registry.MASKINGS`: ``tokens``, ViT ``one-block`` or ``attention``, ResNet
``image-query``). The cropping baseline is this method with the local feature alone.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from ..config import SegmenterConfig
from ..encoder import ClipEncoder
from ..errors import ZsrisError
from ..fusion import fuse_text, fuse_visual
from ..preprocess import ImageTensors
from ..scoring import ScoreTable
from ..text import ParsedExpression
from ..types import ImageFeatures, Proposals
from ..visual import is_map_vit, masks_on
from .registry import MASKINGS, TEXTS, VISUALS


def choose(name: str, value: object, choices: Sequence[str], method: str) -> str:
    """``value`` if it is one of ``choices``, else refused in one line naming the method's setting."""
    if value not in choices:
        raise ZsrisError(f"the {method} method's {name} is one of {', '.join(choices)}, not {value!r}")
    return str(value)


def text_features(encoder: ClipEncoder, parsed: Sequence[ParsedExpression], text: str, beta: float,
                  fusion: str) -> Tensor:
    """L2-normalised text features ``[E, D]`` of the expressions: ``sentence-phrase`` fuses each
    sentence with its noun phrase (``beta``; one forward pass for both), ``sentence`` and
    ``phrase`` take one of them alone."""
    if text == "sentence":
        return F.normalize(encoder.text(p.sentence for p in parsed), dim=-1)
    if text == "phrase":
        return F.normalize(encoder.text(p.noun_phrase for p in parsed), dim=-1)
    both = encoder.text([*(p.sentence for p in parsed), *(p.noun_phrase for p in parsed)])
    return fuse_text(both[:len(parsed)], both[len(parsed):], beta, fusion, encoder.backbone.is_vit)


class GlobalLocal:
    """The paper's scoring on ``encoder``, with its weights ``alpha`` (global against local) and
    ``beta`` (sentence against noun phrase), where ``fusion`` normalises, and the ablation
    settings ``visual``, ``text`` and ``masking`` (the module's docstring)."""

    name = "global-local"

    def __init__(self, encoder: ClipEncoder, alpha: float, beta: float, fusion: str, visual: str = "global-local",
                 text: str = "sentence-phrase", masking: str = "tokens", name: Optional[str] = None) -> None:
        self.name = name or self.name
        self.encoder = encoder
        self.alpha = alpha
        self.beta = beta
        self.fusion = fusion
        self.is_vit = encoder.backbone.is_vit
        self.visual = choose("visual", visual, VISUALS, self.name)
        self.text = choose("text", text, TEXTS, self.name)
        self.masking = choose("masking", masking, MASKINGS["vit" if self.is_vit else "resnet"], self.name)
        if self.masking != "tokens" and is_map_vit(encoder.backbone.model):
            raise ZsrisError(f"the {self.name} method's masking {self.masking} needs a ViT with a class token, "
                             f"not SigLIP's")
        self.parts = {"global-local": ("global", "local"), "global": ("global",), "local": ("local",)}[self.visual]

    def features(self, images: Sequence[ImageTensors], proposals: Sequence[Proposals]) -> list[ImageFeatures]:
        """Global, local and fused features of each image's proposals, in shared passes (only the
        parts the ``visual`` setting uses)."""
        masks = [masks_on(p, self.encoder.device) for p in proposals]  # once, as bool
        boxes = [torch.from_numpy(p.boxes) for p in proposals]
        found = self.encoder.visual(images, masks, boxes, self.parts, masking=self.masking, proposals=proposals)
        nothing = [None] * len(proposals)
        return [ImageFeatures(p, g, loc, self.fuse_visual(g, loc))
                for p, g, loc in zip(proposals, found.get("global", nothing), found.get("local", nothing))]

    def join(self, proposals: Proposals, parts: Sequence[ImageFeatures]) -> ImageFeatures:
        def joined(name: str) -> Optional[Tensor]:
            pieces = [getattr(f, name) for f in parts]
            return None if pieces[0] is None else torch.cat(pieces)

        return ImageFeatures(proposals, *(joined(name) for name in
                                          ("global_features", "local_features", "visual_features")))

    def fuse_visual(self, global_features: Optional[Tensor], local_features: Optional[Tensor]) -> Tensor:
        """The fused, L2-normalised visual feature of each proposal (see :mod:`zsris.fusion`); one
        part alone where the ``visual`` setting keeps one."""
        if global_features is None:
            return F.normalize(local_features, dim=-1)
        if local_features is None:
            return F.normalize(global_features, dim=-1)
        return fuse_visual(global_features, local_features, self.alpha, self.fusion, self.is_vit)

    def text_features(self, parsed: Sequence[ParsedExpression]) -> Tensor:
        """L2-normalised text features ``[E, D]`` (:func:`text_features` with this method's settings)."""
        return text_features(self.encoder, parsed, self.text, self.beta, self.fusion)

    def scores(self, features: ImageFeatures, parsed: Sequence[ParsedExpression], phrases: bool) -> ScoreTable:
        """Fused, global and local cosines; with ``phrases``, each noun phrase alone against the
        fused visual features (the sentence's own words of place mean little to CLIP)."""
        text = self.text_features(parsed)

        def part(feature: Optional[Tensor]) -> Optional[Tensor]:
            return None if feature is None else (text @ F.normalize(feature, dim=-1).T).cpu()

        table = ScoreTable((text @ features.visual_features.T).cpu(), part(features.global_features),
                           part(features.local_features))
        if phrases:
            alone = self.encoder.text(p.noun_phrase for p in parsed)
            table.phrase = (F.normalize(alone, dim=-1) @ features.visual_features.T).cpu()
        return table


def from_config(config: SegmenterConfig, encoder: ClipEncoder) -> GlobalLocal:
    """The registry's factory: the paper's method with the config's ablation settings."""
    return GlobalLocal(encoder, config.alpha, config.beta, config.fusion, **config.method.options)


def cropping(config: SegmenterConfig, encoder: ClipEncoder) -> GlobalLocal:
    """The cropping baseline's factory: the local feature alone (the authors' ``masking_type='crop'``)."""
    return GlobalLocal(encoder, config.alpha, config.beta, config.fusion, visual="local", name="cropping",
                       **config.method.options)

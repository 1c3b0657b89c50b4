"""The paper's zero-shot baselines (its Table 1), each as the authors' ``model/backbone.py``
computes it (and where that code does not do what it intends, as docs/method.md says), on the
proposals every method shares:

- ``region-token`` (ViT): a copy of the class token per proposal attending only to the proposal's
  patches (:func:`zsris.visual.region_token_features`), scored by its cosine with the text;
- ``score-map`` (ResNet, MaskCLIP's idea) and ``grad-cam`` (ResNet): a map over the image
  (:mod:`zsris.maps`); the proposal whose mean map value inside it is highest is the answer
  (``select="mean"``; the authors' code gives the map, not this rule, which zsris chose and names).
  ``select="sum"`` weighs the mean by the proposal's area instead.

The cropping baseline is the local feature alone (:func:`zsris.methods.global_local.cropping`).
Every baseline's text is a setting (``text``: ``sentence-phrase``, ``sentence`` or ``phrase``),
as in the paper's method; Grad-CAM's default is the noun phrase, as the authors' function takes it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from .. import maps, visual
from ..config import SegmenterConfig
from ..encoder import ClipEncoder
from ..errors import ZsrisError
from ..preprocess import ImageTensors
from ..scoring import ScoreTable
from ..text import ParsedExpression
from ..types import ImageFeatures, Proposals
from .global_local import choose, text_features
from .registry import SELECTS, TEXTS


class RegionToken:
    """Region-token features (Li et al. 2022) from ``start_block`` on, scored by cosine with the text."""

    name = "region-token"

    def __init__(self, encoder: ClipEncoder, beta: float, fusion: str, start_block: int = 0,
                 text: str = "sentence-phrase") -> None:
        if visual.is_map_vit(encoder.backbone.model):
            raise ZsrisError("the region-token method needs a ViT with a class token, not SigLIP's")
        blocks = visual.vit_num_blocks(encoder.backbone.model)
        if isinstance(start_block, bool) or not isinstance(start_block, int) or not 0 <= start_block < blocks:
            raise ZsrisError(f"the region-token method's start_block is a block of this ViT, 0 to {blocks - 1}, "
                             f"not {start_block!r}")
        self.encoder, self.beta, self.fusion = encoder, beta, fusion
        self.start_block = start_block
        self.text = choose("text", text, TEXTS, self.name)

    def features(self, images: Sequence[ImageTensors], proposals: Sequence[Proposals]) -> list[ImageFeatures]:
        masks = [visual.masks_on(p, self.encoder.device) for p in proposals]
        clip_inputs = torch.cat([t.clip_input.to(self.encoder.device) for t in images])
        found = self.encoder.retrying(lambda size: visual.region_token_features(
            self.encoder.model, clip_inputs, masks, self.start_block, size), len(images))
        return [ImageFeatures(p, None, None, F.normalize(f.float(), dim=-1)) for p, f in zip(proposals, found)]

    def join(self, proposals: Proposals, parts: Sequence[ImageFeatures]) -> ImageFeatures:
        return ImageFeatures(proposals, None, None, torch.cat([f.visual_features for f in parts]))

    def scores(self, features: ImageFeatures, parsed: Sequence[ParsedExpression], phrases: bool) -> ScoreTable:
        text = text_features(self.encoder, parsed, self.text, self.beta, self.fusion)
        table = ScoreTable((text @ features.visual_features.T).cpu())
        if phrases:
            alone = F.normalize(self.encoder.text(p.noun_phrase for p in parsed), dim=-1)
            table.phrase = (alone @ features.visual_features.T).cpu()
        return table


@dataclass
class MapFeatures:
    """One image's map-baseline features: ``fmap``, the ResNet's final map ``[C, h, w]`` (Grad-CAM)
    or its projected, normalised map ``[D, h, w]`` (score map); the proposals' masks pulled back to
    the map's grid ``weights`` ``[N, h, w]`` and their pixel counts ``areas`` ``[N]``."""

    proposals: Proposals
    fmap: Tensor
    weights: Tensor
    areas: Tensor


class MapMethod:
    """A baseline that scores proposals by a map over the image (the module's docstring)."""

    name = ""

    def __init__(self, encoder: ClipEncoder, beta: float, fusion: str, text: str, select: str = "mean") -> None:
        self.encoder, self.beta, self.fusion = encoder, beta, fusion
        self.text = choose("text", text, TEXTS, self.name)
        self.select = choose("select", select, SELECTS, self.name)

    def image_maps(self, clip_inputs: Tensor) -> Tensor:
        """``[B, C, h, w]``: the maps the texts are later compared with."""
        raise NotImplementedError

    def maps(self, features: MapFeatures, texts: Tensor) -> tuple[Tensor, Tensor]:
        """``[E, h, w]`` maps of one image for ``texts``, and the affine change ``(shift, scale)``
        ``[E]`` that the method applies to the upsampled map."""
        raise NotImplementedError

    def features(self, images: Sequence[ImageTensors], proposals: Sequence[Proposals]) -> list[MapFeatures]:
        clip_inputs = torch.cat([t.clip_input.to(self.encoder.device) for t in images])

        def compute(size: int) -> Tensor:  # out of GPU memory (batch halved): one image a pass
            return torch.cat([self.image_maps(part) for part in
                              clip_inputs.split(len(images) if size >= self.encoder.batch_size else 1)])

        fmaps = self.encoder.retrying(compute, len(images))
        found = []
        for fmap, p in zip(fmaps, proposals):
            masks = visual.masks_on(p, self.encoder.device)
            found.append(MapFeatures(p, fmap, maps.pullback(masks, fmap.shape[-2:]),
                                     masks.flatten(1).sum(1).to(torch.float64)))
        return found

    def join(self, proposals: Proposals, parts: Sequence[MapFeatures]) -> MapFeatures:
        return MapFeatures(proposals, parts[0].fmap, torch.cat([f.weights for f in parts]),
                           torch.cat([f.areas for f in parts]))

    def table(self, features: MapFeatures, texts: Tensor) -> Tensor:
        """``[E, N]``: each text's map, averaged (or summed) inside each proposal; an empty
        proposal scores the lowest finite float32 (below any map's: never the answer, and valid JSON)."""
        found, (shift, scale) = self.maps(features, texts)
        scale = torch.where(scale == 0, torch.ones_like(scale), scale)  # a constant map: every score 0
        means = maps.mean_inside(found, features.weights, features.areas)
        means = (means - shift.double()[:, None]) / scale.double()[:, None]
        if self.select == "sum":
            means = means * features.areas.double()[None]
        means = torch.where(features.areas[None] > 0, means, torch.full_like(means, torch.finfo(torch.float32).min))
        return means.float().cpu()

    def scores(self, features: MapFeatures, parsed: Sequence[ParsedExpression], phrases: bool) -> ScoreTable:
        with torch.inference_mode():
            texts = text_features(self.encoder, parsed, self.text, self.beta, self.fusion)
            alone = self.encoder.text(p.noun_phrase for p in parsed) if phrases else None
        table = ScoreTable(self.table(features, texts))
        if alone is not None:
            table.phrase = self.table(features, alone)
        return table


class ScoreMap(MapMethod):
    """MaskCLIP's score map: dense projected features against the text, min-max normalised."""

    name = "score-map"

    def image_maps(self, clip_inputs: Tensor) -> Tensor:
        with torch.inference_mode():
            return maps.projected_maps(self.encoder.model, maps.feature_maps(self.encoder.model, clip_inputs))

    def maps(self, features: MapFeatures, texts: Tensor) -> tuple[Tensor, Tensor]:
        found = maps.score_maps(features.fmap, texts)
        low, high = maps.min_max(found, features.proposals.image_size)
        return found, (low, high - low)


class GradCam(MapMethod):
    """Grad-CAM of CLIP's pooled image feature against the text (:func:`zsris.maps.grad_cams`)."""

    name = "grad-cam"

    def image_maps(self, clip_inputs: Tensor) -> Tensor:
        return maps.feature_maps(self.encoder.model, clip_inputs)

    def maps(self, features: MapFeatures, texts: Tensor) -> tuple[Tensor, Tensor]:
        found = maps.grad_cams(self.encoder.model, features.fmap, texts)
        return found, (found.new_zeros(len(found)), found.new_ones(len(found)))


def region_token(config: SegmenterConfig, encoder: ClipEncoder) -> RegionToken:
    return RegionToken(encoder, config.beta, config.fusion, **config.method.options)


def score_map(config: SegmenterConfig, encoder: ClipEncoder) -> ScoreMap:
    return ScoreMap(encoder, config.beta, config.fusion, **config.method.options)


def grad_cam(config: SegmenterConfig, encoder: ClipEncoder) -> GradCam:
    return GradCam(encoder, config.beta, config.fusion, **config.method.options)

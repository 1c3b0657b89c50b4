"""Maps over a ResNet CLIP's final feature grid, and proposals scored by the map inside them: the
paper's Table 1 map baselines, as the authors' ``clip_backbone`` computes them, except where its
code does not do what it intends (its convolutions' random biases, Grad-CAM's sign: docs/method.md).

- :func:`score_maps` (MaskCLIP's idea, ``generate_score_map``): the attention pool's value and
  output projections applied to every position of the final map as 1x1 convolutions, L2-normalised
  per position, then the cosine with a text feature;
- :func:`grad_cams` (``generate_grad_cam``): Grad-CAM of the scaled cosine between CLIP's pooled
  image feature and a text feature, with respect to the final map: the channels of the
  L2-normalised map weighed by the spatial mean of their gradient.

Both maps are upsampled bilinearly to the image. A proposal's score is the mean of the upsampled
map inside it (:func:`mean_inside`), computed without upsampling anything per proposal: since
upsampling is linear, the sum over a mask equals the small map weighed by the mask pulled back
to the grid (:func:`pullback`), once per image and shared by every expression.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .visual import _resnet_trunk

#: Mask pixels turned to float at a time by :func:`pullback` (256 MB as float32: 50 masks of a
#: 1.3 MP image, one of a 64 MP image).
PULLBACK_PIXELS = 2 ** 26


def interpolation_matrix(size: int, grid: int, device: torch.device | str = "cpu") -> Tensor:
    """``[size, grid]``: 1-D linear upsampling from ``grid`` to ``size`` samples as PyTorch's
    bilinear mode does it without ``align_corners`` (a 2-D map ``m`` upsamples to ``A m B^T``)."""
    eye = torch.eye(grid, device=device)[:, None, :]
    return F.interpolate(eye, size=size, mode="linear", align_corners=False)[:, 0, :].T.contiguous()


def pullback(masks: Tensor, grid: Sequence[int]) -> Tensor:
    """``[N, h, w]``: each mask ``[H, W]`` pulled back to the grid (``A^T M B``), so that the sum of
    a bilinearly upsampled ``[h, w]`` map over the mask is the pulled-back mask's dot product with
    the small map."""
    height, width = masks.shape[-2:]
    rows = interpolation_matrix(height, grid[0], masks.device)
    cols = interpolation_matrix(width, grid[1], masks.device)
    chunk = max(1, PULLBACK_PIXELS // max(1, height * width))
    parts = [rows.T @ part.float() @ cols for part in masks.split(chunk)]
    return torch.cat(parts) if parts else masks.new_zeros(0, *grid, dtype=torch.float32)


def upsample(maps: Tensor, size: Sequence[int]) -> Tensor:
    """``[E, H, W]``: maps ``[E, h, w]`` upsampled bilinearly to the image, as the authors do."""
    return F.interpolate(maps[None], size=tuple(size), mode="bilinear", align_corners=False)[0]


def mean_inside(maps: Tensor, weights: Tensor, areas: Tensor) -> Tensor:
    """``[E, N]`` float64: the mean of each upsampled map ``[E, h, w]`` inside each proposal, from
    the proposals' pulled-back masks ``weights`` ``[N, h, w]`` and pixel counts ``areas`` ``[N]``
    (0 for an empty proposal, which the method then rules out)."""
    sums = maps.flatten(1).double() @ weights.flatten(1).double().T
    return sums / areas.double().clamp(min=1)


@torch.inference_mode()
def feature_maps(model: nn.Module, images: Tensor) -> Tensor:
    """The ResNet tower's final feature maps ``[B, C, h, w]`` (before the attention pool)."""
    return _resnet_trunk(model.visual, images).float()


def projected_maps(model: nn.Module, fmaps: Tensor) -> Tensor:
    """``[B, D, h, w]``: the attention pool's value and output projections (weights and biases)
    applied at every position of ``fmaps``, L2-normalised per position (MaskCLIP's dense features)."""
    pool = model.visual.attnpool
    value = F.conv2d(fmaps, pool.v_proj.weight.float()[:, :, None, None], pool.v_proj.bias.float())
    out = F.conv2d(value, pool.c_proj.weight.float()[:, :, None, None], pool.c_proj.bias.float())
    return out / out.norm(dim=1, keepdim=True)


def score_maps(projected: Tensor, texts: Tensor) -> Tensor:
    """``[E, h, w]``: the cosine of one image's projected map ``[D, h, w]`` with each text ``[E, D]``."""
    texts = F.normalize(texts.float(), dim=-1)
    return torch.einsum("dhw,ed->ehw", projected, texts)


def min_max(maps: Tensor, size: Sequence[int]) -> tuple[Tensor, Tensor]:
    """Each map's minimum and maximum ``[E]`` once upsampled to ``size``, for the min-max
    normalisation of ``generate_score_map`` (an affine change of the scores, so it keeps their
    order); one map upsampled at a time."""
    extremes = [(big.min(), big.max()) for big in (upsample(m[None], size)[0] for m in maps)]
    if not extremes:
        return maps.new_zeros(0), maps.new_zeros(0)
    return torch.stack([low for low, _ in extremes]), torch.stack([high for _, high in extremes])


def grad_cams(model: nn.Module, fmap: Tensor, texts: Tensor) -> Tensor:
    """``[E, h, w]``: Grad-CAM of one image's final map ``fmap`` ``[C, h, w]`` for each text ``[E, D]``.

    The image feature is CLIP's attention pool of the map, L2-normalised; each text's logit is
    ``logit_scale.exp()`` times its cosine with it. The gradient of each logit with respect to the
    map (one backward pass through the pool per text, none through the trunk), averaged over the
    positions, weighs the channels of the L2-normalised map. The authors' ``generate_grad_cam``
    negates the logit first, so its map is this one's negative."""
    pool = model.visual.attnpool
    texts = F.normalize(texts.float(), dim=-1)
    with torch.enable_grad(), torch.inference_mode(False):
        leaf = fmap.detach().clone()[None].to(pool.c_proj.weight.dtype).requires_grad_(True)
        pooled = pool(leaf).float()
        pooled = pooled / pooled.norm(dim=1, keepdim=True)
        logits = model.logit_scale.detach().float().exp() * pooled @ texts.T
        grads = torch.stack([torch.autograd.grad(logits[0, e], leaf, retain_graph=e + 1 < len(texts))[0][0]
                             for e in range(len(texts))]) if len(texts) else leaf.new_zeros(0, *fmap.shape)
    weights = grads.float().mean(dim=(2, 3))
    normalized = fmap / fmap.norm(dim=0, keepdim=True)
    return torch.einsum("ec,chw->ehw", weights, normalized.float())

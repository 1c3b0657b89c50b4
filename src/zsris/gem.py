"""GEM (Bousselham et al., CVPR 2024): training-free localisation maps from a frozen CLIP ViT.

GEM adds a self-self attention path beside the last ``depth - 1`` blocks of CLIP's image tower:
in each of them the block's queries, keys and values each attend to themselves (normalised, at a
temperature taken from the tokens' mean norm), their three outputs, averaged and projected, are
added to the path's tokens (no MLP), while the original blocks run on unchanged. The path's patch
tokens, projected, are compared with the text "a photo of a {phrase}." to give a map of where the
phrase is. HybridGL's spatial coherence guidance (:mod:`zsris.methods.hybridgl`) is this map.

This is GEM computed on open_clip's own modules, without changing the model: the package
``gem-torch`` pins ``open_clip_torch==2.24`` and rebuilds the blocks in place, so it cannot run
beside zsris's open_clip. ``scripts/compare_hybridgl.py`` runs ``gem-torch`` in its own
environment on the same weights and compares the maps. The visual pass does not depend on the
text, so an image's pass serves every phrase about it (:func:`gem_maps`).
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
import torchvision.transforms.functional as TF
from PIL import Image
from torch import Tensor, nn

#: GEM's defaults: its path beside the last ``GEM_DEPTH - 1`` blocks, one self-self iteration, its
#: input size (the image resized to a square, bicubic) and the prompt around a phrase.
GEM_DEPTH = 7
GEM_ITERATIONS = 1
GEM_SIZE = 448
GEM_PROMPT = "a photo of a {}."
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


def gem_input(pixels: np.ndarray, device: torch.device, size: int = GEM_SIZE) -> Tensor:
    """The image as GEM's transform makes it: PIL's bicubic resize to ``size`` square, CLIP's
    normalisation; ``[1, 3, size, size]``."""
    resized = TF.resize(Image.fromarray(np.ascontiguousarray(pixels)), [size, size],
                        interpolation=TF.InterpolationMode.BICUBIC)
    tensor = TF.to_tensor(resized)
    return TF.normalize(tensor, list(OPENAI_MEAN), list(OPENAI_STD))[None].to(device)


def _positions(visual: nn.Module, grid: tuple[int, int]) -> Tensor:
    """The tower's positional embedding for a ``grid`` of patches (bicubic, antialiased, as GEM
    resamples it; unchanged at the tower's own grid)."""
    positions = visual.positional_embedding
    old = int(round((positions.shape[0] - 1) ** 0.5))
    if (old, old) == tuple(grid):
        return positions
    patches = positions[1:].reshape(1, old, old, -1).permute(0, 3, 1, 2)
    patches = F.interpolate(patches, size=grid, mode="bicubic", antialias=True)
    return torch.cat([positions[:1], patches.permute(0, 2, 3, 1).reshape(grid[0] * grid[1], -1)])


def _self_self(x: Tensor, q: Tensor, k: Tensor, v: Tensor, iterations: int) -> Tensor:
    """GEM's self-self attention of one block: ``q``, ``k``, ``v`` ``[B, heads, L, d]`` each
    attending to itself ``iterations`` times, then assigning ``v``; averaged, ``[B, L, heads*d]``.
    ``x`` (the block's normalised input) sets the temperature."""
    scale = q.shape[-1] ** -0.5
    inv_temp = x.norm(dim=-1).mean(dim=-1, keepdim=True)[:, None, :, None] * scale
    streams = [v, k, q]
    for _ in range(iterations):
        streams = [torch.softmax(s @ s.transpose(-2, -1) * inv_temp, dim=-1) @ s
                   for s in (F.normalize(s, dim=-1) for s in streams)]
    normalised = [F.normalize(s, dim=-1) for s in streams]
    attended = [torch.softmax(s @ s.transpose(-2, -1) * inv_temp, dim=-1) @ v for s in normalised]
    out = (attended[0] + attended[1] + attended[2]) / 3
    return out.transpose(1, 2).reshape(x.shape)


@torch.inference_mode()
def gem_features(model: nn.Module, image: Tensor, depth: int = GEM_DEPTH,
                 iterations: int = GEM_ITERATIONS) -> Tensor:
    """GEM's projected patch features ``[B, g*g, D]`` (L2-normalised) of ``image`` ``[B, 3, S, S]``
    on an open_clip ViT ``model``."""
    visual = model.visual
    dtype = visual.conv1.weight.dtype
    x = visual.conv1(image.to(dtype))
    grid = tuple(x.shape[2:])
    x = x.reshape(x.shape[0], x.shape[1], -1).permute(0, 2, 1)
    cls = visual.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
    x = torch.cat([cls, x], dim=1) + _positions(visual, grid).to(x.dtype)
    x = visual.ln_pre(visual.patch_dropout(x))
    blocks = list(visual.transformer.resblocks)
    split = len(blocks) - min(depth - 1, len(blocks))  # GEM's path beside the last depth - 1 blocks
    plain, gem_blocks = blocks[:split], blocks[split:]
    batch_first = getattr(visual.transformer, "batch_first", True)
    for block in plain:
        x = block(x) if batch_first else block(x.transpose(0, 1)).transpose(0, 1)
    path = x
    for block in gem_blocks:
        attn = block.attn
        heads = attn.num_heads
        y = block.ln_1(x)
        qkv = F.linear(y, attn.in_proj_weight, attn.in_proj_bias)
        q, k, v = qkv.reshape(y.shape[0], y.shape[1], 3, heads, -1).permute(2, 0, 3, 1, 4)
        original = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(y.shape)
        x = x + block.ls_1(attn.out_proj(original))
        x = x + block.ls_2(block.mlp(block.ln_2(x)))
        path = path + block.ls_1(attn.out_proj(_self_self(y, q, k, v, iterations)))
    path = visual.ln_post(path)
    if visual.proj is not None:
        path = path @ visual.proj
    return F.normalize(path[:, 1:].float(), dim=-1)


def gem_maps(features: Tensor, text_features: Tensor, size: Optional[Sequence[int]]) -> Tensor:
    """Each phrase's GEM map ``[P, H, W]`` on the image of ``features`` (one image's
    :func:`gem_features`, ``[g*g, D]``): the patches' cosines with ``text_features`` ``[P, D]``
    (normalised here), upsampled bilinearly to GEM's input size, min-max normalised there, and
    resized to ``size`` (H, W) with antialiasing, as HybridGL resizes them (None: at GEM's size)."""
    grid = int(round(features.shape[0] ** 0.5))
    text = F.normalize(text_features.float(), dim=-1)
    maps = (features @ text.T).T.reshape(-1, 1, grid, grid)
    maps = F.interpolate(maps, size=(GEM_SIZE, GEM_SIZE), mode="bilinear")
    low = maps.flatten(1).min(dim=1).values[:, None, None, None]
    high = maps.flatten(1).max(dim=1).values[:, None, None, None]
    maps = (maps - low) / (high - low)
    if size is None:
        return maps[:, 0]
    return F.interpolate(maps, size=tuple(size), mode="bilinear", antialias=True)[:, 0]

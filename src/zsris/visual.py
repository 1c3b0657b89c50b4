"""Visual features of mask proposals: the global-context and local-context CLIP features.

Both work on already normalised image tensors, so another implementation fed the same tensors
can be compared number for number. Shapes: ``image`` is ``[1, 3, H, W]`` (or ``[3, H, W]``),
``masks`` is ``[N, H, W]`` (bool or float in [0, 1]), features are ``[N, D]``.

Global (docs/method.md, step 2): ViT backbones run the first ``L - k`` blocks once for the image and
only the last ``k`` blocks per proposal, multiplying patch tokens by the mask (resized to the
patch grid) before each of them. ResNet backbones pool the L2-normalised final feature map,
multiplied by the mask, with CLIP's own attention pool.

SigLIP's ViTs (open_clip's timm towers with a MAP head: no class token, an attention pool with
a learnt query) are an extension, off the paper's path (docs/method.md, "SigLIP"): the last
``k`` blocks see the patch tokens multiplied by the mask, as above, and the pool's attention is
restricted to the proposal's tokens (log mask weights added to its logits), as the paper's
ResNet masks its attention pool's input.

Local (step 3): every pixel outside the mask gets a constant fill, the mask's box is cropped and
resized to the CLIP input size, and the crops go through the plain image encoder in batches.
Mask resizes, and on CUDA the crops, are batched matrix products (:mod:`zsris.resample`): no
per-proposal loop or kernel launches.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .errors import ZsrisError
from .masks import masks_boxes
from .methods.registry import MASKINGS
from .resample import crop_resize, resize_masks

if TYPE_CHECKING:
    from .types import Proposals


def _as_batch(image: Tensor) -> Tensor:
    if image.dim() == 3:
        image = image[None]
    if image.dim() != 4 or image.shape[0] != 1 or image.shape[1] != 3:
        raise ValueError(f"expected one image of shape [1, 3, H, W], got {tuple(image.shape)}")
    return image


def is_map_vit(model: nn.Module) -> bool:
    """Whether the image tower is a timm ViT pooled by a MAP head (SigLIP's), as open_clip builds it."""
    trunk = getattr(model.visual, "trunk", None)
    return trunk is not None and hasattr(trunk, "blocks") and getattr(trunk, "attn_pool", None) is not None


def is_vit(model: nn.Module) -> bool:
    """Whether the image tower is a vision transformer (else a ResNet is assumed, and checked)."""
    return hasattr(model.visual, "transformer") or is_map_vit(model)


def _check_map_head(tower: nn.Module) -> None:
    """The MAP path reads timm's ViT token by token: refuse what it would compute wrongly."""
    trunk, problems = tower.trunk, []
    pool = trunk.attn_pool
    if type(pool).__name__ != "AttentionPoolLatent" or getattr(pool, "latent_len", 1) != 1:
        problems.append(f"a {type(pool).__name__} head with {getattr(pool, 'latent_len', '?')} queries "
                        f"(zsris masks AttentionPoolLatent with one)")
    if getattr(pool, "pos_embed", None) is not None:
        problems.append("positions added in the pool")
    if getattr(trunk, "num_prefix_tokens", 0) or getattr(trunk, "pool_include_prefix", False):
        problems.append("class or register tokens")
    if getattr(trunk, "dynamic_img_size", False):
        problems.append("dynamic image sizes")
    if any(not isinstance(layer, (nn.Linear, nn.Dropout, nn.Identity)) for layer in tower.head):
        problems.append("a projection head other than linear")
    if problems:
        raise ZsrisError(f"global features of this SigLIP-style {type(trunk).__name__} are not supported: it has "
                         f"{'; '.join(problems)}")


def check_supported(model: nn.Module) -> None:
    """Refuse image towers whose global features this module would compute wrongly, silently.

    The ViT path reads the class token through ``ln_post`` and ``proj``: exact for open_clip's
    VisionTransformer with class-token pooling (``final_ln_after_pool`` too, since LayerNorm
    acts on each token alone), wrong for average or attentional pooling. The ResNet path
    needs ModifiedResNet's stem, four stages and attention pool.
    """
    tower = model.visual
    name = type(tower).__name__
    if is_map_vit(model):
        _check_map_head(tower)
    elif is_vit(model):
        problems = []
        if getattr(tower, "attn_pool", None) is not None:
            problems.append("attentional pooling")
        if getattr(tower, "pool_type", "tok") != "tok":
            problems.append(f"pool_type={tower.pool_type!r}")
        if not all(hasattr(tower, part) for part in ("conv1", "class_embedding", "ln_pre", "ln_post", "proj")):
            problems.append("no class token, patch embedding or ln_pre/ln_post/proj")
        if problems:
            raise ZsrisError(f"global features need a ViT that pools its class token; this {name} has "
                             f"{', '.join(problems)}")
    elif not all(hasattr(tower, part) for part in ("stem", "layer4", "attnpool")):
        raise ZsrisError(f"global features are computed for open_clip's VisionTransformer and ModifiedResNet "
                         f"image towers and SigLIP's timm ViTs, not {name}")


def _tower_dtype(tower: nn.Module) -> torch.dtype:
    """The dtype the image tower computes in (bf16/fp16 for a reduced-precision copy); inputs
    are cast to it, results come back in it."""
    weight = tower.trunk.patch_embed.proj.weight if hasattr(tower, "trunk") else tower.conv1.weight
    return weight.dtype


def vit_num_blocks(model: nn.Module) -> int:
    if is_map_vit(model):
        return len(model.visual.trunk.blocks)
    return len(model.visual.transformer.resblocks)


def output_dim(model: nn.Module) -> int:
    """The width of the image features (open_clip's towers say it; a timm tower's last linear layer
    or its pool does)."""
    visual = model.visual
    if hasattr(visual, "output_dim"):
        return int(visual.output_dim)
    linear = [layer for layer in visual.head if isinstance(layer, nn.Linear)]
    return int(linear[-1].out_features if linear else visual.trunk.attn_pool.out_features)


def _vit_embed(visual: nn.Module, image: Tensor) -> Tensor:
    """Patch embedding, class token, positions and ln_pre: tokens ``[B, 1 + g*g, D]``."""
    x = visual.conv1(image.to(_tower_dtype(visual)))
    x = x.reshape(x.shape[0], x.shape[1], -1).permute(0, 2, 1)
    cls = visual.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
    x = torch.cat([cls, x], dim=1) + visual.positional_embedding.to(x.dtype)
    return visual.ln_pre(x)


def _run_blocks(visual: nn.Module, blocks: Sequence[nn.Module], x: Tensor) -> Tensor:
    batch_first = getattr(visual.transformer, "batch_first", True)
    if not batch_first:
        x = x.transpose(0, 1)
    for block in blocks:
        x = block(x)
    return x if batch_first else x.transpose(0, 1)


def _vit_head(visual: nn.Module, cls_token: Tensor) -> Tensor:
    x = visual.ln_post(cls_token)
    return x @ visual.proj if visual.proj is not None else x


def _resnet_trunk(visual: nn.Module, image: Tensor) -> Tensor:
    x = visual.stem(image.to(_tower_dtype(visual)))
    for layer in (visual.layer1, visual.layer2, visual.layer3, visual.layer4):
        x = layer(x)
    return x


@torch.inference_mode()
def global_features(
    model: nn.Module,
    image: Tensor,
    masks: Tensor,
    k: int = 3,
    normalize_map: bool = True,
    batch_size: int = 64,
    antialias: bool = True,
) -> Tensor:
    """Global-context features ``[N, D]`` of ``masks`` on ``image`` (``[1, 3, S, S]``, the CLIP input).

    ``k`` (ViT only) is how many final blocks see masked tokens; ``k=0`` gives every mask the
    plain image feature. ``normalize_map`` (ResNet only) L2-normalises each position of the
    feature map before masking, as the reference code does. ``antialias``: how the masks are
    resized to the feature grid (False: plain bilinear, as torchvision before 0.17 did).
    """
    return global_features_many(model, _as_batch(image), [masks], k, normalize_map, batch_size, antialias)[0]


@torch.inference_mode()
def global_features_many(
    model: nn.Module,
    images: Tensor,
    masks: Sequence[Tensor],
    k: int = 3,
    normalize_map: bool = True,
    batch_size: int = 64,
    antialias: bool = True,
    masking: str = "tokens",
) -> list[Tensor]:
    """:func:`global_features` of several images (``[B, 3, S, S]``) and their masks at once:
    one trunk pass for all the images, then ``batch_size`` masks per pass through the rest,
    whichever images they belong to (several images' worth of small passes become a few large
    ones on a GPU). Each image's features come back as they would alone, up to float rounding.

    ``masking`` is how the mask reaches the features (the paper's Table 1 ablations): ``tokens``
    (the paper's: patch tokens times the mask before each of the last ``k`` blocks; a ResNet's
    map times the mask, the pool's query their mean), ``one-block`` (ViT: before the first of
    them only, as the authors' ``specific_masking``), ``attention`` (ViT: the tokens left whole,
    every token of the last ``k`` blocks attending only to the class token and the patches at
    least half inside the mask) or ``image-query`` (ResNet: the pool's query the mean of the
    whole map, as the authors' ``query_masking=False``)."""
    allowed = ("tokens",) if is_map_vit(model) else MASKINGS["vit" if is_vit(model) else "resnet"]
    if masking not in allowed:
        raise ValueError(f"masking {masking!r} is not one of this tower's: {', '.join(allowed)}")
    if images.dim() != 4 or images.shape[1] != 3 or len(images) != len(masks):
        raise ValueError(f"expected images [B, 3, S, S] and B mask stacks, got {tuple(images.shape)} "
                         f"and {len(masks)} stacks")
    check_supported(model)
    if is_vit(model) and not 0 <= k <= vit_num_blocks(model):
        raise ValueError(f"k must be between 0 and {vit_num_blocks(model)} for this model, not {k}")
    visual = model.visual
    counts = [len(m) for m in masks]
    image_of = torch.repeat_interleave(torch.arange(len(images), device=images.device),  # each mask's image
                                       torch.tensor(counts, device=images.device), output_size=sum(counts))
    if not is_vit(model):
        fmap = _resnet_trunk(visual, images)
        if normalize_map:
            fmap = fmap / fmap.norm(dim=1, keepdim=True)
        weights = _grid_weights(masks, fmap.shape[-2:], images.device, antialias)
        query = masking == "image-query"
        pooled = [attention_pool(visual.attnpool, fmap[who] * w.to(fmap.dtype)[:, None], query=fmap[who]) if query
                  else visual.attnpool(fmap[who] * w.to(fmap.dtype)[:, None])
                  for w, who in zip(weights.split(batch_size), image_of.split(batch_size))]
        return _per_image(pooled, counts, fmap.new_zeros(0, visual.attnpool.c_proj.out_features))
    if is_map_vit(model):
        return _map_global(model, images, masks, image_of, counts, k, batch_size, antialias)
    blocks = list(visual.transformer.resblocks)
    trunk = _run_blocks(visual, blocks[: len(blocks) - k], _vit_embed(visual, images))
    tail = blocks[len(blocks) - k:]
    if k == 0:
        return _per_image([_vit_head(visual, trunk[:, 0])[image_of]], counts, trunk.new_zeros(0, visual.output_dim))
    weights = _grid_weights(masks, visual.grid_size, images.device, antialias).flatten(1)[:, :, None].to(trunk.dtype)
    outputs = []
    for w, who in zip(weights.split(batch_size), image_of.split(batch_size)):
        x = trunk[who]
        if masking == "attention":
            x = _attention_masked(visual, tail, x, w[:, :, 0] >= 0.5)
        else:
            for position, block in enumerate(tail):
                if masking == "tokens" or position == 0:
                    x = torch.cat([x[:, :1], x[:, 1:] * w], dim=1)
                x = _run_blocks(visual, [block], x)
        outputs.append(_vit_head(visual, x[:, 0]))
    return _per_image(outputs, counts, trunk.new_zeros(0, visual.output_dim))


def _attention_masked(visual: nn.Module, blocks: Sequence[nn.Module], x: Tensor, inside: Tensor) -> Tensor:
    """``blocks`` on whole tokens ``x`` ``[n, 1 + g*g, D]``, every token attending only to the
    class token and the patches ``inside`` (``[n, g*g]`` bool) its proposal."""
    keep = torch.cat([inside.new_ones(len(inside), 1), inside], dim=1)
    heads = blocks[0].attn.num_heads
    bias = torch.zeros(keep.shape, dtype=x.dtype, device=x.device).masked_fill(~keep, float("-inf"))
    bias = bias[:, None, None, :].expand(-1, heads, x.shape[1], -1).reshape(-1, x.shape[1], x.shape[1])
    batch_first = getattr(visual.transformer, "batch_first", True)
    x = x if batch_first else x.transpose(0, 1)
    for block in blocks:
        x = block(x, attn_mask=bias)
    return x if batch_first else x.transpose(0, 1)


def attention_pool(pool: nn.Module, x: Tensor, query: Optional[Tensor] = None) -> Tensor:
    """CLIP's ResNet attention pool of maps ``x`` ``[n, C, h, w]``, its query token the mean of
    ``query`` (default: of ``x``, as the pool itself does), with the pool's weights and positions."""
    tokens = x.flatten(2).permute(2, 0, 1)
    mean = (tokens if query is None else query.flatten(2).permute(2, 0, 1)).mean(dim=0, keepdim=True)
    tokens = torch.cat([mean.expand(-1, tokens.shape[1], -1), tokens]) + pool.positional_embedding[:, None].to(x.dtype)
    out, _ = F.multi_head_attention_forward(
        query=tokens[:1], key=tokens, value=tokens, embed_dim_to_check=tokens.shape[-1], num_heads=pool.num_heads,
        q_proj_weight=pool.q_proj.weight, k_proj_weight=pool.k_proj.weight, v_proj_weight=pool.v_proj.weight,
        in_proj_weight=None, in_proj_bias=torch.cat([pool.q_proj.bias, pool.k_proj.bias, pool.v_proj.bias]),
        bias_k=None, bias_v=None, add_zero_attn=False, dropout_p=0.0, out_proj_weight=pool.c_proj.weight,
        out_proj_bias=pool.c_proj.bias, use_separate_proj_weight=True, training=False, need_weights=False)
    return out[0]


@torch.inference_mode()
def region_token_features(model: nn.Module, images: Tensor, masks: Sequence[Tensor], start_block: int = 0,
                          batch_size: int = 64) -> list[Tensor]:
    """Region-token features ``[N, D]`` of each image's ``masks`` (Li et al., "Adapting CLIP for
    phrase localization", 2022, as the authors' ``CLIPMaskedSpatialViT`` computes them).

    From ``start_block`` on, each proposal has a copy of the class token that attends to the
    patches inside the proposal (its mask resized to the patch grid by nearest neighbour) and to
    itself, the other patches and copies getting a bias of -100, while the image's tokens run
    through the blocks unchanged; the copy's output goes through ``ln_post`` and the projection.
    As in the authors' class, the patch convolution is padded by ``(patch - 1) // 2`` (which shifts
    the grid) and the positions are kept in half precision (with CLIP's released fp16 weights that
    changes nothing). The image's blocks run once; ``batch_size`` copies at a time join the image's
    patch tokens in one sequence, as the authors' do, so the patches' keys and values are
    projected once for them all."""
    visual = model.visual
    blocks = list(visual.transformer.resblocks)
    if not 0 <= start_block < len(blocks):
        raise ValueError(f"start_block must be between 0 and {len(blocks) - 1} for this model, not {start_block}")
    patch = visual.conv1.kernel_size[0]
    x = F.conv2d(images.to(_tower_dtype(visual)), visual.conv1.weight, stride=patch, padding=(patch - 1) // 2)
    grid = tuple(x.shape[-2:])
    x = x.flatten(2).permute(0, 2, 1)
    cls = visual.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
    x = visual.ln_pre(torch.cat([cls, x], dim=1) + visual.positional_embedding.half().to(x.dtype))
    tokens = []  # the image's tokens entering each block from start_block on, which the copies read
    for number, block in enumerate(blocks):
        if number >= start_block:
            tokens.append(x)
        x = _run_blocks(visual, [block], x)
    batch_first = getattr(visual.transformer, "batch_first", True)
    outputs = []
    for image, image_masks in enumerate(masks):
        inside = F.interpolate(image_masks.to(images.device)[:, None].bool().float(), size=grid,
                               mode="nearest").flatten(1) > 0.5
        for rows in inside.split(batch_size):
            count, patches = len(rows), rows.shape[1]
            bias = torch.zeros(count, patches + count, dtype=x.dtype, device=x.device)
            bias[:, :patches] = bias[:, :patches].masked_fill(~rows, -100.0)
            bias[:, patches:] = (1 - torch.eye(count, dtype=x.dtype, device=x.device)) * -100.0
            copy = tokens[0][image:image + 1, :1].expand(1, count, -1)
            for block, seen in zip(blocks[start_block:], tokens):
                source = block.ln_1(torch.cat([seen[image:image + 1, 1:], copy], dim=1))
                mask = bias[None].expand(block.attn.num_heads, -1, -1)
                query = source[:, patches:]
                if batch_first:
                    attended = block.attn(query, source, source, need_weights=False, attn_mask=mask)[0]
                else:
                    attended = block.attn(query.transpose(0, 1), source.transpose(0, 1), source.transpose(0, 1),
                                          need_weights=False, attn_mask=mask)[0].transpose(0, 1)
                copy = copy + getattr(block, "ls_1", nn.Identity())(attended)
                copy = copy + getattr(block, "ls_2", nn.Identity())(block.mlp(block.ln_2(copy)))
            outputs.append(_vit_head(visual, copy[0]))
    return _per_image(outputs, [len(m) for m in masks], x.new_zeros(0, visual.output_dim))


def _map_global(model: nn.Module, images: Tensor, masks: Sequence[Tensor], image_of: Tensor, counts: list[int], k: int,
                batch_size: int, antialias: bool) -> list[Tensor]:
    """SigLIP's global features: the trunk once, then per mask the last ``k`` blocks on the patch
    tokens times the mask, the final norm, and the MAP pool attending to the mask's tokens only.

    The pool's logits get ``log w`` per token (``w`` the mask's share of the patch), so an all-ones
    mask changes nothing (the plain image feature) and a token outside the mask has no weight; a
    mask that covers no patch at all leaves the pool unrestricted rather than undefined.
    """
    visual = model.visual
    trunk = visual.trunk
    blocks = list(trunk.blocks)
    x = trunk.norm_pre(trunk.patch_drop(trunk._pos_embed(trunk.patch_embed(images.to(_tower_dtype(visual))))))
    for block in blocks[: len(blocks) - k]:
        x = block(x)
    weights = _grid_weights(masks, trunk.patch_embed.grid_size, images.device, antialias).flatten(1).to(x.dtype)
    outputs = []
    for w, who in zip(weights.split(batch_size), image_of.split(batch_size)):
        tokens = x[who]
        for block in blocks[len(blocks) - k:]:
            tokens = block(tokens * w[:, :, None])
        bias = torch.where(w > 0, w.log(), torch.full_like(w, float("-inf")))
        bias = torch.where((w > 0).any(1, keepdim=True), bias, torch.zeros_like(bias))
        pooled = trunk.attn_pool(trunk.norm(tokens), attn_mask=bias[:, None, None, :])
        outputs.append(visual.head(trunk.head(trunk.head_drop(trunk.fc_norm(pooled)))))
    return _per_image(outputs, counts, x.new_zeros(0, output_dim(model)))


def _grid_weights(masks: Sequence[Tensor], grid: Sequence[int], device: torch.device, antialias: bool) -> Tensor:
    """Every image's masks resized to the feature grid, stacked ``[N, h, w]`` (float32): small,
    however large the images (:func:`resize_masks` converts within its pixel budget)."""
    return torch.cat([resize_masks(m.to(device), grid, antialias=antialias) for m in masks])


def _per_image(parts: list[Tensor], counts: Sequence[int], empty: Tensor) -> list[Tensor]:
    """Features computed in passes over all the images' masks, split back per image."""
    stacked = torch.cat(parts) if parts else empty
    return list(stacked.split(list(counts)))


def local_crops(
    image: Tensor,
    masks: Tensor,
    boxes: Optional[Tensor],
    fill: Sequence[float],
    size: int,
    antialias: bool = True,
) -> Tensor:
    """``[N, 3, size, size]``: each mask's box cropped from ``image`` with the outside filled.

    Filling after cropping equals filling the whole image and cropping it (the reference's
    order), at a fraction of the cost. On CUDA the crops resize together
    (:func:`zsris.resample.crop_resize`).
    """
    image = _as_batch(image)[0]
    fill_value = torch.as_tensor(fill, dtype=image.dtype, device=image.device)
    return crop_resize(image, masks, _boxes_of(masks, boxes), fill_value, size, batch_size=max(1, len(masks)),
                       antialias=antialias)


def unpack_bits(bits: Tensor, width: int) -> Tensor:
    """``[..., width]`` bool from ``np.packbits(..., axis=-1)``'s ``[..., ceil(width / 8)]`` bytes
    (most significant bit first), on whatever device ``bits`` is on."""
    shifts = torch.arange(7, -1, -1, device=bits.device, dtype=torch.uint8)
    return ((bits[..., None] >> shifts) & 1).flatten(-2)[..., :width].bool()


def masks_on(proposals: "Proposals", device: torch.device, packed: Optional[bool] = None) -> Tensor:
    """The proposals' masks ``[N, H, W]`` bool on ``device``. Where they arrived packed from
    another process and the device is a GPU (``packed`` None), the packed bytes are what
    crosses the bus, an eighth of the masks' (100 masks of a 640 x 480 image: 3.8 MB, not 31),
    and the device unpacks them; on the CPU the masks are used where they lie."""
    device = torch.device(device)
    if packed is None:
        packed = device.type == "cuda" and proposals.packed is not None
    if not packed:
        return torch.from_numpy(proposals.masks).to(device)
    return unpack_bits(torch.from_numpy(proposals.packed_bits()).to(device), proposals.image_size[1])


def _boxes_of(masks: Tensor, boxes: Optional[Tensor]) -> Tensor:
    """``boxes`` as a tensor, or the masks' tight boxes where none are given."""
    return torch.as_tensor(masks_boxes(masks.bool().cpu().numpy()) if boxes is None else boxes)


@torch.inference_mode()
def encode_images(model: nn.Module, images: Tensor, batch_size: int = 64) -> Tensor:
    """CLIP's plain image features ``[B, D]`` (projected, not normalised), in batches."""
    if len(images) == 0:
        return images.new_zeros(0, output_dim(model))
    dtype = _tower_dtype(model.visual)
    return torch.cat([model.encode_image(chunk.to(dtype)) for chunk in images.split(batch_size)])


@torch.inference_mode()
def local_features(
    model: nn.Module,
    image: Tensor,
    masks: Tensor,
    fill: Sequence[float],
    size: int,
    boxes: Optional[Tensor] = None,
    batch_size: int = 64,
    antialias: bool = True,
) -> Tensor:
    """Local-context features ``[N, D]``: CLIP on each background-filled, box-cropped mask.

    ``image`` is the normalised image at its full resolution; ``boxes`` default to the masks'
    tight boxes (others, such as FreeSOLO's, are truncated to integers and may leave the image:
    see :func:`zsris.resample.crop_resize`).
    """
    return local_features_many(model, [image], [masks], fill, size, [boxes], batch_size, antialias)[0]


@torch.inference_mode()
def local_features_many(
    model: nn.Module,
    images: Sequence[Tensor],
    masks: Sequence[Tensor],
    fill: Sequence[float],
    size: int,
    boxes: Optional[Sequence[Optional[Tensor]]] = None,
    batch_size: int = 64,
    antialias: bool = True,
) -> list[Tensor]:
    """:func:`local_features` of several images at once: their crops share forward passes of
    ``batch_size``, so no more than ``batch_size`` crops exist at a time, whatever the number
    of images. Within an image, crops of similar size go together (small padded windows)."""
    if len(images) != len(masks) or (boxes is not None and len(boxes) != len(images)):
        raise ValueError(f"expected as many mask stacks and box sets as images, got {len(images)} images, "
                         f"{len(masks)} mask stacks and {len(boxes) if boxes is not None else 0} box sets")
    boxes = [_boxes_of(m, b).cpu() for m, b in zip(masks, boxes or [None] * len(images))]
    image_of = torch.cat([torch.full((len(b),), i) for i, b in enumerate(boxes)])
    index = torch.cat([torch.argsort((b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1]), descending=True) for b in boxes])
    outputs = [image.new_empty(len(m), output_dim(model)) for image, m in zip(images, masks)]
    for who, chunk in zip(image_of.split(batch_size), index.split(batch_size)):
        if not len(chunk):  # no masks at all
            break
        runs = torch.unique_consecutive(who, return_counts=True)
        parts = list(zip(runs[0].tolist(), chunk.split(runs[1].tolist())))
        crops = torch.cat([local_crops(images[i], masks[i][rows.to(masks[i].device)], boxes[i][rows], fill, size,
                                       antialias) for i, rows in parts])
        features = encode_images(model, crops, batch_size)
        for (i, rows), part in zip(parts, features.split([len(rows) for _, rows in parts])):
            outputs[i][rows.to(outputs[i].device)] = part.to(outputs[i].dtype)
    return outputs

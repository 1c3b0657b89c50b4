"""Antialiased bilinear resizing written as matrices, so that many crops resize in one pass.

torchvision's tensor ``resize`` (the reference code's) is torch's antialiased bilinear
interpolation: along each axis, output pixel ``i`` is a normalised triangle-filter average of
the inputs around ``centre = scale * (i + 0.5)``, the triangle widened by ``scale`` when
shrinking. That is a linear map per axis, ``out = Wy @ x @ Wx.T``. Building ``Wy`` and ``Wx``
for every crop at once (each padded to the widest crop of its batch with zero weights) turns a
hundred crop-and-resize calls, each a handful of small kernels and a Python iteration, into a
few batched matrix products, with the same numbers up to float rounding. Without antialiasing
(``antialias=False``: torchvision's tensor resize before 0.17, which the authors ran) the triangle
keeps a support of one input pixel whatever the scale: plain bilinear. That is what a GPU
wants; a CPU, where a kernel call costs nothing and the dense matrices waste work (100 crops of a
640 x 480 image: 1.1 s against 0.07 s), resizes one crop at a time with torch's own kernel.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
import torchvision.transforms.functional as TF
from torch import Tensor

#: Pixels (crops x window height x width) one batched crop pass may gather: about 200 MB per
#: float copy, whatever the image size or the batch size, and at least one crop.
PIXEL_BUDGET = 1 << 24


def aa_weights(lengths: Tensor, out_size: int, span: int, antialias: bool = True) -> Tensor:
    """``[n, out_size, span]`` weights that resize inputs of ``lengths`` (each at most ``span``)
    to ``out_size``, as torch's antialiased bilinear kernel computes them (float32 arithmetic,
    truncation of the window ends, weights normalised to sum to one); with ``antialias=False``,
    as its plain bilinear kernel does."""
    lengths = lengths.to(torch.float32)
    scale = (lengths / out_size)[:, None, None]
    shrinking = (scale >= 1.0) & antialias
    support = torch.where(shrinking, scale, torch.ones_like(scale))
    invscale = torch.where(shrinking, 1.0 / scale, torch.ones_like(scale))
    centre = scale * (torch.arange(out_size, device=lengths.device, dtype=torch.float32)[None, :, None] + 0.5)
    first = (centre - support + 0.5).trunc().clamp(min=0)
    stop = torch.minimum((centre + support + 0.5).trunc(), lengths[:, None, None])
    position = torch.arange(span, device=lengths.device, dtype=torch.float32)[None, None, :]
    weights = (1.0 - ((position - centre + 0.5) * invscale).abs()).clamp(min=0)
    weights = weights * ((position >= first) & (position < stop))
    total = weights.sum(-1, keepdim=True)
    return torch.where(total != 0, weights / torch.where(total != 0, total, torch.ones_like(total)), weights)


def resize_masks(masks: Tensor, size: Sequence[int], pixel_budget: int = PIXEL_BUDGET,
                 antialias: bool = True) -> Tensor:
    """``[N, h, w]`` soft masks: each of the ``[N, H, W]`` masks (bool or float) resized to
    ``size`` as ``torchvision.transforms.functional.resize`` would (with ``antialias``),
    converting only as many masks to float at once as ``pixel_budget`` allows (a 40 MP image:
    one at a time). Without antialiasing that is torch's own bilinear kernel."""
    count, height, width = masks.shape
    out_h, out_w = (int(v) for v in size)
    device = masks.device
    step = max(1, pixel_budget // max(height * width, 1))
    if not antialias:
        out = [TF.resize(chunk.float(), [out_h, out_w], antialias=False) for chunk in masks.split(step)]
        return torch.cat(out) if out else torch.zeros(0, out_h, out_w, device=device)
    rows = aa_weights(torch.tensor([height], device=device), out_h, height)[0]
    cols = aa_weights(torch.tensor([width], device=device), out_w, width)[0]
    out = [rows @ (chunk.float() @ cols.T) for chunk in masks.split(step)]
    return torch.cat(out) if out else torch.zeros(0, out_h, out_w, device=device)


def _chunks(spans: Tensor, limit: int, pixel_budget: int) -> list[list[int]]:
    """Indices of the crops of ``spans`` (``[N, 2]`` heights and widths) grouped largest window
    first, each group within ``limit`` crops and the budget counted on the group's padded window
    (its tallest height times its widest width)."""
    sizes = spans.tolist()
    order = sorted(range(len(sizes)), key=lambda i: -sizes[i][0] * sizes[i][1])
    groups: list[list[int]] = []
    tallest = widest = 0
    for index in order:
        height, width = sizes[index]
        if groups and len(groups[-1]) < limit:
            grown_h, grown_w = max(tallest, height), max(widest, width)
            if (len(groups[-1]) + 1) * grown_h * grown_w <= pixel_budget:
                groups[-1].append(index)
                tallest, widest = grown_h, grown_w
                continue
        groups.append([index])
        tallest, widest = height, width
    return groups


def crop_resize(image: Tensor, masks: Tensor, boxes: Tensor, fill: Tensor, size: int,
                batch_size: int = 64, pixel_budget: int = PIXEL_BUDGET, batched: Optional[bool] = None,
                antialias: bool = True) -> Tensor:
    """``[N, 3, size, size]``: each mask's box cut from ``image`` (``[3, H, W]``), the pixels
    outside the mask set to ``fill`` (``[3]``), resized to ``size`` (bilinear, ``antialias``ed).

    Boxes are truncated to integers, as ``box.type(torch.int)`` does in the authors' loop. A box
    may reach outside the image (FreeSOLO's are not tight): what lies outside is zero, as
    torchvision's crop pads it; a box of no width or height grows to one pixel (the authors'
    resize would fail on it); a reversed one is refused. ``batched`` (default: on CUDA) does the crops in groups of
    similar size (at most ``batch_size`` and ``pixel_budget`` padded pixels each), every group
    one gather and two batched matrix products; otherwise one crop at a time.
    """
    count = len(masks)
    if count == 0:
        return image.new_empty(0, 3, size, size)
    host_boxes = boxes.cpu().to(torch.int64)
    reversed_ = (host_boxes[:, 2:] < host_boxes[:, :2]).any(1)
    if bool(reversed_.any()):
        raise ValueError(f"reversed box {host_boxes[int(reversed_.nonzero()[0, 0])].tolist()} for a local crop")
    host_boxes[:, 2:] = torch.maximum(host_boxes[:, 2:], host_boxes[:, :2] + 1)
    spans = torch.stack([host_boxes[:, 3] - host_boxes[:, 1], host_boxes[:, 2] - host_boxes[:, 0]], dim=1)
    fill = fill.to(device=image.device, dtype=image.dtype)[:, None, None]
    if not (image.is_cuda if batched is None else batched):
        return torch.stack([_crop_one(image, mask, box, fill, size, antialias)
                            for mask, box in zip(masks, host_boxes.tolist())])
    return _crop_batched(image, masks, host_boxes, spans, fill, size, batch_size, pixel_budget, antialias)


def _crop_one(image: Tensor, mask: Tensor, box: list[int], fill: Tensor, size: int, antialias: bool) -> Tensor:
    x1, y1, x2, y2 = box
    height, width = image.shape[-2:]
    inside = [max(x1, 0), max(y1, 0), min(x2, width), min(y2, height)]
    window = mask[inside[1]:inside[3], inside[0]:inside[2]].to(device=image.device, dtype=image.dtype)
    patch = image[:, inside[1]:inside[3], inside[0]:inside[2]] * window + (1 - window) * fill
    if inside != box:
        patch = torch.nn.functional.pad(patch, [inside[0] - x1, x2 - inside[2], inside[1] - y1, y2 - inside[3]])
    return TF.resize(patch, [size, size], antialias=antialias)


def _crop_batched(image: Tensor, masks: Tensor, host_boxes: Tensor, spans: Tensor, fill: Tensor, size: int,
                  batch_size: int, pixel_budget: int, antialias: bool) -> Tensor:
    height, width = image.shape[-2:]
    device = image.device
    out = image.new_empty(len(masks), 3, size, size)
    masks = masks.to(device)
    boxes, device_spans = host_boxes.to(device), spans.to(device)
    # every crop's weights at once (padding a span only adds zero weights), each group slicing its own
    tallest, widest = (int(v) for v in spans.max(0).values)
    all_across = aa_weights(device_spans[:, 1], size, widest, antialias)
    all_down = aa_weights(device_spans[:, 0], size, tallest, antialias)
    for group in _chunks(spans, batch_size, pixel_budget):
        index = torch.tensor(group, device=device)
        tall, wide = (int(v) for v in spans[group].max(0).values)
        rows = boxes[index, 1, None] + torch.arange(tall, device=device)
        cols = boxes[index, 0, None] + torch.arange(wide, device=device)
        inside = (((rows >= 0) & (rows < height))[:, :, None] & ((cols >= 0) & (cols < width))[:, None, :])
        rows, cols = rows.clamp(0, height - 1), cols.clamp(0, width - 1)
        window = masks[index[:, None, None], rows[:, :, None], cols[:, None, :]].to(image.dtype)[:, None]
        pixels = image[:, rows[:, :, None], cols[:, None, :]].transpose(0, 1)
        patch = (pixels * window + (1 - window) * fill[None]) * inside[:, None].to(image.dtype)
        across, down = all_across[index, :, :wide], all_down[index, :, :tall]
        out[index] = down[:, None] @ (patch @ across.transpose(1, 2)[:, None])
    return out

"""Seconds per image of each Table 1 method against the authors' way of computing it, and of the
methods compared in one pass against one at a time.

    python benchmarks/methods_speed.py [--images 4] [--proposals 50]

CLIP ViT-B/32 and RN50 with random weights (the real FLOPs) on refcoco-mini images with their
real sentences, every method on the same proposals (the classical generator's, made once and not
timed). Each row times zsris (the image's features once, then every sentence) and, in the same
process, the structure of the authors' ``model/backbone.py`` and evaluation loop:

- grad-cam: per sentence, ``generate_grad_cam``: a forward pass with autograd on (their model's
  parameters require gradients) and a backward pass through the whole ResNet, then the map
  upsampled and averaged inside each proposal in a Python loop;
- score-map: per sentence, ``generate_score_map``: a forward pass of the ResNet, the upsampled,
  min-max normalised map averaged inside each proposal in a loop;
- region-token: ``CLIPMaskedSpatialViT``: every proposal's copy of the class token appended to
  one sequence, attending through an ``[N, L + N]`` mask;
- cropping and the global-local rows: their loop's crops (the whole image filled per proposal,
  then ``resized_crop`` one at a time) and ``CLIPViTFM``'s masked blocks for the global feature.

The last line runs the ViT rows as one comparison (``CompareJob``'s sharing: the image's tensors
and the visual parts two methods share, computed once) against the same methods one at a time.
"""
from __future__ import annotations

import argparse
import statistics
import time
import warnings

import torch
import torch.nn.functional as F
import torchvision.transforms.functional as TF

from zsris import SegmenterConfig, maps, visual
from zsris.backbones import load_backbone
from zsris.datasets import open_dataset
from zsris.jobs.compare import _share
from zsris.jobs.evaluation import load_dataset_image
from zsris.methods.global_local import text_features
from zsris.methods.registry import TABLE1, TABLE1_BACKBONES, method_label, parse_method
from zsris.proposals import ClassicalProposals
from zsris.segmenter import Segmenter

from common import add_data_flag, require_data


def _timed(function) -> float:
    start = time.perf_counter()
    function()
    return time.perf_counter() - start


def _means(big: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    return torch.stack([big[m].mean() for m in masks])  # their loop: one proposal at a time


def authors_grad_cam(seg: Segmenter, tensors, masks, parsed) -> None:
    model = seg.backbone.model
    for parameter in model.parameters():  # as clip.load leaves them: the backward pass reaches every weight
        parameter.requires_grad_(True)
    try:
        _authors_grad_cam(model, seg, tensors, masks, parsed)
    finally:
        for parameter in model.parameters():
            parameter.requires_grad_(False)
            parameter.grad = None


def _authors_grad_cam(model, seg: Segmenter, tensors, masks, parsed) -> None:
    for p in parsed:
        with torch.enable_grad():
            text = F.normalize(model.encode_text(seg.backbone.tokenizer([p.noun_phrase])), dim=-1)
            fmap = visual._resnet_trunk(model.visual, tensors.clip_input)
            fmap.retain_grad()
            pooled = F.normalize(model.visual.attnpool(fmap), dim=-1)
            (-(model.logit_scale.exp() * pooled @ text.T)).sum().backward(retain_graph=True)
            cam = (fmap.grad.mean((2, 3))[:, :, None, None] * F.normalize(fmap, dim=1)).sum(1)
        big = F.interpolate(cam[None].detach(), size=masks.shape[-2:], mode="bilinear", align_corners=False)[0, 0]
        _means(big, masks)


def authors_score_map(seg: Segmenter, tensors, masks, parsed) -> None:
    model = seg.backbone.model
    with torch.no_grad():
        texts = text_features(seg.encoder, parsed, seg.method.text, seg.method.beta, seg.method.fusion)
        for t in texts:
            fmap = visual._resnet_trunk(model.visual, tensors.clip_input)
            dense = maps.projected_maps(model, fmap)[0]
            score = maps.score_maps(dense, t[None])
            big = maps.upsample(score, masks.shape[-2:])[0]
            big = (big - big.min()) / (big.max() - big.min())
            _means(big, masks)


def authors_crops(seg: Segmenter, tensors, masks, boxes) -> torch.Tensor:
    fill = torch.tensor(seg.encoder.preprocess.fill).reshape(1, 3, 1, 1)
    crops = []
    for box, mask in zip(boxes, masks):
        filled = tensors.full * mask[None, None] + (1 - mask[None, None].float()) * fill
        x1, y1, x2, y2 = (int(v) for v in box)
        crops.append(TF.resized_crop(filled[0], y1, x1, y2 - y1, x2 - x1, [224, 224], antialias=False))
    return visual.encode_images(seg.backbone.model, torch.stack(crops))


def authors_region_token(seg: Segmenter, tensors, masks) -> None:
    """Their copies appended to one sequence of the image, attending through one [N, L + N] mask."""
    vit = seg.backbone.model.visual
    with torch.no_grad():
        patch = vit.conv1.kernel_size[0]
        x = F.conv2d(tensors.clip_input, vit.conv1.weight, stride=patch, padding=(patch - 1) // 2)
        grid = x.shape[-2:]
        x = x.flatten(2).transpose(1, 2)
        x = torch.cat([vit.class_embedding.expand(1, 1, -1), x], 1)
        x = vit.ln_pre(x + vit.positional_embedding.half().float())
        outside = F.interpolate(1 - masks[:, None].float(), size=tuple(grid), mode="nearest").flatten(1)
        bias = torch.cat([outside, 1 - torch.eye(len(masks))], 1).bool().float() * -100
        region = x[:, :1].repeat(1, len(masks), 1)
        for block in vit.transformer.resblocks:
            source = block.ln_1(torch.cat([x[:, 1:], region], 1))
            mask = bias[None].expand(block.attn.num_heads, -1, -1)
            region = region + block.attn(source[:, -len(masks):], source, source, need_weights=False, attn_mask=mask)[0]
            region = region + block.mlp(block.ln_2(region))
            x = block(x)
        vit.ln_post(region[0]) @ vit.proj


def authors_global_local(seg: Segmenter, tensors, masks, boxes, parsed) -> None:
    model = seg.backbone.model
    with torch.no_grad():
        visual.global_features_many(model, tensors.clip_input, [masks], seg.config.k, antialias=False,
                                    masking=seg.method.masking, batch_size=len(masks))  # CLIPViTFM: one batch
        authors_crops(seg, tensors, masks, boxes)
        seg.method.text_features(parsed)


def authors(seg: Segmenter, name: str, pixels, masks, boxes, parsed) -> None:
    """The authors' way for ``name``, from the pixels (the same preprocessing as zsris's, timed
    with it) to every sentence's scores."""
    tensors = seg.preprocessor(pixels)
    if name == "grad-cam":
        authors_grad_cam(seg, tensors, masks, parsed)
    elif name == "score-map":
        authors_score_map(seg, tensors, masks, parsed)
    elif name == "region-token":
        authors_region_token(seg, tensors, masks)
        with torch.no_grad():
            text_features(seg.encoder, parsed, seg.method.text, seg.method.beta, seg.method.fusion)
    else:
        authors_global_local(seg, tensors, masks, boxes, parsed)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=4)
    parser.add_argument("--proposals", type=int, default=50)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    add_data_flag(parser)
    args = parser.parse_args()
    data = require_data(args.data)
    torch.set_num_threads(args.threads)
    warnings.simplefilter("ignore")
    torch.manual_seed(0)
    backbones = {name: load_backbone(name, weights="random") for name in ("ViT-B/32", "RN50")}
    generator = ClassicalProposals(max_proposals=args.proposals)
    segmenters = {}
    for text, tower in TABLE1:
        spec = parse_method(text)
        name = TABLE1_BACKBONES[tower]
        config = SegmenterConfig(backbone=name, method=spec, preprocess="paper")
        segmenters[f"{method_label(spec)} ({name})"] = Segmenter(backbones[name], generator, config)
    dataset = open_dataset(str(data), "refcoco")
    work = []
    for image_id, refs in list(dataset.refs_by_image("train").items())[: args.images]:
        pixels = load_dataset_image(dataset, image_id)
        work.append((pixels, generator(pixels), [s.text for ref in refs for s in ref.sentences]))
    print(f"{len(work)} refcoco-mini images, {args.proposals} proposals at most "
          f"({statistics.mean(len(p) for _, p, _ in work):.0f} on average), "
          f"{statistics.mean(len(e) for _, _, e in work):.1f} sentences per image, {args.threads} threads")
    print(f"{'method':32s} {'zsris s/image':>14s} {'authors s/image':>16s} {'speed-up':>9s}")
    for label, seg in segmenters.items():
        ours, theirs = [], []
        for pixels, proposals, expressions in work:
            masks = torch.from_numpy(proposals.masks)
            parsed = seg.parser.parse_many(expressions)
            name = seg.config.method.name
            ours.append(_timed(lambda: seg.score(seg.image_features(pixels, proposals=proposals), expressions)))
            theirs.append(_timed(lambda: authors(seg, name, pixels, masks, proposals.boxes, parsed)))
        mine, other = statistics.mean(ours), statistics.mean(theirs)
        print(f"{label:32s} {mine:14.3f} {other:16.3f} {other / mine:8.1f}x")
    vit = [seg for seg in segmenters.values() if seg.backbone is backbones["ViT-B/32"]]
    alone = sum(_timed(lambda: [s.score(s.image_features(p, proposals=q), e) for s in vit]) for p, q, e in work)
    memos = _share(vit)
    together = 0.0
    for pixels, proposals, expressions in work:
        together += _timed(lambda: [s.score(s.image_features(pixels, proposals=proposals), expressions) for s in vit])
        for memo in memos:
            memo.clear()
    print(f"{len(vit)} ViT methods: one at a time {alone / len(work):.3f} s/image, in one comparison "
          f"{together / len(work):.3f} s/image ({alone / together:.1f}x)")


if __name__ == "__main__":
    main()

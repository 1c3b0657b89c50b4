"""``preprocess='paper'``: the authors' image path as it ran under torchvision 0.11, against a
re-enactment of their evaluation loop (``Our_method_with_free_solo.py``) with
``antialias=False``, for tight boxes (classical proposals) and FreeSOLO's boxes."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision.transforms as T
import torchvision.transforms.functional as TF
from PIL import Image

from zsris import Segmenter, SegmenterConfig
from zsris.proposals import ClassicalProposals
from zsris.proposals.freesolo import projection_boxes
from zsris.types import Proposals


def _authors_features(model, pil: Image.Image, masks: torch.Tensor, boxes: torch.Tensor, k: int, size: int):
    """Their dataset's tensor, then their loop's resizes, fill, crops and token masking."""
    image = T.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])(T.ToTensor()(T.Resize(800)(pil)))[None]
    height, width = np.asarray(pil).shape[:2]
    original = TF.resize(image[0], [height, width], antialias=False)[None]
    resized = TF.resize(image[0], [size, size], antialias=False)[None]
    mean = torch.tensor([0.485, 0.456, 0.406]).reshape(1, 3, 1, 1)
    crops = []
    for box, mask in zip(boxes, masks):
        mask, box = mask.type(torch.uint8), box.type(torch.int)
        masked = original * mask[None, None] + (1 - mask[None, None]) * mean
        x1, y1, x2, y2 = (int(v) for v in box)
        crops.append(TF.resized_crop(masked.squeeze(0), y1, x1, y2 - y1, x2 - x1, [size, size], antialias=False))
    local = model.encode_image(torch.stack(crops))
    vit = model.visual
    x = vit.conv1(resized)
    x = x.reshape(x.shape[0], x.shape[1], -1).permute(0, 2, 1)
    x = torch.cat([vit.class_embedding + torch.zeros(1, 1, x.shape[-1]), x], dim=1) + vit.positional_embedding
    x = vit.ln_pre(x).expand(len(masks), -1, -1)
    grid = vit.grid_size[0]
    weights = TF.resize(masks.float(), [grid, grid], antialias=False).reshape(len(masks), -1, 1)
    blocks = list(vit.transformer.resblocks)
    for index, block in enumerate(blocks):
        if index >= len(blocks) - k:
            x = torch.cat([x[:, :1], x[:, 1:] * weights], dim=1)
        x = block(x)
    return vit.ln_post(x[:, 0]) @ vit.proj, local


def _images(refcoco_mini):
    files = sorted((refcoco_mini / "images" / "train2014").glob("*.jpg"))[:3]
    return [np.asarray(Image.open(f).convert("RGB")) for f in files]


@pytest.mark.parametrize("boxes", ["tight", "freesolo"])
@torch.inference_mode()
def test_paper_features_equal_the_authors_loop_without_antialiasing(vit_b32, refcoco_mini, boxes):
    segmenter = Segmenter(vit_b32, ClassicalProposals(max_proposals=12), SegmenterConfig(preprocess="paper"))
    for pixels in _images(refcoco_mini):
        proposals = segmenter.proposals(pixels)
        if boxes == "freesolo":
            proposals = Proposals(proposals.masks, proposals.scores,
                                  projection_boxes(torch.from_numpy(proposals.masks)).numpy())
        features = segmenter.image_features(pixels, proposals=proposals)
        masks = torch.from_numpy(proposals.masks)
        expected_global, expected_local = _authors_features(vit_b32.model, Image.fromarray(pixels), masks,
                                                            torch.from_numpy(proposals.boxes), 3, 224)
        torch.testing.assert_close(features.global_features, expected_global, rtol=0, atol=1e-4)
        torch.testing.assert_close(features.local_features, expected_local, rtol=0, atol=1e-4)


@torch.inference_mode()
def test_paper_and_reference_paths_differ_as_their_torchvisions_did(tiny_vit, refcoco_mini):
    pixels = _images(refcoco_mini)[0]
    generator = ClassicalProposals(max_proposals=8)
    proposals = generator(pixels)
    paper = Segmenter(tiny_vit, generator, SegmenterConfig(preprocess="paper"))
    paper = paper.image_features(pixels, proposals=proposals)
    reference = Segmenter(tiny_vit, generator).image_features(pixels, proposals=proposals)
    assert not torch.allclose(paper.global_features, reference.global_features, atol=1e-3)
    assert not torch.allclose(paper.local_features, reference.local_features, atol=1e-3)


def test_paper_is_a_preprocessing_choice_everywhere():
    from zsris.cli import make_parser as build_parser

    assert SegmenterConfig(preprocess="paper").preprocess == "paper"
    args = build_parser().parse_args(["segment", "x.png", "a dog", "--preprocess", "paper"])
    assert args.preprocess == "paper"

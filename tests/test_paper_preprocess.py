"""``preprocess='paper'``: the authors' image path as it ran under torchvision 0.11, against a
re-enactment of their evaluation loop (``Our_method_with_free_solo.py``) with
``antialias=False`` (``scripts/paper_path_figures.py``), for tight boxes (classical proposals)
and FreeSOLO's boxes."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from zsris import Segmenter, SegmenterConfig
from zsris.proposals import ClassicalProposals
from zsris.proposals.freesolo import projection_boxes
from zsris.types import Proposals

_SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "paper_path_figures.py"
_spec = importlib.util.spec_from_file_location("paper_path_figures", _SCRIPT)
_figures = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_figures)
#: The authors' loop re-enacted (one copy, shared with the script that reports the figures).
authors_features = _figures.authors_features


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
        expected_global, expected_local = authors_features(vit_b32.model, Image.fromarray(pixels), masks,
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

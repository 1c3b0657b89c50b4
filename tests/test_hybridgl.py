"""HybridGL (CVPR 2025) as a method: each part proved by a property a wrong implementation breaks,
its two answers kept in records and in an evaluation, its preset. scripts/compare_hybridgl.py
proves it equal to the authors' script (features to 1e-7, GEM maps to 2e-6, the same two choices)."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from zsris import SegmenterConfig
from zsris.cli import main
from zsris.errors import ZsrisError
from zsris.gem import _positions, gem_features, gem_maps
from zsris.methods import MethodSpec
from zsris.methods.hybridgl import (
    CLIP_PIXEL_MEAN,
    HybridGL,
    composed,
    direction_mask,
    hybrid_features,
    read_cues,
    relation_score,
    sam_boxes,
)
from zsris.methods.registry import HYBRIDGL_FUSIONS
from zsris.proposals import ClassicalProposals
from zsris.segmenter import Segmenter
from zsris.text import load_spacy
from zsris.types import Proposals

EXPRESSIONS = ["the red shape to the left of the blue box", "the bigger box", "a blue box"]


@pytest.fixture(scope="module")
def image(two_shapes) -> np.ndarray:
    return two_shapes


def _segmenter(backbone, **options) -> Segmenter:
    return Segmenter(backbone, ClassicalProposals(max_proposals=6),
                     method=MethodSpec("hybridgl", {"masking_block": 2, **options}))


def test_a_whole_image_proposal_sees_the_image_and_an_empty_one_the_blur_or_the_fill(image):
    picture = torch.tensor(image).permute(2, 0, 1).float().div(255)
    blur = picture.flip(-1)  # any other image
    everything = torch.ones(1, *image.shape[:2], dtype=torch.bool)
    resized = F.interpolate(picture[None], size=(32, 32), mode="bilinear")
    assert torch.equal(composed(everything, picture, blur, 32), resized)
    assert torch.equal(composed(~everything, picture, blur, 32), F.interpolate(blur[None], size=(32, 32),
                                                                               mode="bilinear"))
    fill = torch.tensor(CLIP_PIXEL_MEAN)[:, None, None]
    assert torch.allclose(composed(~everything, picture, fill, 32), fill.expand(1, 3, 32, 32), atol=1e-6)


@pytest.mark.parametrize("fusion", HYBRIDGL_FUSIONS)
def test_hybrid_features_of_proposals_together_equal_each_alone(tiny_vit, image, fusion):
    masks = torch.from_numpy(ClassicalProposals(max_proposals=4)(image).masks)
    local, global_ = torch.rand(2, len(masks), 3, 64, 64).unbind(0)
    grid = F.interpolate(masks[:, None].float(), size=(4, 4), mode="bilinear")[:, 0]
    with torch.inference_mode():
        together = hybrid_features(tiny_vit.model, local, global_, grid, fusion, block=2)
        alone = torch.cat([hybrid_features(tiny_vit.model, local[i:i + 1], global_[i:i + 1], grid[i:i + 1], fusion,
                                           block=2) for i in range(len(masks))])
    assert together.shape == (len(masks), 32)
    torch.testing.assert_close(together, alone, atol=1e-5, rtol=1e-5)


def test_the_fusions_differ_and_g2l_sees_the_global_image(tiny_vit, image):
    masks = torch.from_numpy(ClassicalProposals(max_proposals=3)(image).masks)
    local, global_ = torch.rand(2, len(masks), 3, 64, 64).unbind(0)
    grid = F.interpolate(masks[:, None].float(), size=(4, 4), mode="bilinear")[:, 0]
    with torch.inference_mode():
        found = {f: hybrid_features(tiny_vit.model, local, global_, grid, f, block=2) for f in HYBRIDGL_FUSIONS}
        other_global = hybrid_features(tiny_vit.model, local, global_.flip(-1), grid, "G2L", block=2)
        masked_local = hybrid_features(tiny_vit.model, local, global_.flip(-1), grid, "token_masking", block=2)
    assert all(not torch.allclose(found[a], found[b]) for a in found for b in found if a < b)
    assert not torch.allclose(found["G2L"], other_global)  # the global stream reaches the local one
    torch.testing.assert_close(found["token_masking"], masked_local)  # and token masking ignores it


def test_the_relation_score_flips_when_the_boxes_swap():
    left, right = np.array([0, 10, 20, 20]), np.array([50, 12, 20, 20])
    big, small, inner = np.array([0, 0, 60, 60]), np.array([5, 5, 10, 10]), np.array([10, 10, 20, 20])
    p, q = np.float32(0.6), np.float32(0.5)
    assert relation_score(left, right, p, q, "left") == np.float32(0.3)
    assert relation_score(right, left, p, q, "left") == 0
    assert relation_score(big, small, p, q, "big") == np.float32(0.3) and relation_score(small, big, p, q, "big") == 0
    assert relation_score(small, big, p, q, "small") == np.float32(0.3)
    assert relation_score(left, right, p, q, "none") == p  # no relation: the candidate's own score
    assert relation_score(inner, big, p, q, "within") == np.float32(0.3)  # all of it inside
    assert relation_score(big, inner, p, q, "within") == np.float32(0.3 * 400 / 3600)


def test_sentences_are_read_as_the_script_reads_them():
    nlp = load_spacy(None)
    cue = read_cues(nlp("the man to the left of the car"))
    assert (cue.phrase, cue.others, cue.direction, cue.relation) == ("the man", ("the car",), "left", "left")
    right = read_cues(nlp("the man to the right of the car"))
    assert right.direction == "right" and right.relation == "none"  # the script's "right" never matches
    assert read_cues(nlp("the bigger dog")).relation == "big"
    assert read_cues(nlp("the dog on the left side of the picture")).relation == "none"  # "picture": no relation
    assert read_cues(nlp("left")).others == ()


def test_direction_masks_lean_where_the_words_say():
    left, right, middle = (direction_mask(d, 4, 9) for d in ("left", "right", "middle"))
    assert left[0, 0] == 1 and left[0, -1] == 0 and torch.equal(right, left.flip(-1))
    assert middle[0].argmax() in (3, 4) and middle[0, 0] == 0 and middle[0, -1] == 0
    assert torch.equal(direction_mask("up", 4, 9), torch.ones(4, 9))


def test_boxes_are_sams_xywh():
    masks = np.zeros((2, 10, 12), bool)
    masks[0, 2:5, 3:9] = True
    proposals = Proposals(masks, np.ones(2, np.float32))
    assert sam_boxes(proposals).tolist() == [[3, 2, 5, 2], [0, 0, 0, 0]]  # SAM: w = last column - first


def test_gem_keeps_the_towers_grid_and_its_plain_path_is_the_tower(tiny_vit):
    visual = tiny_vit.model.visual
    assert _positions(visual, (4, 4)) is visual.positional_embedding
    assert _positions(visual, (8, 8)).shape == (65, visual.positional_embedding.shape[1])
    image = torch.rand(1, 3, 64, 64)
    with torch.inference_mode():
        plain = gem_features(tiny_vit.model, image, depth=1)  # no GEM block: the tower's own tokens
        x = visual.ln_pre(torch.cat([visual.class_embedding.expand(1, 1, -1),
                                     visual.conv1(image).flatten(2).transpose(1, 2)], 1) + visual.positional_embedding)
        x = visual.transformer(x)
        tokens = F.normalize(visual.ln_post(x)[:, 1:] @ visual.proj, dim=-1)
        gem = gem_features(tiny_vit.model, image)
    torch.testing.assert_close(plain, tokens, atol=1e-6, rtol=1e-5)
    assert not torch.allclose(gem, plain)
    maps = gem_maps(gem[0], torch.randn(2, 32), (30, 50))
    assert maps.shape == (2, 30, 50) and float(maps.min()) >= -1e-6 and float(maps.max()) <= 1 + 1e-6


def test_segment_keeps_both_answers_and_answers_with_spatial_guidance(tiny_vit, image):
    segmenter = _segmenter(tiny_vit)
    results = segmenter.segment(image, EXPRESSIONS)
    for result in results:
        record = result.to_dict()["method"]
        fused = result.scores.fused
        assert record["pure_proposal_index"] == int(np.argmax(fused))
        assert record["spatial_proposal_index"] == result.proposal_index
        assert result.proposal_index in np.argsort(-fused, kind="stable")[:3]  # among the top k1
    assert results[0].method_record["direction"] == "left" and results[1].method_record["relation"] == "big"
    again = _segmenter(tiny_vit).segment(image, EXPRESSIONS[1])  # one expression alone: the same answer
    assert again.proposal_index == results[1].proposal_index


def test_a_bad_setting_or_tower_is_refused_in_one_line(capsys, tiny_vit, tiny_resnet, image, tmp_path):
    from PIL import Image

    photo = tmp_path / "photo.png"
    Image.fromarray(image).save(photo)
    with pytest.raises(ZsrisError, match="fusion is one of"):
        HybridGL(_segmenter_encoder(tiny_vit), fusion="sideways")
    with pytest.raises(ZsrisError, match="needs an open_clip ViT"):
        HybridGL(_segmenter_encoder(tiny_resnet))
    with pytest.raises(ZsrisError, match="its own spatial guidance"):
        Segmenter(tiny_vit, ClassicalProposals(max_proposals=2), spatial="on",
                  method=MethodSpec("hybridgl", {"masking_block": 2}))
    for argv, message in ((["--method", "hybridgl", "--backbone", "RN50"], "ViT"),
                          (["--method", "hybridgl:fusion=sideways"], "fusion"),
                          (["--preset", "hybridgl", "--method", "cropping"], "runs --method hybridgl"),
                          (["--preset", "hybridgl"], "sam_vit_h_4b8939.pth"),
                          (["--preset", "hybridgl", "--proposal-option", "points_per_side=16"], "points_per_side 8"),
                          (["--preset", "hybridgl", "--max-proposals", "5"], "every one")):
        assert main(["segment", str(photo), "a cat", "--weights", "random", *argv]) != 0
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err


def _segmenter_encoder(backbone):
    return Segmenter(backbone, ClassicalProposals(max_proposals=2)).encoder


def test_the_preset_is_the_scripts_setting():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # en_core_web_lg, where it is not installed
        config = SegmenterConfig.preset("hybridgl", "refcoco")
        phrasecut = SegmenterConfig.preset("hybridgl", "phrasecut")
    assert config.backbone == "ViT-B/16" and config.method.name == "hybridgl"
    assert config.method.options == {"fusion": "G2L", "r": 0.5, "alpha": 0.6, "k1": 3, "k2": 6, "masking_block": 9}
    sam = config.proposals
    assert sam.name == "sam" and sam.max_proposals is None
    assert {k: sam.options[k] for k in ("model", "points_per_side", "pred_iou_thresh", "stability_score_thresh",
                                        "crop_n_layers", "min_mask_region_area", "nms_iou", "min_area")} == {
        "model": "vit_h", "points_per_side": 8, "pred_iou_thresh": 0.7, "stability_score_thresh": 0.7,
        "crop_n_layers": 0, "min_mask_region_area": 800, "nms_iou": 1.0, "min_area": 0.0}
    assert config.preprocess == "reference"
    sam = phrasecut.proposals.options
    assert (sam["points_per_side"], sam["crop_n_layers"], sam["min_mask_region_area"]) == (64, 1, 100)
    assert phrasecut.preprocess == "paper"  # the PhraseCut script's image: resized to 800 first


def test_the_phrasecut_image_path_changes_nothing_at_a_shorter_side_of_800(tiny_vit):
    pixels = np.random.default_rng(0).integers(0, 255, (800, 820, 3), dtype=np.uint8)
    pixels[100:500, 100:400] = (220, 30, 30)
    proposals = ClassicalProposals(max_proposals=3)(pixels)
    found = {}
    for preprocess in ("reference", "paper"):
        segmenter = Segmenter(tiny_vit, ClassicalProposals(max_proposals=3), preprocess=preprocess,
                              method=MethodSpec("hybridgl", {"masking_block": 2}))
        found[preprocess] = segmenter.method.features([segmenter.preprocessor(pixels)], [proposals])[0].hybrid
    torch.testing.assert_close(found["paper"], found["reference"], atol=1e-6, rtol=1e-6)


def test_an_evaluation_reports_both_answers(tiny_vit, refcoco_mini, tmp_path):
    from zsris.jobs.evaluation import DataSpec, EvalJob

    segmenter = Segmenter(tiny_vit, ClassicalProposals(max_proposals=4),
                          method=MethodSpec("hybridgl", {"masking_block": 2}))
    outcome = EvalJob(segmenter, DataSpec(str(refcoco_mini), "refcoco", no_cache=True), tmp_path / "run",
                      split="train", limit=2).run()
    assert all("pure_iou" in r for r in outcome.records if not r.get("error"))
    ious = [r["pure_iou"] for r in outcome.records]
    assert outcome.summary["mIoU (pure HybridGL)"] == round(100 * float(np.mean(ious)), 2)
    assert "mIoU (pure HybridGL)" in (tmp_path / "run" / "report.md").read_text()

"""The segmenter: fusion reduces to one branch at the ends, results are consistent across inputs."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from zsris import visual
from zsris.errors import ExpressionError, NoProposalsError, ZsrisError
from zsris.proposals import ClassicalProposals, FileProposals, Proposals
from zsris.segmenter import Segmenter

EXPRESSIONS = ["the elephant on the left", "baby elephant", "big tree in the back"]


@pytest.fixture(scope="module")
def small_image(refcoco_mini) -> np.ndarray:
    path = refcoco_mini / "images" / "train2014" / "COCO_train2014_000000000312.jpg"
    return np.asarray(Image.open(path).convert("RGB").resize((160, 107)))


@pytest.fixture(scope="module")
def proposals(small_image) -> Proposals:
    return ClassicalProposals(max_proposals=12)(small_image)


def _segmenter(backbone, **options) -> Segmenter:
    return Segmenter(backbone, ClassicalProposals(max_proposals=12), **options)


@pytest.mark.parametrize("backbone_name", ["tiny_vit", "tiny_resnet"])
def test_alpha_one_and_zero_reduce_to_one_visual_branch(backbone_name, request, small_image, proposals):
    backbone = request.getfixturevalue(backbone_name)
    for fusion in ("reference", "normalized"):
        only_global = _segmenter(backbone, alpha=1.0, fusion=fusion)
        features = only_global.image_features(small_image, proposals=proposals)
        for result in only_global.score(features, EXPRESSIONS):
            for r in result.ranked(None):
                assert r.score == pytest.approx(r.global_score, abs=1e-5)
        only_local = _segmenter(backbone, alpha=0.0, fusion=fusion)
        features = only_local.image_features(small_image, proposals=proposals)
        for result in only_local.score(features, EXPRESSIONS):
            for r in result.ranked(None):
                assert r.score == pytest.approx(r.local_score, abs=1e-5)


def test_beta_one_and_zero_reduce_to_one_text_branch(tiny_vit):
    sentence_only = _segmenter(tiny_vit, beta=1.0)
    phrase_only = _segmenter(tiny_vit, beta=0.0)
    model, tokenizer = tiny_vit.model, tiny_vit.tokenizer
    parsed = sentence_only.parser.parse_many(EXPRESSIONS)
    text = sentence_only.method.text_features(parsed)
    expected = F.normalize(model.encode_text(tokenizer([p.sentence for p in parsed])), dim=-1)
    torch.testing.assert_close(text, expected, rtol=1e-5, atol=1e-5)
    parsed = phrase_only.parser.parse_many(EXPRESSIONS)
    text = phrase_only.method.text_features(parsed)
    expected = F.normalize(model.encode_text(tokenizer([p.noun_phrase for p in parsed])), dim=-1)
    torch.testing.assert_close(text, expected, rtol=1e-5, atol=1e-5)


def test_reference_fusion_uses_raw_vit_features(tiny_vit):
    segmenter = _segmenter(tiny_vit, alpha=0.7)
    g, loc = torch.randn(4, 32), torch.randn(4, 32) * 5
    torch.testing.assert_close(segmenter.method.fuse_visual(g, loc), F.normalize(0.7 * g + 0.3 * loc, dim=-1))
    normalized = _segmenter(tiny_vit, alpha=0.7, fusion="normalized")
    expected = F.normalize(0.7 * F.normalize(g, dim=-1) + 0.3 * F.normalize(loc, dim=-1), dim=-1)
    torch.testing.assert_close(normalized.method.fuse_visual(g, loc), expected)


def test_segment_many_equals_segment_one_by_one(tiny_vit, small_image):
    segmenter = _segmenter(tiny_vit)
    together = segmenter.segment_many(small_image, EXPRESSIONS)
    for expression, result in zip(EXPRESSIONS, together):
        alone = segmenter.segment(small_image, expression)
        assert alone.proposal_index == result.proposal_index
        assert alone.score == pytest.approx(result.score, abs=1e-6)
        np.testing.assert_array_equal(alone.mask, result.mask)


def test_result_fields(tiny_vit, small_image):
    result = _segmenter(tiny_vit).segment(small_image, "the elephant on the left")
    assert result.mask.shape == small_image.shape[:2] and result.mask.dtype == bool and result.mask.any()
    assert result.noun_phrase == "the elephant"
    ranked = result.ranked(3)
    assert len(ranked) == 3 and ranked[0].index == result.proposal_index
    assert [r.score for r in ranked] == sorted((r.score for r in ranked), reverse=True)
    # every proposal's scores are kept: any ranking can be asked for later, the longest is all of them
    everything = result.ranked(None)
    assert len(everything) == len(result.scores.fused) == 12 and everything[:3] == ranked
    assert sorted(r.index for r in everything) == list(range(12))
    assert result.within(0.0) == [result.proposal_index] or result.scores.fused[result.within(0.0)[1]] == result.score
    x1, y1, x2, y2 = result.box
    ys, xs = np.nonzero(result.mask)
    assert (x1, y1, x2, y2) == (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)


def test_path_pil_and_array_inputs_agree(tiny_vit, tmp_path, small_image):
    path = tmp_path / "small.png"
    Image.fromarray(small_image).save(path)
    segmenter = _segmenter(tiny_vit)
    results = [segmenter.segment(source, "baby elephant") for source in (path, Image.open(path), small_image)]
    assert len({r.proposal_index for r in results}) == 1
    assert len({round(r.score, 6) for r in results}) == 1


def test_api_features_from_preprocessed_tensors(tiny_vit, small_image, proposals):
    """Other implementations can be fed the same tensors and compared number for number."""
    segmenter = _segmenter(tiny_vit)
    image_tensor = segmenter.preprocessor.image_tensor(small_image)
    clip_input = segmenter.preprocessor.clip_input(image_tensor)
    masks = torch.from_numpy(proposals.masks)
    features = segmenter.image_features(small_image, proposals=proposals)
    torch.testing.assert_close(segmenter.encoder.global_features(clip_input, masks), features.global_features)
    torch.testing.assert_close(segmenter.encoder.local_features(image_tensor, masks), features.local_features)
    direct = visual.global_features(tiny_vit.model, clip_input, masks, k=3)
    torch.testing.assert_close(features.global_features, direct)


def test_several_images_share_passes_and_each_gets_its_own_features(tiny_vit, small_image, proposals):
    """An image with no proposals, one whose proposals have another size and one without pixels
    are left to image_features (None), which says what is wrong; the others equal their own run."""
    segmenter = _segmenter(tiny_vit, batch_size=5)
    flipped = np.ascontiguousarray(small_image[::-1])
    flipped_proposals = ClassicalProposals(max_proposals=7)(flipped)
    empty = Proposals(np.zeros((0, *small_image.shape[:2]), dtype=bool), np.zeros(0))
    images = [(small_image, proposals), (small_image, empty), (flipped, flipped_proposals),
              (small_image[:50], proposals), (None, proposals), (flipped, None)]
    shared = segmenter.image_features_many(images)
    assert [f is None for f in shared] == [False, True, False, True, True, True]
    for (pixels, image_proposals), features in zip(images, shared):
        if features is not None:
            alone = segmenter.image_features(pixels, proposals=image_proposals)
            assert features.proposals is image_proposals
            for name in ("global_features", "local_features", "visual_features"):
                torch.testing.assert_close(getattr(features, name), getattr(alone, name), rtol=1e-5, atol=1e-5)
    with pytest.raises(NoProposalsError):
        segmenter.image_features(small_image, proposals=empty)
    with pytest.raises(ZsrisError, match="proposals are"):
        segmenter.image_features(small_image[:50], proposals=proposals)
    assert segmenter.image_features_many([]) == []


def test_images_share_passes_only_within_the_mask_budget(tiny_vit, small_image, proposals, monkeypatch):
    from zsris import segmenter as module

    assert module._within_budget("abcd", [5, 5, 20, 1], 10) == [["a", "b"], ["c"], ["d"]]
    assert module._within_budget([], [], 10) == []
    segmenter = _segmenter(tiny_vit)
    passes = []
    features = segmenter._features
    monkeypatch.setattr(segmenter, "_features", lambda images: passes.append(len(images)) or features(images))
    segmenter.image_features_many([(small_image, proposals)] * 3)
    monkeypatch.setattr(module, "MASK_PIXELS_PER_PASS", 2 * proposals.masks.size)
    segmenter.image_features_many([(small_image, proposals)] * 3)
    assert passes == [3, 2, 1]


def test_images_per_pass_is_the_setting_else_one_on_the_cpu(tiny_vit):
    from zsris.jobs.run import images_per_pass

    assert images_per_pass(_segmenter(tiny_vit)) == 1
    assert images_per_pass(_segmenter(tiny_vit, images_per_pass=6)) == 6


def test_reference_preprocessing_uses_imagenet_statistics(tiny_vit):
    segmenter = _segmenter(tiny_vit)
    pixels = np.full((2, 2, 3), 255, dtype=np.uint8)
    tensor = segmenter.preprocessor.image_tensor(pixels)
    expected = (1 - torch.tensor([0.485, 0.456, 0.406])) / torch.tensor([0.229, 0.224, 0.225])
    torch.testing.assert_close(tensor[0, :, 0, 0], expected)
    assert segmenter.preprocessor.config.fill == (0.485, 0.456, 0.406)


def test_image_without_proposals(tiny_vit, tmp_path):
    folder = tmp_path / "masks"
    folder.mkdir()
    Image.fromarray(np.zeros((20, 30), dtype=np.uint8)).save(folder / "empty.png")
    segmenter = Segmenter(tiny_vit, FileProposals(folder))
    with pytest.raises(NoProposalsError, match="no mask proposals"):
        segmenter.segment(np.zeros((20, 30, 3), dtype=np.uint8), "anything")


def test_one_pixel_image_segments(tiny_vit):
    result = _segmenter(tiny_vit).segment(np.full((1, 1, 3), 128, dtype=np.uint8), "a dot")
    assert result.mask.shape == (1, 1) and result.mask.all()


def test_bad_expressions_and_settings(tiny_vit, small_image):
    segmenter = _segmenter(tiny_vit)
    with pytest.raises(ExpressionError):
        segmenter.segment(small_image, "  ")
    with pytest.raises(ExpressionError):
        segmenter.segment_many(small_image, ["fine", ""])
    with pytest.raises(ZsrisError, match="list of expressions"):
        segmenter.segment_many(small_image, "not a list")
    with pytest.raises(ZsrisError, match="alpha and beta"):
        _segmenter(tiny_vit, alpha=1.5)
    with pytest.raises(ZsrisError, match="k must be"):
        _segmenter(tiny_vit, k=9)


def test_out_of_gpu_memory_retries_with_smaller_batches(tiny_vit, small_image, proposals, monkeypatch):
    """Fault injection: the local pass runs out of memory above 4 proposals per forward pass."""
    from zsris import visual
    from zsris.errors import ZsrisError, ZsrisWarning

    segmenter = _segmenter(tiny_vit, batch_size=16)
    expected = _segmenter(tiny_vit, batch_size=4).image_features(small_image, proposals=proposals)
    original = visual.local_features_many
    tried = []

    def tight(*args, batch_size=64, **kwargs):
        tried.append(batch_size)
        if batch_size > 4:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (injected)")
        return original(*args, batch_size=batch_size, **kwargs)

    monkeypatch.setattr(visual, "local_features_many", tight)
    with pytest.warns(ZsrisWarning) as caught:
        features = segmenter.image_features(small_image, proposals=proposals)
    assert [str(w.message)[-2:].strip() for w in caught] == ["8", "4"] and tried == [16, 8, 4]
    torch.testing.assert_close(features.visual_features, expected.visual_features)
    monkeypatch.setattr(visual, "local_features_many", lambda *a, **k: (_ for _ in ()).throw(
        torch.cuda.OutOfMemoryError("CUDA out of memory (injected)")))
    with pytest.raises(ZsrisError, match="even with one proposal per forward pass"), pytest.warns(ZsrisWarning):
        segmenter.image_features(small_image, proposals=proposals)

"""SigLIP backbones (open_clip's ``ViT-B-16-SigLIP``, a timm ViT with a MAP head): the masked
attention pool (docs/method.md, "SigLIP"), its exact properties, the text side without an
end-of-text pooling assumption, and the refusals. The real architecture, random weights."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from zsris import Segmenter, SegmenterConfig, visual
from zsris.backbones import StandInTokenizer, load_backbone, text_tokenizer, weights_source
from zsris.errors import WeightsError, ZsrisError
from zsris.proposals import ClassicalProposals
from zsris.text import TextEncoder

ARCH = "ViT-B-16-SigLIP"


@pytest.fixture(scope="module")
def siglip():
    with pytest.warns(UserWarning, match="tokenise with a stand-in"):
        return load_backbone(ARCH, weights="random", seed=1)


@pytest.fixture(scope="module")
def image() -> torch.Tensor:
    return torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(0))


def _masks() -> torch.Tensor:
    masks = torch.zeros(4, 224, 224)
    masks[0, :112, :112] = 1
    masks[1, 40:200, 60:] = 1
    masks[2] = 1
    masks[3, 100:103, 100:103] = 1  # smaller than a 16-pixel patch
    return masks


def test_an_all_ones_mask_gives_the_plain_image_feature(siglip, image):
    plain = siglip.model.encode_image(image)
    for k in (0, 3, 12):
        ones = visual.global_features(siglip.model, image, torch.ones(1, 224, 224), k=k)
        torch.testing.assert_close(ones, plain, atol=1e-5, rtol=0)


def test_batched_equals_one_at_a_time_and_images_per_pass_equal_one(siglip, image):
    masks = _masks()
    together = visual.global_features(siglip.model, image, masks, k=3, batch_size=3)
    alone = torch.cat([visual.global_features(siglip.model, image, m[None], k=3) for m in masks])
    torch.testing.assert_close(together, alone, atol=1e-5, rtol=0)
    other = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    both = visual.global_features_many(siglip.model, torch.cat([image, other]), [masks, masks[:2]], k=3)
    torch.testing.assert_close(both[0], together, atol=1e-5, rtol=0)
    torch.testing.assert_close(both[1], visual.global_features(siglip.model, other, masks[:2], k=3), atol=1e-5, rtol=0)
    assert torch.isfinite(together).all()  # the mask smaller than a patch too
    assert (together[0] - together[1]).abs().max() > 1e-3  # different masks, different features


def test_the_pool_attends_to_the_masks_tokens_only(siglip, image):
    """With k = 0 a patch-aligned mask's feature is the MAP head run on its tokens alone (plain
    bilinear resizing to the patch grid keeps such a mask binary; antialiasing blurs its edge)."""
    trunk = siglip.model.visual.trunk
    mask = torch.zeros(1, 224, 224)
    mask[0, 32:128, 48:176] = 1  # whole patches: rows 2-7, columns 3-10
    ours = visual.global_features(siglip.model, image, mask, k=0, antialias=False)
    with torch.inference_mode():
        tokens = trunk.forward_features(image)
        grid = torch.zeros(14, 14, dtype=torch.bool)
        grid[2:8, 3:11] = True
        inside = tokens[:, grid.flatten()]
        expected = trunk.forward_head(inside)
    torch.testing.assert_close(ours, expected, atol=1e-5, rtol=0)


def test_local_features_use_the_plain_encoder(siglip, image):
    masks = _masks()[:2]
    crops = visual.local_crops(image, masks, None, (0.0, 0.0, 0.0), 224)
    torch.testing.assert_close(visual.local_features(siglip.model, image, masks, (0.0, 0.0, 0.0), 224),
                               siglip.model.encode_image(crops), atol=1e-5, rtol=0)


def test_text_features_are_siglips_own_encode_text(siglip):
    """No end-of-text trimming: SigLIP's text tower is not causal and pools its last position."""
    encoder = TextEncoder(siglip.model, siglip.tokenizer, siglip.context_length, batch_size=2)
    texts = ["a dog", "the man in the red shirt on the left", "zebra"]
    ours = encoder.encode(texts)
    with torch.inference_mode():
        theirs = siglip.model.encode_text(siglip.tokenizer(texts))
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=0)
    assert not encoder.causal and siglip.context_length == 64
    assert encoder.encode([]).shape == (0, 768)
    tokens = siglip.tokenizer(texts)
    assert tokens.shape == (3, 64) and int(tokens.max()) < 32000


def test_a_segmenter_with_siglip_answers(siglip):
    pixels = np.random.default_rng(0).integers(0, 255, (160, 200, 3), dtype=np.uint8)
    segmenter = Segmenter(siglip, ClassicalProposals(max_proposals=5), SegmenterConfig(backbone=ARCH))
    results = segmenter.segment(pixels, ["the left cat", "a dog"])
    assert [r.expression for r in results] == ["the left cat", "a dog"]
    assert all(r.mask.shape == (160, 200) and np.isfinite(r.score) for r in results)


def test_unsupported_heads_are_refused_in_one_line(siglip):
    model = copy.deepcopy(siglip.model)
    model.visual.trunk.num_prefix_tokens = 1
    with pytest.raises(ZsrisError, match="SigLIP-style VisionTransformer are not supported: it has class or register"):
        visual.check_supported(model)
    model.visual.trunk.num_prefix_tokens = 0
    model.visual.head.append(torch.nn.GELU())
    with pytest.raises(ZsrisError, match="a projection head other than linear"):
        visual.check_supported(model)


def test_the_default_tag_and_the_missing_tokenizer(monkeypatch, siglip):
    assert weights_source(ARCH).tag == "webli"  # not 'openai', which SigLIP has not
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(WeightsError, match=r"tokenizer \(timm/ViT-B-16-SigLIP\) is not here.*hf download"):
        text_tokenizer(ARCH, siglip.model, random=False)
    stand_in = StandInTokenizer(64, 32000)
    assert stand_in("a dog").shape == (1, 64) and len(stand_in.encode("a dog")) == 2


def test_zsris_weights_names_the_tokenizer(capsys):
    from zsris.cli import main

    assert main(["weights", "--backbone", ARCH, "--weights", "random"]) == 0
    out = capsys.readouterr().out
    assert "tokenizer: timm/ViT-B-16-SigLIP: not in the Hugging Face cache (random weights use a stand-in" in out

"""CLIP in the transformers format (#24): `hf:` backbones are transformers' CLIPModel weights
converted into open_clip's CLIP, so their features equal CLIPModel's own and every global-local
property holds; missing weights are one line."""
from __future__ import annotations

import warnings

import pytest
import torch

from zsris import visual
from zsris.backbones import load_backbone, weights_source
from zsris.errors import WeightsError
from zsris.fusion import fuse_text
from zsris.proposals import ClassicalProposals
from zsris.segmenter import Segmenter

transformers = pytest.importorskip("transformers")
NAME = "hf:openai/clip-vit-base-patch32"


@pytest.fixture(scope="module")
def reference():
    """transformers' own CLIPModel with the random weights zsris builds for NAME (seed 0)."""
    from zsris.hf_clip import random_hf_model

    return random_hf_model("openai/clip-vit-base-patch32", seed=0)


@pytest.fixture(scope="module")
def backbone():
    return load_backbone(NAME, weights="random", seed=0)


def _image(size: int = 224) -> torch.Tensor:
    generator = torch.Generator().manual_seed(1)
    return torch.randn(1, 3, size, size, generator=generator)


def test_image_and_text_features_equal_clipmodels_own(reference, backbone):
    image = _image()
    tokens = backbone.tokenizer(["the cat lying on the scooter seat", "a dog"])
    with torch.inference_mode():
        theirs_image = reference.get_image_features(pixel_values=image).pooler_output
        theirs_text = reference.get_text_features(input_ids=tokens).pooler_output
        ours_image = backbone.model.encode_image(image)
        ours_text = backbone.model.encode_text(tokens)
    torch.testing.assert_close(ours_image, theirs_image, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ours_text, theirs_text, rtol=1e-5, atol=1e-5)


def test_an_all_ones_mask_gives_clipmodels_image_feature_and_batches_equal_single(reference, backbone):
    image = _image()
    with torch.inference_mode():
        plain = reference.get_image_features(pixel_values=image).pooler_output
        ones = visual.global_features(backbone.model, image, torch.ones(2, 90, 120, dtype=torch.bool), k=3)
        masks = torch.rand(5, 90, 120, generator=torch.Generator().manual_seed(2)) > 0.5
        batched = visual.global_features(backbone.model, image, masks, k=3, batch_size=5)
        single = visual.global_features(backbone.model, image, masks, k=3, batch_size=1)
    torch.testing.assert_close(ones, plain.expand(2, -1), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(batched, single, rtol=1e-5, atol=1e-5)


def test_the_segmenters_text_features_are_clipmodels_fused(reference, backbone):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        segmenter = Segmenter(backbone, ClassicalProposals(max_proposals=4))
    parsed = segmenter.parser.parse_many(["the man on the left"])
    ours = segmenter.method.text_features(parsed)
    tokens = backbone.tokenizer([parsed[0].sentence, parsed[0].noun_phrase])
    with torch.inference_mode():
        theirs = reference.get_text_features(input_ids=tokens).pooler_output
    expected = fuse_text(theirs[:1], theirs[1:], segmenter.config.beta, segmenter.config.fusion, True)
    torch.testing.assert_close(ours, expected, rtol=1e-5, atol=1e-5)
    assert segmenter.config.backbone != NAME or backbone.name == NAME


def test_a_local_folder_in_the_transformers_layout_loads(tmp_path):
    from zsris.hf_clip import HfClipShape, hf_config

    torch.manual_seed(3)
    small = transformers.CLIPModel(hf_config(HfClipShape(64, 2, 2, 128, 16, 64, 64, 2, 2, 128, 32))).eval()
    small.save_pretrained(tmp_path / "clip")
    local = load_backbone(f"hf:{tmp_path / 'clip'}")
    assert local.weights == str(tmp_path / "clip") and local.input_size == 64
    image = _image(64)
    with torch.inference_mode():
        torch.testing.assert_close(local.model.encode_image(image),
                                   small.get_image_features(pixel_values=image).pooler_output, rtol=1e-5, atol=1e-5)
    assert weights_source(f"hf:{tmp_path / 'clip'}").available


def test_missing_or_unusable_weights_are_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty-cache"))
    with pytest.raises(WeightsError,
                       match="not in the Hugging Face cache .*`hf download openai/clip-vit-base-patch32`"):
        load_backbone(NAME)
    with pytest.raises(WeightsError, match="no such folder, and not a hub id"):
        load_backbone(f"hf:{tmp_path / 'nowhere'}")
    with pytest.raises(WeightsError, match="random weights need the architecture"):
        load_backbone("hf:someone/clip-of-their-own", weights="random")
    with pytest.raises(WeightsError, match="--weights takes only 'random'"):
        load_backbone(NAME, weights=str(tmp_path / "x.pt"))


def test_a_clip_with_another_vocabulary_is_refused():
    from zsris.hf_clip import HfClipShape, hf_config, shape_of

    config = hf_config(HfClipShape(64, 2, 2, 128, 16, 64, 64, 2, 2, 128, 32, vocab_size=32000))
    with pytest.raises(WeightsError, match="32,000 tokens; zsris tokenises with OpenAI's BPE"):
        shape_of(config)

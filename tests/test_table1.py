"""The paper's Table 1 as methods: its baselines (cropping, region token, score map, Grad-CAM) and
ablations, each proved by a property that a wrong implementation breaks, and several compared in
one evaluation (scripts/compare_methods.py proves them equal to the authors' functions)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from zsris import SegmenterConfig, maps, visual
from zsris.cli import main
from zsris.errors import ZsrisError
from zsris.methods import MethodSpec
from zsris.methods.baselines import GradCam, RegionToken, ScoreMap
from zsris.methods.global_local import GlobalLocal
from zsris.methods.registry import method_label, method_rows, parse_method
from zsris.proposals import ClassicalProposals
from zsris.segmenter import Segmenter

EXPRESSIONS = ["the red shape on the left", "a blue box", "the grey background"]


@pytest.fixture(scope="module")
def image(two_shapes) -> np.ndarray:
    return two_shapes


def _segmenter(backbone, method: str, **options) -> Segmenter:
    return Segmenter(backbone, ClassicalProposals(max_proposals=6), method=MethodSpec(method, options))


def _masks(image: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(ClassicalProposals(max_proposals=6)(image).masks)


def test_cropping_is_the_local_feature_alone_and_global_only_the_global(tiny_vit, image):
    paper = _segmenter(tiny_vit, "global-local").segment(image, EXPRESSIONS)
    cropping = _segmenter(tiny_vit, "cropping").segment(image, EXPRESSIONS)
    alone = _segmenter(tiny_vit, "global-local", visual="global").segment(image, EXPRESSIONS)
    for full, crop, glob in zip(paper, cropping, alone):
        np.testing.assert_allclose(crop.scores.fused, full.scores.local, atol=1e-6)
        np.testing.assert_allclose(glob.scores.fused, full.scores.global_, atol=1e-6)
        assert crop.scores.global_ is None and glob.scores.local is None
        assert crop.to_dict()["top_proposals"][0]["global_score"] is None


def test_masking_ablations_agree_where_they_must(tiny_vit, tiny_resnet, image):
    tensors = _segmenter(tiny_vit, "global-local").preprocessor(image)
    masks = _masks(image)
    model = tiny_vit.model

    def features(masking: str, k: int = 3, given: torch.Tensor = masks) -> torch.Tensor:
        return visual.global_features_many(model, tensors.clip_input, [given], k, masking=masking)[0]

    # one block of masking is the paper's masking when only one block sees the mask
    torch.testing.assert_close(features("one-block", k=1), features("tokens", k=1))
    assert not torch.allclose(features("one-block"), features("tokens"), atol=1e-4)
    # attention limited to a whole-image proposal is no limit: the plain image feature
    whole = torch.ones_like(masks[:1])
    plain = visual.global_features_many(model, tensors.clip_input, [whole], 0)[0]
    torch.testing.assert_close(features("attention", given=whole), plain, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(features("attention")[:1], plain, atol=1e-4)
    # the pool's query from the whole map is the masked map's own query when the mask is everything
    resnet_tensors = _segmenter(tiny_resnet, "global-local").preprocessor(image)
    query = visual.global_features_many(tiny_resnet.model, resnet_tensors.clip_input, [whole], masking="image-query")
    own = visual.global_features_many(tiny_resnet.model, resnet_tensors.clip_input, [whole])
    torch.testing.assert_close(query[0], own[0], rtol=1e-5, atol=1e-6)


def test_a_region_token_over_every_patch_is_the_class_token(tiny_vit, image):
    """A copy that sees every patch attends to what the class token attends to, from any start block."""
    vit = tiny_vit.model.visual
    clip_input = _segmenter(tiny_vit, "region-token").preprocessor(image).clip_input
    whole = torch.ones(1, *image.shape[:2], dtype=torch.bool)
    with torch.inference_mode():  # the authors' embedding: a padded patch convolution, positions in half precision
        patch = vit.conv1.kernel_size[0]
        x = F.conv2d(clip_input, vit.conv1.weight, stride=patch, padding=(patch - 1) // 2).flatten(2).transpose(1, 2)
        x = torch.cat([vit.class_embedding.expand(1, 1, -1), x], 1) + vit.positional_embedding.half().float()
        x = vit.transformer(vit.ln_pre(x))
        expected = vit.ln_post(x[:, 0]) @ vit.proj
    for start in (0, 2):
        found = visual.region_token_features(tiny_vit.model, clip_input, [whole], start)[0]
        torch.testing.assert_close(found, expected, rtol=1e-5, atol=1e-5)
    masks = _masks(image)
    together = visual.region_token_features(tiny_vit.model, clip_input, [masks], 1, batch_size=4)[0]
    alone = torch.cat([visual.region_token_features(tiny_vit.model, clip_input, [m[None]], 1)[0] for m in masks])
    torch.testing.assert_close(together, alone, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(together[0], together[1], atol=1e-4)  # each proposal sees its own patches


def test_a_map_score_is_the_mean_of_the_upsampled_map_inside_the_proposal(tiny_resnet, image):
    segmenter = _segmenter(tiny_resnet, "score-map", text="sentence")
    method: ScoreMap = segmenter.method
    features = segmenter.image_features(image)
    found = segmenter.score(features, EXPRESSIONS)
    parsed = segmenter.parser.parse_many(EXPRESSIONS)
    texts = F.normalize(segmenter.encoder.text(p.sentence for p in parsed), dim=-1)
    fmap = maps.feature_maps(tiny_resnet.model, segmenter.preprocessor(image).clip_input)[0]
    with torch.inference_mode():  # MaskCLIP by hand: the pool's value and output projections at every position
        pool = tiny_resnet.model.visual.attnpool
        dense = pool.c_proj(pool.v_proj(fmap.flatten(1).T))
        cosine = (F.normalize(dense, dim=-1) @ texts.T).T.reshape(len(texts), *fmap.shape[1:])
    big = F.interpolate(cosine[None], size=image.shape[:2], mode="bilinear", align_corners=False)[0]
    low, high = big.flatten(1).min(1).values, big.flatten(1).max(1).values
    big = (big - low[:, None, None]) / (high - low)[:, None, None]
    masks = torch.from_numpy(features.proposals.masks)
    expected = torch.stack([torch.stack([b[m].mean() for m in masks]) for b in big])
    for row, result in enumerate(found):  # min-max divides float rounding by the map's range (small here)
        np.testing.assert_allclose(result.scores.fused, expected[row].numpy(), atol=1e-6 / float(high[row] - low[row]))
        assert result.proposal_index == int(expected[row].argmax())
    assert isinstance(method, ScoreMap)


def test_grad_cam_weighs_the_normalised_map_by_the_autograd_gradient(tiny_resnet, image):
    segmenter = _segmenter(tiny_resnet, "grad-cam")
    assert isinstance(segmenter.method, GradCam) and segmenter.method.text == "phrase"
    model = tiny_resnet.model
    fmap = maps.feature_maps(model, segmenter.preprocessor(image).clip_input)[0]
    texts = torch.randn(2, model.visual.output_dim)
    cams = maps.grad_cams(model, fmap, texts)
    for cam, text in zip(cams, texts):
        leaf = fmap.clone().requires_grad_(True)
        pooled = model.visual.attnpool(leaf[None])
        logit = model.logit_scale.exp() * F.normalize(pooled, dim=-1) @ F.normalize(text, dim=0)
        (gradient,) = torch.autograd.grad(logit.sum(), leaf)
        expected = (gradient.mean(dim=(1, 2))[:, None, None] * F.normalize(fmap, dim=0)).sum(0)
        torch.testing.assert_close(cam, expected.detach(), rtol=1e-5, atol=1e-7)
    results = segmenter.segment(image, EXPRESSIONS)
    assert all(r.scores.global_ is None and np.isfinite(r.scores.fused).all() for r in results)


def test_methods_batched_equal_one_image_at_a_time(tiny_vit, tiny_resnet, image):
    flipped = np.ascontiguousarray(image[:, ::-1])
    for backbone, method in ((tiny_vit, "region-token"), (tiny_resnet, "score-map"), (tiny_resnet, "grad-cam")):
        segmenter = _segmenter(backbone, method)
        proposals = [segmenter.proposals(p) for p in (image, flipped)]
        together = segmenter.image_features_many(list(zip((image, flipped), proposals)))
        for pixels, pair, alone in zip((image, flipped), together, proposals):
            one = segmenter.image_features(pixels, proposals=alone)
            raw = (pair.fmap, one.fmap) if method != "region-token" else (pair.visual_features, one.visual_features)
            torch.testing.assert_close(*raw, rtol=1e-5, atol=1e-6)  # the maps or features: the same up to rounding
            for a, b in zip(segmenter.score(pair, EXPRESSIONS), segmenter.score(one, EXPRESSIONS)):
                assert a.proposal_index == b.proposal_index


def test_methods_on_one_clip_share_an_images_parts_and_nothing_else(tiny_vit, image, monkeypatch):
    """The comparison's memo: cropping's local features are the paper's, computed once; other
    proposals of the same image are not served from it; without the memo nothing is shared."""
    from zsris.jobs.compare import _share, _unshare

    paper, cropping = _segmenter(tiny_vit, "global-local"), _segmenter(tiny_vit, "cropping")
    proposals = paper.proposals(image)
    alone = [s.score(s.image_features(image, proposals=proposals), EXPRESSIONS) for s in (paper, cropping)]
    calls = []
    original = visual.local_features_many
    monkeypatch.setattr(visual, "local_features_many", lambda *a, **k: calls.append(1) or original(*a, **k))
    memos = _share([paper, cropping])
    shared = [s.score(s.image_features(image, proposals=proposals), EXPRESSIONS) for s in (paper, cropping)]
    assert len(calls) == 1 and len(memos) == 1
    for mine, theirs in zip(shared, alone):
        for a, b in zip(mine, theirs):
            np.testing.assert_array_equal(a.scores.fused, b.scores.fused)
    fewer = proposals.select(np.arange(2))
    assert len(cropping.image_features(image, proposals=fewer).local_features) == 2 and len(calls) == 2
    _unshare([paper, cropping])
    assert paper.encoder.memo is None and cropping.preprocessor.memo is None


def test_a_map_never_chooses_an_empty_proposal(tiny_resnet, image):
    from zsris.types import Proposals

    for select in ("mean", "sum"):
        segmenter = _segmenter(tiny_resnet, "score-map", select=select)
        real = segmenter.proposals(image)
        masks = np.concatenate([np.zeros((1, *image.shape[:2]), bool), real.masks])
        features = segmenter.image_features(image, proposals=Proposals(masks, np.ones(len(masks))))
        results = segmenter.score(features, EXPRESSIONS)
        for result in results:
            assert result.scores.fused[0] == np.finfo(np.float32).min and result.proposal_index != 0
            assert np.isfinite(result.scores.fused).all()
            json.dumps(result.to_dict(), allow_nan=False)  # valid JSON, as the API sends it


def test_methods_and_their_settings_are_named_and_refused_in_one_line():
    assert parse_method("global-local:masking=one-block:text=phrase") == MethodSpec(
        "global-local", {"visual": "global-local", "text": "phrase", "masking": "one-block"})
    assert parse_method("region-token:start_block=2").options["start_block"] == 2
    assert method_label(parse_method("global-local:masking=tokens")) == "global-local"
    rows = [(backbone, method_label(spec)) for backbone, spec in method_rows("table1", "ViT-B/16")]
    assert rows[:5] == [("RN50", "grad-cam"), ("RN50", "score-map"), ("RN50", "cropping"), ("RN50", "global-local"),
                        ("RN50", "global-local:masking=image-query")]
    assert {b for b, _ in rows[5:]} == {"ViT-B/16"} and ("ViT-B/16", "region-token") in rows
    assert ("ViT-B/16", "global-local:masking=attention") in rows and len(rows) == 13
    for text, message in (("grad-cam", "the grad-cam method needs a ResNet backbone, not a ViT"),
                          ("nope", "unknown method 'nope'"),
                          ("cropping:masking=one-block", "the cropping method has no setting masking"),
                          ("global-local:masking=sideways", "masking is one of tokens"),
                          ("region-token:start_block=first", "start_block is a whole number"),
                          ("cropping,cropping", "names cropping twice"),
                          ("global-local:masking", "written name:setting=value"),
                          ("global-local:masking=image-query", "on a ViT it is one of tokens, one-block, attention")):
        with pytest.raises(ZsrisError, match=message) as error:
            method_rows(text, "ViT-B/32")
        assert "\n" not in str(error.value)
    with pytest.raises(ZsrisError, match="needs a ViT backbone, not a ResNet"):
        method_rows("region-token", "RN50")
    assert SegmenterConfig(method=MethodSpec("global-local", {})) == SegmenterConfig()


@pytest.mark.parametrize("argv, message", [
    (["segment", "x.jpg", "a cat", "--method", "cropping,region-token"], "names several methods"),
    (["segment", "x.jpg", "a cat", "--method", "grad-cam"], "needs a ResNet backbone"),
    (["segment", "x.jpg", "a cat", "--method", "score-map:select=max", "--backbone", "RN50"], "select is one of"),
])
def test_bad_methods_on_the_command_line_fail_before_any_model_loads(argv, message, capsys, tmp_path):
    (tmp_path / "x.jpg").write_bytes(b"")
    argv = [str(tmp_path / a) if a == "x.jpg" else a for a in argv]
    assert main(argv) != 0
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


@pytest.mark.slow
def test_several_methods_in_one_run_resume_and_grow(refcoco_mini, tmp_path, monkeypatch, capsys):
    """Two methods in one pass give what each gives alone; a method added later is the only work done."""
    base = ["eval", "--data", str(refcoco_mini), "--split", "train", "--limit", "3", "--weights", "random",
            "--max-proposals", "6", "--cache", str(tmp_path / "cache")]
    assert main([*base, "--out", str(tmp_path / "alone"), "--method", "cropping"]) == 0
    assert main([*base, "--out", str(tmp_path / "both"), "--method", "global-local,cropping"]) == 0
    alone = json.loads((tmp_path / "alone" / "metrics.json").read_text())["metrics"]
    both = json.loads((tmp_path / "both" / "metrics.json").read_text())
    assert set(both) == {"global-local", "cropping"}
    assert {k: both["cropping"][k] for k in ("oIoU", "mIoU", "sentences")} == \
        {k: alone[k] for k in ("oIoU", "mIoU", "sentences")}
    calls = {"global-local": 0, "region-token": 0}
    for cls, name in ((GlobalLocal, "global-local"), (RegionToken, "region-token")):
        original = cls.features

        def counted(self, *args, _original=original, _name=name):
            calls[_name] += 1
            return _original(self, *args)

        monkeypatch.setattr(cls, "features", counted)
    capsys.readouterr()
    assert main([*base, "--out", str(tmp_path / "both"), "--method", "global-local,cropping,region-token"]) == 0
    assert calls == {"global-local": 0, "region-token": 3}
    table = capsys.readouterr().out
    assert "| region-token | ViT-B/32 |" in table and "| cropping | ViT-B/32 |" in table
    assert json.loads((tmp_path / "both" / "metrics.json").read_text())["cropping"]["mIoU"] == alone["mIoU"]

"""The method seam: a method of one's own joins by name, the paper's is the default, and what a
method may be asked for is checked before any work."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from zsris import SegmenterConfig
from zsris.errors import ZsrisError
from zsris.methods import METHOD_REGISTRY, MethodSpec, create_method, register_method
from zsris.methods.global_local import GlobalLocal
from zsris.proposals import ClassicalProposals
from zsris.segmenter import Segmenter

EXPRESSIONS = ["the red shape on the left", "a blue box"]


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    pixels = np.full((64, 96, 3), 200, np.uint8)
    pixels[8:40, 6:40] = (220, 30, 30)
    pixels[20:60, 50:90] = (30, 30, 220)
    return pixels


@pytest.fixture
def registered():
    """Methods registered by a test, removed after it."""
    before = dict(METHOD_REGISTRY)
    yield
    METHOD_REGISTRY.clear()
    METHOD_REGISTRY.update(before)


class LocalOnly(GlobalLocal):
    """A method of one's own: the local feature alone, with its own setting (a temperature that
    scales every score)."""

    name = "local-only"

    def __init__(self, config, encoder) -> None:
        super().__init__(encoder, 0.0, config.beta, config.fusion)
        self.scale = config.method.options["scale"]

    def scores(self, features, parsed, phrases):
        table = super().scores(features, parsed, phrases)
        table.fused = table.fused * self.scale
        return table


def test_the_default_method_is_the_papers_and_its_settings_are_recorded(tiny_vit):
    segmenter = Segmenter(tiny_vit, ClassicalProposals(max_proposals=6))
    assert isinstance(segmenter.method, GlobalLocal)
    assert segmenter.config.settings()["method"] == {
        "name": "global-local", "options": {"visual": "global-local", "text": "sentence-phrase", "masking": "tokens"}}
    assert SegmenterConfig(method="global-local") == SegmenterConfig()


def test_a_registered_method_is_chosen_by_name_and_owns_its_settings(tiny_vit, image, registered):
    register_method("local-only", LocalOnly, options={"scale": 1.0}, summary="the local feature alone")
    config = SegmenterConfig().replace(method="local-only", scale=2.0)
    assert config.method == MethodSpec("local-only", {"scale": 2.0})
    ours = Segmenter(tiny_vit, ClassicalProposals(max_proposals=6), config)
    paper = Segmenter(tiny_vit, ClassicalProposals(max_proposals=6), alpha=0.0)
    assert isinstance(ours.method, LocalOnly) and ours.config.settings()["method"]["options"] == {"scale": 2.0}
    mine, theirs = ours.segment(image, EXPRESSIONS), paper.segment(image, EXPRESSIONS)
    for a, b in zip(mine, theirs):
        # alpha 0 leaves the local feature alone: the method's scores are the paper's, doubled
        np.testing.assert_allclose(a.scores.fused, 2 * b.scores.fused, rtol=1e-6)
        assert a.proposal_index == b.proposal_index and np.array_equal(a.mask, b.mask)
    with pytest.raises(ZsrisError, match="the global-local method has no setting scale"):
        SegmenterConfig(method=MethodSpec("global-local", {"scale": 2.0}))


def test_unknown_methods_options_and_towers_are_refused_in_one_line(tiny_vit, registered):
    with pytest.raises(ZsrisError, match="unknown method 'nope'; choose one of global-local") as error:
        SegmenterConfig(method="nope")
    assert "\n" not in str(error.value)
    with pytest.raises(ZsrisError, match="unknown setting"):
        SegmenterConfig().replace(scale=2.0)
    register_method("resnet-only", LocalOnly, towers=("resnet",))
    with pytest.raises(ZsrisError, match="the resnet-only method needs a ResNet backbone, not a ViT"):
        Segmenter(tiny_vit, ClassicalProposals(max_proposals=6), method="resnet-only")
    with pytest.raises(ZsrisError, match="towers"):
        register_method("nowhere", LocalOnly, towers=("swin",))


def test_the_encoders_one_image_helpers_are_its_batched_path(tiny_vit, image):
    segmenter = Segmenter(tiny_vit, ClassicalProposals(max_proposals=6))
    proposals = segmenter.proposals(image)
    tensors = segmenter.preprocessor(image)
    masks = torch.from_numpy(proposals.masks)
    alone = segmenter.encoder.visual([tensors], [masks], [None], batch_size=4)
    assert torch.equal(segmenter.encoder.global_features(tensors.clip_input, masks, batch_size=4), alone["global"][0])
    assert torch.equal(segmenter.encoder.local_features(tensors.full, masks, batch_size=4), alone["local"][0])
    together = segmenter.encoder.visual([tensors, tensors], [masks, masks[:2]], [None, None], batch_size=4)
    for part in ("global", "local"):  # two images' proposals in shared passes: each image's own, up to rounding
        torch.testing.assert_close(together[part][0], alone[part][0], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(together[part][1], alone[part][0][:2], rtol=1e-5, atol=1e-5)
    assert create_method(segmenter.config, segmenter.encoder).name == "global-local"


def test_a_run_stored_before_methods_and_spelled_out_options_resumes(tmp_path, registered):
    import json

    from zsris.store import PredictionStore

    settings = json.loads(json.dumps(SegmenterConfig().settings()))
    old = {k: v for k, v in settings.items() if k != "method"}
    old["proposals"] = {**old["proposals"], "options": {}}  # before, classical's settings were left out
    with PredictionStore(tmp_path / "predictions.sqlite", old):
        pass
    with PredictionStore(tmp_path / "predictions.sqlite", settings):  # the paper's method, the same proposals
        pass
    before_ablations = {**settings, "method": {"name": "global-local", "options": {}}}
    with PredictionStore(tmp_path / "ablations" / "predictions.sqlite", before_ablations):
        pass
    with PredictionStore(tmp_path / "ablations" / "predictions.sqlite", settings):  # its settings at their defaults
        pass
    register_method("local-only", LocalOnly, options={"scale": 1.0})
    with pytest.raises(ZsrisError, match=r"other settings \(method differ\)"):
        PredictionStore(tmp_path / "predictions.sqlite", SegmenterConfig(method="local-only").settings())

"""The page's settings, combined download and handlers over a real service, without a server or a
browser (seconds): what the page offers is what the service allows, and a page run is the API's
run (``SegmentationService.run``) with the same request settings. The browser checks of the same
controls are in test_service.py."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("gradio")

from zsris.errors import MethodError, ProposalError, SettingError
from zsris.page import LABELS_FILE, PageHandlers, build_demo, label_image
from zsris.proposals import PROPOSAL_REGISTRY, ClassicalProposals, create_proposals
from zsris.proposals.classical import from_spec
from zsris.proposals.configs import ClassicalConfig
from zsris.proposals.registry import register_generator
from zsris.segmenter import Segmenter
from zsris.service import RequestSettings, SegmentationService
from zsris.types import SegmentResult

EXAMPLE = Path(__file__).resolve().parents[1] / "src" / "zsris" / "examples" / "shapes.png"
#: A second generator for the server to offer: classical proposals under another name, capped at 3.
FEW = "classical-few"


@pytest.fixture(scope="module")
def service(tiny_vit):
    register_generator(FEW, from_spec, config=ClassicalConfig)
    try:
        segmenter = Segmenter(tiny_vit, ClassicalProposals(max_proposals=6))
        served = SegmentationService(segmenter, generators={FEW: create_proposals(FEW, max_proposals=3)})
        yield served
        served.close()
    finally:
        PROPOSAL_REGISTRY.pop(FEW)


def test_a_request_chooses_generator_cap_and_rules_within_the_servers_limits(service):
    image = EXAMPLE.read_bytes()
    default = service.run(image, ["the red circle"])
    assert len(default.proposals) == 6 and default.settings["proposals"]["name"] == "classical"
    assert default.settings["spatial"] == "off" and default.elapsed_s > 0
    few = service.run(image, ["the red circle"], request=RequestSettings(proposals=FEW))
    assert len(few.proposals) == 3 and few.settings["proposals"]["name"] == FEW
    capped = service.run(image, ["the red circle"], request=RequestSettings(max_proposals=2))
    assert len(capped.proposals) == 2 and capped.settings["proposals"]["max_proposals"] == 2
    assert np.array_equal(capped.proposals.masks, default.proposals.masks[:2])  # the generator's first
    more = service.run(image, ["the red circle"], request=RequestSettings(max_proposals=50))
    assert len(more.proposals) == 6 and more.settings["proposals"]["max_proposals"] == 6  # never past its cap
    rules = RequestSettings(spatial=True, no_target_threshold=1.0, multi_target=True, multi_target_margin=0.5)
    absent = service.run(image, ["the red circle", "the blue square"], request=rules)
    assert [r.found for r in absent.results] == [False, False]  # no cosine similarity reaches 1
    assert absent.settings["spatial"] == "on" and absent.settings["no_target_threshold"] == 1.0
    union = service.run(image, ["the shapes"], request=RequestSettings(multi_target=True, multi_target_margin=2.0))
    assert sorted(union.results[0].proposal_indices) == list(range(6))  # a margin of 2 takes every proposal
    with pytest.raises(ProposalError, match="no proposal generator 'sam'; it has classical, classical-few"):
        service.run(image, ["x"], request=RequestSettings(proposals="sam"))
    with pytest.raises(MethodError):
        service.run(image, ["x"], request=RequestSettings(method="grad-cam"))
    with pytest.raises(SettingError, match="in \\[-1, 1\\]"):
        service.run(image, ["x"], request=RequestSettings(no_target_threshold=1.5))


def test_label_image_numbers_each_expressions_mask_the_smaller_on_top():
    big, small = np.zeros((4, 6), bool), np.zeros((4, 6), bool)
    big[:, :4], small[1:3, 2:6] = True, True

    def result(mask: np.ndarray) -> SegmentResult:
        return SegmentResult("x", "x", mask, 0.0, (0, 0, 0, 0), 0, None, None)

    labels = label_image([result(small), result(big)])
    assert labels[0, 0] == 2 and labels[1, 2] == 1 and labels[1, 5] == 1 and labels[0, 5] == 0


def _component(demo, elem_id: str) -> dict:
    return next(c["props"] for c in demo.config["components"] if c["props"].get("elem_id") == elem_id)


def test_the_page_offers_what_the_server_allows(service, tiny_vit):
    demo = build_demo(service, RequestSettings)
    proposals = _component(demo, "zsris-proposals")
    assert [c[0] for c in proposals["choices"]] == ["classical", FEW] and proposals["visible"] is True
    assert _component(demo, "zsris-max-proposals")["maximum"] == 6  # the largest cap of its generators
    assert _component(demo, "zsris-threshold")["value"] == -1  # the server always answers
    assert _component(demo, "zsris-method")["visible"] is False  # one method: no menu
    alone = SegmentationService(Segmenter(tiny_vit, ClassicalProposals(max_proposals=4), spatial="on",
                                          no_target_threshold=0.2, multi_target=True))
    try:
        page = build_demo(alone, RequestSettings)
        assert _component(page, "zsris-proposals")["visible"] is False
        assert _component(page, "zsris-spatial")["value"] is True
        assert _component(page, "zsris-threshold")["value"] == 0.2
        assert _component(page, "zsris-multi-target")["value"] is True
        run = next(d for d in page.config["dependencies"] if d["api_name"] == "run")
        assert len(run["inputs"]) == 8  # image, expressions, top-k, cap, spatial, threshold, multi-target, margin
    finally:
        alone.close()


def test_a_page_run_downloads_the_combined_mask_and_says_how_long_it_took(service):
    handlers = PageHandlers(service, RequestSettings)
    overlay, answers, files, status, elapsed = handlers.run(str(EXAMPLE), "the red circle\nthe blue square", 3,
                                                            None, FEW, 2, False, -1.0, False, 0.01)
    assert "Segmented 2 expression(s) among 2 proposals" in status
    assert elapsed.startswith("Answered in **") and "classical-few proposals (at most 2)" in elapsed
    assert Path(files[0]).name == LABELS_FILE and len(files) == 5
    with Image.open(files[0]) as labels:
        assert labels.mode == "P" and labels.size == (480, 320)
        values = set(np.unique(np.asarray(labels)))
        assert values <= {0, 1, 2} and values & {1, 2}
    _, _, one, _, _ = handlers.run(str(EXAMPLE), "the red circle", 3)
    assert [Path(f).name for f in one] == ["the-red-circle.mask.png", "the-red-circle.json"]  # nothing to combine
    with pytest.warns(UserWarning, match="upload an image first"):
        assert handlers.run(None, "x", 3)[3].startswith("**Error:**")


def test_serve_offers_the_generators_it_is_told_and_refuses_unknown_ones(service):
    from zsris.cli import make_parser
    from zsris.cli.serve import offered_generators
    from zsris.errors import ZsrisError

    args = make_parser().parse_args(["serve", "--max-proposals", "3", "--offer-proposals", f"classical,{FEW}"])
    offered = offered_generators(args, "cpu")
    assert list(offered) == [FEW] and offered[FEW].spec.max_proposals == 3  # --proposals is not built twice
    with pytest.raises(ZsrisError, match="no generator nope"):
        offered_generators(make_parser().parse_args(["serve", "--offer-proposals", "nope"]), "cpu")

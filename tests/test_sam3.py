"""SAM 3 proposals (``--proposals sam3``): each expression's noun phrase as SAM 3's concept prompt.

The real SAM 3 architecture in a small configuration with random weights (the full one is run by
``benchmarks/model_zoo.py --only sam3``): one detector pass per distinct noun phrase (counted),
each expression choosing among its own phrase's instances, the presence score answering "no such
object", the fallback of an expression without a noun phrase, and the whole path (segment, batch,
eval, serve, the predictor)."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from zsris import Predictor, Segmenter, SegmenterConfig
from zsris.cli import main
from zsris.errors import WeightsError, ZsrisError
from zsris.proposals import PROPOSAL_REGISTRY, ProposalSpec, Sam3Proposals, create_proposals
from zsris.proposals.registry import GeneratorEntry

EXAMPLE = Path(__file__).resolve().parents[1] / "src" / "zsris" / "examples" / "shapes.png"
#: Random weights score every query about 0.25 and every presence about 0.5: keep them all.
OPEN = {"score_threshold": 0.0, "presence_threshold": 0.0, "max_proposals": 4}


def small_sam3(seed: int = 0):
    """SAM 3's architecture (ViT, CLIP text tower, DETR encoder and decoder, mask decoder), small."""
    from transformers import Sam3Config, Sam3Model, Sam3ViTConfig

    vit = Sam3ViTConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
                        global_attn_indexes=[1], image_size=336, window_size=12)
    sizes = [[96, 96], [48, 48], [24, 24]]
    config = Sam3Config(vision_config={"backbone_config": vit, "backbone_feature_sizes": sizes},
                        text_config={"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
                                     "num_attention_heads": 2, "projection_dim": 64},
                        detr_decoder_config={"num_queries": 12})
    torch.manual_seed(seed)
    return Sam3Model(config).eval()


def _small_from_spec(spec: ProposalSpec, device: torch.device) -> Sam3Proposals:
    settings = {k: v for k, v in spec.options.items() if k != "checkpoint" and v is not None}
    return Sam3Proposals(network=small_sam3(), device=device, max_proposals=spec.max_proposals,
                         **{**settings, "score_threshold": 0.0})


@pytest.fixture(scope="module")
def network():
    return small_sam3()


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    return np.array(Image.open(EXAMPLE).convert("RGB"))


@pytest.fixture()
def segmenter(vit_b32, network):
    return Segmenter(vit_b32, Sam3Proposals(network=network, **OPEN),
                     SegmenterConfig(proposals=ProposalSpec("sam3", 4, {"checkpoint": "random"})))


def test_one_pass_per_distinct_noun_phrase_and_each_expression_chooses_among_its_own(segmenter, image):
    expressions = ["the red circle", "the red circle on the left", "a blue square"]
    results = segmenter.segment(image, expressions)
    assert segmenter.proposals.passes == 2  # "the red circle" twice, "a blue square" once
    for result, phrase in zip(results, ["the red circle", "the red circle", "a blue square"]):
        assert result.prompt["noun_phrase_sent"] == phrase and result.prompt["decided_by"] == "clip"
        assert result.found and 1 <= len(result.proposals) <= 4
        assert result.prompt["instances"] == len(result.proposals)
        image_proposals = segmenter.last_image_features(image, None, expressions).proposals
        assert all(image_proposals.prompts[i] == phrase for i in result.candidates)
        np.testing.assert_array_equal(result.mask, image_proposals.masks[result.image_proposal_index])
    assert "prompt" in results[0].to_dict() and json.dumps(results[0].to_dict())
    segmenter.segment(image, expressions)  # the same image and expressions: the kept features
    assert segmenter.proposals.passes == 2


def test_the_instances_are_sam3s_own_post_processing(segmenter, image):
    """The image is encoded once for all phrases; each phrase's masks equal a direct call of the
    model on the pixels and the processor's post-processing."""
    generator = segmenter.proposals
    found = generator.instances(image, ["a blue square", "the red circle"])
    with torch.inference_mode():
        pixels = generator.image_processor(images=image.copy(), return_tensors="pt")["pixel_values"]
        out = generator.network(pixel_values=pixels, **generator.text("the red circle"))
        theirs = generator.image_processor.post_process_instance_segmentation(
            out, threshold=0.0, mask_threshold=0.5, target_sizes=[image.shape[:2]])[0]
    order = torch.argsort(theirs["scores"], descending=True, stable=True)[:4]
    ours, presence = found["the red circle"]
    np.testing.assert_array_equal(ours.masks, theirs["masks"][order].bool().numpy()[: len(ours)])
    assert presence == pytest.approx(float(torch.sigmoid(out.presence_logits).reshape(-1)[0]), abs=1e-6)


def test_presence_below_the_threshold_answers_no_such_object(segmenter, image):
    generator = segmenter.proposals
    generator.config = dataclasses.replace(generator.config, presence_threshold=1.0)
    result = segmenter.segment(image, "the red circle")
    assert not result.found and result.prompt["decided_by"] == "presence" and not result.mask.any()
    assert 0 < result.prompt["presence"] < 1.0


def test_an_expression_without_a_noun_phrase_falls_back_to_the_class_agnostic_proposals(vit_b32, network, image):
    generator = Sam3Proposals(network=network, with_classical=True, **OPEN)
    segmenter = Segmenter(vit_b32, generator, SegmenterConfig())
    fallback, named = segmenter.segment(image, ["on the left", "the red circle"])
    assert generator.passes == 1  # only the noun phrase was sent
    assert fallback.prompt["noun_phrase_sent"] is None and "no noun phrase" in fallback.prompt["fallback"]
    assert fallback.found and fallback.prompt["class_agnostic"] == len(fallback.proposals) > 0
    assert named.prompt["instances"] + named.prompt["class_agnostic"] == len(named.proposals)
    alone = Segmenter(vit_b32, Sam3Proposals(network=network, **OPEN), SegmenterConfig())
    assert alone.segment(image, ["on the left", "a dog"])[0].prompt["decided_by"] == "no candidates"


def test_spatial_words_choose_among_the_phrases_instances(vit_b32, network, image):
    segmenter = Segmenter(vit_b32, Sam3Proposals(network=network, **OPEN), SegmenterConfig(spatial="on"))
    result = segmenter.segment(image, "the red circle on the left")
    assert result.spatial is not None and result.found
    assert result.prompt["noun_phrase_sent"] == "the red circle" and len(result.proposals) == len(result.candidates)
    assert result.proposal_index in range(len(result.candidates))


def test_the_page_says_what_sam3_was_asked(segmenter, image):
    from zsris.present import explain

    text = explain(segmenter.segment(image, "the red circle")).markdown()
    assert "sam3 asked for *the red circle*:" in text and "instance(s), presence 0." in text


def test_the_predictor_asks_sam3_per_expression(segmenter, image):
    predictor = Predictor(segmenter)
    assert predictor.set_image(image) is None  # nothing to compute before the expressions
    assert predictor.predict("a blue square").prompt["noun_phrase_sent"] == "a blue square"


def test_a_missing_checkpoint_says_it_is_gated(monkeypatch, tmp_path):
    monkeypatch.delenv("ZSRIS_SAM3_CHECKPOINT", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    with pytest.raises(WeightsError, match=r"facebook/sam3 .*gated, so accept its licence.*hf auth login"):
        create_proposals("sam3")
    with pytest.raises(WeightsError, match="is not a folder in the transformers format"):
        create_proposals("sam3", checkpoint=str(tmp_path / "sam3.pt"))
    assert main(["weights", "--weights", "random", "--proposals", "sam3"]) == 1
    with pytest.raises(ZsrisError, match="presence_threshold is a probability between 0 and 1, not 1.5"):
        create_proposals("sam3", checkpoint="random", presence_threshold=1.5)


def test_proposal_files_refuse_a_prompted_generator(tmp_path, capsys):
    assert main(["proposals", str(EXAMPLE), "--proposals", "sam3", "-o", str(tmp_path / "p.json")]) != 0
    assert "the sam3 generator's depend on each expression" in capsys.readouterr().err
    assert not (tmp_path / "p.json").exists()


#: The CLI's flags for SAM 3 with the small configuration (``small_registry``), keeping every instance.
FLAGS = ["--proposals", "sam3", "--sam3-checkpoint", "random", "--presence-threshold", "0", "--max-proposals", "3",
         "--weights", "random"]


@pytest.fixture()
def small_registry(monkeypatch):
    monkeypatch.setitem(PROPOSAL_REGISTRY, "sam3", GeneratorEntry(_small_from_spec, PROPOSAL_REGISTRY["sam3"].options,
                                                                  in_model_process=True, prompted=True))


@pytest.mark.slow
def test_segment_batch_and_serve_run_with_sam3(tmp_path, small_registry):
    assert main(["segment", str(EXAMPLE), "the red circle", "a blue square", *FLAGS, "-o", str(tmp_path / "one")]) == 0
    records = [json.loads(p.read_text()) for p in sorted((tmp_path / "one").glob("*.json"))]
    assert {r["prompt"]["noun_phrase_sent"] for r in records} == {"the red circle", "a blue square"}
    assert records[0]["settings"]["proposals"]["options"]["presence_threshold"] == 0
    photos = tmp_path / "photos"
    photos.mkdir()
    Image.open(EXAMPLE).save(photos / "a.png")
    assert main(["batch", str(photos), "-e", "the blue square", "-e", "on the left", "-o", str(tmp_path / "batch"),
                 "--sam3-with-classical", *FLAGS]) == 0
    lines = [json.loads(line) for line in (tmp_path / "batch" / "results.jsonl").read_text().splitlines()]
    assert len(lines) == 2 and {line["prompt"]["noun_phrase_sent"] for line in lines} == {"the blue square", None}

    from zsris import create_segmenter
    from zsris.service import SegmentationService

    spec = ProposalSpec("sam3", 3, {"checkpoint": "random", "presence_threshold": 0.0})
    service = SegmentationService(create_segmenter(SegmenterConfig(weights="random", proposals=spec)))
    try:
        pixels, proposals, results = service.segment(EXAMPLE.read_bytes(), ["the red circle", "the red circle"])
    finally:
        service.close()
    assert service.segmenter.proposals.passes == 1 and set(proposals.prompts) == {"the red circle"}
    assert [r.prompt["noun_phrase_sent"] for r in results] == ["the red circle", "the red circle"]


@pytest.mark.slow
def test_eval_runs_with_sam3(tmp_path, refcoco_mini, small_registry):
    assert main(["eval", "--data", str(refcoco_mini), "--dataset", "refcoco", "--split", "train", "--limit", "2",
                 "--out", str(tmp_path / "eval"), "--cache", str(tmp_path / "cache"), *FLAGS]) == 0
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())["metrics"]
    assert metrics["images"] == 2 and metrics["proposals/image"] > 0


def test_a_phrase_sam3_finds_nothing_for_leaves_the_others_their_answer(vit_b32, network, image):
    """With nothing above the score threshold, SAM 3's post-processing returns no masks at its own
    resolution (288 x 288 at full size): they must not meet the image's proposals (a traceback)."""
    generator = Sam3Proposals(network=network, with_classical=True, score_threshold=0.99, presence_threshold=0.0,
                              max_proposals=4)
    found, other = Segmenter(vit_b32, generator, SegmenterConfig()).segment(image, ["the red circle", "the scooter"])
    assert found.prompt["instances"] == 0 and other.prompt["instances"] == 0
    assert found.found and found.mask.shape == image.shape[:2]  # among the class-agnostic proposals
    alone = Segmenter(vit_b32, Sam3Proposals(network=network, score_threshold=0.99, presence_threshold=0.0),
                      SegmenterConfig())
    with pytest.raises(ZsrisError, match="the sam3 generator found nothing to choose from"):
        alone.segment(image, "the red circle")

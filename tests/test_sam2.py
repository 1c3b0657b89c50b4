"""SAM 2.1 proposals (``--proposals sam2``): the real architecture with random weights, its point
grid and masks checked against transformers' own processor, and the whole path (segment, batch,
eval, serve) run with it."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from zsris.cli import main
from zsris.errors import WeightsError, ZsrisError
from zsris.proposals import Sam2Proposals, create_proposals
from zsris.proposals.sam2 import point_grid, stability_scores

EXAMPLE = Path(__file__).resolve().parents[1] / "src" / "zsris" / "examples" / "shapes.png"
#: A 2 x 2 grid, and no filter by quality: random weights predict low IoU and stability.
GRID = ["--sam2-checkpoint", "random", "--proposal-option", "points_per_side=2", "--proposal-option",
        "pred_iou_thresh=-1e9", "--proposal-option", "stability_score_thresh=-1"]


@pytest.fixture(scope="module")
def generator() -> Sam2Proposals:
    """Every mask kept: no IoU, stability, NMS, area filter or cap, so the masks can be compared."""
    return Sam2Proposals("random", points_per_side=3, pred_iou_thresh=-1e9, stability_score_thresh=-1.0,
                         box_nms_thresh=1.0, nms_iou=1.0, min_area=0.0, max_proposals=None)


def test_point_grid_is_sams():
    grid = point_grid(4)
    assert grid.shape == (16, 2)
    assert torch.allclose(grid[:4, 0], torch.tensor([0.125, 0.375, 0.625, 0.875]))
    assert torch.all(grid[:4, 1] == 0.125) and torch.all(grid[4:8, 1] == 0.375)  # rows of x, y growing


def test_stability_is_the_area_ratio_of_two_thresholds():
    logits = torch.tensor([[[-2.0, -0.5], [0.5, 2.0]]])
    assert stability_scores(logits, 1.0).item() == pytest.approx(1 / 3)  # 2.0 above +1; -0.5, 0.5, 2.0 above -1
    assert stability_scores(torch.full((1, 2, 2), -5.0), 1.0).item() == 0.0  # nothing at all: 0, not NaN


def test_masks_equal_transformers_own_prompted_path(generator):
    """The generator's masks are those of prompting Sam2Model through Sam2Processor with the same
    points in image coordinates and its post_process_masks: coordinates and resizing agree."""
    from transformers import Sam2Processor

    image = np.array(Image.open(EXAMPLE).convert("RGB"))
    height, width = image.shape[:2]
    ours = generator(image)
    processor = Sam2Processor(image_processor=generator.processor)
    points = (point_grid(3) * torch.tensor([width, height])).tolist()
    inputs = processor(images=image, input_points=[[[p] for p in points]], input_labels=[[[1]] * len(points)],
                       return_tensors="pt")
    with torch.inference_mode():
        out = generator.network(pixel_values=inputs["pixel_values"], input_points=inputs["input_points"],
                                input_labels=inputs["input_labels"], multimask_output=True)
    theirs = processor.post_process_masks(out.pred_masks, inputs["original_sizes"])[0].flatten(0, 1).numpy()
    theirs = theirs[theirs.reshape(len(theirs), -1).any(1)]
    assert ours.masks.shape[1:] == (height, width) and len(ours) == len(theirs) > 0
    pair = {m.tobytes() for m in ours.masks}
    assert pair == {m.tobytes() for m in theirs}


def test_a_directly_built_generator_records_what_it_runs_with(generator, tiny_vit):
    """#34: Sam2Proposals(points_per_side=16) handed to a Segmenter recorded the registry's 32 in
    its settings while its cache key said 16. The settings are its config's now, and rebuild it."""
    from zsris.proposals import Sam2Config, config_of
    from zsris.segmenter import Segmenter

    settings = Segmenter(tiny_vit, generator).config.settings()["proposals"]
    assert settings["options"]["points_per_side"] == generator.config.points_per_side == 3
    assert settings["options"]["box_nms_thresh"] == 1.0 and settings["max_proposals"] is None
    assert "points_per_side=3" in generator.cache_key.split("-")
    assert config_of(Sam2Config, generator.spec) == generator.config


def test_filters_and_cap_apply(generator):
    image = np.array(Image.open(EXAMPLE).convert("RGB"))
    capped = Sam2Proposals("random", points_per_side=3, pred_iou_thresh=-1e9, stability_score_thresh=-1.0,
                           max_proposals=2)(image)
    assert 1 <= len(capped) <= 2 and capped.scores.dtype == np.float32
    assert np.all(np.diff(capped.scores) <= 0)  # best first
    assert len(Sam2Proposals("random", points_per_side=2, pred_iou_thresh=1e9)(image)) == 0


def test_an_untrained_sam2_that_finds_nothing_says_which_thresholds_to_lower(tiny_vit):
    """#37: `--sam2-checkpoint random` ended in "found nothing" with no way forward; the line now
    names the quality thresholds, and lowering them gives masks."""
    from zsris.errors import NoProposalsError
    from zsris.segmenter import Segmenter

    strict = Segmenter(tiny_vit, Sam2Proposals("random", points_per_side=2, pred_iou_thresh=1e9))
    with pytest.raises(NoProposalsError, match="untrained.*--proposal-option pred_iou_thresh=0 "
                                               "--proposal-option stability_score_thresh=0"):
        strict.segment(EXAMPLE, "the red circle")
    lowered = Segmenter(tiny_vit, Sam2Proposals("random", points_per_side=2, pred_iou_thresh=0,
                                                stability_score_thresh=0))
    assert lowered.segment(EXAMPLE, "the red circle").proposal_index is not None


def test_missing_checkpoints_say_how_to_get_them(monkeypatch, tmp_path):
    monkeypatch.delenv("ZSRIS_SAM2_CHECKPOINT", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    with pytest.raises(WeightsError, match=r"hf download facebook/sam2.1-hiera-small.*--sam2-checkpoint FOLDER"):
        create_proposals("sam2", model="small")
    official = tmp_path / "sam2.1_hiera_tiny.pt"
    official.write_bytes(b"not a folder")
    with pytest.raises(WeightsError, match="is a file; zsris reads SAM 2.1 in the transformers format"):
        create_proposals("sam2", checkpoint=str(official))
    with pytest.raises(WeightsError, match="does not exist"):
        create_proposals("sam2", checkpoint=str(tmp_path / "nowhere"))
    with pytest.raises(ZsrisError, match="unknown SAM 2.1 model 'huge'"):
        create_proposals("sam2", checkpoint="random", model="huge")


def test_a_saved_folder_loads_and_gives_the_same_masks(generator, tmp_path):
    generator.network.save_pretrained(tmp_path / "sam2")
    generator.processor.save_pretrained(tmp_path / "sam2")
    image = np.array(Image.open(EXAMPLE).convert("RGB"))
    loaded = Sam2Proposals(str(tmp_path / "sam2"), config=generator.config)
    assert loaded.cache_key.endswith("checkpoint=sam2")
    np.testing.assert_array_equal(loaded(image).masks, generator(image).masks)


@pytest.mark.slow
def test_segment_batch_and_serve_run_with_sam2(tmp_path):
    assert main(["segment", str(EXAMPLE), "the red circle", "--proposals", "sam2", *GRID, "--weights", "random",
                 "-o", str(tmp_path / "one")]) == 0
    record = json.loads(next((tmp_path / "one").glob("*.json")).read_text())
    assert record["settings"]["proposals"]["name"] == "sam2"
    assert record["settings"]["proposals"]["options"]["points_per_side"] == 2
    photos = tmp_path / "photos"
    photos.mkdir()
    Image.open(EXAMPLE).save(photos / "a.png")
    assert main(["batch", str(photos), "-e", "the blue square", "-o", str(tmp_path / "batch"), "--proposals", "sam2",
                 *GRID, "--weights", "random"]) == 0
    assert len((tmp_path / "batch" / "results.jsonl").read_text().splitlines()) == 1

    from zsris import SegmenterConfig, create_segmenter
    from zsris.proposals import ProposalSpec
    from zsris.service import SegmentationService

    spec = ProposalSpec("sam2", 100, {"checkpoint": "random", "points_per_side": 2, "pred_iou_thresh": -1e9,
                                      "stability_score_thresh": -1})
    service = SegmentationService(create_segmenter(SegmenterConfig(weights="random", proposals=spec)))
    try:
        pixels, proposals, results = service.segment(EXAMPLE.read_bytes(), ["the red circle"])
    finally:
        service.close()
    assert proposals.masks.shape[1:] == pixels.shape[:2] == (320, 480) and len(proposals) >= 1
    assert results[0].expression == "the red circle" and results[0].mask.shape == (320, 480)


def test_zsris_weights_says_where_sam2_is(monkeypatch, tmp_path, capsys):
    monkeypatch.delenv("ZSRIS_SAM2_CHECKPOINT", raising=False)
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    assert main(["weights", "--weights", "random", "--proposals", "sam2", "--sam2-model", "large"]) == 1
    assert "facebook/sam2.1-hiera-large" in capsys.readouterr().out
    assert main(["weights", "--weights", "random", "--proposals", "sam2", "--sam2-checkpoint", "random"]) == 0


@pytest.mark.slow
def test_eval_runs_with_sam2(tmp_path, refcoco_mini):
    assert main(["eval", "--data", str(refcoco_mini), "--dataset", "refcoco", "--split", "train", "--limit", "2",
                 "--out", str(tmp_path / "eval"), "--proposals", "sam2", *GRID, "--weights", "random",
                 "--cache", str(tmp_path / "cache")]) == 0
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())["metrics"]
    assert metrics["images"] == 2 and 0 < metrics["proposals/image"] <= 12

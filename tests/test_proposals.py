"""Every proposal generator returns boolean masks at the image's size, on real images."""
from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
from PIL import Image

from zsris.config import ProposalSpec
from zsris.datasets import ReferDataset
from zsris.engine import Engine, Preparer
from zsris.errors import ProposalError, WeightsError, ZsrisError
from zsris.images import load_image
from zsris.jobs.evaluation import evaluate_proposals
from zsris.masks import decode_rle, encode_rle, iou_matrix, mask_nms, nms_by_iou
from zsris.proposals import (
    ClassicalProposals,
    FileProposals,
    Proposals,
    SamProposals,
    canonical_spec,
    create_proposals,
)
from zsris.proposals.classical import _adjacent_pairs, _boundary_band, _self_iou, _snap_to_superpixels

IMAGES = ["COCO_train2014_000000000312.jpg", "COCO_train2014_000000009057.jpg", "COCO_train2014_000000020619.jpg"]


@pytest.fixture(scope="module")
def images(refcoco_mini):
    return [load_image(refcoco_mini / "images" / "train2014" / name) for name in IMAGES]


def _check(proposals: Proposals, image: np.ndarray, cap: int) -> None:
    assert 1 <= len(proposals) <= cap
    assert proposals.masks.dtype == bool and proposals.masks.shape[1:] == image.shape[:2]
    assert proposals.masks.reshape(len(proposals), -1).any(1).all()
    assert proposals.scores.shape == (len(proposals),)
    for mask, (x1, y1, x2, y2) in zip(proposals.masks, proposals.boxes):
        ys, xs = np.nonzero(mask)
        assert (x1, y1, x2, y2) == (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)


@pytest.mark.slow
def test_classical_on_real_images(images):
    generator = ClassicalProposals(max_proposals=40)
    for image in images:
        proposals = generator(image)
        _check(proposals, image, 40)
        ious = iou_matrix(proposals.masks, proposals.masks)
        np.fill_diagonal(ious, 0)
        assert ious.max() < 0.95  # near-duplicates were suppressed


def test_classical_is_deterministic(images):
    first = ClassicalProposals(max_proposals=20)(images[0])
    second = ClassicalProposals(max_proposals=20)(images[0])
    np.testing.assert_array_equal(first.masks, second.masks)


def test_classical_cache_key_follows_settings():
    assert ClassicalProposals().cache_key != ClassicalProposals(max_proposals=50).cache_key
    assert ClassicalProposals().cache_key == ClassicalProposals().cache_key
    assert ClassicalProposals().cache_key != ClassicalProposals(refine_size=0).cache_key


def test_classical_on_tiny_and_flat_images():
    _check(ClassicalProposals()(np.zeros((3, 5, 3), dtype=np.uint8)), np.zeros((3, 5, 3)), 1)
    flat = np.full((64, 48, 3), 90, dtype=np.uint8)
    proposals = ClassicalProposals()(flat)
    assert proposals.masks.shape[1:] == (64, 48)


def _two_tone_figure() -> tuple[np.ndarray, np.ndarray]:
    """A 'person' (red top half, blue bottom half) standing where a reddish and a bluish
    backdrop meet: each half is closer in colour to the backdrop beside it than to the other."""
    rng = np.random.default_rng(3)
    image = rng.normal(0, 6, (120, 160, 3))
    image[:, :80] += (170, 40, 40)
    image[:, 80:] += (40, 40, 170)
    figure = np.zeros((120, 160), dtype=bool)
    figure[20:100, 60:100] = True
    image[20:60, 60:100] = rng.normal(0, 6, (40, 40, 3)) + (200, 30, 30)
    image[60:100, 60:100] = rng.normal(0, 6, (40, 40, 3)) + (30, 30, 200)
    return image.clip(0, 255).astype(np.uint8), figure


def test_grouping_joins_differently_coloured_parts():
    image, figure = _two_tone_figure()
    proposals = ClassicalProposals()(image)
    assert iou_matrix(proposals.masks, figure[None])[:, 0].max() > 0.95
    for strategy in ("appearance", "shape"):
        single = ClassicalProposals(similarities=(strategy,))(image)
        assert iou_matrix(single.masks, figure[None])[:, 0].max() > 0.9


def test_snapping_follows_the_photos_edges():
    """A disc whose edge falls between the working grid's cells: snapping to full-resolution
    superpixels brings the best proposal's boundary closer to the true one."""
    rng = np.random.default_rng(5)
    rows, cols = np.mgrid[:480, :640]
    disc = (rows - 233.3) ** 2 + (cols - 301.7) ** 2 < 117.2**2
    image = (rng.normal(0, 5, (480, 640, 3)) + np.where(disc[..., None], (60, 150, 70), (150, 120, 200))).clip(0, 255)
    image = image.astype(np.uint8)
    snapped = iou_matrix(ClassicalProposals()(image).masks, disc[None])[:, 0].max()
    plain = iou_matrix(ClassicalProposals(refine_size=0)(image).masks, disc[None])[:, 0].max()
    assert snapped > 0.95 and snapped > plain + 0.03


def test_snapping_changes_only_the_boundary_band():
    """Pixels more than one working cell away from a mask's boundary keep the plain upsampled
    value; a huge image is refined at ``refine_size`` and still comes back at full size."""
    rng = np.random.default_rng(1)
    image = rng.integers(0, 255, (300, 450, 3), dtype=np.uint8)
    small = np.zeros((4, 60, 90), dtype=bool)
    small[0, 10:40, 20:70] = True
    small[1, 5:6, :] = True
    small[2] = rng.random((60, 90)) > 0.5
    small[3, 30:, 45:] = True
    snapped = _snap_to_superpixels(small, image, size=450, scale=50, sigma=0.8)
    assert snapped.shape == (4, 300, 450)
    nearest = small.repeat(5, axis=1).repeat(5, axis=2)
    far = ~_boundary_band(small).repeat(5, axis=1).repeat(5, axis=2)
    np.testing.assert_array_equal(snapped[far], nearest[far])
    assert (snapped != nearest).any()
    big = ClassicalProposals(max_proposals=5)(np.asarray(Image.fromarray(image).resize((1800, 1200))))
    assert big.masks.shape[1:] == (1200, 1800)


def test_nms_by_iou_stops_at_the_limit():
    rng = np.random.default_rng(0)
    masks = rng.random((12, 20, 20)) > 0.5
    scores = rng.random(12)
    everything = mask_nms(masks, scores, 0.5)
    assert len(everything) > 3
    np.testing.assert_array_equal(nms_by_iou(iou_matrix(masks, masks), scores, 0.5, limit=3), everything[:3])


def test_adjacent_pairs_are_the_sorted_unique_rows(rng):
    labels = rng.integers(0, 40, size=(30, 50))
    pairs = np.concatenate([np.stack([labels[:, :-1].ravel(), labels[:, 1:].ravel()], 1),
                            np.stack([labels[:-1].ravel(), labels[1:].ravel()], 1)])
    pairs = np.unique(np.sort(pairs[pairs[:, 0] != pairs[:, 1]], axis=1), axis=0)
    ours = _adjacent_pairs(labels)
    np.testing.assert_array_equal(ours, pairs)
    assert ours.dtype == labels.dtype


def test_iou_of_repeated_candidates_equals_the_full_product(rng):
    distinct = rng.random((12, 70)) > 0.5
    candidates = distinct[rng.integers(0, 12, size=40)]  # every mask several times, in any order
    candidates[5] = False  # an empty one too
    np.testing.assert_array_equal(_self_iou(candidates), iou_matrix(candidates, candidates))


def test_unknown_grouping_strategy_is_refused():
    with pytest.raises(ValueError, match="unknown similarity"):
        ClassicalProposals(similarities=("appearance", "smell"))


@pytest.mark.slow
def test_classical_quality_floor_on_real_objects(refcoco_mini):
    dataset = ReferDataset(refcoco_mini, "refcoco")
    groups = dataset.refs_by_image("train", limit=12)  # 64.6 here: the floor holds with room to spare
    engine = Engine(Preparer(ProposalSpec(), exif_transpose=False), workers=1)  # the engine eval uses
    quality = evaluate_proposals(dataset, groups, engine, show_progress=False)
    assert quality["proposals/image"] <= 100
    assert quality["oracle mIoU"] >= 55


@pytest.mark.slow
def test_sam_with_random_weights_on_a_real_image(images):
    generator = SamProposals("random", model_type="vit_b", points_per_side=4, pred_iou_thresh=0.0,
                             stability_score_thresh=0.0, min_area=0.0, max_proposals=10)
    _check(generator(images[0]), images[0], 10)
    key = generator.cache_key
    assert key.startswith("sam-v") and {"model_type=vit_b", "points_per_side=4", "checkpoint=random"} <= set(
        key.split("-"))


def test_sam_without_checkpoint_says_how_to_supply_one(monkeypatch):
    monkeypatch.delenv("ZSRIS_SAM_CHECKPOINT", raising=False)
    with pytest.raises(WeightsError, match="--sam-checkpoint"):
        SamProposals()
    with pytest.raises(WeightsError, match="does not exist"):
        SamProposals("/nowhere/sam_vit_h.pth")


def test_file_proposals_from_coco_rle_json(tmp_path, images):
    image = images[0]
    masks = ClassicalProposals(max_proposals=5)(image).masks
    records = [{"image_id": 312, "segmentation": encode_rle(m), "score": 0.5 + i / 10} for i, m in enumerate(masks)]
    (tmp_path / "props.json").write_text(json.dumps(records))
    proposals = FileProposals(tmp_path / "props.json")(image, "312")
    _check(proposals, image, 5)
    np.testing.assert_array_equal(proposals.masks, masks)
    np.testing.assert_allclose(proposals.scores, [0.5, 0.6, 0.7, 0.8, 0.9], rtol=1e-6)
    keyed = {"COCO_train2014_000000000312": records}
    (tmp_path / "keyed.json").write_text(json.dumps(keyed))
    by_name = FileProposals(tmp_path / "keyed.json")(image, "COCO_train2014_000000000312.jpg")
    np.testing.assert_array_equal(by_name.masks, masks)
    with pytest.raises(ProposalError, match="no proposals for image"):
        FileProposals(tmp_path / "keyed.json")(image, "other.jpg")


def test_file_proposals_keep_the_cap_by_score_before_decoding(tmp_path, images):
    """--max-proposals applies to a file too (it was ignored): the best by the file's scores, in
    the file's order, and only those are decoded; a folder keeps its first files by name."""
    from zsris.config import ProposalSpec

    image = images[0]
    masks = ClassicalProposals(max_proposals=8)(image).masks
    scores = [0.3, 0.9, 0.1, 0.8, 0.5, 0.7, 0.2, 0.6]
    records = [{"image_id": 1, "segmentation": encode_rle(m), "score": s} for m, s in zip(masks, scores)]
    records.append({"image_id": 1, "segmentation": {"size": [1, 1], "counts": "never decoded"}, "score": 0.0})
    (tmp_path / "props.json").write_text(json.dumps(records))
    capped = create_proposals("file", path=str(tmp_path / "props.json"), max_proposals=3)
    proposals = capped(image, "1")
    np.testing.assert_array_equal(proposals.masks, masks[[1, 3, 5]])  # 0.9, 0.8, 0.7, in the file's order
    np.testing.assert_allclose(proposals.scores, [0.9, 0.8, 0.7], rtol=1e-6)
    assert capped.spec == ProposalSpec("file", 3, {"path": str(tmp_path / "props.json")})
    uncapped = FileProposals(tmp_path / "props.json")
    assert "max_proposals=3" in capped.cache_key and capped.cache_key != uncapped.cache_key
    with pytest.raises(ProposalError, match="malformed proposal"):
        uncapped(image, "1")  # uncapped, the broken record is decoded
    folder = tmp_path / "pngs"
    folder.mkdir()
    for i, mask in enumerate(masks[:4]):
        Image.fromarray(mask.astype(np.uint8) * 255).save(folder / f"{i}.png")
    np.testing.assert_array_equal(FileProposals(folder, max_proposals=2)(image, "x.jpg").masks, masks[:2])


def test_file_proposals_from_png_folder(tmp_path, images):
    image = images[1]
    masks = ClassicalProposals(max_proposals=4)(image).masks
    folder = tmp_path / "COCO_train2014_000000009057"
    folder.mkdir()
    for i, mask in enumerate(masks):
        Image.fromarray(mask.astype(np.uint8) * 255).save(folder / f"{i}.png")
    proposals = FileProposals(tmp_path)(image, "COCO_train2014_000000009057.jpg")
    _check(proposals, image, 4)
    np.testing.assert_array_equal(proposals.masks, masks)


def test_file_proposals_malformed(tmp_path, images):
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ProposalError, match="not a readable JSON"):
        FileProposals(tmp_path / "bad.json")
    (tmp_path / "noid.json").write_text(json.dumps([{"segmentation": {}}]))
    with pytest.raises(ProposalError, match="image_id"):
        FileProposals(tmp_path / "noid.json")
    wrong = [{"image_id": 1, "segmentation": encode_rle(np.ones((5, 5), bool))}]
    (tmp_path / "wrong.json").write_text(json.dumps(wrong))
    with pytest.raises(ProposalError, match="differs from the image.s 427x640"):
        FileProposals(tmp_path / "wrong.json")(images[0], "1")
    with pytest.raises(ProposalError, match="no such"):
        FileProposals(tmp_path / "missing.json")


def test_factory_by_name(tmp_path):
    assert isinstance(create_proposals("classical", max_proposals=7), ClassicalProposals)
    with pytest.raises(ZsrisError, match="--proposals-path"):
        create_proposals("file")
    with pytest.raises(ZsrisError, match="unknown proposal generator"):
        create_proposals("nosuch")


def test_registry_builds_from_a_spec_and_keys_follow_the_config(monkeypatch):
    from dataclasses import dataclass

    from zsris.cli import make_parser
    from zsris.config import ProposalSpec
    from zsris.proposals import PROPOSAL_REGISTRY, config_key, config_of, register_generator

    built = create_proposals(ProposalSpec(name="classical", max_proposals=9))
    assert built.config.max_proposals == 9 and "max_proposals=9" in built.cache_key
    assert built.spec == canonical_spec("classical", max_proposals=9)  # the spec it can be rebuilt from

    @dataclass(frozen=True)
    class GridConfig:
        cells: int = 2
        max_proposals: int = 4

    class Grid:
        name = "grid"

        def __init__(self, config: GridConfig) -> None:
            self.config = config

        @property
        def cache_key(self) -> str:
            return config_key(self.name, 1, self.config)

    monkeypatch.setitem(PROPOSAL_REGISTRY, "grid", None)  # removed again after the test
    register_generator("grid", lambda spec, device: Grid(GridConfig(spec.option("cells"), spec.max_proposals)),
                       options={"cells": 2})
    grid = create_proposals("grid", max_proposals=3)
    assert isinstance(grid, Grid) and grid.cache_key == "grid-v1-cells=2-max_proposals=3"
    assert create_proposals("grid", max_proposals=5).cache_key != grid.cache_key
    assert create_proposals("grid", cells=4).spec == ProposalSpec("grid", 100, {"cells": 4})
    with pytest.raises(ZsrisError, match="the grid generator has no setting rows"):
        create_proposals("grid", rows=4)
    # or its settings are its config dataclass's fields, as the built-in generators' are
    register_generator("grid", lambda spec, device: Grid(config_of(GridConfig, spec)), config=GridConfig)
    assert PROPOSAL_REGISTRY["grid"].options == {"cells": 2}
    assert create_proposals("grid", cells=5, max_proposals=3).config == GridConfig(5, 3)
    # the one list of generators: the command line offers a newly registered one, with its settings
    args = make_parser().parse_args(["segment", "x.png", "a", "--proposals", "grid", "--proposal-option", "cells=3"])
    from zsris.cli.flags import proposal_spec_from_args

    assert proposal_spec_from_args(args) == ProposalSpec("grid", 100, {"cells": 3})


#: Options users already pass by name (flags, --proposal-option, SegmenterConfig.replace).
USER_OPTIONS = {"classical": set(), "sam": {"checkpoint", "model"},
                "sam2": {"checkpoint", "model", "points_per_side", "pred_iou_thresh", "stability_score_thresh"},
                "sam3": {"checkpoint", "with_classical", "presence_threshold", "score_threshold"},
                "freesolo": {"freesolo_checkpoint"}, "file": {"path"}}


@pytest.mark.parametrize("name", sorted(USER_OPTIONS))
def test_each_generators_options_are_its_config_fields(name):
    """One truth per generator: its registry options and their defaults are its config dataclass's
    fields (all but max_proposals, the spec's own), and a spec and a config convert both ways."""
    from zsris.proposals import PROPOSAL_REGISTRY, config_of, spec_of

    entry = PROPOSAL_REGISTRY[name]
    fields = [f for f in dataclasses.fields(entry.config) if f.name != "max_proposals"]
    defaults = {f.metadata.get("option", f.name): f.default for f in fields}
    # a tuple as a list: the options are JSON's kinds, as records and stored settings hold them
    assert dict(entry.options) == {k: list(v) if isinstance(v, tuple) else v for k, v in defaults.items()}
    assert USER_OPTIONS[name] <= entry.options.keys()
    spec = canonical_spec(name, max_proposals=7)
    config = config_of(entry.config, spec)
    assert config == entry.config(max_proposals=7) and spec_of(name, config) == spec


def test_a_directly_built_generators_spec_settings_and_cache_key_agree(tiny_vit):
    """#34: a generator built directly, not by create_proposals, handed its registry defaults to a
    segmenter's settings, not what it ran with (Sam2Proposals(points_per_side=16): settings said
    32, its cache key 16). Its spec is its config's now: the three agree, and it rebuilds as itself,
    from its spec or from the settings read back from JSON."""
    from zsris.segmenter import Segmenter

    generator = ClassicalProposals(max_proposals=7, scales=(50, 100), sigma=0.5)
    settings = Segmenter(tiny_vit, generator).config.settings()["proposals"]
    assert settings == {"name": "classical", "max_proposals": 7,
                        "options": {**canonical_spec("classical").options, "scales": [50, 100], "sigma": 0.5}}
    assert {"max_proposals=7", "scales=50_100", "sigma=0.5"} <= set(generator.cache_key.split("-"))
    assert create_proposals(generator.spec).cache_key == generator.cache_key
    stored = json.loads(json.dumps(settings))
    assert stored == settings  # as a resumed run reads them back
    rebuilt = create_proposals(ProposalSpec(stored["name"], stored["max_proposals"], stored["options"]))
    assert rebuilt.config == generator.config and rebuilt.spec == generator.spec


def test_rle_round_trip_and_nms():
    rng = np.random.default_rng(0)
    mask = rng.random((13, 17)) > 0.5
    np.testing.assert_array_equal(decode_rle(encode_rle(mask)), mask)
    masks = np.zeros((3, 10, 10), dtype=bool)
    masks[0, :5] = True
    masks[1, :5, :9] = True  # IoU 0.9 with the first
    masks[2, 5:] = True
    keep = mask_nms(masks, np.array([0.9, 0.8, 0.7]), 0.8)
    assert keep.tolist() == [0, 2]


def test_a_huge_image_keeps_the_best_proposals_that_fit_the_mask_budget(monkeypatch, rng):
    """#26: 100 masks of a 36 MP image took 3.6 GB; over the budget the best that fit are kept, and it says so."""
    import zsris.proposals.classical as classical

    image = (rng.random((120, 160, 3)) * 255).astype(np.uint8)
    image[20:80, 30:90] = (250, 20, 20)
    everything = classical.ClassicalProposals(max_proposals=20)(image)
    assert len(everything) > 3
    monkeypatch.setattr(classical, "MASK_BYTES", 3 * 120 * 160)
    with pytest.warns(UserWarning, match=r"keeps its best 3 of \d+ proposals, so that their masks fit"):
        few = classical.ClassicalProposals(max_proposals=20)(image)
    assert np.array_equal(few.masks, everything.masks[:3]) and np.allclose(few.scores, everything.scores[:3])

"""SegmenterConfig: one frozen settings object from flags to records."""
from __future__ import annotations

import dataclasses

import pytest

from zsris.cli import make_parser
from zsris.cli.flags import config_from_args
from zsris.config import ProposalSpec, SegmenterConfig, paper_alpha
from zsris.errors import ZsrisError
from zsris.proposals import canonical_spec


def test_defaults_are_the_papers_and_the_config_is_frozen():
    config = SegmenterConfig()
    assert (config.backbone, config.pretrained, config.alpha, config.beta, config.k) == ("ViT-B/32", "openai", 0.95,
                                                                                       0.5, 3)
    assert (config.fusion, config.preprocess, config.proposals) == ("reference", "reference",
                                                                    canonical_spec(ProposalSpec()))
    assert paper_alpha("refcocog") == 0.85
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.alpha = 0.5  # type: ignore[misc]


def test_settings_are_asdict_less_the_runtime_fields():
    config = SegmenterConfig(device="cpu", batch_size=7, proposals=ProposalSpec("sam", options={"model": "vit_b"}))
    settings = config.settings()
    assert settings == {k: v for k, v in dataclasses.asdict(config).items()
                        if k not in ("device", "batch_size", "max_pixels", "images_per_pass", "text_cache_size",
                                      "from_preset")}
    # the generator's own settings, every one spelled out with its default
    assert settings["proposals"] == {"name": "sam", "max_proposals": 100,
                                     "options": {"model": "vit_b", "points_per_side": 32, "points_per_batch": 64,
                                                 "pred_iou_thresh": 0.88, "stability_score_thresh": 0.95,
                                                 "crop_n_layers": 0, "crop_n_points_downscale_factor": 1,
                                                 "min_mask_region_area": 0, "min_area": 0.001, "nms_iou": 0.8,
                                                 "checkpoint": None}}
    assert SegmenterConfig(device="cuda", batch_size=3, images_per_pass=8,
                           text_cache_size=5).settings() == SegmenterConfig().settings()


def test_replace_takes_flat_proposal_fields_and_refuses_unknown_ones():
    config = SegmenterConfig().replace(max_proposals=50, alpha=0.5, proposals="file", path="masks.json")
    assert config.alpha == 0.5 and config.proposals == ProposalSpec("file", 50, {"path": "masks.json"})
    with pytest.raises(ZsrisError, match="unknown setting.*top_k"):
        SegmenterConfig().replace(top_k=3)
    with pytest.raises(ZsrisError, match="unknown setting.*path.*classical generator"):
        SegmenterConfig().replace(path="masks.json")  # another generator's setting
    with pytest.raises(ZsrisError, match="the sam generator has no setting colour"):
        SegmenterConfig(proposals=ProposalSpec("sam", options={"colour": "red"}))
    with pytest.raises(ZsrisError, match="unknown proposal generator 'nosuch'"):
        SegmenterConfig(proposals=ProposalSpec("nosuch"))


@pytest.mark.parametrize("changes, message", [
    ({"alpha": 1.5}, "alpha and beta must lie in"), ({"beta": -0.1}, "alpha and beta must lie in"),
    ({"batch_size": 0}, "batch_size must be a positive count"), ({"max_pixels": True}, "max_pixels must be"),
    ({"fusion": "mean"}, "unknown fusion"), ({"preprocess": "imagenet"}, "unknown preprocessing"),
    ({"precision": "int8"}, "unknown precision"), ({"images_per_pass": 0}, "images_per_pass must be a positive"),
    ({"images_per_pass": True}, "images_per_pass must be"), ({"images_per_pass": 2.0}, "images_per_pass must be"),
])
def test_bad_values_are_refused_when_the_config_is_made(changes, message):
    with pytest.raises(ZsrisError, match=message):
        SegmenterConfig(**changes)


def test_flags_become_exactly_one_config():
    parser = make_parser()
    flags = ["--data", "d", "--out", "o", "--images-per-pass", "3", "--batch-size", "16"]
    assert config_from_args(parser.parse_args(["eval", *flags])).images_per_pass == 3
    assert config_from_args(parser.parse_args(["eval", *flags[:4]])).images_per_pass is None
    args = parser.parse_args(["segment", "x.jpg", "a cat", "--backbone", "RN50", "--alpha", "0.7", "--beta", "0.2",
                              "-k", "2", "--fusion", "normalized", "--preprocess", "clip", "--max-proposals", "all",
                              "--proposals", "sam", "--sam-model", "vit_b", "--sam-checkpoint", "s.pth",
                              "--spacy-model", "en_core_web_lg", "--device", "cpu", "--batch-size", "8",
                              "--max-pixels", "1000", "--weights", "w.pt", "--pretrained", "laion"])
    assert config_from_args(args) == SegmenterConfig(
        backbone="RN50", pretrained="laion", weights="w.pt", alpha=0.7, beta=0.2, k=2, fusion="normalized",
        preprocess="clip", proposals=ProposalSpec("sam", None, {"checkpoint": "s.pth", "model": "vit_b"}),
        spacy_model="en_core_web_lg", device="cpu", batch_size=8, max_pixels=1000)
    # another generator's flag would be ignored, so it is refused; --proposal-option reaches any generator's own
    args = parser.parse_args(["segment", "x.jpg", "a", "--sam-model", "vit_b", "--proposals", "file",
                              "--proposal-option", "path=m.json"])
    with pytest.raises(ZsrisError, match="^--sam-model is a setting of --proposals sam, and this run's proposals "
                                         "are file; leave it out or choose --proposals sam$"):
        config_from_args(args)
    args = parser.parse_args(["segment", "x.jpg", "a", "--proposals", "file", "--proposal-option", "path=m.json"])
    assert config_from_args(args).proposals == ProposalSpec("file", 100, {"path": "m.json"})
    with pytest.raises(SystemExit):  # argparse's own one-line refusal, before anything loads
        parser.parse_args(["segment", "x.jpg", "a", "--proposals", "sam3", "--presence-threshold", "2"])
    with pytest.raises(ZsrisError, match="the classical generator has no setting cells"):
        config_from_args(parser.parse_args(["segment", "x.jpg", "a", "--proposal-option", "cells=3"]))


def test_create_segmenter_builds_what_the_config_names(tmp_path):
    from zsris import create_segmenter
    from zsris.proposals import FileProposals
    from zsris.records import settings

    config = SegmenterConfig(backbone="RN50", weights="random", k=2, proposals=ProposalSpec("classical", 9))
    with pytest.warns(UserWarning, match="RANDOM"):
        segmenter = create_segmenter(config)
    assert segmenter.config == config
    assert segmenter.backbone.name == "RN50" and not segmenter.backbone.is_vit
    assert segmenter.proposals.config.max_proposals == 9
    recorded = settings(segmenter)
    assert {k: recorded[k] for k in config.settings() if k not in ("backbone", "weights")} == {
        k: v for k, v in config.settings().items() if k not in ("backbone", "weights")}
    assert recorded["backbone"] == "RN50" and recorded["proposal_generator"] == segmenter.proposals.cache_key
    folder = tmp_path / "masks"
    folder.mkdir()
    with pytest.warns(UserWarning, match="RANDOM"):
        given = create_segmenter(config, proposals=FileProposals(folder))
    assert isinstance(given.proposals, FileProposals)
    # one truth: the config's proposal spec is the generator's own
    assert given.config.proposals == given.proposals.spec == ProposalSpec("file", None, {"path": str(folder)})
    assert settings(given)["proposals"]["name"] == "file"


def test_cuda_only_precisions_are_refused_on_the_cpu_and_bf16_without_its_units(tiny_vit, monkeypatch):
    from zsris import precision as precision_module
    from zsris.proposals import ClassicalProposals
    from zsris.segmenter import Segmenter

    for precision in ("tf32", "fp16"):
        with pytest.raises(ZsrisError, match=f"--precision {precision} needs a CUDA device; the CPU computes in "
                                             f"fp32 or bf16"):
            Segmenter(tiny_vit, ClassicalProposals(max_proposals=3), precision=precision)
    monkeypatch.setattr(precision_module, "cpu_bf16_units", lambda: ())
    with pytest.raises(ZsrisError, match="needs bf16 instructions \\(AVX512-BF16 or AMX-BF16\\), which this CPU lacks"):
        Segmenter(tiny_vit, ClassicalProposals(max_proposals=3), precision="bf16")


def test_flags_that_would_be_ignored_are_refused_in_one_line():
    """A Ray flag without --engine ray, --cache with --no-cache, --gt-proposals with --proposals:
    each would be ignored or contradicted, so each is refused before anything loads."""
    from zsris.cli.evaluate import data_spec_from_args
    from zsris.cli.flags import execution_from_args

    parser = make_parser()
    common = ["eval", "--data", "d", "--out", "o"]
    for flags, flag in ((["--workers", "5"], "--workers"), (["--ray-address", "auto"], "--ray-address"),
                        (["--ray-prepare", "tasks"], "--ray-prepare")):
        with pytest.raises(ZsrisError, match=f"^{flag} sets how Ray runs; add --engine ray"):
            execution_from_args(parser.parse_args([*common, *flags]))
    ray = execution_from_args(parser.parse_args([*common, "--engine", "ray", "--workers", "5"]))
    assert ray.ray_workers == 5 and execution_from_args(parser.parse_args(common)).ray_workers == 2
    with pytest.raises(ZsrisError, match="--cache names where the proposal cache is and --no-cache turns it off"):
        data_spec_from_args(parser.parse_args([*common, "--cache", "c", "--no-cache"]))
    with pytest.raises(ZsrisError, match="--gt-proposals .* contradicts --proposals file"):
        data_spec_from_args(parser.parse_args([*common, "--gt-proposals", "--proposals", "file"]))

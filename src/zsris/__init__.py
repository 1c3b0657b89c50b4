"""zsris: zero-shot referring image segmentation with global-local CLIP features.

>>> from zsris import create_segmenter
>>> segmenter = create_segmenter()                      # ViT-B/32 (OpenAI), classical proposals
>>> result = segmenter.segment("photo.jpg", "the cat lying on the scooter seat")
>>> result.mask.shape, result.score, result.box
>>> result.ranked(3)                                     # the three best proposals and their scores
>>> from zsris import save_result
>>> save_result(result, "out/", image="photo.jpg")      # JSON record, mask PNG and overlay PNG

Several questions about one image: :class:`zsris.Predictor` (``set_image`` once, ``predict``
in milliseconds), or ``segmenter(image, [...])``, which keeps the last image's features.

Over many images, with outputs that resume: :class:`zsris.BatchJob` and :class:`zsris.EvalJob`
(the jobs layer, :mod:`zsris.jobs`), or :func:`zsris.segment_pairs` to stream answers.

Names are imported on first use (PEP 562), so that ``import zsris`` (and the command line's
``--help``) does not load torch.
"""
from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

__version__ = "0.1.0"

#: A small bundled photo-like image (two circles and a square), for first runs and examples.
EXAMPLE_IMAGE = Path(__file__).parent / "examples" / "shapes.png"

#: public name -> the module that defines it
_EXPORTS = {
    "ClassicalProposals": "proposals", "FileProposals": "proposals", "Proposals": "types",
    "SamProposals": "proposals", "create_proposals": "proposals", "PROPOSAL_REGISTRY": "proposals",
    "register_generator": "proposals",
    "MethodSpec": "methods", "METHOD_REGISTRY": "methods", "register_method": "methods",
    "ClipBackbone": "backbones", "load_backbone": "backbones",
    "DatasetError": "errors", "ExpressionError": "errors", "ImageError": "errors", "NoProposalsError": "errors",
    "ProposalError": "errors", "WeightsError": "errors", "ZsrisError": "errors", "ZsrisWarning": "errors",
    "ImageFeatures": "types", "RankedProposal": "types", "SegmentResult": "types", "Scores": "types",
    "Segmenter": "segmenter", "create_segmenter": "segmenter", "create_segmenters": "segmenter",
    "Predictor": "predictor",
    "Policy": "decide", "decide": "decide",
    "BatchJob": "jobs", "EvalJob": "jobs", "CompareJob": "jobs", "DataSpec": "jobs", "Execution": "jobs",
    "segment_pairs": "jobs",
    "folder_pairs": "jobs", "read_manifest": "jobs", "JobInterrupted": "jobs",
    "ProposalSpec": "config", "SegmenterConfig": "config", "paper_alpha": "config",
    "load_image": "images",
    "explain": "present", "overlay": "present", "save_result": "present",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'zsris' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))

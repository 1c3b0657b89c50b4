"""The paper's setting as data: the ``paper`` preset and the figures a run is compared with.

``SegmenterConfig.preset("paper", dataset=...)`` (``--preset paper``) is what Yu et al. ran:
CLIP ViT-B/32 (the paper also reports RN50), FreeSOLO proposals, the authors' image path
(``preprocess="paper"``), alpha 0.95 (0.85 on RefCOCOg), beta 0.5, k 3, their fusion and spaCy's
``en_core_web_lg``. No torch here: the command line reads it before any model loads.
"""
from __future__ import annotations

import os
import warnings
from typing import Any, Optional

from .config import PRESETS, SPACY_MODEL_ENV, SPACY_MODELS, paper_alpha
from .errors import ZsrisWarning
from .proposals.registry import ProposalSpec

#: The paper's Table 1 (ViT-B/32, FreeSOLO): (oIoU, mIoU) per dataset and split.
PAPER_RESULTS = {
    ("refcoco", "val"): (24.88, 26.20), ("refcoco", "testA"): (23.61, 24.94), ("refcoco", "testB"): (24.66, 26.56),
    ("refcoco+", "val"): (26.16, 27.80), ("refcoco+", "testA"): (24.90, 25.64), ("refcoco+", "testB"): (25.83, 27.84),
    ("refcocog", "val"): (31.11, 33.52), ("refcocog", "test"): (30.96, 33.67),
}
#: The authors' own re-run (``result_log/our_method_with_free_solo.txt`` in their repository).
AUTHORS_RERUN = {
    ("refcoco", "val"): (24.83, 26.23), ("refcoco", "testA"): (23.66, 24.54), ("refcoco", "testB"): (24.60, 26.55),
    ("refcoco+", "val"): (26.12, 27.60), ("refcoco+", "testA"): (24.86, 25.79), ("refcoco+", "testB"): (25.74, 28.04),
    ("refcocog", "val"): (31.08, 33.70),
}
#: The paper's PhraseCut figure (val, unseen categories): oIoU.
PHRASECUT_PAPER_OIOU = 23.64
PAPER_SPACY_MODEL = "en_core_web_lg"
#: The backbones the paper reports; ViT-B/32 is its main one.
PAPER_BACKBONES = ("ViT-B/32", "RN50")
#: RefCOCOg as the paper evaluates it.
PAPER_SPLIT_BY = {"refcocog": "umd"}
PAPER_PHRASECUT_SUBSET = "unseen"
__all__ = ["AUTHORS_RERUN", "PAPER_RESULTS", "PRESETS", "comparison", "paper_settings"]


def paper_spacy_model(owner: str = "the paper's") -> Optional[str]:
    """``en_core_web_lg`` when installed; else None (the most accurate installed), with a
    warning naming the one that will parse instead."""
    import spacy


    if spacy.util.is_package(PAPER_SPACY_MODEL):
        return PAPER_SPACY_MODEL
    used = os.environ.get(SPACY_MODEL_ENV) or next((m for m in SPACY_MODELS if spacy.util.is_package(m)), None)
    warnings.warn(f"zsris: {owner} spaCy model {PAPER_SPACY_MODEL} is not installed "
                  f"(python -m spacy download {PAPER_SPACY_MODEL}); the noun phrases come from {used} instead, "
                  f"which may change some of them", ZsrisWarning, stacklevel=3)
    return None


def paper_settings(dataset: Optional[str] = None) -> dict[str, Any]:
    """The :class:`~zsris.config.SegmenterConfig` fields of the ``paper`` preset, for ``dataset``."""
    return {"backbone": PAPER_BACKBONES[0], "pretrained": "openai", "alpha": paper_alpha(dataset), "beta": 0.5,
            "k": 3, "fusion": "reference", "preprocess": "paper", "proposals": ProposalSpec("freesolo", 100),
            "spatial": "off", "no_target_threshold": None, "multi_target": False,
            "spacy_model": paper_spacy_model()}


def comparison(dataset: str, split: str) -> dict[str, Any]:
    """The paper's figures and the authors' re-run for a split, as rows beside a run's own."""
    rows: dict[str, Any] = {}
    if (dataset, split) in PAPER_RESULTS:
        rows["oIoU (paper)"], rows["mIoU (paper)"] = PAPER_RESULTS[dataset, split]
    if (dataset, split) in AUTHORS_RERUN:
        rows["oIoU (authors' re-run)"], rows["mIoU (authors' re-run)"] = AUTHORS_RERUN[dataset, split]
    if dataset == "phrasecut" and split == "val":
        rows["oIoU (paper)"] = PHRASECUT_PAPER_OIOU
    return rows

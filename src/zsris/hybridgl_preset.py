"""HybridGL's setting as data: the ``hybridgl`` preset and the figures its paper reports.

``SegmenterConfig.preset("hybridgl", dataset=...)`` (``--preset hybridgl``) is what
``Hybridgl_main.py`` runs (github:fhgyuanshen/HybridGL): CLIP ViT-B/16, SAM ViT-H's automatic
generator with the script's settings (8 points a side, predicted IoU and stability 0.7, no crops,
regions under 800 pixels removed; every mask kept, in no other filter or cap), the ``hybridgl``
method with its defaults and spaCy's ``en_core_web_lg`` where installed. Under
``--dataset phrasecut`` the generator takes ``Hybridgl_main_PhraseCut.py``'s settings. No torch here.
"""
from __future__ import annotations

from typing import Any, Optional

from .methods.registry import MethodSpec, canonical_method
from .paper import paper_spacy_model
from .proposals.registry import ProposalSpec

#: HybridGL's reported mIoU (CVPR 2025; as tabulated in arXiv 2508.00265, Table 2).
HYBRIDGL_RESULTS = {
    ("refcoco", "val"): 49.48, ("refcoco", "testA"): 53.37, ("refcoco", "testB"): 45.19,
    ("refcoco+", "val"): 43.40, ("refcoco+", "testA"): 49.13, ("refcoco+", "testB"): 37.17,
    ("refcocog", "val"): 51.25, ("refcocog", "test"): 51.59,
}
HYBRIDGL_BACKBONE = "ViT-B/16"
HYBRIDGL_SAM_MODEL = "vit_h"
#: SAM's generator as each script builds it: RefCOCO's and PhraseCut's.
SAM_SETTINGS = {"points_per_side": 8, "pred_iou_thresh": 0.7, "stability_score_thresh": 0.7, "crop_n_layers": 0,
                "crop_n_points_downscale_factor": 1, "min_mask_region_area": 800}
SAM_SETTINGS_PHRASECUT = {"points_per_side": 64, "pred_iou_thresh": 0.86, "stability_score_thresh": 0.92,
                          "crop_n_layers": 1, "crop_n_points_downscale_factor": 2, "min_mask_region_area": 100}


def hybridgl_settings(dataset: Optional[str] = None) -> dict[str, Any]:
    """The :class:`~zsris.config.SegmenterConfig` fields of the ``hybridgl`` preset, for ``dataset``."""
    sam = SAM_SETTINGS_PHRASECUT if dataset == "phrasecut" else SAM_SETTINGS
    proposals = ProposalSpec("sam", None, {"model": HYBRIDGL_SAM_MODEL, **sam, "min_area": 0.0, "nms_iou": 1.0})
    return {"backbone": HYBRIDGL_BACKBONE, "pretrained": "openai", "method": canonical_method(MethodSpec("hybridgl")),
            "proposals": proposals, "spatial": "off", "no_target_threshold": None, "multi_target": False,
            "preprocess": "paper" if dataset == "phrasecut" else "reference",
            "spacy_model": paper_spacy_model("HybridGL's")}


def hybridgl_figures(dataset: str, split: str) -> dict[str, Any]:
    """HybridGL's reported mIoU for a split, as a row beside a run's own."""
    found = HYBRIDGL_RESULTS.get((dataset, split))
    return {} if found is None else {"mIoU (HybridGL paper)": found}

"""Segment-anything proposals: SAM's automatic mask generator, filtered and capped.

SAM returns many overlapping part masks; for referring segmentation we want object-sized
candidates, so masks are filtered by area, predicted IoU and stability, de-duplicated with
mask NMS and capped, best (predicted IoU x stability) first.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from ..checkpoints import find_checkpoint, read_state_dict
from ..errors import WeightsError, ZsrisError
from ..extras import require_extra
from ..masks import mask_nms
from .base import Proposals, check_max_proposals, config_key
from .configs import SAM_CHECKPOINT_ENV, SAM_CHECKPOINTS, SAM_MODEL_TYPES, SAM_RELEASE_URL, SAM_WEIGHTS, SamConfig
from .registry import Configured, ProposalSpec, config_of


def build_sam(model_type: str, checkpoint: Optional[str], device: str | torch.device = "cpu") -> tuple[Any, str]:
    """SAM of ``model_type`` with weights from ``checkpoint`` (or ``$ZSRIS_SAM_CHECKPOINT``), and
    the checkpoint it was built from; ``checkpoint="random"`` builds the real architecture with
    random weights."""
    require_extra("sam", "SAM proposals")
    from segment_anything import sam_model_registry

    if model_type not in SAM_MODEL_TYPES:
        raise ZsrisError(f"unknown SAM model {model_type!r}; choose one of {', '.join(SAM_MODEL_TYPES)}")
    found = find_checkpoint(SAM_WEIGHTS, checkpoint)
    if found is None:
        raise WeightsError(
            f"SAM proposals need a checkpoint: pass --sam-checkpoint PATH (or set {SAM_CHECKPOINT_ENV}) "
            f"to {SAM_CHECKPOINTS[model_type]} ({SAM_RELEASE_URL}{SAM_CHECKPOINTS[model_type]})"
        )
    checkpoint = found.path
    # segment-anything's own loader unpickles without weights_only: the tensors are read here.
    path = Path(checkpoint).expanduser()
    state_dict = None if checkpoint == "random" else read_state_dict(path, "SAM checkpoint")
    model = sam_model_registry[model_type](checkpoint=None)
    if state_dict is not None:
        try:
            model.load_state_dict(state_dict)
        except RuntimeError as error:
            first = str(error).strip().splitlines()[0]
            raise WeightsError(f"SAM checkpoint {path} does not fit SAM {model_type} ({first}); "
                               f"pass the --sam-model it was made for") from None
    return model.to(device).eval(), checkpoint


class SamProposals(Configured):
    """Mask proposals from SAM's automatic mask generator."""

    name = "sam"
    quality_options = ("pred_iou_thresh", "stability_score_thresh")

    def __init__(self, checkpoint: Optional[str] = None, config: Optional[SamConfig] = None,
                 device: str | torch.device = "cpu", **overrides) -> None:
        self.config = dataclasses.replace(config or SamConfig(), **overrides)
        if checkpoint is not None:
            self.config = dataclasses.replace(self.config, checkpoint=checkpoint)
        check_max_proposals(self.config.max_proposals)
        if self.config.min_mask_region_area > 0:
            require_extra("hybridgl", "SAM's min_mask_region_area (OpenCV)")
        model, self.checkpoint = build_sam(self.config.model_type, self.config.checkpoint, device)
        from segment_anything import SamAutomaticMaskGenerator  # present: build_sam checked

        self.generator = SamAutomaticMaskGenerator(
            model,
            points_per_side=self.config.points_per_side,
            points_per_batch=self.config.points_per_batch,
            pred_iou_thresh=self.config.pred_iou_thresh,
            stability_score_thresh=self.config.stability_score_thresh,
            crop_n_layers=self.config.crop_n_layers,
            crop_n_points_downscale_factor=self.config.crop_n_points_downscale_factor,
            min_mask_region_area=self.config.min_mask_region_area,
        )

    @property
    def cache_key(self) -> str:
        """Its config, the checkpoint named by the file it resolved to."""
        return config_key(self.name, 1, dataclasses.replace(self.config, checkpoint=Path(self.checkpoint).name))

    @torch.inference_mode()
    def __call__(self, image: np.ndarray, image_id: Optional[str] = None) -> Proposals:
        height, width = image.shape[:2]
        records = self.generator.generate(image)
        if not records:
            return Proposals.empty(height, width)
        masks = np.stack([r["segmentation"] for r in records])
        scores = np.array([r["predicted_iou"] * r["stability_score"] for r in records], dtype=np.float32)
        return select_masks(masks, scores, self.config.min_area, self.config.nms_iou, self.config.max_proposals)


def select_masks(masks: np.ndarray, scores: np.ndarray, min_area: float, nms_iou: float,
                 cap: Optional[int]) -> Proposals:
    """SAM's masks as referring candidates: those of at least ``min_area`` of the image, mask NMS
    at ``nms_iou`` (SAM's own NMS compares boxes, leaving nested parts), best first, capped."""
    height, width = masks.shape[1:]
    large = masks.reshape(len(masks), -1).sum(1) >= min_area * height * width
    masks, scores = masks[large], scores[large]
    if not len(masks):
        return Proposals.empty(height, width)
    keep = mask_nms(masks, scores, nms_iou)[:cap]
    return Proposals(masks[keep], scores[keep]).non_empty()


def from_spec(spec: ProposalSpec, device: torch.device) -> SamProposals:
    """The registry's factory: SAM of the spec's ``model`` with its ``checkpoint`` and settings, on ``device``."""
    return SamProposals(config=config_of(SamConfig, spec), device=device)

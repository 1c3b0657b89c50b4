"""SAM 2.1 proposals: its automatic mask generator on ``transformers``' ``Sam2Model``, filtered and
capped as SAM 1's are (:mod:`zsris.proposals.sam`).

The generator is SAM 2's own (``sam2.automatic_mask_generator`` with its defaults: a 32 x 32 point
grid, three masks per point, predicted IoU above 0.8, stability above 0.95 at offset 1, box NMS at
0.7), run on the transformers port of the model, which installs as a wheel with the pinned torch
(the official ``sam2`` package is a source build with hydra; see the README). Its low-resolution
logits are brought to the image's size only for the masks that pass the predicted-IoU filter,
which is where SAM's generator spends its time on a CPU.

Checkpoints are the hub's transformers copies (``facebook/sam2.1-hiera-tiny`` ...), from the
Hugging Face cache, downloaded when online, or a local folder; ``random`` builds the real
architecture of the chosen size untrained (for tests and timing).
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torchvision.ops import masks_to_boxes, nms

from ..checkpoints import find_checkpoint
from ..errors import WeightsError, ZsrisError
from ..extras import require_extra
from .base import Proposals, check_max_proposals, config_key
from .configs import SAM2_CHECKPOINT_ENV, SAM2_MODELS, SAM2_WEIGHTS, Sam2Config
from .registry import Configured, ProposalSpec, config_of
from .sam import select_masks

#: SAM 2.1's image encoders (Hiera) by size, as its release configs give them: hidden size,
#: heads, blocks per stage, global-attention blocks, window sizes, window-position background.
HIERA: dict[str, dict[str, Any]] = {
    "tiny": dict(hidden_size=96, num_attention_heads=1, blocks_per_stage=[1, 2, 7, 2],
                 global_attention_blocks=[5, 7, 9], window_size_per_stage=[8, 4, 14, 7],
                 window_positional_embedding_background_size=[7, 7]),
    "small": dict(hidden_size=96, num_attention_heads=1, blocks_per_stage=[1, 2, 11, 2],
                  global_attention_blocks=[7, 10, 13], window_size_per_stage=[8, 4, 14, 7],
                  window_positional_embedding_background_size=[7, 7]),
    "base-plus": dict(hidden_size=112, num_attention_heads=2, blocks_per_stage=[2, 3, 16, 3],
                      global_attention_blocks=[12, 16, 20], window_size_per_stage=[8, 4, 14, 7],
                      window_positional_embedding_background_size=[14, 14]),
    "large": dict(hidden_size=144, num_attention_heads=2, blocks_per_stage=[2, 6, 36, 4],
                  global_attention_blocks=[23, 33, 43], window_size_per_stage=[8, 4, 16, 8],
                  window_positional_embedding_background_size=[7, 7]),
}


def random_sam2(model: str, seed: int = 0) -> Any:
    """``Sam2Model`` of size ``model`` with random weights (seeded)."""
    from transformers import Sam2Config as HfSam2Config
    from transformers import Sam2HieraDetConfig, Sam2Model

    hiera = dict(HIERA[model])
    width, heads = hiera["hidden_size"], hiera["num_attention_heads"]
    hiera.update(embed_dim_per_stage=[width * 2 ** i for i in range(4)],
                 num_attention_heads_per_stage=[heads * 2 ** i for i in range(4)])
    config = HfSam2Config(vision_config={"backbone_config": Sam2HieraDetConfig(**hiera),
                                         "backbone_channel_list": [width * 2 ** i for i in (3, 2, 1, 0)]})
    torch.manual_seed(seed)
    return Sam2Model(config).eval()


def resolve_checkpoint(checkpoint: Optional[str], model: str) -> str:
    """``checkpoint``, else ``$ZSRIS_SAM2_CHECKPOINT``, else the hub copy of ``model`` in the
    Hugging Face cache (downloaded when online): ``random``, a folder or a hub id."""
    found = find_checkpoint(SAM2_WEIGHTS, checkpoint, model)
    hub = SAM2_MODELS[model]
    if found is None:
        raise WeightsError(f"SAM 2.1 proposals need {hub} (not in the Hugging Face cache, and no network): "
                           f"download it once with `hf download {hub}`, or pass --sam2-checkpoint FOLDER (or set "
                           f"{SAM2_CHECKPOINT_ENV}); --sam2-checkpoint random for an untrained model")
    path = Path(found.path).expanduser()
    if not found.given or found.path == "random" or path.is_dir():
        return found.path
    if path.is_file():
        raise WeightsError(f"SAM 2.1 checkpoint {path} is a file; zsris reads SAM 2.1 in the transformers format, "
                           f"a folder with config.json and model.safetensors (`hf download {hub}`)")
    raise WeightsError(f"SAM 2.1 checkpoint {path} does not exist")


def build_sam2(checkpoint: Optional[str], model: str = "tiny", device: str | torch.device = "cpu") -> tuple[Any, str]:
    """``Sam2Model`` of size ``model`` from ``checkpoint`` (see :func:`resolve_checkpoint`) on
    ``device``, and where it came from."""
    require_extra("hf", "SAM 2.1 proposals")
    if model not in SAM2_MODELS:
        raise ZsrisError(f"unknown SAM 2.1 model {model!r}; choose one of {', '.join(SAM2_MODELS)}")
    source = resolve_checkpoint(checkpoint, model)
    if source == "random":
        return random_sam2(model).to(device), source
    from transformers import Sam2Model

    try:
        network = Sam2Model.from_pretrained(source, local_files_only=Path(source).expanduser().is_dir())
    except (OSError, ValueError) as error:
        raise WeightsError(f"cannot load SAM 2.1 from {source}: {str(error).splitlines()[0]}") from None
    return network.eval().to(device), source


def point_grid(per_side: int) -> torch.Tensor:
    """SAM's grid: ``per_side`` x ``per_side`` points at the cell centres of the unit square, (x, y)."""
    offset = 1 / (2 * per_side)
    side = torch.linspace(offset, 1 - offset, per_side)
    ys, xs = torch.meshgrid(side, side, indexing="ij")
    return torch.stack([xs.flatten(), ys.flatten()], dim=1)


def stability_scores(logits: torch.Tensor, offset: float) -> torch.Tensor:
    """SAM's stability: the area above ``+offset`` over the area above ``-offset`` (logits, threshold 0)."""
    inside = (logits > offset).flatten(1).sum(1, dtype=torch.int64)
    outside = (logits > -offset).flatten(1).sum(1, dtype=torch.int64)
    return inside.float() / outside.clamp_min(1).float()


class Sam2Proposals(Configured):
    """Mask proposals from SAM 2.1's automatic mask generator."""

    name = "sam2"
    quality_options = ("pred_iou_thresh", "stability_score_thresh")

    def __init__(self, checkpoint: Optional[str] = None, config: Optional[Sam2Config] = None,
                 device: str | torch.device = "cpu", **overrides) -> None:
        self.config = dataclasses.replace(config or Sam2Config(), **overrides)
        if checkpoint is not None:
            self.config = dataclasses.replace(self.config, checkpoint=checkpoint)
        check_max_proposals(self.config.max_proposals)
        self.network, self.checkpoint = build_sam2(self.config.checkpoint, self.config.model, device)
        self.device = torch.device(device)
        from transformers import Sam2ImageProcessor

        folder = Path(self.checkpoint).expanduser()
        has_own = (folder / "preprocessor_config.json").is_file()
        self.processor = Sam2ImageProcessor.from_pretrained(str(folder)) if has_own else Sam2ImageProcessor()

    @property
    def cache_key(self) -> str:
        """Its config, the checkpoint named by the folder it resolved to."""
        return config_key(self.name, 1, dataclasses.replace(self.config, checkpoint=Path(self.checkpoint).name))

    @torch.inference_mode()
    def __call__(self, image: np.ndarray, image_id: Optional[str] = None) -> Proposals:
        height, width = image.shape[:2]
        pixels = self.processor(images=np.array(image), return_tensors="pt")["pixel_values"].to(self.device)
        embeddings = self.network.get_image_embeddings(pixels)
        size = pixels.shape[-1]  # the model's square input: prompts are given in its coordinates
        points = point_grid(self.config.points_per_side).to(self.device) * size
        kept: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]] = []
        for batch in points.split(self.config.points_per_batch):
            out = self.network(image_embeddings=embeddings, input_points=batch[None, :, None, :],
                               input_labels=torch.ones(1, len(batch), 1, dtype=torch.long, device=self.device),
                               multimask_output=True)
            logits, iou = out.pred_masks[0].flatten(0, 1), out.iou_scores[0].flatten()
            passed = iou > self.config.pred_iou_thresh
            for low, part_iou in zip(logits[passed].split(16), iou[passed].split(16)):
                full = self._upsample(low, height, width)
                stable = stability_scores(full, self.config.stability_score_offset)
                keep = (stable >= self.config.stability_score_thresh) & (full > 0).flatten(1).any(1)
                if keep.any():
                    boxes = masks_to_boxes(full[keep] > 0).float()
                    kept.append((low[keep].float().cpu(), part_iou[keep].float().cpu(), stable[keep].cpu(),
                                 boxes.cpu()))
        if not kept:
            return Proposals.empty(height, width)
        low, ious, stabilities, boxes = (torch.cat(parts) for parts in zip(*kept))
        return self._select(low, ious, stabilities, boxes, height, width)

    @staticmethod
    def _upsample(low: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """SAM 2's low-resolution logits at the image's size (bilinear, as its predictor does)."""
        return F.interpolate(low[:, None].float(), (height, width), mode="bilinear", align_corners=False)[:, 0]

    def _select(self, low: torch.Tensor, ious: torch.Tensor, stabilities: torch.Tensor, boxes: torch.Tensor,
                height: int, width: int) -> Proposals:
        """SAM 2's box NMS by predicted IoU, then zsris's area filter, mask NMS and cap. Masks are
        kept as low-resolution logits until here, so only the survivors of the box NMS take
        the image's size in memory."""
        survivors = nms(boxes, ious, self.config.box_nms_thresh)
        masks = torch.cat([self._upsample(part, height, width) > 0 for part in low[survivors].split(16)]).numpy()
        scores = (ious[survivors] * stabilities[survivors]).numpy().astype(np.float32)
        return select_masks(masks, scores, self.config.min_area, self.config.nms_iou, self.config.max_proposals)


def from_spec(spec: ProposalSpec, device: torch.device) -> Sam2Proposals:
    """The registry's factory: SAM 2.1 of the spec's ``model`` with its ``checkpoint``, point grid
    (``points_per_side``: the time is about linear in its square) and thresholds, on ``device``."""
    return Sam2Proposals(config=config_of(Sam2Config, spec), device=device)

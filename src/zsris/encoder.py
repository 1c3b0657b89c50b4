"""The second stage: CLIP's two towers at the configured precision, for every method.

One batched visual path (:meth:`ClipEncoder.visual`) takes several images' proposals at once,
computes in the configured precision and, out of GPU memory, retries with half the batch down to
one proposal a pass rather than failing the run; the one-image helpers are thin wrappers of it.
Text goes through the same precision, with its features cached (:class:`zsris.text.TextEncoder`).
What a method makes of these features is the method's (:mod:`zsris.methods`).
"""
from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, Any, Callable, Iterable, Optional, Sequence, TypeVar

import numpy as np
import torch
from torch import Tensor

from . import visual
from .backbones import ClipBackbone, Preprocess
from .errors import ZsrisError, ZsrisWarning
from .precision import check_precision, compute_precision, weight_dtype
from .preprocess import ImageTensors
from .text import TextEncoder

if TYPE_CHECKING:
    from .config import SegmenterConfig

Result = TypeVar("Result")


class ClipEncoder:
    """``model`` (the backbone's, in the precision's dtype) with the settings its passes need:
    ``k`` final ViT blocks that see the mask, ``batch_size`` proposals a pass, the preprocessing
    (the local crops' fill, how masks resize)."""

    def __init__(self, backbone: ClipBackbone, model: torch.nn.Module, preprocess: Preprocess, k: int,
                 batch_size: int, precision: str, text: TextEncoder) -> None:
        self.backbone = backbone
        self.model = model
        self.preprocess = preprocess
        self.k = k
        self.batch_size = batch_size
        self.precision = precision
        self.text_encoder = text
        #: Shared by encoders that work on one image in turn with the same proposals (several
        #: methods compared: :class:`zsris.jobs.compare.CompareJob`): each part computed once.
        self.memo: Optional[dict] = None

    @classmethod
    def create(cls, backbone: ClipBackbone, preprocess: Preprocess, config: "SegmenterConfig") -> "ClipEncoder":
        """The encoder ``config`` describes on ``backbone``; a tower whose features would be computed
        wrongly, a ``k`` beyond its blocks or a precision the device cannot compute is refused. The
        model computes in the precision's dtype (a copy cast once, shared by every encoder of the
        backbone)."""
        visual.check_supported(backbone.model)
        k = config.k
        if backbone.is_vit and not 0 <= k <= visual.vit_num_blocks(backbone.model):
            raise ZsrisError(f"k must be between 0 and {visual.vit_num_blocks(backbone.model)}, not {k}")
        check_precision(config.precision, backbone.device)
        model = backbone.model_in(weight_dtype(config.precision))
        text = TextEncoder(model, backbone.tokenizer, backbone.context_length, cache_size=config.text_cache_size)
        return cls(backbone, model, preprocess, k, config.batch_size, config.precision, text)

    @property
    def device(self) -> torch.device:
        return self.backbone.device

    def visual(self, images: Sequence[ImageTensors], masks: Sequence[Tensor], boxes: Sequence[Optional[Tensor]],
               parts: Iterable[str] = ("global", "local"), batch_size: Optional[int] = None,
               masking: str = "tokens", proposals: Optional[Sequence[Any]] = None) -> dict[str, list[Tensor]]:
        """Each image's raw ``global`` and/or ``local`` features ``[N, D]`` (float32), the images'
        proposals sharing forward passes; ``masking``: how the global pass sees the mask
        (:func:`zsris.visual.global_features_many`). ``proposals``, the objects the masks and
        boxes come from, lets a :attr:`memo` serve what another method computed of them."""
        parts = tuple(parts)
        antialias = self.preprocess.antialias
        if self.memo is not None and proposals is not None:
            return self._remembered(images, masks, boxes, parts, batch_size, masking, proposals)

        def compute(size: int) -> dict[str, list[Tensor]]:
            found = {}
            if "global" in parts:
                found["global"] = visual.global_features_many(
                    self.model, torch.cat([t.clip_input.to(self.device) for t in images]), masks, self.k,
                    batch_size=size, antialias=antialias, masking=masking)
            if "local" in parts:
                found["local"] = visual.local_features_many(
                    self.model, [t.full for t in images], masks, self.preprocess.fill, self.backbone.input_size,
                    boxes, batch_size=size, antialias=antialias)
            return {name: [f.float() for f in features] for name, features in found.items()}

        return self.retrying(compute, len(images), batch_size)

    def _remembered(self, images: Sequence[ImageTensors], masks: Sequence[Tensor], boxes: Sequence[Optional[Tensor]],
                    parts: tuple[str, ...], batch_size: Optional[int], masking: str,
                    proposals: Sequence[Any]) -> dict[str, list[Tensor]]:
        """:meth:`visual` through :attr:`memo`: a part another method computed for these image
        tensors and proposals (the same objects, kept alive by the memo) on the same model and
        settings is not computed again."""
        found = {}
        for part in parts:
            key = ("visual", part, tuple(id(t) for t in images), tuple(id(p) for p in proposals), id(self.model),
                   self.precision, self.k, self.preprocess, self.backbone.input_size,
                   masking if part == "global" else None)
            if key not in self.memo:
                computed = self.visual(images, masks, boxes, (part,), batch_size, masking)[part]
                self.memo[key] = ((list(images), list(proposals)), computed)
            found[part] = self.memo[key][1]
        return found

    def retrying(self, compute: Callable[[int], Result], images: int = 1, batch_size: Optional[int] = None) -> Result:
        """``compute(batch_size)`` at the configured precision. Out of GPU memory (a huge image, a
        large backbone), the same work is done again with half the batch, down to one proposal at a
        time, rather than failing the run."""
        size = batch_size or self.batch_size
        while True:
            try:
                with compute_precision(self.precision, self.device):
                    return compute(size)
            except torch.cuda.OutOfMemoryError:
                if size == 1:
                    raise ZsrisError("out of GPU memory even with one proposal per forward pass; "
                                     "lower --max-pixels or use a smaller backbone") from None
                size = max(1, size // 2)
                torch.cuda.empty_cache()
                which = "this image goes" if images == 1 else f"these {images} images go"
                warnings.warn(f"zsris: out of GPU memory; {which} again with --batch-size {size}",
                              ZsrisWarning, stacklevel=3)

    def global_features(self, clip_input: Tensor, masks: Tensor | np.ndarray,
                        batch_size: Optional[int] = None) -> Tensor:
        """Global-context features ``[N, D]`` (raw) of ``masks`` on a preprocessed CLIP input."""
        masks = torch.as_tensor(masks, device=self.device)
        clip_input = clip_input if clip_input.dim() == 4 else clip_input[None]
        tensors = ImageTensors(clip_input, clip_input)  # the full-size image plays no part in the global pass
        return self.visual([tensors], [masks], [None], ("global",), batch_size)["global"][0]

    def local_features(self, image_tensor: Tensor, masks: Tensor | np.ndarray,
                       boxes: Optional[Tensor | np.ndarray] = None, batch_size: Optional[int] = None) -> Tensor:
        """Local-context features ``[N, D]`` (raw) of ``masks`` on a preprocessed full-size image."""
        masks = torch.as_tensor(masks)
        boxes = None if boxes is None else torch.as_tensor(boxes)
        tensors = ImageTensors(image_tensor.to(self.device), image_tensor)  # the CLIP input plays no part here
        return self.visual([tensors], [masks], [boxes], ("local",), batch_size)["local"][0]

    def text(self, texts: Iterable[str]) -> Tensor:
        """CLIP's text features ``[T, D]`` (projected, raw, float32) at the configured precision,
        cached per string."""
        with compute_precision(self.precision, self.device):
            return self.text_encoder.encode(texts).float()

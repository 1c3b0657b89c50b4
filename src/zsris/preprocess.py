"""The first stage: an RGB image to the tensors CLIP sees.

Two tensors per image, both normalised with the preset's statistics (:class:`zsris.backbones.Preprocess`):
the image at full resolution (whose masked crops make the local features) and the whole image
resized, not cropped, to CLIP's input size (the global pass). Kept apart from the model so that
another implementation fed the same tensors can be compared number for number.
"""
from __future__ import annotations

from typing import NamedTuple, Optional

import numpy as np
import torch
import torchvision.transforms.functional as TF
from PIL import Image
from torch import Tensor

from .backbones import Preprocess


class ImageTensors(NamedTuple):
    """One image as the visual stage takes it: ``full`` ``[1, 3, H, W]`` and ``clip_input``
    ``[1, 3, S, S]``, normalised, on the model's device, and its ``pixels`` (``[H, W, 3]`` uint8)
    for a method that prepares its own images (HybridGL)."""

    full: Tensor
    clip_input: Tensor
    pixels: Optional[np.ndarray] = None


class Preprocessor:
    """Pixels to :class:`ImageTensors` by ``config``, for a CLIP whose input is ``input_size`` square."""

    def __init__(self, config: Preprocess, input_size: int, device: torch.device) -> None:
        self.config = config
        self.input_size = input_size
        self.device = device
        #: Where several methods work on one image at a time (:class:`zsris.jobs.compare.CompareJob`),
        #: the tensors of the image being worked on, shared by them: ``(pixels, tensors)``.
        self.memo: Optional[dict] = None

    def __call__(self, image: np.ndarray) -> ImageTensors:
        """Both tensors of ``image`` (``[H, W, 3]`` uint8). Under ``preprocess='paper'`` both are
        made, as the authors' loop makes them, from the image first resized to a shorter side of
        800 (PIL), with unantialiased tensor resizes."""
        if self.memo is None:
            return self._tensors(image)
        key = ("tensors", id(image), self.config, self.input_size, str(self.device))
        if key not in self.memo or self.memo[key][0] is not image:
            self.memo[key] = (image, self._tensors(image))
        return self.memo[key][1]

    def _tensors(self, image: np.ndarray) -> ImageTensors:
        short_side = self.config.short_side
        if short_side is None:
            full = self.image_tensor(image)
            return ImageTensors(full, self.clip_input(full), image)
        resized = TF.resize(Image.fromarray(np.ascontiguousarray(image)), short_side)
        base = self._normalise(torch.tensor(np.asarray(resized), device=self.device))
        size = self.input_size
        return ImageTensors(TF.resize(base, list(image.shape[:2]), antialias=False),
                            TF.resize(base, [size, size], antialias=False), image)

    def image_tensor(self, image: np.ndarray) -> Tensor:
        """The normalised full-resolution image ``[1, 3, H, W]`` on the model's device."""
        if self.config.short_side is not None:
            return self(image).full
        return self._normalise(torch.tensor(image, device=self.device))

    def clip_input(self, image_tensor: Tensor) -> Tensor:
        """The whole image resized (not cropped) to CLIP's input size, as the reference does."""
        size = self.input_size
        return TF.resize(image_tensor, [size, size], antialias=self.config.antialias)

    def _normalise(self, pixels: Tensor) -> Tensor:
        pixels = pixels.permute(2, 0, 1).float() / 255.0
        mean = torch.tensor(self.config.mean, device=self.device)[:, None, None]
        std = torch.tensor(self.config.std, device=self.device)[:, None, None]
        return ((pixels - mean) / std)[None]

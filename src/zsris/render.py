"""Pictures of masks: a mask as a PNG, and an overlay with the mask, its box and a caption.

Arrays in, images out: what a picture shows of a result is :mod:`zsris.present`'s to say.
"""
from __future__ import annotations

import textwrap

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from scipy.ndimage import binary_erosion

MASK_COLOUR = (255, 64, 64)
#: The mask's outline, at full strength over the tint: a red tint alone vanishes on a red object.
OUTLINE_COLOUR = (0, 255, 255)
BOX_COLOUR = (255, 220, 0)
WARNING_COLOUR = (255, 80, 80)
RANDOM_WEIGHTS_NOTE = "RANDOM WEIGHTS: this mask means nothing"


def mask_image(mask: np.ndarray) -> Image.Image:
    """A black-and-white 8-bit PNG-ready image of a boolean mask."""
    return Image.fromarray(mask.astype(np.uint8) * 255, mode="L")


def _font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has only the fixed bitmap font
        return ImageFont.load_default()


def draw_overlay(image: np.ndarray, mask: np.ndarray, box: tuple[int, int, int, int], caption: str,
                 opacity: float = 0.5, warning: str = "") -> Image.Image:
    """The image with the mask tinted and outlined, its box drawn and ``caption`` in a band
    below it; ``warning`` (such as "random weights") is written under the caption in red, so
    that a picture shared without its JSON still says it."""
    height, width = mask.shape
    line = max(1, round(min(height, width) / 200))
    mask = np.asarray(mask, dtype=bool)
    tinted = image.astype(np.float32)
    tinted[mask] = (1 - opacity) * tinted[mask] + opacity * np.array(MASK_COLOUR, np.float32)
    tinted[mask & ~binary_erosion(mask, iterations=line, border_value=0)] = OUTLINE_COLOUR
    picture = Image.fromarray(np.clip(tinted, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(picture)
    x1, y1, x2, y2 = box
    if x2 > x1 and y2 > y1:
        draw.rectangle([x1, y1, x2 - 1, y2 - 1], outline=BOX_COLOUR, width=line)
    font_size = max(12, min(32, width // 30))
    columns = max(10, int(width / (font_size * 0.55)))
    lines = [(text, (255, 255, 255)) for text in textwrap.wrap(caption, width=columns) or [""]]
    lines += [(text, WARNING_COLOUR) for text in textwrap.wrap(warning, width=columns)]
    band = Image.new("RGB", (width, (font_size + 6) * len(lines) + 8), (0, 0, 0))
    band_draw = ImageDraw.Draw(band)
    for i, (text, colour) in enumerate(lines):
        band_draw.text((6, 4 + i * (font_size + 6)), text, fill=colour, font=_font(font_size))
    canvas = Image.new("RGB", (width, height + band.height))
    canvas.paste(picture, (0, 0))
    canvas.paste(band, (0, height))
    return canvas

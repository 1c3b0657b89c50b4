"""Image loading: any path, PIL image or array in, an RGB uint8 array in display orientation out.

Everything downstream (proposals, CLIP, overlays) assumes 8-bit RGB at the orientation a
viewer shows, so odd modes (L, LA, P, RGBA, CMYK, 16-bit) and EXIF rotation are resolved here,
once, and bad files fail here with a message that names them.
"""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Union

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import ImageError

ImageInput = Union[str, Path, Image.Image, np.ndarray]

#: Images with more pixels than this are refused: proposals and masks are computed at full
#: resolution, and a 20000 x 20000 image would need tens of GiB. Pass ``max_pixels`` to change.
DEFAULT_MAX_PIXELS = 40_000_000


def _check_size(width: int, height: int, max_pixels: int, what: str) -> None:
    if width < 1 or height < 1:
        raise ImageError(f"{what} is empty ({width}x{height} pixels)")
    if width * height > max_pixels:
        raise ImageError(
            f"{what} is {width}x{height} = {width * height / 1e6:.0f} MP, over the limit of "
            f"{max_pixels / 1e6:.0f} MP; downscale it first or raise --max-pixels"
        )


def _high_bit_depth_to_8bit(image: Image.Image) -> Image.Image:
    """Scale 16-bit / 32-bit greyscale to 8 bits by its nominal range (not clipped, which would
    turn most 16-bit photos white)."""
    array = np.asarray(image)
    if image.mode == "F":
        low, high = float(array.min()), float(array.max())
        scaled = (array - low) / (high - low) if high > low else np.zeros_like(array)
        return Image.fromarray(np.round(scaled * 255).astype(np.uint8), mode="L")
    peak = 65535.0 if array.max() > 255 or image.mode.startswith("I;16") else 255.0
    return Image.fromarray(np.round(array.astype(np.float64) * (255.0 / peak)).astype(np.uint8), mode="L")


def pil_to_rgb(image: Image.Image) -> Image.Image:
    """Convert any PIL mode to RGB: transparency is composited over white, 16-bit is rescaled."""
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        image = _high_bit_depth_to_8bit(image)
    if image.mode == "P":
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba)
    if image.mode != "RGB":
        image = image.convert("RGB")
    return image


def load_image(source: ImageInput, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Return an ``HxWx3`` uint8 RGB array of ``source`` as a viewer would display it.

    Raises :class:`ImageError` for a missing, unreadable, truncated or oversized image.
    """
    if isinstance(source, np.ndarray):
        return _array_to_rgb(source, max_pixels)
    if isinstance(source, Image.Image):
        _check_size(source.width, source.height, max_pixels, "the image")
        return np.asarray(pil_to_rgb(ImageOps.exif_transpose(source)))
    if not isinstance(source, (str, Path)):
        raise ImageError(f"cannot read an image from a {type(source).__name__}")
    path = Path(source)
    if not path.exists():
        raise ImageError(f"{path}: no such file")
    if path.is_dir():
        raise ImageError(f"{path}: is a directory, not an image")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                _check_size(image.width, image.height, max_pixels, str(path))
                image.load()
                oriented = ImageOps.exif_transpose(image)
                return np.asarray(pil_to_rgb(oriented))
    except ImageError:
        raise
    except UnidentifiedImageError:
        raise ImageError(f"{path}: not an image file (or a format Pillow cannot read)") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise ImageError(f"{path}: too large, over the limit Pillow allows ({error}); downscale it first") from None
    except (OSError, SyntaxError, ValueError) as error:
        raise ImageError(f"{path}: unreadable or truncated image ({error})") from None


def _array_to_rgb(array: np.ndarray, max_pixels: int) -> np.ndarray:
    if array.ndim == 2:
        array = array[..., None]
    if array.ndim != 3 or array.shape[2] not in (1, 3, 4):
        raise ImageError(f"an image array must be HxW, HxWx1, HxWx3 or HxWx4, not {array.shape}")
    _check_size(array.shape[1], array.shape[0], max_pixels, "the image array")
    if array.dtype == np.uint16:
        array = np.round(array.astype(np.float64) * (255.0 / 65535.0)).astype(np.uint8)
    elif np.issubdtype(array.dtype, np.floating):
        if not np.isfinite(array).all():
            raise ImageError("the image array holds NaN or infinite values")
        scale = 255.0 if array.max() <= 1.0 else 1.0
        array = np.clip(np.round(array * scale), 0, 255).astype(np.uint8)
    elif array.dtype != np.uint8:
        if array.min() < 0 or array.max() > 255:
            raise ImageError(f"an integer image array must hold values in 0..255, not {array.dtype}")
        array = array.astype(np.uint8)
    if array.shape[2] == 1:
        return np.ascontiguousarray(np.repeat(array, 3, axis=2))
    if array.shape[2] == 4:
        return np.asarray(pil_to_rgb(Image.fromarray(array, mode="RGBA")))
    return np.ascontiguousarray(array)

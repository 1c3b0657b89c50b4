"""Image loading: any path, PIL image or array in, an RGB uint8 array in display orientation out.

Everything downstream (proposals, CLIP, overlays) assumes 8-bit RGB at the orientation a
viewer shows, so odd modes (L, LA, P, RGBA, CMYK, 16-bit) and EXIF rotation are resolved here,
once, and bad files fail here with a message that names them.
"""
from __future__ import annotations

import errno
import io
import os
import re
import stat
import warnings
from pathlib import Path
from typing import BinaryIO, Optional, Union

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import ImageError, ImageTooLargeError

#: Images with more pixels than this are refused: proposals and masks are computed at full
#: resolution, and a 20000 x 20000 image would need tens of GiB. ``max_pixels`` changes it.
DEFAULT_MAX_PIXELS = 40_000_000

ImageInput = Union[str, Path, bytes, BinaryIO, Image.Image, np.ndarray]
#: An image given by URL: the most bytes read, and the seconds the whole download may take.
MAX_URL_BYTES = 64 * 1024 * 1024
URL_SECONDS = 30.0


def is_url(source: object) -> bool:
    """Whether ``source`` names an image by an http(s) URL rather than a path."""
    return isinstance(source, str) and source.lower().startswith(("http://", "https://"))


def fetch_url(url: str, max_bytes: int = MAX_URL_BYTES, seconds: float = URL_SECONDS) -> bytes:
    """The bytes at ``url``, at most ``max_bytes`` and within ``seconds`` in all (a server that
    sends slowly cannot hold the caller for ever); whatever fails is one :class:`ImageError` line."""
    import time
    import urllib.error
    import urllib.request

    deadline = time.monotonic() + seconds
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers={"User-Agent": "zsris"}),
                                    timeout=seconds) as response:
            chunks, size = [], 0
            while True:
                if time.monotonic() > deadline:
                    raise ImageError(f"{url}: the download took over {seconds:g} s")
                chunk = response.read(1 << 16)
                if not chunk:
                    return b"".join(chunks)
                size += len(chunk)
                if size > max_bytes:
                    raise ImageTooLargeError(f"{url}: over {max_bytes:,} bytes, more than an image is read")
                chunks.append(chunk)
    except urllib.error.HTTPError as error:
        raise ImageError(f"{url}: the server answered {error.code} {error.reason}") from None
    except (urllib.error.URLError, OSError, ValueError) as error:
        reason = getattr(error, "reason", None) or error
        raise ImageError(f"{url}: cannot be fetched ({reason}); offline, download it and give its path") from None


def _megapixels(pixels: int) -> str:
    """``48 MP``, ``0.001 MP``: enough digits that a small limit does not read as zero."""
    value = pixels / 1e6
    return f"{value:.0f} MP" if value >= 10 else f"{value:.3g} MP"


def _check_size(width: int, height: int, max_pixels: int, what: str) -> None:
    if width < 1 or height < 1:
        raise ImageError(f"{what} is empty ({width}x{height} pixels)")
    if width * height > max_pixels:
        raise ImageTooLargeError(
            f"{what} is {width}x{height} = {_megapixels(width * height)}, over the limit of "
            f"{_megapixels(max_pixels)}; downscale it first or raise --max-pixels"
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


def load_image(source: ImageInput, max_pixels: int = DEFAULT_MAX_PIXELS, exif_transpose: bool = True,
               name: Optional[str] = None, float_scale: Optional[float] = None) -> np.ndarray:
    """Return an ``HxWx3`` uint8 RGB array of ``source``, by default as a viewer would display it.

    ``source`` is a path, an http(s) URL (:func:`fetch_url`: a size cap and a time limit), the
    bytes of an image file, a binary file object, a PIL image or an array. Files are checked
    against ``max_pixels`` from their header, before any pixel is decoded, so a small compressed
    file cannot make the caller allocate gigabytes.
    ``exif_transpose=False`` keeps the stored pixel grid (what COCO annotations refer to).
    ``name`` replaces the path in error messages (a server does not show its own paths).
    A float array needs ``float_scale``: 1.0 for values in 0..1, 255.0 for 0..255. It is not
    guessed from the values: a near-black 0..255 image (all values under 1) would read as bright.

    Raises :class:`ImageError` for a missing, unreadable, truncated or oversized image
    (:class:`ImageTooLargeError` for the last).
    """
    if isinstance(source, np.ndarray):
        return _array_to_rgb(source, max_pixels, float_scale)
    if isinstance(source, Image.Image):
        _check_size(source.width, source.height, max_pixels, name or "the image")
        return np.asarray(pil_to_rgb(ImageOps.exif_transpose(source) if exif_transpose else source))
    if isinstance(source, (bytes, bytearray)):
        return _decode_file(io.BytesIO(source), max_pixels, exif_transpose, name or "the image")
    if hasattr(source, "read"):
        return _decode_file(source, max_pixels, exif_transpose, name or "the image")  # type: ignore[arg-type]
    if not isinstance(source, (str, Path)):
        raise ImageError(f"cannot read an image from a {type(source).__name__}")
    if is_url(source):
        return _decode_file(io.BytesIO(fetch_url(str(source))), max_pixels, exif_transpose, name or str(source))
    path = Path(source)
    what = name or str(path)
    problem = file_problem(path)
    if problem is not None:  # a FIFO, a socket, a device: opening one may block for ever
        raise ImageError(f"{what}: {problem}" + (", not an image" if problem != "no such file" else ""))
    return _decode_file(path, max_pixels, exif_transpose, what)


def file_problem(path: str | Path, max_bytes: Optional[int] = None) -> Optional[str]:
    """Why ``path`` cannot be read as a file, in a few words, or None for a regular file. Asked
    before opening: a pipe may block for ever and a device never end; a link loop or a missing
    link target says so, rather than "no such file" for a path that is there. ``max_bytes`` also
    refuses a larger file, for what is read whole into memory (JSON, a pickle)."""
    try:
        status = os.stat(path)
    except OSError as error:
        if error.errno == errno.ELOOP:
            return "a loop of symbolic links"
        if error.errno == errno.ENOENT:
            return "a symbolic link to nothing" if os.path.islink(path) else "no such file"
        return (error.strerror or str(error)).lower()
    except ValueError:  # a NUL in the path
        return "not a valid path (it holds a NUL character)"
    if stat.S_ISDIR(status.st_mode):
        return "is a directory"
    if not stat.S_ISREG(status.st_mode):
        return "not a regular file (a pipe, socket or device)"
    if max_bytes is not None and status.st_size > max_bytes:
        return f"{status.st_size:,} bytes, over the limit of {max_bytes:,} for a file read whole"
    return None


def _decode_file(file: Union[Path, BinaryIO], max_pixels: int, exif_transpose: bool, what: str) -> np.ndarray:
    """Open (header only), check the size, then decode. Pillow's own bomb warning is ignored:
    ``max_pixels`` is the limit, and it is checked before decoding."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(file) as image:
                _check_size(image.width, image.height, max_pixels, what)
                image.load()
                oriented = ImageOps.exif_transpose(image) if exif_transpose else image
                return np.asarray(pil_to_rgb(oriented))
    except ImageError:
        raise
    except UnidentifiedImageError:
        raise ImageError(f"{what}: not an image file (or a format Pillow cannot read)") from None
    except Image.DecompressionBombError as error:  # Pillow refuses twice its own limit at open
        found = re.search(r"\((\d+) pixels\)", str(error))
        size = _megapixels(int(found.group(1))) if found else "too large"
        raise ImageTooLargeError(f"{what} is {size}, over the limit of {_megapixels(max_pixels)}; "
                                 f"downscale it first or raise --max-pixels") from None
    except (OSError, SyntaxError, ValueError, EOFError) as error:
        raise ImageError(f"{what}: unreadable or truncated image ({error})") from None


def _array_to_rgb(array: np.ndarray, max_pixels: int, float_scale: Optional[float] = None) -> np.ndarray:
    if array.ndim == 2:
        array = array[..., None]
    if array.ndim != 3 or array.shape[2] not in (1, 3, 4):
        raise ImageError(f"an image array must be HxW, HxWx1, HxWx3 or HxWx4, not {array.shape}")
    _check_size(array.shape[1], array.shape[0], max_pixels, "the image array")
    if array.dtype == np.bool_ or not (np.issubdtype(array.dtype, np.integer)
                                       or np.issubdtype(array.dtype, np.floating)):
        raise ImageError(f"an image array must hold integers or floats, not {array.dtype} "
                         f"(convert masks with .astype(np.uint8) * 255)")
    if array.dtype == np.uint16:
        array = np.round(array.astype(np.float64) * (255.0 / 65535.0)).astype(np.uint8)
    elif np.issubdtype(array.dtype, np.floating):
        if float_scale not in (1.0, 255.0):
            raise ImageError("a float image array is ambiguous (values in 0..1 or in 0..255?): convert it with "
                             "zsris.load_image(array, float_scale=1.0) or float_scale=255.0, or pass uint8"
                             if float_scale is None else f"float_scale must be 1.0 or 255.0, not {float_scale!r}")
        if not np.isfinite(array).all():
            raise ImageError("the image array holds NaN or infinite values")
        if array.min() < 0 or array.max() > float_scale:
            raise ImageError(f"a float image array of float_scale={float_scale:g} must hold values in "
                             f"0..{float_scale:g}, not {float(array.min()):g}..{float(array.max()):g}")
        array = np.clip(np.round(array * (255.0 / float_scale)), 0, 255).astype(np.uint8)
    elif array.dtype != np.uint8:
        if array.min() < 0 or array.max() > 255:
            raise ImageError(f"an integer image array must hold values in 0..255, not {array.dtype}")
        array = array.astype(np.uint8)
    if array.shape[2] == 1:
        return np.ascontiguousarray(np.repeat(array, 3, axis=2))
    if array.shape[2] == 4:
        return np.asarray(pil_to_rgb(Image.fromarray(array, mode="RGBA")))
    return np.ascontiguousarray(array)

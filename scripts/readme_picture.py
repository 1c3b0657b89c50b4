"""Draw the README's picture: what an answer looks like, as ``zsris segment`` writes its overlay.

No weights ship with zsris, so a real run here would answer at random; the picture instead
draws zsris's own overlay (``zsris.render.draw_overlay``, with the caption ``segment`` gives
it) around the true mask of the bundled example's left red circle, found by its colour.
Run: ``python scripts/readme_picture.py`` (writes ``docs/images/answer.png``).
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from scipy import ndimage

from zsris import EXAMPLE_IMAGE, load_image
from zsris.present import caption
from zsris.render import draw_overlay

EXPRESSION = "the red circle on the left"
RED = (205, 40, 40)


def left_red_shape(pixels: np.ndarray) -> np.ndarray:
    """The leftmost connected region of the example's red."""
    labels, count = ndimage.label(np.all(pixels == RED, axis=-1))
    if count == 0:
        raise SystemExit(f"{EXAMPLE_IMAGE} has no pixel of {RED}: the example changed")
    lefts = [np.nonzero(labels == n)[1].min() for n in range(1, count + 1)]
    return labels == 1 + int(np.argmin(lefts))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default = Path(__file__).resolve().parents[1] / "docs" / "images" / "answer.png"
    parser.add_argument("--out", type=Path, default=default)
    out = parser.parse_args().out
    pixels = load_image(EXAMPLE_IMAGE)
    mask = left_red_shape(pixels)
    ys, xs = np.nonzero(mask)
    box = (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1)
    out.parent.mkdir(parents=True, exist_ok=True)
    draw_overlay(pixels, mask, box, caption(EXPRESSION, True)).save(out)
    print(out)


if __name__ == "__main__":
    main()

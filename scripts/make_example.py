"""Draw the bundled demo image (src/zsris/examples/shapes.png): simple objects that expressions
such as "the red circle on the left" can name. Rerun to regenerate it."""
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

rng = np.random.default_rng(7)
width, height = 480, 320
background = (rng.normal(0, 12, (height, width, 3)) + np.linspace(170, 215, width)[None, :, None]).clip(0, 255)
image = Image.fromarray(background.astype(np.uint8))
draw = ImageDraw.Draw(image)
draw.rectangle([0, 250, width, height], fill=(110, 150, 90))  # grass
draw.ellipse([40, 120, 160, 240], fill=(205, 40, 40))  # red circle, left
draw.rectangle([300, 100, 420, 220], fill=(40, 70, 200))  # blue square, right
draw.polygon([(200, 250), (250, 150), (300, 250)], fill=(40, 160, 60))  # green triangle, middle
target = Path(__file__).resolve().parents[1] / "src" / "zsris" / "examples" / "shapes.png"
image.save(target)
print(f"wrote {target}")

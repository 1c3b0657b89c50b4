"""Write docs/openapi.json, the schema of `zsris serve`'s JSON API (the test checks it is current)."""
import json
import warnings
from pathlib import Path

from zsris.segmenter import create_segmenter
from zsris.service import SegmentationService, create_app

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    app = create_app(SegmentationService(create_segmenter(weights="random", max_proposals=4)))
target = Path(__file__).resolve().parents[1] / "docs" / "openapi.json"
target.write_text(json.dumps(app.openapi(), indent=2) + "\n")
print(f"wrote {target}")

"""zsris's FreeSOLO against the authors' FreeSOLO on detectron2: the same masks in the same order.

The authors' FreeSOLO is their ``freesolo`` package (from github:Seonghoon-Yu/Zero-shot-RIS)
on a detectron2 built from source; neither is a dependency of zsris, so this runs in a
separate environment that has both, plus zsris:

    python -m venv --system-site-packages d2env && . d2env/bin/activate
    pip install fvcore iopath opencv-python-headless
    git clone https://github.com/facebookresearch/detectron2 && pip install --no-build-isolation -e detectron2
    git clone https://github.com/Seonghoon-Yu/Zero-shot-RIS authors
    python scripts/compare_freesolo.py --authors authors --images ../shared/data/refcoco-mini/images --count 10

Both models load one checkpoint (``--checkpoint``, else random weights of the real architecture
written to a temporary file in detectron2's ``{"model": ...}`` layout). The authors' side gets
its input as their ``ReferDataset`` makes it (torchvision's ``Resize(800)`` of the PIL image,
``ToTensor``, ImageNet ``Normalize``) and runs through detectron2's model; zsris's side starts
from the decoded RGB array. Exits 1 when any image's masks differ or a box is off by 0.5 px.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torchvision.transforms as T
from PIL import Image

from zsris.proposals.freesolo import FreeSolo, FreeSoloProposals, random_init


def authors_model(authors: Path, checkpoint: Path):
    sys.path.insert(0, str(authors))
    import freesolo.modeling.solov2  # noqa: F401 - registers PseudoSOLOv2
    from detectron2.checkpoint import DetectionCheckpointer
    from detectron2.config import get_cfg
    from detectron2.modeling import build_model
    from freesolo.config import add_solo_config

    cfg = get_cfg()
    add_solo_config(cfg)
    cfg.merge_from_file(str(authors / "configs" / "freesolo" / "freesolo_30k.yaml"))
    cfg.MODEL.DEVICE = "cpu"
    model = build_model(cfg).eval()
    DetectionCheckpointer(model).load(str(checkpoint))
    return model


def authors_input(path: Path) -> tuple[np.ndarray, dict]:
    """The image as the authors' ``ReferDataset`` hands it to FreeSOLO."""
    img = Image.open(path).convert("RGB")
    tensor = T.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])(T.ToTensor()(T.Resize(800)(img)))
    height, width = np.asarray(img).shape[:2]
    return np.asarray(img), {"image": tensor, "height": height, "width": width}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--authors", type=Path, required=True, help="checkout of Seonghoon-Yu/Zero-shot-RIS")
    parser.add_argument("--images", type=Path, required=True, help="folder of JPEG images (searched recursively)")
    parser.add_argument("--count", type=int, default=10)
    parser.add_argument("--checkpoint", type=Path, default=None, help="default: random weights, seed --seed")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_grad_enabled(False)

    with tempfile.TemporaryDirectory() as scratch:
        checkpoint = args.checkpoint
        if checkpoint is None:
            checkpoint = Path(scratch) / "freesolo-random.pth"
            state = random_init(FreeSolo(), seed=args.seed).state_dict()
            torch.save({"model": {**state, "_iter": torch.zeros(1)}, "iteration": 0}, checkpoint)
        theirs = authors_model(args.authors, checkpoint)
        ours = FreeSoloProposals(str(checkpoint), max_proposals=None)
        files = sorted(args.images.rglob("*.jpg"))[: args.count]
        failures, worst_box, worst_score, masks_total = 0, 0.0, 0.0, 0
        print(f"{'image':<34} {'size':>9} {'masks':>5} {'same':>5} {'box':>8} {'score':>8} {'authors':>8} {'zsris':>6}")
        for path in files:
            pixels, batched = authors_input(path)
            start = time.perf_counter()
            expected = theirs([batched])[0]["instances"]
            their_time = time.perf_counter() - start
            start = time.perf_counter()
            got = ours.run(pixels)
            our_time = time.perf_counter() - start
            their_masks = expected.pred_masks.bool() if len(expected.pred_masks) else torch.zeros(0, *pixels.shape[:2],
                                                                                               dtype=torch.bool)
            same = len(their_masks) == len(got.masks) and bool(torch.equal(their_masks, got.masks))
            box = score = 0.0
            if same and len(got.masks):
                box = float((expected.pred_boxes.tensor - got.boxes).abs().max())
                score = float((expected.scores - got.scores).abs().max())
            ok = same and box <= 0.5
            failures += not ok
            worst_box, worst_score = max(worst_box, box), max(worst_score, score)
            masks_total += len(got.masks)
            size = f"{pixels.shape[1]}x{pixels.shape[0]}"
            print(f"{path.name:<34} {size:>9} {len(got.masks):>5} {'yes' if same else 'NO':>5} {box:>8.2g} "
                  f"{score:>8.2g} {their_time:>7.1f}s {our_time:>5.1f}s")
        print(f"\n{len(files)} images, {masks_total} masks: {len(files) - failures} identical "
              f"(masks equal in order, boxes within 0.5 px); largest box difference {worst_box:.3g} px, "
              f"largest score difference {worst_score:.3g}")
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())

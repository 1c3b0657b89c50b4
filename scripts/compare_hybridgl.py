"""zsris's HybridGL against the authors' script: the same features, GEM maps and both answers.

``Hybridgl_main.py`` (github:fhgyuanshen/HybridGL) imports open_clip 2.24 (through ``gem-torch``),
its own copies of OpenAI's ``clip`` and of segment-anything, so it runs in its own environment
and process; zsris never imports it:

    python -m venv --system-site-packages hybridgl-env
    hybridgl-env/bin/pip install open_clip_torch==2.24.0 opencv-python-headless==4.10.0.84 einops ftfy regex h5py \\
        "setuptools<81" && hybridgl-env/bin/pip install --no-deps gem-torch==1.0.1
    PIP_CONSTRAINT=<(echo "setuptools<81") hybridgl-env/bin/pip install --no-deps \\
        --config-settings editable_mode=compat -e CHECKOUT/third_party/modified_CLIP \
        -e CHECKOUT/third_party/segment-anything
    python scripts/compare_hybridgl.py --authors CHECKOUT --python hybridgl-env/bin/python

The script's ``main`` runs as published over refcoco-mini's own REFER files (its ``ReferDataset``,
its loop, its functions), with only what cannot run here replaced: ``clip.load`` and GEM's
``open_clip.create_model`` build the same random CLIP ViT-B/16 as zsris (GEM's with QuickGELU, as
open_clip builds OpenAI's weights), spaCy's ``en_core_web_lg`` is the installed English model,
its dataset keeps the chosen images' refs, and SAM's generator hands out given masks: zsris's
``classical`` proposals of each image (images with at least ``k2`` = 6, so that the script's
``k1``/``k2`` never shrink; refcoco-mini's instances are only the referred objects) with SAM's
own boxes of them. torchvision 0.15, which the authors ran, resized tensors without
antialiasing unless told to: ``TF.resize``'s default is set back to that. Observed without
changing anything: each call of ``CLIPViTFM.forward`` (the hybrid features), each GEM map, and
which mask each ``Compute_IoU`` receives (the pure answer, then the answer with spatial guidance).

``--sam N`` also builds SAM ViT-H with the same random weights on both sides and compares the
masks of N images from the script's generator with zsris's ``sam`` generator under
``--preset hybridgl`` (about a minute an image on a CPU); random weights pass neither of the
script's 0.7 thresholds, so ``--sam-threshold 0`` lowers both on both sides to compare masks.

It prints the largest difference of the L2-normalised hybrid features and of the GEM maps and
how many sentences make the same two choices, and exits 1 where a feature differs by more than
``--tolerance`` (1e-5) or a choice differs.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]

AUTHORS_DRIVER = r'''
import hashlib, os, sys, torch, numpy as np
import torchvision.transforms.functional as TF
inputs = torch.load(sys.argv[1], weights_only=False)
_resize = TF.resize
def resize(img, size, interpolation=TF.InterpolationMode.BILINEAR, max_size=None, antialias=False):
    return _resize(img, size, interpolation, max_size, antialias)
TF.resize = resize  # torchvision 0.15, which the authors ran, resized tensors without antialiasing by default
sys.path.insert(0, inputs["checkout"])
os.chdir(inputs["workdir"])
import spacy
_spacy_load = spacy.load
spacy.load = lambda name, *a, **k: _spacy_load(inputs["spacy"])
state = torch.load(inputs["clip"])
import clip
from clip.model import build_model
clip.load = lambda name, *a, **k: (build_model(dict(state)).float().eval(), None)
import open_clip
_create = open_clip.create_model
def create(model_name, pretrained=None, precision="fp32", device="cpu", *rest, **kw):
    model = _create(model_name, None, precision=precision, device=device, force_quick_gelu=True)
    model.load_state_dict(state)
    return model.eval()
open_clip.create_model = create
import Hybridgl_main as H
from segment_anything.utils.amg import batched_mask_to_box, box_xyxy_to_xywh

images = inputs["images"]  # sha1 of the pixels -> masks [N, H, W] bool
seen = {"image": None, "sentence": None}
out = {"features": {}, "gem": [], "choices": [], "sentences": []}

class Given:
    """SAM's generator replaced: the given masks of the image, with SAM's own boxes of them."""
    def __init__(self, *args, **kwargs):
        pass
    def generate(self, image):
        key = hashlib.sha1(np.ascontiguousarray(image).data).hexdigest()
        seen["image"] = key
        masks = images[key]
        boxes = box_xyxy_to_xywh(batched_mask_to_box(masks)).tolist()
        return [{"segmentation": m.numpy(), "bbox": b} for m, b in zip(masks, boxes)]

class NoSam:
    def to(self, device):
        return self

H.SamAutomaticMaskGenerator = Given
H.sam_model_registry = {"default": lambda checkpoint=None: NoSam()}

class Chosen(H.ReferDataset):
    """Their dataset, keeping the chosen refs."""
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        keep = [i for i, r in enumerate(self.ref_ids) if r in set(inputs["ref_ids"])]
        self.ref_ids = [self.ref_ids[i] for i in keep]
        self.sentence_raws = [self.sentence_raws[i] for i in keep]
        self.cat_names = [self.cat_names[i] for i in keep]
        self.input_ids = [self.input_ids[i] for i in keep]

H.ReferDataset = Chosen
_forward = H.CLIPViTFM.forward
def forward(self, *args, **kwargs):
    found = _forward(self, *args, **kwargs)
    out["features"][seen["image"]] = found.detach().float().cpu()
    if os.environ.get("HYBRIDGL_DEBUG"):
        out.setdefault("debug", {})[seen["image"]] = (kwargs["local_imgs"].cpu(), kwargs["global_imgs"].cpu())
    return found
H.CLIPViTFM.forward = forward
_dir = H.extract_dir_phrase
def direction(text, nlp, need_index=False):
    seen["sentence"] = text
    out["sentences"].append((seen["image"], text))
    return _dir(text, nlp, need_index)
H.extract_dir_phrase = direction
import gem.gem_wrapper as W
_gem = W.GEMWrapper.forward
def gem_forward(self, *args, **kwargs):
    found = _gem(self, *args, **kwargs)
    out["gem"].append(found[0, 0].detach().float().cpu())
    return found
W.GEMWrapper.forward = gem_forward
_iou = H.Compute_IoU
def compute_iou(pred, target, *rest):
    masks = images[seen["image"]]
    index = [i for i, m in enumerate(masks) if torch.equal(m, pred.cpu())]
    out["choices"].append(index[0] if index else -1)
    return _iou(pred, target, *rest)
H.Compute_IoU = compute_iou
args = H.default_argument_parser().parse_args(["--dataset", "refcoco", "--split", inputs["split"],
                                                 "--refer_data_root", inputs["data_root"],
                                                 "--fusion_mode", inputs["fusion"]])
with torch.no_grad():
    H.main(args, 224, 224)
sam = {}
if inputs["sam_images"]:
    from segment_anything import sam_model_registry, SamAutomaticMaskGenerator
    model = sam_model_registry["default"](checkpoint=inputs["sam_checkpoint"]).eval()
    threshold = inputs["sam_threshold"]
    generator = SamAutomaticMaskGenerator(model, points_per_side=8, pred_iou_thresh=threshold,
                                          stability_score_thresh=threshold,
                                          crop_n_layers=0, crop_n_points_downscale_factor=1, min_mask_region_area=800)
    for key, pixels in inputs["sam_images"].items():
        found = generator.generate(pixels)
        sam[key] = (np.stack([m["segmentation"] for m in found]) if found else np.zeros((0,) + pixels.shape[:2], bool),
                    [m["bbox"] for m in found])
out["sam"] = sam
torch.save(out, sys.argv[2])
'''


def _key(pixels: np.ndarray) -> str:
    return hashlib.sha1(np.ascontiguousarray(pixels).data).hexdigest()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--authors", required=True, type=Path, help="a checkout of github:fhgyuanshen/HybridGL")
    parser.add_argument("--python", default=sys.executable, help="the interpreter of the authors' environment")
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "refcoco-mini")
    parser.add_argument("--sentences", type=int, default=40, help="at least this many sentences (default: %(default)s)")
    parser.add_argument("--max-proposals", type=int, default=10, help="proposals per image (default: %(default)s)")
    parser.add_argument("--fusion", default="G2L", help="the script's --fusion_mode (default: %(default)s)")
    parser.add_argument("--sam", type=int, default=0, help="also compare SAM ViT-H's masks on this many images")
    parser.add_argument("--sam-threshold", type=float, default=0.7,
                        help="SAM's predicted-IoU and stability thresholds on both sides (the script's 0.7 "
                             "leaves no mask of random weights; 0 keeps them all)")
    parser.add_argument("--tolerance", type=float, default=1e-5)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if not (args.authors / "Hybridgl_main.py").is_file():
        print(f"compare_hybridgl: {args.authors} has no Hybridgl_main.py (a HybridGL checkout?)", file=sys.stderr)
        return 2
    warnings.simplefilter("ignore")
    torch.manual_seed(args.seed)
    from zsris import SegmenterConfig
    from zsris.backbones import load_backbone
    from zsris.datasets import open_dataset
    from zsris.gem import GEM_PROMPT, gem_maps
    from zsris.jobs.evaluation import load_dataset_image
    from zsris.methods import MethodSpec
    from zsris.proposals import ClassicalProposals
    from zsris.segmenter import Segmenter

    backbone = load_backbone("ViT-B/16", weights="random")
    config = SegmenterConfig(backbone="ViT-B/16", method=MethodSpec("hybridgl", {"fusion": args.fusion}))
    segmenter = Segmenter(backbone, ClassicalProposals(max_proposals=1), config)
    method = segmenter.method
    generator = ClassicalProposals(max_proposals=args.max_proposals)
    dataset = open_dataset(str(args.data), "refcoco")
    images, ref_ids, ours, count = {}, [], {}, 0
    start = time.perf_counter()
    for image_id, refs in dataset.refs_by_image("train").items():
        if count >= args.sentences:
            break
        pixels = load_dataset_image(dataset, image_id)
        proposals = generator(pixels)
        if len(proposals) < 6:
            continue
        masks = proposals.masks
        key = _key(pixels)
        images[key] = torch.from_numpy(masks)
        ref_ids += [ref.ref_id for ref in refs]
        features = method.features([segmenter.preprocessor(pixels)], [proposals])[0]
        parsed = segmenter.parser.parse_many([s.text for ref in refs for s in ref.sentences])
        table = method.scores(features, parsed, False)
        phrases = [method.cues(p.sentence).phrase for p in parsed]
        maps = gem_maps(features.gem, method.encoder.text([GEM_PROMPT.format(p) for p in phrases]), None)
        for p, record, gem in zip(parsed, table.records, maps):
            ours[key, p.sentence] = (record["pure_proposal_index"], record["spatial_proposal_index"], gem)
        ours[key] = F.normalize(features.hybrid, dim=-1)
        count += len(parsed)
    ours_seconds = time.perf_counter() - start
    sam_images = {}
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        root = folder / "refer"
        (root / "images" / "mscoco" / "images").mkdir(parents=True)
        (root / "refcoco").symlink_to((args.data / "refcoco").resolve())
        (root / "images" / "mscoco" / "images" / "train2014").symlink_to((args.data / "images" / "train2014").resolve())
        torch.save(backbone.model.state_dict(), folder / "clip.pt")
        sam_checkpoint = folder / "sam.pt"
        sam_ours = {}
        if args.sam:
            from zsris.hybridgl_preset import hybridgl_settings
            from zsris.proposals import create_proposals

            spec = hybridgl_settings()["proposals"]
            torch.manual_seed(args.seed)
            from segment_anything import sam_model_registry

            torch.save(sam_model_registry["vit_h"](checkpoint=None).state_dict(), sam_checkpoint)
            spec.options.update(checkpoint=str(sam_checkpoint), pred_iou_thresh=args.sam_threshold,
                                stability_score_thresh=args.sam_threshold)
            generator = create_proposals(spec, torch.device("cpu"))
            for image_id in list(dataset.refs_by_image("train"))[: args.sam]:
                pixels = load_dataset_image(dataset, image_id)
                sam_images[_key(pixels)] = pixels
                sam_ours[_key(pixels)] = generator(pixels)
        inputs = {"checkout": str(args.authors.resolve()), "workdir": str(folder), "clip": str(folder / "clip.pt"),
                  "spacy": segmenter.parser.nlp.meta["lang"] + "_" + segmenter.parser.nlp.meta["name"],
                  "images": images, "ref_ids": ref_ids, "split": "train", "data_root": str(root) + "/",
                  "fusion": args.fusion, "sam_images": sam_images, "sam_checkpoint": str(sam_checkpoint),
                  "sam_threshold": args.sam_threshold}
        torch.save(inputs, folder / "inputs.pt")
        (folder / "driver.py").write_text(AUTHORS_DRIVER)
        start = time.perf_counter()
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH",)}
        command = [args.python, str(folder / "driver.py"), str(folder / "inputs.pt"), str(folder / "out.pt")]
        done = subprocess.run(command, env=env, capture_output=True, text=True)
        if done.returncode != 0:
            print(done.stderr[-4000:], file=sys.stderr)
            return 2
        theirs = torch.load(folder / "out.pt", weights_only=False)
        theirs_seconds = time.perf_counter() - start
    if "debug" in theirs:
        torch.save(theirs["debug"], "/tmp/hgl_debug.pt")
    worst_features = max(float((F.normalize(f, dim=-1) - ours[key]).abs().max())
                         for key, f in theirs["features"].items())
    worst_gem, same_pure, same_spatial = 0.0, 0, 0
    for position, (key, sentence) in enumerate(theirs["sentences"]):
        pure, spatial, gem = ours[key, sentence]
        worst_gem = max(worst_gem, float((theirs["gem"][position] - gem).abs().max()))
        same_pure += int(theirs["choices"][2 * position] == pure)
        same_spatial += int(theirs["choices"][2 * position + 1] == spatial)
    total = len(theirs["sentences"])
    moved = sum(theirs["choices"][2 * i] != theirs["choices"][2 * i + 1] for i in range(total))
    report = {"images": len(theirs["features"]), "sentences": total, "fusion": args.fusion,
              "hybrid_features_max_abs_difference": worst_features, "gem_map_max_abs_difference": worst_gem,
              "same_pure_choice": same_pure, "same_spatial_choice": same_spatial,
              "spatial_guidance_changed_the_answer": moved,
              "zsris_seconds": round(ours_seconds, 1), "script_seconds": round(theirs_seconds, 1)}
    failed = (worst_features > args.tolerance or worst_gem > args.tolerance or same_pure != total
              or same_spatial != total)
    for key, (masks, boxes) in theirs["sam"].items():
        mine = sam_ours[key]
        same = sorted(m.tobytes() for m in masks) == sorted(m.tobytes() for m in mine.masks)
        report.setdefault("sam", []).append({"masks": len(masks), "zsris_masks": len(mine), "identical": same})
        failed |= not same
    print(f"hybrid features ({args.fusion})  max |difference| {worst_features:.2e}")
    print(f"GEM maps                max |difference| {worst_gem:.2e}")
    print(f"pure answer             same choice {same_pure}/{total}")
    print(f"with spatial guidance   same choice {same_spatial}/{total} (it changed the script's answer in {moved})")
    for row in report.get("sam", []):
        print(f"SAM ViT-H masks         script {row['masks']}, zsris {row['zsris_masks']}, "
              f"identical {row['identical']}")
    print(json.dumps(report))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

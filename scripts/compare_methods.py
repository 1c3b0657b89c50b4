"""zsris's Table 1 methods against the authors' functions: the same features and maps, the same choice.

The authors' ``model/backbone.py`` (github:Seonghoon-Yu/Zero-shot-RIS) holds the paper's
baselines and ablations beside its method. Their code imports their modified OpenAI ``clip``
(``third_party/modified_CLIP``) and einops, so it runs in a separate process and environment;
zsris never imports it:

    python -m venv --system-site-packages authors-env && authors-env/bin/pip install einops ftfy regex
    git clone https://github.com/Seonghoon-Yu/Zero-shot-RIS authors
    python scripts/compare_methods.py --authors authors --python authors-env/bin/python

Both sides load the same random weights of the real architectures (ViT-B/32 and RN50, written to
a temporary file in OpenAI's layout), get the same image tensors (zsris's ``--preprocess paper``
tensors, which equal the authors' loop's) and the same proposals (the COCO instance masks of
refcoco-mini images), and score the images' real sentences. For each row the script prints the
largest difference of L2-normalised features (or of per-proposal map means) and how many
sentences choose the same proposal, and exits 1 where a difference exceeds ``--tolerance``
(1e-5) or a choice differs.

Where the authors' code cannot run as published, the script says what it changed, and only that:
- their ``clip.load`` downloads weights: it is replaced by building their model from the state dict;
- torchvision 0.11, which they ran, resized tensors without antialiasing: ``TF.resize`` and
  ``TF.resized_crop`` are called with ``antialias=False`` on their side;
- ``clip_backbone``'s 1x1 convolutions keep PyTorch's random biases (its loader of the real ones is
  commented out): they get the attention pool's biases, as MaskCLIP uses them;
- ``generate_grad_cam`` negates the logit before the backward pass: its map is compared with the
  negative of zsris's (which ranks by the positive logit's Grad-CAM);
- their ``attn_masking`` cannot run (``~`` of a float mask; their blocks also ignore an attention
  mask): it is reported as not compared.
"""
from __future__ import annotations

import argparse
import json
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

#: The authors' side, run with their code on the path: it reads the inputs, calls their
#: functions as their evaluation script calls them, and writes what they return.
AUTHORS_DRIVER = r'''
import sys, torch, functools
import torchvision.transforms.functional as TF
inputs = torch.load(sys.argv[1])
_resize, _resized_crop = TF.resize, TF.resized_crop
TF.resize = functools.partial(_resize, antialias=False)
TF.resized_crop = functools.partial(_resized_crop, antialias=False)
import clip
from clip.model import build_model
weights = {name: torch.load(path) for name, path in inputs["weights"].items()}
clip.load = lambda name, *a, **k: (build_model({**weights[name]}).float().eval(), None)
from model import backbone
vit = backbone.CLIPViTFM("ViT-B/32").eval()
region = backbone.CLIPMaskedSpatialViT("ViT-B/32", start_block=inputs["start_block"]).eval()
res = backbone.clip_backbone("RN50").eval()
pool = res.model.visual.attnpool
res.v_proj.bias = torch.nn.Parameter(pool.v_proj.bias.detach().clone())
res.c_proj.bias = torch.nn.Parameter(pool.c_proj.bias.detach().clone())
fill = torch.tensor([0.485, 0.456, 0.406]).reshape(1, 3, 1, 1)
out = []
for item in inputs["images"]:
    full, small, masks, boxes = item["full"], item["clip_input"], item["masks"], item["boxes"]
    H, W = masks.shape[-2:]
    crops = []
    for box, mask in zip(boxes, masks):
        mask = mask.type(torch.uint8)
        filled = full * mask[None, None] + (1 - mask[None, None]) * fill
        x1, y1, x2, y2 = [int(v) for v in box]
        crops.append(TF.resized_crop(filled.squeeze(0), y1, x1, y2 - y1, x2 - x1, (224, 224)))
    crops = torch.stack(crops)
    found = {}
    with torch.no_grad():
        found["vit tokens"] = vit(small, masks, masking_type="token_masking", masking_block=9)
        found["vit one-block"] = vit(small, masks, masking_type="specific_masking", masking_block=9)
        found["vit crop"] = vit(crops, pred_masks=None, masking_type="crop")
        found["region-token"] = region.get_mask_feature(small, masks.float())[0]
        found["rn50 tokens"] = res.feature_map_masking(small, masks)
        found["rn50 image-query"] = res.feature_map_masking(small, masks, query_masking=False)
        found["rn50 crop"] = res.get_gloval_vector(crops)
        maps = [res.generate_score_map(small, t[None], H, W)[0, 0] for t in item["score_texts"]]
    found["score-map"] = torch.stack([torch.stack([m[k].mean() for k in masks]) for m in maps]) if maps else None
    cams = [res.generate_grad_cam(small, tokens[None], H, W)[0, 0].detach() for tokens in item["cam_tokens"]]
    found["grad-cam"] = torch.stack([torch.stack([-c[k].mean() for k in masks]) for c in cams]) if cams else None
    out.append({k: (v.detach().float() if v is not None else None) for k, v in found.items()})
torch.save(out, sys.argv[2])
'''


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--authors", required=True, type=Path, help="a checkout of github:Seonghoon-Yu/Zero-shot-RIS")
    parser.add_argument("--python", default=sys.executable,
                        help="the interpreter of the authors' environment (torch, einops, ftfy, regex)")
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "refcoco-mini")
    parser.add_argument("--images", type=int, default=8, help="how many refcoco-mini images (default: %(default)s)")
    parser.add_argument("--max-proposals", type=int, default=12)
    parser.add_argument("--start-block", type=int, default=0, help="the region token's start block")
    parser.add_argument("--tolerance", type=float, default=1e-5)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if not (args.authors / "model" / "backbone.py").is_file():
        print(f"compare_methods: {args.authors} has no model/backbone.py (a Zero-shot-RIS checkout?)", file=sys.stderr)
        return 2
    warnings.simplefilter("ignore")
    torch.manual_seed(args.seed)
    from zsris import SegmenterConfig
    from zsris.backbones import load_backbone
    from zsris.datasets import open_dataset
    from zsris.jobs.evaluation import load_dataset_image
    from zsris.methods import MethodSpec
    from zsris.proposals import ClassicalProposals
    from zsris.segmenter import Segmenter
    from zsris.types import Proposals

    backbones = {name: load_backbone(name, weights="random") for name in ("ViT-B/32", "RN50")}

    def segmenter(backbone: str, method: str, **options) -> Segmenter:
        config = SegmenterConfig(backbone=backbone, preprocess="paper", method=MethodSpec(method, options))
        return Segmenter(backbones[backbone], ClassicalProposals(max_proposals=1), config)

    ours = {"vit tokens": segmenter("ViT-B/32", "global-local", visual="global"),
            "vit one-block": segmenter("ViT-B/32", "global-local", visual="global", masking="one-block"),
            "vit crop": segmenter("ViT-B/32", "cropping"),
            "region-token": segmenter("ViT-B/32", "region-token", start_block=args.start_block),
            "rn50 tokens": segmenter("RN50", "global-local", visual="global"),
            "rn50 image-query": segmenter("RN50", "global-local", visual="global", masking="image-query"),
            "rn50 crop": segmenter("RN50", "cropping"),
            "score-map": segmenter("RN50", "score-map", text="phrase"),
            "grad-cam": segmenter("RN50", "grad-cam", text="phrase")}
    dataset = open_dataset(str(args.data), "refcoco")
    groups = list(dataset.refs_by_image("train").items())[: args.images]
    inputs, expected = {"images": [], "start_block": args.start_block}, []
    tokenizer = backbones["RN50"].tokenizer
    for image_id, refs in groups:
        pixels = load_dataset_image(dataset, image_id)
        ids = dataset.annotation_ids(image_id)[: args.max_proposals]
        masks = np.stack([dataset.annotation_mask(a) for a in ids])
        proposals = Proposals(masks, np.ones(len(masks)))
        parsed = ours["grad-cam"].parser.parse_many([s.text for ref in refs for s in ref.sentences])
        tensors = ours["vit tokens"].preprocessor(pixels)
        row = {}
        for name, seg in ours.items():
            features = seg.method.features([tensors], [proposals])[0]
            table = seg.method.scores(features, parsed, False)
            vector = getattr(features, "visual_features", None)
            if name.endswith("crop"):
                vector = F.normalize(features.local_features, dim=-1)
            row[name] = (vector, table.fused)
        phrases = ours["score-map"].encoder.text([p.noun_phrase for p in parsed])
        expected.append((row, phrases, parsed))
        inputs["images"].append({"full": tensors.full.cpu(), "clip_input": tensors.clip_input.cpu(),
                                 "masks": torch.from_numpy(masks), "boxes": torch.from_numpy(proposals.boxes),
                                 "score_texts": F.normalize(phrases, dim=-1),
                                 "cam_tokens": tokenizer([p.noun_phrase for p in parsed])})
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        inputs["weights"] = {}
        for name, backbone in (("ViT-B/32", backbones["ViT-B/32"]), ("RN50", backbones["RN50"])):
            path = folder / f"{name.replace('/', '')}.pt"
            torch.save(backbone.model.state_dict(), path)
            inputs["weights"][name] = str(path)
        torch.save(inputs, folder / "inputs.pt")
        (folder / "driver.py").write_text(AUTHORS_DRIVER)
        path = f"{args.authors / 'third_party' / 'modified_CLIP'}:{args.authors}"
        start = time.perf_counter()
        command = [args.python, str(folder / "driver.py"), str(folder / "inputs.pt"), str(folder / "out.pt")]
        done = subprocess.run(command, env={"PYTHONPATH": path, "PATH": "/usr/bin:/bin"}, capture_output=True,
                              text=True)
        if done.returncode != 0:
            print(done.stderr[-3000:], file=sys.stderr)
            return 2
        theirs = torch.load(folder / "out.pt")
        seconds = time.perf_counter() - start
    failed, report = False, {}
    for name in ours:
        worst, same, total, scale = 0.0, 0, 0, 0.0
        for (row, phrases, parsed), got in zip(expected, theirs):
            vector, fused = row[name]
            if name in ("score-map", "grad-cam"):
                other = got[name]
                worst = max(worst, float((other - fused).abs().max()))
                scale = max(scale, float(other.abs().max()))
                choices = other.argmax(1), fused.argmax(1)
            else:
                other = F.normalize(got[name].float(), dim=-1)
                worst = max(worst, float((other - vector).abs().max()))
                scale = max(scale, float(other.abs().max()))
                text = ours[name].method.text_features(parsed) if hasattr(ours[name].method, "text_features") else None
                if text is None:
                    from zsris.methods.global_local import text_features
                    method = ours[name].method
                    text = text_features(method.encoder, parsed, method.text, method.beta, method.fusion)
                choices = (text @ other.T).argmax(1), fused.argmax(1)
            same += int((choices[0] == choices[1]).sum())
            total += len(choices[0])
        report[name] = {"max_abs_difference": worst, "largest_value": scale, "same_choice": same, "sentences": total}
        bad = worst > args.tolerance or same != total
        failed |= bad
        print(f"{name:18s} max |difference| {worst:.2e} (values up to {scale:.2e})   same choice {same}/{total}"
              f"{'   DIFFERS' if bad else ''}")
    print("attention masking  not compared: the authors' attn_masking cannot run (see the docstring)")
    print(f"{len(expected)} images; the authors' side took {seconds:.1f} s")
    print(json.dumps(report))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

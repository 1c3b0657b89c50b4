"""Seconds per image of zsris's HybridGL against the authors' script's way of computing it.

    python benchmarks/hybridgl_speed.py [--images 6] [--proposals 20] [--sam]

CLIP ViT-B/16 with random weights (the real FLOPs) on refcoco-mini images with their real
sentences; both sides get the same proposals (the classical generator's, made once and not timed:
SAM's own time is the same code on both sides and is excluded, ``--sam`` times it apart). In the
same process, the baseline follows ``Hybridgl_main.py``'s loop step by step with the same model:

- per ref (the script's loop is over refs, not images): the Gaussian blur, then per proposal the
  OpenCV compositing of the global image, ``ToTensor``, ``Resize`` and ``Normalize``, the local
  image filled at full size and resized; ``CLIPViTFM`` on all proposals at once;
- per sentence: its eight spaCy parses (the script's helpers parse the sentence again each time),
  the sentence, noun phrase and other nouns encoded one call each, one GEM pass over the image,
  the map resized and normalised, and GEM's score of each proposal in a Python loop at full size.

zsris does the image's work once (the blur, both images of every proposal composed and resized
in batches, one GEM pass) and per sentence only the text (one parse, cached encodings), the GEM
map of each distinct noun phrase, and the scores of the top three candidates. The last lines
estimate both on RefCOCO val's mix (2.54 refs and 7.22 sentences an image) from the parts timed.
"""
from __future__ import annotations

import argparse
import platform
import time
import warnings

import cv2
import numpy as np
import torch
import torch.nn.functional as F
import torchvision.transforms as T

from zsris import SegmenterConfig
from zsris.backbones import load_backbone
from zsris.datasets import open_dataset
from zsris.gem import GEM_PROMPT, gem_features, gem_input, gem_maps
from zsris.jobs.evaluation import load_dataset_image
from zsris.methods import MethodSpec
from zsris.methods.hybridgl import CLIP_PIXEL_MEAN, IMAGENET_MEAN, IMAGENET_STD, direction_mask, hybrid_features
from zsris.proposals import ClassicalProposals
from zsris.segmenter import Segmenter

from common import add_data_flag, require_data

#: RefCOCO val (unc): 1,500 images, 3,811 refs, 10,834 sentences.
VAL_REFS_PER_IMAGE = 3811 / 1500
VAL_SENTENCES_PER_IMAGE = 10834 / 1500


def cpu_name() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def script_ref(seg: Segmenter, pixels: np.ndarray, masks: np.ndarray) -> torch.Tensor:
    """One ref's visual work as the script does it: compositing one proposal at a time."""
    model = seg.method.encoder.model
    original = T.Normalize(IMAGENET_MEAN, IMAGENET_STD)(T.ToTensor()(pixels))[None]
    fill = torch.tensor(CLIP_PIXEL_MEAN).reshape(1, 3, 1, 1)
    blurred = cv2.GaussianBlur(pixels.copy(), (15, 15), 0)
    global_images, local_images = [], []
    for mask in torch.from_numpy(masks):
        pred = mask.type(torch.uint8)
        numpy_mask = pred.numpy()
        sharp = cv2.bitwise_and(pixels, pixels, mask=np.clip(numpy_mask, 0, 255).astype(np.uint8))
        blurred_region = (blurred * (1 - numpy_mask)[:, :, None]).astype(np.uint8)
        composite = T.ToTensor()(cv2.add(sharp, blurred_region))
        composite = T.Normalize(IMAGENET_MEAN, IMAGENET_STD)(T.Resize((224, 224), antialias=False)(composite))
        global_images.append(composite)
        local = original * pred[None, None] + (1 - pred[None, None]) * fill
        local_images.append(T.Resize((224, 224), antialias=False)(local.squeeze(0)))
    grid = F.interpolate(torch.from_numpy(masks)[:, None].float(), size=(14, 14), mode="bilinear")[:, 0]
    with torch.inference_mode():
        return hybrid_features(model, torch.stack(local_images), torch.stack(global_images), grid)


def script_sentence(seg: Segmenter, pixels: np.ndarray, masks: np.ndarray, sentence: str) -> None:
    """One sentence's work as the script does it (parses, encodings, a GEM pass, the loop)."""
    method, model = seg.method, seg.method.encoder.model
    nlp = seg.parser.nlp
    for _ in range(8):
        doc = nlp(sentence)
    cue = method.cues(sentence)
    tokenizer = seg.backbone.tokenizer
    with torch.inference_mode():
        for text in (sentence, cue.phrase, *("a photo of " + o for o in cue.others)):
            model.encode_text(tokenizer([text]))
        features = gem_features(model, gem_input(pixels, torch.device("cpu")))[0]
        prompt = model.encode_text(tokenizer([GEM_PROMPT.format(cue.phrase)]))
        attention = gem_maps(features, prompt, pixels.shape[:2])[0]
        attention = (attention - attention.min()) / (attention.max() - attention.min())
        attention = attention * direction_mask(cue.direction, *attention.shape)
        attention = attention / attention.mean()
        for mask in torch.from_numpy(masks):
            mask = mask.type(torch.uint8)
            ((attention * 0.2 * mask / mask.sum()).sum() - (attention * 1.8 * (1 - mask) / (1 - mask).sum()).sum())
    del doc


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_data_flag(parser)
    parser.add_argument("--images", type=int, default=6)
    parser.add_argument("--proposals", type=int, default=20, help="proposals per image (SAM's 8 points a side "
                                                                   "leave about 20)")
    parser.add_argument("--sam", action="store_true", help="also time SAM ViT-H under --preset hybridgl (random)")
    args = parser.parse_args()
    require_data(args.data)
    warnings.simplefilter("ignore")
    torch.manual_seed(0)
    backbone = load_backbone("ViT-B/16", weights="random")
    seg = Segmenter(backbone, ClassicalProposals(max_proposals=args.proposals),
                    SegmenterConfig(backbone="ViT-B/16", method=MethodSpec("hybridgl")))
    dataset = open_dataset(str(args.data), "refcoco")
    work = []
    for image_id, refs in dataset.refs_by_image("train").items():
        pixels = load_dataset_image(dataset, image_id)
        proposals = seg.proposals(pixels)
        if len(proposals) >= 6:
            work.append((pixels, proposals, refs))
        if len(work) == args.images:
            break
    seg.parser.parse_many([s.text for _, _, refs in work for r in refs for s in r.sentences])  # spaCy warmed up
    parts = {"zsris image": 0.0, "zsris sentence": 0.0, "script ref": 0.0, "script sentence": 0.0}
    refs_total = sentences_total = 0
    for pixels, proposals, refs in work:
        sentences = [s.text for r in refs for s in r.sentences]
        parsed = seg.parser.parse_many(sentences)
        seg.encoder.text_encoder._cache.clear()
        start = time.perf_counter()
        features = seg.method.features([seg.preprocessor(pixels)], [proposals])[0]
        middle = time.perf_counter()
        seg.method.scores(features, parsed, False)
        end = time.perf_counter()
        parts["zsris image"] += middle - start
        parts["zsris sentence"] += end - middle
        for _ in refs:
            start = time.perf_counter()
            script_ref(seg, pixels, proposals.masks)
            parts["script ref"] += time.perf_counter() - start
        for p in parsed:
            start = time.perf_counter()
            script_sentence(seg, pixels, proposals.masks, p.sentence)
            parts["script sentence"] += time.perf_counter() - start
        refs_total += len(refs)
        sentences_total += len(parsed)
    n = len(work)
    zsris = (parts["zsris image"] + parts["zsris sentence"]) / n
    script = (parts["script ref"] + parts["script sentence"]) / n
    print(f"CPU: {cpu_name()}, {torch.get_num_threads()} threads; CLIP ViT-B/16 (random weights), fp32")
    print(f"{n} refcoco-mini images, {refs_total} refs, {sentences_total} sentences, "
          f"{np.mean([len(p) for _, p, _ in work]):.1f} proposals an image (SAM excluded from both)")
    print(f"{'':34s} {'zsris':>10s} {'script':>10s} {'speed-up':>9s}")
    print(f"{'s/image (refcoco-mini)':34s} {zsris:10.2f} {script:10.2f} {script / zsris:8.2f}x")
    per_ref, per_sentence = parts["script ref"] / refs_total, parts["script sentence"] / sentences_total
    mine_image, mine_sentence = parts["zsris image"] / n, parts["zsris sentence"] / sentences_total
    print(f"{'  visual work (an image / a ref)':34s} {mine_image:10.2f} {per_ref:10.2f}")
    print(f"{'  a sentence':34s} {mine_sentence:10.3f} {per_sentence:10.3f}")
    val_zsris = mine_image + VAL_SENTENCES_PER_IMAGE * mine_sentence
    val_script = VAL_REFS_PER_IMAGE * per_ref + VAL_SENTENCES_PER_IMAGE * per_sentence
    print(f"{'s/image, RefCOCO val mix (est.)':34s} {val_zsris:10.2f} {val_script:10.2f} "
          f"{val_script / val_zsris:8.2f}x")
    if args.sam:
        from zsris.hybridgl_preset import hybridgl_settings
        from zsris.proposals import create_proposals

        spec = hybridgl_settings()["proposals"]
        spec.options["checkpoint"] = "random"
        generator = create_proposals(spec, torch.device("cpu"))
        start = time.perf_counter()
        found = generator(work[0][0])
        print(f"SAM ViT-H (random weights, the preset's settings): {time.perf_counter() - start:.1f} s for one "
              f"image, {len(found)} masks (excluded above; the same on both sides)")


if __name__ == "__main__":
    main()

"""`zsris batch`: a folder or a manifest of (image, expression) pairs, one model load, resumable."""
from __future__ import annotations

import argparse
import functools
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from ..config import SegmenterConfig
from .flags import (EPILOG, add_engine_flags, add_model_flags, build_segmenter, config_from_args, positive_int,
                    proposal_workers)

#: The exit status of a batch in which some pairs failed (their reasons are in errors.jsonl).
SOME_FAILED = 3
RESULTS, ERRORS, SETTINGS = "results.jsonl", "errors.jsonl", "settings.json"
COCO_RESULTS, COCO_IMAGES = "coco_results.json", "coco_images.json"
STORE = "batch.sqlite"
#: Everything a batch writes in OUT: what --overwrite removes (and nothing else).
OUTPUTS = (RESULTS, ERRORS, SETTINGS, COCO_RESULTS, COCO_IMAGES, STORE, f"{STORE}-wal", f"{STORE}-shm",
           "masks", "overlays")


def _write_atomic(path: Path, text: str) -> None:
    """Replace ``path`` in one step, so that a kill never leaves half a file."""
    partial = path.with_name(f".{path.name}.partial")
    partial.write_text(text)
    os.replace(partial, path)


def _jsonl(records: list[dict[str, Any]]) -> str:
    return "".join(json.dumps(r) + "\n" for r in records)


class Outputs:
    """The files of a batch in OUT. The store is the truth; results.jsonl and errors.jsonl are
    appended as pairs finish and rewritten from the store (in input order) at the start and the
    end of a run, so that whatever a kill cut short is made whole by the next run."""

    def __init__(self, out: Path, save_masks: bool, save_overlays: bool, random_weights: bool) -> None:
        self.out = out
        self.masks = out / "masks" if save_masks else None
        self.overlays = out / "overlays" if save_overlays else None
        self.note = ""
        if random_weights:
            from ..render import RANDOM_WEIGHTS_NOTE

            self.note = RANDOM_WEIGHTS_NOTE
        for folder in (self.masks, self.overlays):
            if folder is not None:
                folder.mkdir(parents=True, exist_ok=True)

    def rewrite(self, store) -> None:
        _write_atomic(self.out / RESULTS, _jsonl(store.records(ok=True)))
        _write_atomic(self.out / ERRORS, _jsonl(store.records(ok=False)))

    def pictures(self, answers, pixels) -> None:
        """Mask and overlay PNGs of the results (before they are committed: a rerun rewrites them)."""
        from ..batch import output_name
        from ..render import mask_image, overlay

        for answer in answers:
            if not answer.ok or (self.masks is None and self.overlays is None):
                continue
            result, name = answer.result, output_name(answer.pair)
            if self.masks is not None:
                mask_image(result.mask).save(self.masks / f"{name}.png")
            if self.overlays is not None and pixels is not None:
                overlay(pixels, result.mask, result.box, result.caption, warning=self.note).save(
                    self.overlays / f"{name}.png")

    def append(self, results: list[dict[str, Any]], errors: list[dict[str, Any]]) -> None:
        for name, records in ((RESULTS, results), (ERRORS, errors)):
            if records:
                with open(self.out / name, "a") as stream:
                    stream.write(_jsonl(records))


def _record(answer) -> dict[str, Any]:
    from ..records import result_record

    pair = answer.pair
    if answer.ok:
        return {"id": pair.id, **result_record(answer.result, pair.image)}
    return {"id": pair.id, "image": pair.image, "expression": pair.expression, "error": answer.error}


def write_coco(out: Path, pairs, store) -> None:
    """The results as a COCO results file, and the image list it refers to (a COCO dataset file
    with no annotations), so that ``COCO(coco_images.json).loadRes(coco_results.json)`` works.
    Image ids number the input's images from 1 in the order of their first pair."""
    image_ids: dict[str, int] = {}
    for pair in pairs:
        image_ids.setdefault(pair.image, len(image_ids) + 1)
    results, images = [], {}
    for record in store.records(ok=True):
        if not record.get("found", True):  # "no such object": nothing to export
            continue
        image_id = image_ids[record["image"]]
        height, width = record["image_size"]
        images[image_id] = {"id": image_id, "file_name": record["image"], "height": height, "width": width}
        results.append({"image_id": image_id, "category_id": 1, "segmentation": record["mask"],
                        "score": record["score"], "pair_id": record["id"], "expression": record["expression"]})
    dataset = {"images": [images[i] for i in sorted(images)], "annotations": [],
               "categories": [{"id": 1, "name": "referred object"}]}
    _write_atomic(out / COCO_IMAGES, json.dumps(dataset))
    _write_atomic(out / COCO_RESULTS, json.dumps(results))


def _read_pairs(args: argparse.Namespace):
    from ..batch import ManifestError, folder_pairs, read_manifest

    source = Path(args.input)
    if source.is_dir():
        return folder_pairs(source, args.expressions or [])
    if not source.exists():
        raise ManifestError(f"{source}: no such file or folder")
    if args.expressions:
        raise ManifestError("-e is for a folder of images; a manifest gives its own expressions")
    return read_manifest(source, args.allow_outside)


def _check_out(out: Path, overwrite: bool) -> None:
    from ..errors import ZsrisError

    if out.exists() and not out.is_dir():
        raise ZsrisError(f"{out} is a file; -o names the folder that receives the results")
    if overwrite and out.is_dir():
        for name in OUTPUTS:
            target = out / name
            if target.is_dir():
                shutil.rmtree(target)
            elif target.exists():
                target.unlink()


def _check_same_pairs(out: Path, pairs, done: dict[str, tuple[str, str]]) -> None:
    """A resume must be about the same pairs: an id already done that now names another image or
    expression means another input was given for this OUT."""
    from ..errors import ZsrisError

    for pair in pairs:
        stored = done.get(pair.id)
        if stored is not None and stored != (pair.image, json.dumps(pair.expression)):
            raise ZsrisError(f"{out} holds results of other pairs: id {pair.id!r} was {stored[0]!r} with "
                             f"{json.loads(stored[1])!r}, now {pair.image!r} with {pair.expression!r}; "
                             f"give --overwrite to replace them, or another -o")


def make_image_job(config: SegmenterConfig, top_k: int, keep_pixels: bool):
    """A Ray actor's worker: its own models, loaded once (module level, so Ray can ship it)."""
    from ..batch import ImageJob

    return ImageJob(build_segmenter(config, announce=False), top_k, keep_pixels)


def cmd_batch(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from ..batch import batch_engine, group_by_image, refused_results, run_pairs
    from ..evaluation import ray_session, run_ray
    from ..records import settings
    from ..report import table
    from ..store import BatchStore

    if args.engine == "ray":
        from ..extras import require_extra

        require_extra("ray", "--engine ray")
    out = Path(args.output)
    _check_out(out, overwrite=False)
    pairs = _read_pairs(args)  # an unreadable input is refused before any model loads
    config = config_from_args(args)
    segmenter = build_segmenter(config)
    _check_out(out, args.overwrite)
    run_settings = {**settings(segmenter), "top_k": args.top_k}
    position = {pair.id: n for n, pair in enumerate(pairs)}
    with BatchStore(out / STORE, run_settings) as store, \
            ray_session(args.workers, args.ray_address, enabled=args.engine == "ray"):
        _check_same_pairs(out, pairs, store.done())
        retried = store.forget_failed() if args.retry_failed else 0
        _write_atomic(out / SETTINGS, json.dumps(run_settings, indent=2))
        outputs = Outputs(out, args.save_masks, args.save_overlays, segmenter.backbone.is_random)
        outputs.rewrite(store)
        done = store.done()
        pending = [pair for pair in pairs if pair.id not in done]
        images = group_by_image(p for p in pairs if p.error is None)
        pending_images = group_by_image(p for p in pending if p.error is None)
        counts = {"done": 0, "failed": 0}

        def commit(batch) -> None:
            answers, pixels = batch
            outputs.pictures(answers, pixels)
            rows = [(a.pair.id, position[a.pair.id], a.pair.image, a.pair.expression, a.ok, _record(a))
                    for a in answers]
            store.add(rows)
            outputs.append([row[5] for row in rows if row[4]], [row[5] for row in rows if not row[4]])
            counts["done"] += sum(a.ok for a in answers)
            counts["failed"] += sum(not a.ok for a in answers)
            if any(a.pair.error is None for a in answers):  # an image's pairs, not the refused rows
                progress.update(1)

        progress = tqdm(total=len(images), initial=len(images) - len(pending_images), unit="image",
                        desc="batch", dynamic_ncols=True)
        started = time.perf_counter()
        timing = None
        try:
            if args.engine == "ray":
                refused = refused_results(pending)
                if refused:
                    commit((refused, None))
                run_ray(functools.partial(make_image_job, config, args.top_k, args.save_overlays),
                        list(pending_images.items()), commit, args.workers)
            else:
                engine = batch_engine(segmenter, proposal_workers(args))
                for batch in run_pairs(segmenter, pending, engine, args.top_k):
                    commit(batch)
                timing = engine.times.summary()
        except KeyboardInterrupt:
            progress.close()
            outputs.rewrite(store)
            print(f"zsris: interrupted; {len(store.done())} of {len(pairs)} pairs are saved in {out}. "
                  f"Run the same command again to resume.", file=sys.stderr)
            return 130
        finally:
            progress.close()
        seconds = time.perf_counter() - started
        outputs.rewrite(store)
        if args.format == "coco":
            write_coco(out, pairs, store)
        failed_overall = len(store.records(ok=False))
    summary = {
        "pairs": len(pairs),
        "done (this run)": counts["done"],
        "failed (this run)": counts["failed"],
        "skipped (done before)": len(pairs) - len(pending),
        "retried (failed before)": retried,
        "images (this run)": len(pending_images),
        "seconds/image": round(seconds / max(len(pending_images), 1), 3),
    }
    print(table(summary, "batch"))
    if timing and timing["images"]:
        print("\n" + table(timing, "time (this run)"))
    written = [RESULTS, ERRORS] + ([COCO_RESULTS, COCO_IMAGES] if args.format == "coco" else [])
    print(f"\nwrote {', '.join(str(out / name) for name in written)}")
    if failed_overall:
        print(f"zsris: {failed_overall} pair(s) failed; the reasons are in {out / ERRORS} "
              f"(--retry-failed tries them again)", file=sys.stderr)
        return SOME_FAILED
    return 0


def register(commands) -> None:
    batch = commands.add_parser(
        "batch", help="segment a folder or a manifest of (image, expression) pairs, resumably",
        description=(
            "Segment many (image, expression) pairs with one model load. INPUT is a folder (every image\n"
            "under it, recursively, against every -e expression) or a manifest: a .csv, .tsv or .jsonl file\n"
            "with the columns image (relative to the manifest, or absolute), expression and optionally id.\n"
            "Results are saved as they are made: after Ctrl-C or a crash, the same command goes on where it\n"
            f"stopped. Exit status: 0 when every pair succeeded, {SOME_FAILED} when some failed (see errors.jsonl),\n"
            "1 when nothing could start, 130 when interrupted."),
        epilog=EPILOG + '\nexamples:\n  zsris batch photos/ -e "the dog" -e "the person on the left" -o out/\n'
                        "  zsris batch pairs.csv -o out/ --format coco --save-masks",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    batch.add_argument("input", metavar="INPUT", help="a folder of images, or a .csv/.tsv/.jsonl manifest")
    batch.add_argument("-e", "--expression", dest="expressions", action="append", metavar="EXPRESSION",
                       help="an expression to segment in every image of a folder (repeat for more)")
    batch.add_argument("-o", "--output", required=True, metavar="OUT", help="output folder (resumable)")
    batch.add_argument("--format", choices=("jsonl", "coco"), default="jsonl",
                       help="'coco' also writes coco_results.json (and coco_images.json, the images it refers "
                            "to) for pycocotools (default: %(default)s)")
    batch.add_argument("--save-masks", action="store_true", help="write each mask as a PNG under OUT/masks")
    batch.add_argument("--save-overlays", action="store_true", help="write each overlay under OUT/overlays")
    batch.add_argument("--top-k", type=positive_int, default=5,
                       help="ranked proposals kept in each record (default: %(default)s)")
    batch.add_argument("--allow-outside", action="store_true",
                       help="read manifest images whose relative path leads out of the manifest's folder (..)")
    batch.add_argument("--overwrite", action="store_true",
                       help="replace the results already in OUT (made with other settings or another input)")
    batch.add_argument("--retry-failed", action="store_true", help="try the pairs that failed before again")
    add_engine_flags(batch)
    add_model_flags(batch)
    batch.set_defaults(run=cmd_batch)

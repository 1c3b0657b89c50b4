"""`zsris segment`: one image, one or more expressions -> mask PNG, overlay PNG and JSON each."""
from __future__ import annotations

import argparse
import contextlib
import sys
import threading
from pathlib import Path
from typing import Iterator

from ..errors import ZsrisError
from .flags import EPILOG, add_model_flags, add_top_k_flag, build_segmenter, config_from_args

STAGES = ("proposals", "visual features", "scoring")


class StageProgress:
    """A one-line display of the segment stages and their elapsed time, on a terminal only.

    The visual stage takes tens of seconds on a CPU with no natural unit to count, so a
    background thread refreshes the elapsed time while a stage runs."""

    def __init__(self, enabled: bool) -> None:
        self.bar = None
        if enabled:
            from tqdm import tqdm

            self.bar = tqdm(total=len(STAGES), desc="segment", unit="stage", leave=False,
                            bar_format="{desc}: {n}/{total} stages, {elapsed}", file=sys.stderr)

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        if self.bar is None:
            yield
            return
        self.bar.set_description_str(f"segment: {name}")  # set_description would add a second ": "
        done = threading.Event()
        ticker = threading.Thread(target=self._tick, args=(done,), daemon=True)
        ticker.start()
        try:
            yield
        finally:
            done.set()
            ticker.join()
        self.bar.update(1)

    def _tick(self, done: threading.Event) -> None:
        while not done.wait(0.5):
            self.bar.refresh()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _names_an_image(text: str) -> bool:
    """Whether ``text`` is the path of an existing image file (a second image given by mistake)."""
    from ..jobs.pairs import IMAGE_SUFFIXES

    path = Path(text.strip())
    return path.suffix.lower() in IMAGE_SUFFIXES and path.is_file()


def cmd_segment(args: argparse.Namespace) -> int:
    from ..images import load_image
    from ..jobs.run import check_writable
    from ..names import file_part, run_tag, slug
    from ..present import explain, save_result
    from ..records import settings
    from ..render import RANDOM_WEIGHTS_NOTE
    from ..text import check_expression

    config = config_from_args(args)
    image = load_image(args.image, config.max_pixels)
    for expression in args.expressions:
        check_expression(expression)
        if _names_an_image(expression):
            raise ZsrisError(f"{expression!r} is an image file, not an expression: segment takes one image and "
                             f"its expressions (zsris batch takes a folder or a list of images)")
    check_writable(Path(args.output))  # before any model loads, not after the work (and not made yet)
    segmenter = build_segmenter(config)
    image_id = Path(args.image).name
    progress = StageProgress(sys.stderr.isatty())
    try:
        with progress.stage("proposals"):
            proposals = segmenter.proposals_for(image, image_id, args.expressions)  # SAM 3: their instances too
        with progress.stage("visual features"):
            features = segmenter.image_features(image, image_id, proposals)
        with progress.stage("scoring"):
            results = segmenter.score(features, args.expressions)
    finally:
        progress.close()
    out = Path(args.output)
    run = settings(segmenter)
    note = RANDOM_WEIGHTS_NOTE if segmenter.backbone.is_random else ""
    for result in results:
        stem = f"{file_part(Path(args.image).name)}--{slug(result.expression)}--{run_tag(run)}"
        base = save_result(result, out, image, args.top_k, stem=stem, name=str(args.image), extra={"settings": run},
                           warning=note)
        print(explain(result, segmenter.config.no_target_threshold).line(f"{base}.{{mask.png,overlay.png,json}}"))
    return 0


def register(commands) -> None:
    segment = commands.add_parser(
        "segment", help="segment the object an expression refers to",
        description="Write, per expression, the mask PNG, an overlay PNG and a JSON record, named "
                    "IMAGE--EXPRESSION--RUN.{json,mask.png,overlay.png} (RUN: a hash of the settings; "
                    "a name already taken gets -2, -3 ...: nothing is overwritten).",
        epilog=EPILOG + '\nexample:\n  zsris segment photo.jpg "the man on the left" "the red car" -o out/',
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    segment.add_argument("image", help="image file (JPEG, PNG, ...)")
    segment.add_argument("expressions", nargs="+", metavar="EXPRESSION", help="referring expression(s)")
    segment.add_argument("-o", "--output", default="zsris-out", help="output folder (default: %(default)s)")
    add_top_k_flag(segment, "the JSON record")
    add_model_flags(segment)
    segment.set_defaults(run=cmd_segment)

"""Feed zsris bad inputs and count how each was handled: a one-line error and a non-zero exit
(clean), or an exception escaping to the user (a traceback).

    python scripts/probe_bad_inputs.py            # CLI and Python API cases, about a minute on 2 cores
    (ulimit -v 16000000; python scripts/probe_bad_inputs.py)   # the same under a 16 GB memory cap

The service's bad inputs (bomb uploads, client-named paths, oversized page uploads) are probed
against a real server by tests/test_service_hardening.py.
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import pickle
import struct
import sys
import tempfile
import zlib
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from PIL import Image

from zsris.cli import main
from zsris.errors import ZsrisError

EXAMPLE = Path(__file__).resolve().parents[1] / "src" / "zsris" / "examples" / "shapes.png"
FAST = ["--weights", "random", "--max-proposals", "4"]


def _png_of_size(width: int, height: int) -> bytes:
    """A valid black greyscale PNG written row by row (tiny file, huge image)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    compressor = zlib.compressobj(9)
    rows = b"".join(compressor.compress(b"\0" * (width + 1)) for _ in range(height)) + compressor.flush()
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", rows) + chunk(b"IEND", b"")


class _Payload:
    def __reduce__(self):
        return (os.system, ("true",))


def _files(root: Path) -> dict[str, Path]:
    """Bad files on disk, by name."""
    files = {}
    files["missing"] = root / "missing.jpg"
    files["directory"] = root
    (root / "text.jpg").write_text("not an image")
    files["not an image"] = root / "text.jpg"
    (root / "truncated.png").write_bytes(EXAMPLE.read_bytes()[:1500])
    files["truncated"] = root / "truncated.png"
    (root / "empty.png").write_bytes(b"")
    files["empty file"] = root / "empty.png"
    (root / "bomb.png").write_bytes(_png_of_size(20000, 20000))
    files["20000x20000 bomb"] = root / "bomb.png"
    Image.new("L", (8000, 6000)).save(root / "big.png")
    files["48 MP image"] = root / "big.png"
    torch.save({"payload": _Payload()}, root / "evil.pt")
    files["malicious checkpoint"] = root / "evil.pt"
    (root / "garbage.pt").write_bytes(b"\x80\x04garbage")
    files["garbage checkpoint"] = root / "garbage.pt"
    for name, content in {
        "rle 100000x100000": {"shapes.png": [{"segmentation": {"size": [100000, 100000], "counts": "PPYo1"}}]},
        "rle negative counts": {"shapes.png": [{"segmentation": {"size": [320, 480], "counts": [-5, 153605]}}]},
        "rle huge counts": {"shapes.png": [{"segmentation": {"size": [320, 480], "counts": [10 ** 30]}}]},
        "no proposals": {"shapes.png": []},
        "rle without counts": {"shapes.png": [{"segmentation": {"size": [320, 480]}}]},
        "score not a number": {"shapes.png": [{"segmentation": {"size": [320, 480], "counts": [153600]},
                                               "score": "high"}]},
        "NaN score": {"shapes.png": [{"segmentation": {"size": [320, 480], "counts": [100, 50, 153450]},
                                      "score": float("nan")}]},
        "box a million pixels out": {"shapes.png": [{"segmentation": {"size": [320, 480], "counts": [100, 50, 153450]},
                                                     "box": [0, 0, 1e6, 1e6]}]},
        "infinite box": {"shapes.png": [{"segmentation": {"size": [320, 480], "counts": [100, 50, 153450]},
                                         "box": [0, 0, float("inf"), 10]}]},
    }.items():
        path = root / f"{name.replace(' ', '-')}.json"
        path.write_text(json.dumps(content))
        files[name] = path
    (root / "not-json.json").write_text("{")
    files["proposals not JSON"] = root / "not-json.json"
    (root / "deep.json").write_text("[" * 200_000 + "]" * 200_000)
    files["nested 200000 deep"] = root / "deep.json"
    rle = json.dumps({"segmentation": {"size": [320, 480], "counts": [100, 50, 153450]}})
    (root / "twice.json").write_text(f'{{"shapes.png": [{rle}], "shapes.png": []}}')
    files["an image named twice"] = root / "twice.json"
    data = root / "data" / "refcoco"
    data.mkdir(parents=True)
    (data / "refs(unc).p").write_bytes(pickle.dumps({"not": "a list"}))
    (data / "instances.json").write_text("[]")
    (root / "data" / "images").mkdir()
    files["malformed dataset"] = root / "data"
    torch.save({"model": {"backbone.bottom_up.stem.conv1.weight": torch.zeros(64, 3, 7, 7)}}, root / "fs.pth")
    files["not FreeSOLO's checkpoint"] = root / "fs.pth"
    phrasecut = root / "phrasecut"
    (phrasecut / "images").mkdir(parents=True)
    (phrasecut / "image_data_split.json").write_text(json.dumps([{"image_id": 1, "width": 8, "height": 8,
                                                                  "split": "val"}]))
    (phrasecut / "refer_val.json").write_text(json.dumps([{"image_id": 1, "phrase": "a cat"}]))
    files["PhraseCut task without Polygons"] = phrasecut
    (root / "loop-a.pt").symlink_to(root / "loop-b.pt")
    (root / "loop-b.pt").symlink_to(root / "loop-a.pt")
    files["a loop of symbolic links"] = root / "loop-a.pt"
    os.mkfifo(root / "fifo.pt")
    files["a FIFO"] = root / "fifo.pt"
    (root / "zero.pt").symlink_to("/dev/zero")
    files["a link to /dev/zero"] = root / "zero.pt"
    (root / "folder.pt").mkdir()
    files["a folder"] = root / "folder.pt"
    os.mkfifo(root / "fifo.jsonl")
    files["manifest: a FIFO"] = root / "fifo.jsonl"
    (root / "zero.jsonl").symlink_to("/dev/zero")
    files["manifest: a link to /dev/zero"] = root / "zero.jsonl"
    (root / "twice.jsonl").write_text('{"image": "shapes.png", "expression": "a", "expression": "b"}\n')
    files["manifest: a key named twice"] = root / "twice.jsonl"
    (root / "nul.jsonl").write_text(json.dumps({"image": "a\0b.png", "expression": "a cat"}) + "\n")
    files["manifest: a NUL in an image path"] = root / "nul.jsonl"
    for name, change in (("instances say 100000x100000", "huge"), ("instances.json a FIFO", "fifo"),
                         ("instances.json nested 200000 deep", "deep")):
        files[f"dataset: {name}"] = _refer_dataset(root / f"refer-{change}", change)
    grefs = root / "gref" / "grefcoco"
    grefs.mkdir(parents=True)
    (root / "gref" / "images").mkdir()
    (grefs / "grefs(unc).json").write_text("[" * 200_000 + "]" * 200_000)
    (grefs / "instances.json").write_text(json.dumps({"images": [], "annotations": []}))
    files["dataset: grefs(unc).json nested 200000 deep"] = root / "gref"
    return files


def _refer_dataset(root: Path, change: str) -> Path:
    """A one-image REFER dataset whose instances.json is ``change``d: an annotated size the
    image does not have (huge), a FIFO (fifo) or nested too deeply (deep)."""
    (root / "refcoco").mkdir(parents=True)
    (root / "images").mkdir()
    Image.open(EXAMPLE).save(root / "images" / "shapes.png")
    refs = [{"ref_id": 1, "ann_id": 10, "image_id": 7, "category_id": 1, "split": "train",
             "sentences": [{"sent_id": 100, "sent": "the red circle"}]}]
    (root / "refcoco" / "refs(unc).p").write_bytes(pickle.dumps(refs))
    side = 100_000 if change == "huge" else None
    instances = {"images": [{"id": 7, "file_name": "shapes.png", "height": side or 320, "width": side or 480}],
                 "annotations": [{"id": 10, "image_id": 7, "category_id": 1,
                                  "segmentation": [[10, 10, 60, 10, 60, 60, 10, 60]]}],
                 "categories": [{"id": 1, "name": "shape"}]}
    if change == "fifo":
        os.mkfifo(root / "refcoco" / "instances.json")
    else:
        (root / "refcoco" / "instances.json").write_text("[" * 200_000 + "]" * 200_000 if change == "deep"
                                                         else json.dumps(instances))
    return root


def cli_cases(files: dict[str, Path], out: Path) -> list[tuple[str, list[str]]]:
    segment = ["segment", str(EXAMPLE), "the red circle", "-o", str(out)]
    cases = [(f"image: {name}", ["segment", str(files[name]), "a cat", "-o", str(out), *FAST])
             for name in ("missing", "directory", "not an image", "truncated", "empty file", "20000x20000 bomb",
                          "48 MP image")]
    cases += [
        ("expression: empty", ["segment", str(EXAMPLE), "   ", "-o", str(out), *FAST]),
        ("expression: zero-width", ["segment", str(EXAMPLE), "\u200b", "-o", str(out), *FAST]),
        ("expression: NULs", ["segment", str(EXAMPLE), "\x00\x00", "-o", str(out), *FAST]),
        ("flag: --max-proposals 0", [*segment, "--weights", "random", "--max-proposals", "0"]),
        ("flag: --max-proposals -5", [*segment, "--weights", "random", "--max-proposals", "-5"]),
        ("flag: --max-proposals many", [*segment, "--weights", "random", "--max-proposals", "many"]),
        ("flag: --batch-size 0", [*segment, *FAST, "--batch-size", "0"]),
        ("flag: --batch-size -1", [*segment, *FAST, "--batch-size", "-1"]),
        ("flag: --top-k 0", [*segment, *FAST, "--top-k", "0"]),
        ("flag: --max-pixels 0", [*segment, *FAST, "--max-pixels", "0"]),
        ("flag: --max-pixels 1000", [*segment, *FAST, "--max-pixels", "1000"]),
        ("flag: --alpha 2", [*segment, *FAST, "--alpha", "2"]),
        ("flag: -k 99", [*segment, *FAST, "-k", "99"]),
        ("flag: --device mps", [*segment, *FAST, "--device", "mps"]),
        ("flag: --device cuda:7", [*segment, *FAST, "--device", "cuda:7"]),
        ("flag: --device toaster", [*segment, *FAST, "--device", "toaster"]),
        ("flag: --backbone ViT-Z/99", [*segment, *FAST, "--backbone", "ViT-Z/99"]),
        ("flag: --pretrained nonsense", [*segment, "--pretrained", "nonsense", "--max-proposals", "4"]),
        ("weights: missing file", [*segment, "--weights", str(out / "nope.pt")]),
        ("weights: malicious pickle", [*segment, "--weights", str(files["malicious checkpoint"])]),
        ("weights: garbage", [*segment, "--weights", str(files["garbage checkpoint"])]),
        ("sam: malicious pickle", [*segment, *FAST, "--proposals", "sam", "--sam-model", "vit_b",
                                   "--sam-checkpoint", str(files["malicious checkpoint"])]),
        ("sam: no checkpoint", [*segment, *FAST, "--proposals", "sam"]),
        ("proposals file: missing path", [*segment, *FAST, "--proposals", "file"]),
        ("eval: --limit 0", ["eval", "--data", str(out), "--out", str(out / "run"), "--limit", "0"]),
        ("eval: --limit -1", ["eval", "--data", str(out), "--out", str(out / "run"), "--limit", "-1"]),
        ("eval: no dataset", ["eval", "--data", str(out), "--out", str(out / "run"), "--weights", "random"]),
        ("eval: malformed refs", ["eval", "--data", str(files["malformed dataset"]), "--out", str(out / "run"),
                                  "--weights", "random"]),
        ("eval: --workers 0", ["eval", "--data", str(out), "--out", str(out / "run"), "--workers", "0"]),
        ("proposals-eval: malformed refs", ["proposals-eval", "--data", str(files["malformed dataset"])]),
        ("freesolo: not its checkpoint", [*segment, *FAST, "--proposals", "freesolo", "--freesolo-checkpoint",
                                          str(files["not FreeSOLO's checkpoint"])]),
        ("freesolo: malicious pickle", [*segment, *FAST, "--proposals", "freesolo", "--freesolo-checkpoint",
                                        str(files["malicious checkpoint"])]),
        ("freesolo: missing checkpoint", [*segment, *FAST, "--proposals", "freesolo", "--freesolo-checkpoint",
                                          str(out / "nope.pth")]),
        ("preset: contradicting --alpha", ["eval", "--data", str(out), "--out", str(out / "run"), "--preset", "paper",
                                           "--alpha", "0.3"]),
        ("preset: contradicting --proposals", [*segment, "--preset", "paper", "--proposals", "sam"]),
        ("phrasecut: task without Polygons", ["eval", "--data", str(files["PhraseCut task without Polygons"]),
                                              "--dataset", "phrasecut", "--out", str(out / "run"), *FAST]),
        ("proposals: images and a dataset", ["proposals", str(EXAMPLE), "--data", str(out), "-o", str(out / "p.json")]),
        ("proposals: no such image", ["proposals", str(out / "nope.png"), "-o", str(out / "p.json")]),
        ("proposals: --proposals file", ["proposals", str(EXAMPLE), "--proposals", "file", "-o", str(out / "p.json")]),
        ("flag: --image-timeout 0", ["eval", "--data", str(out), "--out", str(out / "run"), "--image-timeout", "0"]),
        ("expression: not UTF-8 (shell bytes)", [*segment[:2], os.fsdecode(b"the \xff\xfe circle"), "-o", str(out),
                                                 *FAST]),
        ("calibration: nested 200000 deep", [*segment, *FAST, "--calibration", str(files["nested 200000 deep"])]),
        ("flag: another generator's --sam-checkpoint", [*segment, *FAST, "--sam-checkpoint", "s.pth"]),
        ("flag: --presence-threshold 2", [*segment, *FAST, "--proposals", "sam3", "--presence-threshold", "2"]),
        ("flag: --workers without --engine ray", ["eval", "--data", str(out), "--out", str(out / "run"),
                                                   "--workers", "5"]),
        ("flag: --cache with --no-cache", ["eval", "--data", str(out), "--out", str(out / "run"), "--cache",
                                           str(out / "c"), "--no-cache"]),
        ("flag: --gt-proposals with --proposals file", ["eval", "--data", str(out), "--out", str(out / "run"),
                                                        "--gt-proposals", "--proposals", "file"]),
    ]
    for name in ("a loop of symbolic links", "a FIFO", "a link to /dev/zero", "a folder"):
        cases.append((f"weights: {name}", [*segment, "--weights", str(files[name]), "--max-proposals", "4"]))
        cases.append((f"image: {name}", ["segment", str(files[name]), "a cat", "-o", str(out), *FAST]))
    for name in ("a FIFO", "a link to /dev/zero"):
        cases.append((f"proposals file: {name}", [*segment, *FAST[:2], "--proposals", "file", "--proposals-path",
                                                  str(files[name])]))
    for name in ("manifest: a FIFO", "manifest: a link to /dev/zero", "manifest: a key named twice",
                 "manifest: a NUL in an image path"):
        cases.append((name, ["batch", str(files[name]), "-o", str(out / "batch"), "--overwrite", *FAST]))
    for name in ("dataset: instances say 100000x100000", "dataset: instances.json a FIFO",
                 "dataset: instances.json nested 200000 deep"):
        cases.append((f"proposals-eval {name}", ["proposals-eval", "--data", str(files[name]), "--split", "train",
                                                 "--no-cache", "--max-proposals", "4"]))
    cases.append(("eval dataset: instances say 100000x100000",
                  ["eval", "--data", str(files["dataset: instances say 100000x100000"]), "--split", "train", "--out",
                   str(out / "run-huge"), "--no-cache", *FAST]))
    cases.append(("eval dataset: grefs(unc).json nested 200000 deep",
                  ["eval", "--data", str(files["dataset: grefs(unc).json nested 200000 deep"]), "--dataset",
                   "grefcoco", "--split", "train", "--out", str(out / "run"), "--weights", "random"]))
    cases += [
        ("hybridgl: on RN50", [*segment, *FAST, "--method", "hybridgl", "--backbone", "RN50"]),
        ("hybridgl: an unknown fusion", [*segment, *FAST, "--method", "hybridgl:fusion=sideways"]),
        ("hybridgl: with --spatial on", [*segment, *FAST, "--method", "hybridgl", "--backbone", "ViT-B/16",
                                         "--spatial", "on"]),
        ("hybridgl preset: --max-proposals 5", [*segment, "--weights", "random", "--preset", "hybridgl",
                                                "--max-proposals", "5"]),
        ("hybridgl preset: another method", [*segment, "--weights", "random", "--preset", "hybridgl", "--method",
                                             "cropping"]),
        ("hybridgl preset: SAM's points changed", [*segment, "--weights", "random", "--preset", "hybridgl",
                                                   "--proposal-option", "points_per_side=16"]),
        ("hybridgl preset: no SAM checkpoint", [*segment, "--weights", "random", "--preset", "hybridgl"]),
    ]
    for name in ("rle 100000x100000", "rle negative counts", "rle huge counts", "no proposals", "rle without counts",
                 "score not a number", "proposals not JSON", "NaN score", "box a million pixels out", "infinite box",
                 "nested 200000 deep", "an image named twice"):
        cases.append((f"proposals file: {name}", [*segment, *FAST[:2], "--proposals", "file",
                                                  "--proposals-path", str(files[name])]))
    return cases


def api_cases() -> list[tuple[str, Callable[[], object]]]:
    from zsris.images import load_image
    from zsris.proposals import create_proposals
    from zsris.text import check_expression

    return [
        ("api: bool array", lambda: load_image(np.ones((8, 8, 3), bool))),
        ("api: complex array", lambda: load_image(np.ones((8, 8, 3), np.complex64))),
        ("api: negative floats", lambda: load_image(-np.ones((8, 8, 3), np.float32), float_scale=1.0)),
        ("api: floats over 255", lambda: load_image(np.full((8, 8, 3), 300.0), float_scale=255.0)),
        ("api: NaN", lambda: load_image(np.full((8, 8, 3), np.nan), float_scale=1.0)),
        ("api: float image without its scale (near-black 0..255)",
         lambda: load_image(np.full((8, 8, 3), 0.8, np.float32))),
        ("api: 2-channel array", lambda: load_image(np.zeros((8, 8, 2), np.uint8))),
        ("api: empty array", lambda: load_image(np.zeros((0, 8, 3), np.uint8))),
        ("api: a list", lambda: load_image([[1, 2], [3, 4]])),
        ("api: bomb bytes", lambda: load_image(_png_of_size(20000, 20000))),
        ("api: zero-width expression", lambda: check_expression("\u200b\u200d")),
        ("api: non-text expression", lambda: check_expression(42)),
        ("api: lone surrogate in an expression", lambda: check_expression("a \ud83d dog")),
        ("api: max_proposals=0", lambda: create_proposals("classical", max_proposals=0)),
        ("api: max_proposals=-1", lambda: create_proposals("classical", max_proposals=-1)),
    ]


def run_cli(args: list[str]) -> tuple[str, str]:
    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(io.StringIO()):
            code = main(args)
    except SystemExit as stop:
        code = stop.code
    except BaseException as error:  # noqa: BLE001 - what the probe is looking for
        return "TRACEBACK", f"{type(error).__name__}: {error}"[:150]
    lines = [line for line in stderr.getvalue().splitlines() if line.strip() and not line.startswith("!!!")
             and "RANDOM weights" not in line]
    if code == 0:
        return "ACCEPTED", (lines[-1] if lines else "")[:150]
    return f"exit {code}", (lines[-1] if lines else "(no message)")[:150]


def run_api(call: Callable[[], object]) -> tuple[str, str]:
    try:
        call()
    except ZsrisError as error:
        return "ZsrisError", str(error)[:150]
    except BaseException as error:  # noqa: BLE001
        return "TRACEBACK", f"{type(error).__name__}: {error}"[:150]
    return "ACCEPTED", ""


def main_probe() -> int:
    root = Path(tempfile.mkdtemp(prefix="zsris-probe-"))
    files = _files(root)
    os.environ["TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"] = "1"  # the unsafe environment the checkpoints must survive
    results = [(name, *run_cli(args)) for name, args in cli_cases(files, root / "out")]
    results += [(name, *run_api(call)) for name, call in api_cases()]
    width = max(len(name) for name, _, _ in results)
    for name, outcome, message in results:
        print(f"{name:<{width}}  {outcome:<10}  {message}")
    tracebacks = sum(1 for _, outcome, _ in results if outcome == "TRACEBACK")
    accepted = sum(1 for _, outcome, _ in results if outcome == "ACCEPTED")
    print(f"\n{len(results)} bad inputs: {len(results) - tracebacks - accepted} handled cleanly, "
          f"{accepted} accepted, {tracebacks} tracebacks")
    return 1 if tracebacks else 0


if __name__ == "__main__":
    sys.exit(main_probe())

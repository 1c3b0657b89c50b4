"""Bad input and faults outside the service: unsafe checkpoints, proposal caches and files,
dataset images with EXIF orientation, REFER's reading of overlapping polygons, flag values,
concurrent runs and odd arrays or expressions given to the Python API."""
from __future__ import annotations

import json
import os
import pickle
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from test_service_hardening import bomb_png
from zsris.cache import ProposalCache, image_key
from zsris.cli import main
from zsris.config import ProposalSpec
from zsris.datasets import ReferDataset, segmentation_to_mask
from zsris.engine import Engine, Preparer
from zsris.errors import ExpressionError, ImageError, ImageTooLargeError, ProposalError, ZsrisError
from zsris.images import load_image
from zsris.jobs.evaluation import evaluate_proposals, load_dataset_image
from zsris.proposals import ClassicalProposals, FileProposals, Proposals, create_proposals
from zsris.store import PredictionStore
from zsris.text import ExpressionParser, check_expression

EXAMPLE = Path(__file__).resolve().parents[1] / "src" / "zsris" / "examples" / "shapes.png"


def _cli(*args: str, env: dict | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "zsris.cli", *args], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})})


# -- 1. images are checked from their header ---------------------------------------------------
@pytest.mark.slow
def test_bombs_are_refused_from_the_header_in_the_library_and_cli(tmp_path):
    for width, height, one_bit in ((13000, 13000, False), (30000, 30000, True)):
        data = bomb_png(width, height, one_bit)
        megapixels = width * height // 10**6
        with pytest.raises(ImageTooLargeError,
                           match=f"the image is ({width}x{height} = )?{megapixels} MP, over the limit of 40 MP"):
            load_image(data)
        path = tmp_path / f"bomb{width}.png"
        path.write_bytes(data)
        with pytest.raises(ImageTooLargeError):
            load_image(path)
    proc = _cli("segment", str(tmp_path / "bomb13000.png"), "a cat", "--weights", "random", "-o", str(tmp_path))
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().endswith("downscale it first or raise --max-pixels")


def test_small_pixel_limits_are_reported_readably():
    with pytest.raises(ImageTooLargeError, match="0.0012 MP, over the limit of 0.001 MP"):
        load_image(np.zeros((30, 40, 3), np.uint8), max_pixels=1000)


# -- 3. checkpoints never run code -------------------------------------------------------------
class _Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.slow
def test_malicious_checkpoints_are_refused_even_when_torch_is_told_to_unpickle(tmp_path):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pt"
    torch.save({"state_dict": {"x": torch.zeros(1)}, "payload": _Payload(marker)}, evil)
    unsafe_env = {"TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD": "1"}
    for args in (["--weights", str(evil)],
                 ["--weights", "random", "--proposals", "sam", "--sam-model", "vit_b", "--sam-checkpoint", str(evil)]):
        proc = _cli("segment", str(EXAMPLE), "the red circle", "-o", str(tmp_path / "out"), *args, env=unsafe_env)
        assert proc.returncode == 1, proc.stderr
        assert not marker.exists(), "the checkpoint's pickle ran code"
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and "is refused: it is not plain weights (it references posix.system)" in lines[0]
        assert "weights_only=False" not in proc.stderr


@pytest.mark.slow
def test_an_openai_state_dict_loads_through_the_safe_path(vit_b32, tmp_path):
    from zsris.backbones import load_backbone

    path = tmp_path / "ViT-B-32.pt"
    original = vit_b32.model.state_dict()
    torch.save(original, path)
    loaded = load_backbone("ViT-B/32", weights=str(path)).model.state_dict()
    assert loaded.keys() == original.keys()
    for key, value in original.items():  # OpenAI checkpoints are fp16 where open_clip casts them
        assert torch.equal(loaded[key], value) or torch.equal(loaded[key], value.half().float()), key


# -- 4. caches and dataset images --------------------------------------------------------------
def test_cache_tells_apart_images_that_share_a_file_name(tmp_path):
    for folder, value in (("a", 0), ("b", 255)):
        (tmp_path / folder).mkdir()
        Image.fromarray(np.full((8, 8, 3), value, np.uint8)).save(tmp_path / folder / "000001.jpg")
    first, second = tmp_path / "a" / "000001.jpg", tmp_path / "b" / "000001.jpg"
    assert image_key(first) != image_key(second) and image_key(first).startswith("000001-")
    cache = ProposalCache(tmp_path / "cache", "test-generator")
    made = []

    def make(size: int):
        made.append(size)
        masks = np.zeros((1, 8, 8), bool)
        masks[0, :size] = True
        return Proposals(masks, [1.0])

    assert cache.get_or_make(first, lambda: make(2))[0].masks[0].sum() == 16
    assert cache.get_or_make(second, lambda: make(5))[0].masks[0].sum() == 40
    assert cache.get_or_make(first, lambda: make(7))[0].masks[0].sum() == 16
    assert made == [2, 5]


def _mini_refer(root: Path, orientation: int, polygons: list[list[float]], size=(120, 80)) -> ReferDataset:
    """A one-image REFER dataset: a white rectangle on black, annotated on the stored grid, and
    the JPEG tagged with an EXIF orientation that a viewer would apply."""
    width, height = size
    stored = np.zeros((height, width, 3), np.uint8)
    stored[10:40, 15:60] = 255
    (root / "refcoco").mkdir(parents=True)
    (root / "images" / "train2014").mkdir(parents=True)
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(stored).save(root / "images" / "train2014" / "img.png", exif=exif)
    refs = [{"ref_id": 1, "ann_id": 10, "image_id": 7, "category_id": 1, "split": "train",
             "sentences": [{"sent_id": 100, "sent": "the white box"}, {"sent_id": 101, "sent": "box"}]}]
    (root / "refcoco" / "refs(unc).p").write_bytes(pickle.dumps(refs))
    instances = {"images": [{"id": 7, "file_name": "img.png", "height": height, "width": width}],
                 "annotations": [{"id": 10, "image_id": 7, "category_id": 1, "segmentation": polygons}],
                 "categories": [{"id": 1, "name": "box"}]}
    (root / "refcoco" / "instances.json").write_text(json.dumps(instances))
    return ReferDataset(root, "refcoco")


BOX = [[15, 10, 60, 10, 60, 40, 15, 40]]


@pytest.mark.parametrize("orientation", [3, 6])
def test_dataset_images_keep_the_grid_their_annotations_use(tmp_path, orientation):
    dataset = _mini_refer(tmp_path, orientation, BOX)
    assert load_image(dataset.image_path(7)).shape[:2] == ((80, 120) if orientation == 3 else (120, 80))
    pixels = load_dataset_image(dataset, 7)
    target = dataset.annotation_mask(10)
    assert pixels.shape[:2] == target.shape == (80, 120)
    assert pixels[target].min() == 255 and pixels[~target].max() == 0
    engine = Engine(Preparer(ProposalSpec(max_proposals=20), exif_transpose=False))
    summary = evaluate_proposals(dataset, dataset.refs_by_image("train"), engine, show_progress=False)
    assert summary["objects"] == 1 and summary["proposals/image"] > 0
    code = main(["eval", "--data", str(tmp_path), "--split", "train", "--out", str(tmp_path / "run"),
                 "--weights", "random", "--gt-proposals", "--no-cache"])
    assert code == 0
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())["metrics"]
    assert metrics["oracle mIoU"] == 100.0 and metrics["mIoU"] == 100.0


def test_overlapping_polygons_read_as_refer_or_union(tmp_path, capsys):
    polygons = [[10, 10, 50, 10, 50, 50, 10, 50], [30, 30, 70, 30, 70, 70, 30, 70]]
    refer = segmentation_to_mask(polygons, 80, 120, overlaps="refer")
    union = segmentation_to_mask(polygons, 80, 120, overlaps="union")
    overlap = segmentation_to_mask(polygons[:1], 80, 120) & segmentation_to_mask(polygons[1:], 80, 120)
    assert overlap.sum() > 300
    assert np.array_equal(union & ~overlap, refer) and np.array_equal(refer | overlap, union)
    assert np.array_equal(segmentation_to_mask(BOX, 80, 120, overlaps="refer"), segmentation_to_mask(BOX, 80, 120))
    dataset = _mini_refer(tmp_path, 1, polygons)
    assert dataset.gt_mask == "refer" and np.array_equal(dataset.annotation_mask(10), refer)
    out = tmp_path / "q.json"
    assert main(["proposals-eval", "--data", str(tmp_path), "--split", "train", "--no-cache", "--max-proposals", "5",
                 "--out", str(out)]) == 0
    metrics = json.loads(out.read_text())["metrics"]
    assert metrics["gt mask"] == "refer"
    assert metrics["objects where refer != union"] == 1 and metrics["sentences where refer != union"] == 2
    assert main(["eval", "--data", str(tmp_path), "--split", "train", "--out", str(tmp_path / "run"),
                 "--weights", "random", "--gt-proposals", "--gt-mask", "union"]) == 0
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["settings"]["gt_mask"] == "union"
    capsys.readouterr()
    assert main(["eval", "--data", str(tmp_path), "--split", "train", "--out", str(tmp_path / "run"),
                 "--weights", "random", "--gt-proposals"]) == 1
    assert "other settings (gt_mask differ)" in capsys.readouterr().err


# -- 5. proposal files -------------------------------------------------------------------------
@pytest.mark.parametrize("segmentation, message", [
    ({"size": [100000, 100000], "counts": "PPYo1"}, "RLE size 100000x100000 differs from the image's 40x60"),
    ({"size": [40, 60], "counts": [-5, 2405]}, "non-negative"),
    ({"size": [40, 60], "counts": [10 ** 30]}, "cover"),
    ({"size": [40, -60], "counts": [2400]}, "positive integers"),
    ({"size": [40, 60]}, "'size' and 'counts'"),
])
def test_malformed_proposal_files_are_refused_before_decoding(tmp_path, segmentation, message):
    (tmp_path / "p.json").write_text(json.dumps({"img.png": [{"segmentation": segmentation}]}))
    with pytest.raises(ProposalError, match=message):
        FileProposals(tmp_path / "p.json")(np.zeros((40, 60, 3), np.uint8), "img.png")


@pytest.mark.slow
def test_an_image_without_proposals_in_a_file_is_one_line(tmp_path):
    Image.fromarray(np.zeros((40, 60, 3), np.uint8)).save(tmp_path / "small.jpg")
    (tmp_path / "p.json").write_text(json.dumps({"small.jpg": []}))
    assert len(FileProposals(tmp_path / "p.json")(np.zeros((40, 60, 3), np.uint8), "small.jpg")) == 0
    proc = _cli("segment", str(tmp_path / "small.jpg"), "a thing", "--weights", "random", "--proposals", "file",
                "--proposals-path", str(tmp_path / "p.json"), "-o", str(tmp_path / "out"))
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("zsris: error: no mask proposals in small.jpg")


# -- 6. flag values ----------------------------------------------------------------------------
@pytest.mark.parametrize("args, message", [
    (["segment", "x.jpg", "a", "--max-proposals", "0"], "must be at least 1, not 0"),
    (["segment", "x.jpg", "a", "--max-proposals", "-3"], "must be at least 1, not -3"),
    (["segment", "x.jpg", "a", "--batch-size", "0"], "must be at least 1"),
    (["segment", "x.jpg", "a", "--batch-size", "-1"], "must be at least 1"),
    (["eval", "--data", "d", "--out", "o", "--limit", "0"], "must be at least 1"),
    (["eval", "--data", "d", "--out", "o", "--limit", "-2"], "must be at least 1"),
])
def test_zero_and_negative_counts_are_refused(args, message, capsys):
    with pytest.raises(SystemExit) as stop:
        main(args)
    assert stop.value.code == 2 and message in capsys.readouterr().err


def test_the_proposal_cap_is_lifted_only_explicitly():
    from zsris.cli import make_parser

    assert make_parser().parse_args(["segment", "x.jpg", "a", "--max-proposals", "all"]).max_proposals is None
    assert ClassicalProposals(max_proposals=None).config.max_proposals is None
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ZsrisError, match="positive count or None"):
            create_proposals("classical", max_proposals=bad)


@pytest.mark.slow
def test_a_missing_device_backend_is_one_line(tmp_path):
    proc = _cli("segment", str(EXAMPLE), "the red circle", "--weights", "random", "--device", "mps",
                "-o", str(tmp_path))
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "device 'mps' asked for, but mps is not available here" in proc.stderr


def test_batch_size_is_checked_by_the_segmenter(tiny_vit):
    from zsris.segmenter import Segmenter

    for bad in (0, -4):
        with pytest.raises(ZsrisError, match="batch_size must be a positive count"):
            Segmenter(tiny_vit, ClassicalProposals(max_proposals=4), batch_size=bad, parser=ExpressionParser())


# -- 7. one process per run --------------------------------------------------------------------
OPEN_STORE = textwrap.dedent("""
    import sys, time
    from zsris.errors import ZsrisError
    from zsris.store import PredictionStore
    try:
        store = PredictionStore(sys.argv[1], {"a": 1})
    except ZsrisError as error:
        print("REFUSED", error)
    else:
        time.sleep(0.3)
        print("OK")
""")


@pytest.mark.slow
def test_concurrent_creation_of_one_run_never_leaks_sqlite_errors(tmp_path):
    outcomes = []
    for trial in range(10):
        path = tmp_path / f"run{trial}" / "predictions.sqlite"
        processes = [subprocess.Popen([sys.executable, "-c", OPEN_STORE, str(path)], stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True) for _ in range(3)]
        for process in processes:
            out, err = process.communicate(timeout=120)
            assert process.returncode == 0 and not err.strip(), err
            outcomes.append(out.split()[0])
            assert out.startswith("OK") or "is in use by another zsris process (pid" in out
    assert set(outcomes) <= {"OK", "REFUSED"} and "OK" in outcomes


@pytest.mark.slow
def test_a_run_held_by_a_live_process_is_refused_then_free_after_it_ends(tmp_path):
    path = tmp_path / "run" / "predictions.sqlite"
    with PredictionStore(path, {"a": 1}):
        with pytest.raises(ZsrisError, match=f"in use by another zsris process \\(pid {os.getpid()}\\)"):
            PredictionStore(path, {"a": 1})
        proc = _cli("eval", "--data", str(tmp_path), "--out", str(tmp_path / "run"), "--weights", "random")
        assert proc.returncode == 1  # no dataset here either way: it must not hang or trace back
        assert "Traceback" not in proc.stderr
    with PredictionStore(path, {"a": 1}) as store:
        assert store.done() == set()


# -- 8. the Python API's inputs ----------------------------------------------------------------
@pytest.mark.parametrize("array, scale, message", [
    (np.ones((4, 4, 3), bool), None, "integers or floats, not bool"),
    (np.ones((4, 4, 3), np.complex64), None, "not complex64"),
    (-np.ones((4, 4, 3), np.float32), 1.0, "not -1..-1"),
    (np.full((4, 4), 300.0), 255.0, "in 0..255, not 300..300"),
    (np.full((4, 4), 0.5), None, "ambiguous"),
    (-np.ones((4, 4, 3), np.int16), None, "0..255"),
])
def test_arrays_that_are_not_images_are_refused(array, scale, message):
    with pytest.raises(ImageError, match=message):
        load_image(array, float_scale=scale)


@pytest.mark.parametrize("text", ["\u200b", "\x00\x00", " \u200d\ufeff\u2060 ", "\u200b\n\x00"])
def test_expressions_without_a_visible_character_are_empty(text):
    with pytest.raises(ExpressionError, match="empty"):
        check_expression(text)
    with pytest.raises(ExpressionError):
        ExpressionParser()(text)
    assert check_expression("a\u200bcat") == "a\u200bcat"


def test_paths_that_are_not_files_say_what_they_are(tmp_path):
    """#38: a link loop read as "no such file"; a folder, a FIFO or a link to /dev/zero as --weights
    read as "does not exist"."""
    from zsris.backbones import load_backbone
    from zsris.errors import WeightsError
    from zsris.images import load_image

    (tmp_path / "a").symlink_to(tmp_path / "b")
    (tmp_path / "b").symlink_to(tmp_path / "a")
    os.mkfifo(tmp_path / "fifo.pt")
    (tmp_path / "zero.pt").symlink_to("/dev/zero")
    (tmp_path / "folder.pt").mkdir()
    (tmp_path / "gone.pt").symlink_to(tmp_path / "nowhere.pt")
    expected = {"a": "a loop of symbolic links", "fifo.pt": "not a regular file", "zero.pt": "not a regular file",
                "folder.pt": "is a directory: pass the weights file in it", "gone.pt": "a symbolic link to nothing"}
    for name, words in expected.items():
        with pytest.raises(WeightsError, match=re.escape(words)):
            load_backbone("ViT-B/32", weights=str(tmp_path / name))
    with pytest.raises(ImageError, match="a loop of symbolic links"):
        load_image(tmp_path / "a")


def test_a_report_names_what_failed_and_forgets_it_once_mended(tmp_path):
    """#38: an eval whose image failed showed only "images failed 1"."""
    from zsris.report import write_report

    good = {"image_id": 1, "iou": 0.5, "intersection": 1, "union": 2}
    bad = {"image_id": 2, "iou": 0.0, "intersection": 0, "union": 9, "error": "2.jpg: truncated"}
    written = write_report(tmp_path, {"images failed": 1}, {}, [good, bad, dict(bad)], "t")
    assert tmp_path / "errors.jsonl" in written
    assert [json.loads(line) for line in (tmp_path / "errors.jsonl").read_text().splitlines()] == [
        {"image_id": 2, "error": "2.jpg: truncated", "sentences": 2}]
    assert "- image 2 (2 sentences, counted as misses): 2.jpg: truncated" in (tmp_path / "report.md").read_text()
    write_report(tmp_path, {"images failed": 0}, {}, [good], "t")  # the rerun that mended it
    assert not (tmp_path / "errors.jsonl").exists() and "What failed" not in (tmp_path / "report.md").read_text()


def test_an_annotated_size_the_image_does_not_have_is_not_drawn(refcoco_mini, tiny_vit, tmp_path):
    """#38: instances.json giving an image 100000 x 100000 pixels made eval allocate until memory ran out."""
    from zsris.jobs.evaluation import ImageEvaluator
    from zsris.segmenter import Segmenter

    (tmp_path / "refcoco").mkdir()
    (tmp_path / "images").symlink_to((refcoco_mini / "images").resolve())
    (tmp_path / "refcoco" / "refs(unc).p").symlink_to((refcoco_mini / "refcoco" / "refs(unc).p").resolve())
    instances = json.loads((refcoco_mini / "refcoco" / "instances.json").read_text())
    dataset = ReferDataset(refcoco_mini, "refcoco")
    image_id = next(iter(dataset.refs_by_image("train", 1)))
    for image in instances["images"]:
        if image["id"] == image_id:
            image["height"] = image["width"] = 30_000  # 900 MB a mask, over the 40 MP pixel limit
    (tmp_path / "refcoco" / "instances.json").write_text(json.dumps(instances))
    bigger = ReferDataset(tmp_path, "refcoco")
    evaluator = ImageEvaluator(Segmenter(tiny_vit, ClassicalProposals(max_proposals=2)), bigger)
    records = evaluator(image_id, bigger.refs_by_image("train", 1)[image_id])
    assert records and all(r["union"] == 0 and "annotations say 30000x30000" in r["error"] for r in records)


def test_a_cache_entry_that_does_not_hold_together_is_made_anew(tmp_path):
    """#38: an entry without scores (or with masks of mixed sizes) failed every sentence on every run."""
    from zsris.masks import encode_rle

    Image.fromarray(np.zeros((6, 8, 3), np.uint8)).save(tmp_path / "a.png")
    cache = ProposalCache(tmp_path / "cache", "test-generator")
    masks = np.zeros((2, 6, 8), bool)
    masks[0, :3], masks[1, 3:] = True, True
    made = []

    def make() -> Proposals:
        made.append(1)
        return Proposals(masks, np.array([0.9, 0.8], np.float32))

    cache.get_or_make(tmp_path / "a.png", make, (6, 8))
    entry_path = next(cache.folder.glob("a-*.json"))
    good = json.loads(entry_path.read_text())
    broken = [{k: v for k, v in good.items() if k != "scores"},  # no scores
              {**good, "masks": [good["masks"][0], encode_rle(np.zeros((5, 8), bool))]},  # mixed sizes
              {**good, "scores": [0.9, float("nan")]},  # not finite
              {**good, "scores": [0.9]}]  # another count
    for entry in broken:
        entry_path.write_text(json.dumps(entry))
        before = len(made)
        proposals, _ = cache.get_or_make(tmp_path / "a.png", make, (6, 8))
        assert len(made) == before + 1 and len(proposals) == 2
    assert len(made) == 5
    cache.get_or_make(tmp_path / "a.png", make, (6, 8))
    assert len(made) == 5  # the remade entry is used
    cache.get_or_make(tmp_path / "a.png", make, (7, 8))  # the image is not the size the entry says
    assert len(made) == 6


def test_a_mask_edited_inside_a_proposals_folder_changes_its_cache_key(tmp_path):
    """#38: the key held the folder's time only, so an edited mask left stale proposals in use."""
    (tmp_path / "a").mkdir()
    mask = tmp_path / "a" / "0.png"
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(mask)
    first = FileProposals(tmp_path).cache_key
    assert FileProposals(tmp_path).cache_key == first
    Image.fromarray(np.full((4, 4), 255, np.uint8)).save(mask)
    os.utime(mask, ns=(1, 1))
    assert FileProposals(tmp_path).cache_key != first


def test_dataset_and_proposal_files_are_read_only_when_regular_and_bounded(tmp_path, monkeypatch):
    """#38: a proposals file that was a FIFO or a link to /dev/zero was looked into as a folder
    ("no proposal masks"), a dataset's refs or instances as "no such file"; nothing capped their
    size, and each is read whole. Each now says what it is, before it is opened."""
    import signal

    from zsris import datasets
    from zsris.datasets import load_plain_pickle, read_json_list
    from zsris.errors import DatasetError
    from zsris.proposals import file as proposals_file

    os.mkfifo(tmp_path / "fifo.json")
    (tmp_path / "zero.json").symlink_to("/dev/zero")
    (tmp_path / "large.json").write_text(json.dumps({"a.jpg": []}) + " " * 100)
    monkeypatch.setattr(proposals_file, "MAX_PROPOSALS_FILE_BYTES", 64)
    monkeypatch.setattr(datasets, "MAX_DATASET_FILE_BYTES", 64)
    instances = ReferDataset.__new__(ReferDataset)
    refused = {"fifo.json": "not a regular file .a pipe, socket or device.",
               "zero.json": "not a regular file .a pipe, socket or device.",
               "large.json": "113 bytes, over the limit of 64 for a file read whole"}
    signal.alarm(20)  # a regression would hang on the FIFO: fail instead
    try:
        for name, words in refused.items():
            path = tmp_path / name
            with pytest.raises(ProposalError, match=f"{name}: {words}, not a proposals file or folder$"):
                FileProposals(path)
            with pytest.raises(DatasetError, match=rf"{name}: {words} \(the dataset's refs file\)$"):
                read_json_list(path, "refs")
            with pytest.raises(DatasetError, match=rf"{name}: {words} \(the dataset's refs file\)$"):
                load_plain_pickle(path)
            instances.instances_path = path
            with pytest.raises(DatasetError, match=rf"{name}: {words} \(the dataset's instances file\)$"):
                instances._read_instances()
    finally:
        signal.alarm(0)
    with pytest.raises(ProposalError, match="nope.json: no such proposals file or folder$"):
        FileProposals(tmp_path / "nope.json")
    with pytest.raises(DatasetError, match="nope.json: no such refs file$"):
        read_json_list(tmp_path / "nope.json", "refs")


def test_a_manifest_row_naming_a_key_twice_is_refused(tmp_path):
    """#38: a JSONL row with two "expression" keys used the last in silence (CSV's header is
    already refused so)."""
    from zsris.jobs.pairs import ManifestError, read_manifest

    manifest = tmp_path / "m.jsonl"
    manifest.write_text('{"image": "a.png", "expression": "the cat"}\n'
                        '{"image": "b.png", "expression": "the cat", "expression": "the dog"}\n')
    with pytest.raises(ManifestError, match="m.jsonl line 2: names 'expression' twice .which one is meant..$"):
        read_manifest(manifest)
    manifest.write_text('{"image": "a.png", "expression": "the \u2028 cat \u0085"}\n')  # one row, one expression
    assert [pair.expression for pair in read_manifest(manifest)] == ["the \u2028 cat \u0085"]


def test_proposal_quality_draws_no_target_of_a_failed_image_over_the_pixel_limit(tmp_path, monkeypatch, capsys):
    """#38: zsris proposals-eval drew the targets of an image whose instances.json says 100000 x
    100000 pixels (the image is 120 x 80, so it fails) on that grid: 10 GB a mask, a crash under
    a memory limit. A failed image over the limit counts IoU 0 without drawing; one within it as
    before; and a split whose every image failed is no result (it printed a table and exit 0)."""
    from zsris.datasets import ImageInfo

    dataset = _mini_refer(tmp_path, 1, BOX)
    refs = dataset.refs_by_image("train")
    drawn = []
    annotation_mask = dataset.annotation_mask
    monkeypatch.setattr(dataset, "annotation_mask", lambda *args: drawn.append(args) or annotation_mask(*args))
    for height, width, draws in ((100_000, 100_000, 0), (60, 90, 2)):  # both fail: the image is 120 x 80
        dataset.images[7] = ImageInfo(7, "img.png", height, width)
        drawn.clear()
        engine = Engine(Preparer(ProposalSpec(max_proposals=2), exif_transpose=False))
        summary = evaluate_proposals(dataset, refs, engine, show_progress=False)
        assert summary["images failed"] == 1 and summary["objects"] == 1 and summary["oracle mIoU"] == 0.0
        assert len(drawn) == draws
    instances = json.loads((tmp_path / "refcoco" / "instances.json").read_text())
    instances["images"][0]["height"] = instances["images"][0]["width"] = 100_000
    (tmp_path / "refcoco" / "instances.json").write_text(json.dumps(instances))
    capsys.readouterr()
    assert main(["proposals-eval", "--data", str(tmp_path), "--split", "train", "--no-cache"]) == 1
    assert capsys.readouterr().err.strip().endswith("every one of the 1 images failed (the first: image 7: "
                                                    f"{tmp_path / 'images' / 'train2014' / 'img.png'} is 120x80, but "
                                                    "its annotations say 100000x100000); the table counts their "
                                                    "objects as misses, but it is no result")

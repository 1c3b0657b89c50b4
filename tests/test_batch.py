"""`zsris batch`, `BatchJob` and `segment_pairs`: inputs, outputs, bad rows, kill-and-resume.

The images are drawn here (shapes on plain backgrounds, as the bundled example), so that every
test runs without refcoco-mini; CLIP is the real ViT-B/32 with random weights.
"""
from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from zsris import EXAMPLE_IMAGE
from zsris.cli import main
from zsris.cli.batch import SOME_FAILED
from zsris.jobs.pairs import ManifestError, Pair, folder_pairs, output_name, read_manifest
from zsris.masks import decode_rle

from conftest import count_rows

FAST = ["--weights", "random", "--max-proposals", "6"]


def _draw(path: Path, seed: int, size=(160, 120)) -> None:
    rng = np.random.default_rng(seed)
    image = Image.new("RGB", size, tuple(int(v) for v in rng.integers(0, 80, 3)))
    draw = ImageDraw.Draw(image)
    for _ in range(3):
        x, y = int(rng.integers(0, size[0] - 40)), int(rng.integers(0, size[1] - 40))
        shape = draw.ellipse if rng.random() < 0.5 else draw.rectangle
        shape([x, y, x + int(rng.integers(20, 40)), y + int(rng.integers(20, 40))],
              fill=tuple(int(v) for v in rng.integers(120, 256, 3)))
    image.save(path)


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    """A folder of images in nested folders, with odd-case suffixes and a file that is no image."""
    root = tmp_path_factory.mktemp("photos")
    (root / "sub" / "deeper").mkdir(parents=True)
    _draw(root / "a.png", 1)
    _draw(root / "sub" / "b.JPG", 2)
    _draw(root / "sub" / "deeper" / "c.webp", 3)
    (root / "notes.txt").write_text("not an image")
    return root


def _results(out: Path, name: str = "results.jsonl") -> list[dict]:
    return [json.loads(line) for line in (out / name).read_text().splitlines()]


def _write_csv(path: Path, rows: list[dict], fields=("id", "image", "expression")) -> Path:
    with open(path, "w", newline="") as stream:
        writer = csv.DictWriter(stream, fields)
        writer.writeheader()
        writer.writerows(rows)
    return path


# -- inputs ----------------------------------------------------------------------------------
def test_a_folder_gives_every_image_against_every_expression(photos):
    pairs = folder_pairs(photos, ["the dog", "the cat"])
    assert [p.id for p in pairs] == ["a.png#1", "a.png#2", "sub/b.JPG#1", "sub/b.JPG#2",
                                     "sub/deeper/c.webp#1", "sub/deeper/c.webp#2"]
    assert pairs[3].expression == "the cat" and Path(pairs[3].path) == photos / "sub" / "b.JPG"


def test_folder_refusals(tmp_path, photos):
    with pytest.raises(ManifestError, match="holds no images"):
        folder_pairs(tmp_path, ["x"])
    with pytest.raises(ManifestError, match="give one or more -e"):
        folder_pairs(photos, [])


MANIFESTS = {
    "csv": 'image,expression,id\nx.jpg,"the dog, on the left",first\nsub/y.png,"a ""quoted"" cat",\n',
    "tsv": 'image\texpression\tid\nx.jpg\tthe dog, on the left\tfirst\nsub/y.png\t"a ""quoted"" cat"\t\n',
    "jsonl": '{"image": "x.jpg", "expression": "the dog, on the left", "id": "first"}\n\n'
             '{"image": "sub/y.png", "expression": "a \\"quoted\\" cat"}\n',
}


@pytest.mark.parametrize("kind", MANIFESTS)
def test_the_three_manifest_forms_read_alike(tmp_path, kind):
    path = tmp_path / f"pairs.{kind}"
    path.write_text(MANIFESTS[kind])
    pairs = read_manifest(path)
    assert [(p.id, p.image, p.expression, p.error) for p in pairs] == [
        ("first", "x.jpg", "the dog, on the left", None), ("3", "sub/y.png", 'a "quoted" cat', None)]
    assert pairs[1].path == str(tmp_path / "sub" / "y.png")  # relative to the manifest's folder


def test_rows_that_cannot_be_done_become_error_pairs(tmp_path):
    path = tmp_path / "pairs.jsonl"
    lines = [{"image": "../outside.jpg", "expression": "x"}, {"image": "a.jpg"}, {"expression": "y"},
             {"image": "/abs/z.jpg", "expression": "z"}, {"image": "  ", "expression": "w"}]
    path.write_text("".join(json.dumps(r) + "\n" for r in lines))
    errors = [p.error for p in read_manifest(path)]
    assert "outside the manifest's folder; give --allow-outside" in errors[0]
    assert errors[1] == "line 2 has no expression" and errors[2] == "line 3 has no image"
    assert errors[3] is None  # absolute paths are the user's to give
    assert errors[4] == "line 5 has an empty image path"
    assert read_manifest(path, allow_outside=True)[0].error is None


@pytest.mark.parametrize("content, message", [
    ('image,expression\nok.jpg,dog\n"b.jpg,cat\nc.jpg,x\n', "line 3: unexpected end of data"),
    ("img,expr\na,b\n", "line 1: the header has no 'image' or 'expression' column"),
    ("image,expression\n", "holds no rows"),
    ("id,image,expression\n7,a.jpg,x\n7,b.jpg,y\n", "line 3: id '7' is also the id of line 2"),
    ("image,expression,expression\na.jpg,x,y\n", "line 1: the header names 'expression' twice"),
])
def test_manifests_that_cannot_be_read_are_refused_with_the_line(tmp_path, content, message):
    path = tmp_path / "pairs.csv"
    path.write_text(content)
    with pytest.raises(ManifestError, match=message.replace("(", r"\(")):
        read_manifest(path)


@pytest.mark.parametrize("kind", ["csv", "jsonl"])
def test_rows_end_at_line_breaks_alone(tmp_path, kind):
    """U+2028, U+2029 and U+0085 inside an expression are characters of it (str.splitlines would
    end a row there); a NUL in an image path fails its own row, not the batch."""
    expression = "the cat\u2028on the left\u0085 and\u2029 more"
    path = tmp_path / f"pairs.{kind}"
    if kind == "csv":
        path.write_text(f"image,expression\r\na.jpg,{expression}\r\nb.jpg,dog\r\n", newline="")
    else:
        rows = [{"image": "a.jpg", "expression": expression}, {"image": "b.jpg", "expression": "dog"}]
        path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\r\n" for r in rows), newline="")
    pairs = read_manifest(path)
    assert [(p.image, p.expression, p.error) for p in pairs] == [("a.jpg", expression, None), ("b.jpg", "dog", None)]
    nul = tmp_path / "nul.jsonl"
    nul.write_text('{"image": "a\\u0000.jpg", "expression": "x"}\n{"image": "b.jpg", "expression": "y"}\n')
    assert [p.error for p in read_manifest(nul)] == ["line 1: the image path holds a NUL character", None]


def test_jsonl_and_encoding_errors_name_the_line(tmp_path):
    path = tmp_path / "pairs.jsonl"
    path.write_text('{"image": "a.jpg", "expression": "x"}\n{"image": \n')
    with pytest.raises(ManifestError, match="line 2: not JSON"):
        read_manifest(path)
    path.write_text('{"image": "a.jpg", "expression": "x"}\n["a.jpg", "x"]\n')
    with pytest.raises(ManifestError, match="line 2: expected an object"):
        read_manifest(path)
    path.write_bytes(b'{"image": "a.jpg", "expression": "x"}\n{"image": "\xff.jpg", "expression": "y"}\n')
    with pytest.raises(ManifestError, match="line 2: not UTF-8"):
        read_manifest(path)
    with pytest.raises(ManifestError, match="ends in .csv"):
        read_manifest(tmp_path / "pairs.xlsx")


@pytest.mark.parametrize("image", ["../../etc/passwd", "/etc/cron.d/job.jpg", "..", "a/../../b.png", ".hidden.jpg",
                                   "x" * 400 + ".jpg", "dir\\..\\evil.jpg", "sp ace/é.png"])
def test_output_names_never_leave_the_folder(tmp_path, image):
    name = output_name(Pair("3", image, "", "x", "3"))
    assert "/" not in name and "\\" not in name and not name.startswith(".") and len(name) <= 170
    target = (tmp_path / f"{name}.png").resolve()
    assert target.parent == tmp_path.resolve()


def test_output_names_keep_pairs_apart():
    names = {output_name(Pair("1", image, "", "x", "1")) for image in ("a/b.jpg", "a_b.jpg", "a__b.jpg", "a b.jpg")}
    assert len(names) == 4


# -- the command ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def folder_run(photos, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("batch") / "out"
    code = main(["batch", str(photos), "-e", "the red circle", "-e", "the big box", "-o", str(out), "--save-masks",
                 "--save-overlays", "--format", "coco", "--top-k", "3", *FAST])
    assert code == 0
    return out


@pytest.mark.slow
def test_folder_run_writes_results_masks_overlays_and_coco(folder_run, photos):
    from pycocotools.coco import COCO

    records = _results(folder_run)
    assert [r["id"] for r in records] == [p.id for p in folder_pairs(photos, ["a", "b"])]
    assert (folder_run / "errors.jsonl").read_text() == ""
    for record in records:
        assert set(record) >= {"id", "image", "expression", "noun_phrase", "mask", "box", "score", "top_proposals"}
        assert len(record["top_proposals"]) == 3 and record["top_proposals"][0]["score"] == record["score"]
        mask = decode_rle(record["mask"])
        name = output_name(Pair(record["id"], record["image"], "", "", "e" + record["id"][-1]))
        np.testing.assert_array_equal(np.asarray(Image.open(folder_run / "masks" / f"{name}.png")) > 0, mask)
        assert Image.open(folder_run / "overlays" / f"{name}.png").width == mask.shape[1]
    settings = json.loads((folder_run / "settings.json").read_text())
    assert settings["backbone"] == "ViT-B-32" and settings["top_k"] == 3 and settings["parser"]["name"]
    coco = COCO(str(folder_run / "coco_images.json"))
    results = coco.loadRes(str(folder_run / "coco_results.json"))
    assert len(results.anns) == 6 and sorted(coco.getImgIds()) == [1, 2, 3]
    first = results.anns[1]
    assert first["expression"] == "the red circle" and first["area"] == decode_rle(records[0]["mask"]).sum()


@pytest.mark.slow
def test_batch_answers_equal_segment_answers(folder_run, photos, tmp_path, capsys):
    """No per-pair difference: the batch's masks and scores are those of `zsris segment`."""
    image = photos / "sub" / "b.JPG"
    assert main(["segment", str(image), "the red circle", "the big box", "-o", str(tmp_path), "--top-k", "3",
                 *FAST]) == 0
    single = {record["expression"]: record for record in (json.loads(p.read_text()) for p in tmp_path.glob("*.json"))}
    batch = [r for r in _results(folder_run) if r["image"] == "sub/b.JPG"]
    assert len(single) == len(batch) == 2
    for many in batch:
        one = single[many["expression"]]
        for key in ("expression", "mask", "score", "box", "top_proposals", "noun_phrase"):
            assert one[key] == many[key], key


@pytest.mark.slow
def test_a_finished_run_does_nothing_again_and_other_settings_are_refused(folder_run, photos, capsys):
    before = (folder_run / "results.jsonl").read_text()
    args = ["batch", str(photos), "-e", "the red circle", "-e", "the big box", "-o", str(folder_run),
            "--top-k", "3", *FAST]
    assert main(args) == 0
    captured = capsys.readouterr()
    assert "| skipped (done before)   | 6 |" in captured.out and "| done (this run)         | 0 |" in captured.out
    assert (folder_run / "results.jsonl").read_text() == before
    assert main(args + ["--alpha", "0.5"]) == 1
    assert "other settings (alpha differ); give --overwrite" in capsys.readouterr().err
    other = ["batch", str(photos), "-e", "a tree", "-o", str(folder_run), "--top-k", "3", *FAST]
    assert main(other) == 1
    assert "holds results of other pairs: id 'a.png#1' was 'a.png' with 'the red circle'" in capsys.readouterr().err
    assert (folder_run / "results.jsonl").read_text() == before


@pytest.mark.slow
def test_overwrite_replaces_the_run(photos, tmp_path, capsys):
    out = tmp_path / "out"
    (out / "masks").mkdir(parents=True)
    (out / "masks" / "stale.png").write_bytes(b"old")
    (out / "mine.txt").write_text("not the batch's")
    assert main(["batch", str(photos / "sub" / "deeper"), "-e", "a", "-o", str(out), "--save-masks", *FAST]) == 0
    assert main(["batch", str(photos / "sub" / "deeper"), "-e", "a", "-o", str(out), "--overwrite", "--alpha", "0.5",
                 *FAST]) == 0
    assert not (out / "masks").exists() and (out / "mine.txt").exists()  # only the batch's own files go
    assert json.loads((out / "settings.json").read_text())["alpha"] == 0.5 and len(_results(out)) == 1


@pytest.mark.slow
def test_bad_rows_fail_alone_and_the_rest_completes(photos, tmp_path, capsys):
    """Five bad rows among good ones: each becomes an error record with its reason, exit 3."""
    truncated = tmp_path / "cut.png"
    truncated.write_bytes((photos / "a.png").read_bytes()[:200])
    big = tmp_path / "big.png"
    _draw(big, 9, size=(400, 300))
    rows = [
        {"id": "good1", "image": str(photos / "a.png"), "expression": "the circle"},
        {"id": "missing", "image": "nowhere.jpg", "expression": "the dog"},
        {"id": "truncated", "image": "cut.png", "expression": "the dog"},
        {"id": "empty", "image": str(photos / "a.png"), "expression": " \u200b "},
        {"id": "good2", "image": str(photos / "sub" / "b.JPG"), "expression": "the box"},
        {"id": "outside", "image": "../escape.png", "expression": "the dog"},
        {"id": "huge", "image": "big.png", "expression": "the dog"},
        {"id": "good3", "image": str(photos / "a.png"), "expression": "the box"},
    ]
    manifest = _write_csv(tmp_path / "pairs.csv", rows)
    out = tmp_path / "out"
    code = main(["batch", str(manifest), "-o", str(out), "--max-pixels", "100000", *FAST])
    captured = capsys.readouterr()
    assert code == SOME_FAILED, captured.err
    assert [r["id"] for r in _results(out)] == ["good1", "good2", "good3"]
    errors = {r["id"]: r["error"] for r in _results(out, "errors.jsonl")}
    assert list(errors) == ["missing", "truncated", "empty", "outside", "huge"]
    assert errors["missing"].endswith("nowhere.jpg: no such file")
    assert "truncated" in errors["truncated"] and "empty" in errors["empty"]
    assert "outside the manifest's folder" in errors["outside"] and "over the limit" in errors["huge"]
    assert "| failed (this run)       | 5 |" in captured.out and "5 pair(s) failed" in captured.err
    assert "Traceback" not in captured.err
    # the missing image appears; --retry-failed does that pair (and fails the others again)
    _draw(tmp_path / "nowhere.jpg", 4)
    assert main(["batch", str(manifest), "-o", str(out), "--max-pixels", "100000", "--retry-failed", *FAST]) == \
        SOME_FAILED
    assert [r["id"] for r in _results(out)] == ["good1", "missing", "good2", "good3"]  # input order
    assert len(_results(out, "errors.jsonl")) == 4


@pytest.mark.parametrize("case", ["out is a file", "empty folder", "bad manifest", "-e with a manifest"])
def test_refusals_are_one_line_and_write_nothing(tmp_path, photos, capsys, case):
    out = tmp_path / "out"
    source = str(photos)
    extra = ["-e", "x"]
    if case == "out is a file":
        out.write_text("mine")
    elif case == "empty folder":
        (tmp_path / "empty").mkdir()
        source = str(tmp_path / "empty")
    else:
        source = str(tmp_path / "pairs.jsonl")
        Path(source).write_text('{"image": "a.png", "expression": "x"}\nnot json\n')
        extra = ["-e", "x"] if case.startswith("-e") else []
    code = main(["batch", source, "-o", str(out), *extra, *FAST])
    err = capsys.readouterr().err.strip()
    assert code == 1 and len(err.splitlines()) == 1 and err.startswith("zsris: error:")
    expected = {"out is a file": "is a file", "empty folder": "holds no images", "bad manifest": "line 2: not JSON",
                "-e with a manifest": "-e is for a folder"}[case]
    assert expected in err
    assert out.is_file() if case == "out is a file" else not out.exists()


def _stored(out: Path) -> int:
    return count_rows(out / "batch.sqlite", "pairs")


@pytest.mark.slow
def test_a_killed_batch_resumes_with_nothing_lost_or_doubled(tmp_path):
    folder = tmp_path / "many"
    folder.mkdir()
    for number in range(8):
        _draw(folder / f"{number:02d}.png", 20 + number)
    command = [sys.executable, "-m", "zsris.cli", "batch", str(folder), "-e", "the circle", "-e", "the box",
               "--proposal-workers", "1", "--format", "coco", *FAST]
    whole = subprocess.run(command + ["-o", str(tmp_path / "whole")], capture_output=True, text=True, timeout=600)
    assert whole.returncode == 0, whole.stderr[-2000:]
    out = tmp_path / "killed"
    process = subprocess.Popen(command + ["-o", str(out)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while _stored(out) < 6 and time.time() < deadline and process.poll() is None:
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    partial = _stored(out)
    assert 0 < partial < 16, "the kill should land halfway"
    resumed = subprocess.run(command + ["-o", str(out)], capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"| skipped (done before)   | {partial} |" in resumed.stdout
    assert _results(out) == _results(tmp_path / "whole")  # every pair once, in input order, same answers
    assert json.loads((out / "coco_results.json").read_text()) == \
        json.loads((tmp_path / "whole" / "coco_results.json").read_text())


@pytest.mark.slow
def test_ray_engine_gives_the_local_answers(folder_run, photos, tmp_path):
    """Two actors, each preparing its own images. One actor fed by Ray preparation tasks (#23) is
    run by the same scheduler (jobs.run.run_images) in tests/test_evaluation.py's Ray test."""
    prepare, workers = "actors", "2"
    out = tmp_path / "ray"
    env = {**os.environ, "RAY_DISABLE_IMPORT_WARNING": "1"}
    proc = subprocess.run([sys.executable, "-m", "zsris.cli", "batch", str(photos), "-e", "the red circle", "-e",
                           "the big box", "-o", str(out), "--top-k", "3", "--engine", "ray", "--workers", workers,
                           "--ray-prepare", prepare, *FAST],
                          capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ray, local = _results(out), _results(folder_run)
    assert [(r["id"], r["mask"], r["proposal_index"]) for r in ray] == \
        [(r["id"], r["mask"], r["proposal_index"]) for r in local]
    # a Ray actor computes with one thread: sums in another order, the same scores to float precision
    assert [r["score"] for r in ray] == pytest.approx([r["score"] for r in local], abs=1e-5)


# -- Python ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def segmenter():
    import warnings

    from zsris import create_segmenter

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return create_segmenter(weights="random", max_proposals=6)


@pytest.mark.parametrize("workers, images_per_pass", [(0, 1), (1, 1), (1, 3)])
def test_segment_pairs_yields_in_order_and_equals_segment_many(segmenter, photos, workers, images_per_pass):
    """With 3 images per pass, the 3 readable images go through CLIP together (the missing one
    fails alone): the same answers, up to float rounding."""
    from zsris.jobs import segment_pairs
    from zsris.segmenter import Segmenter

    a, b = photos / "a.png", str(photos / "sub" / "b.JPG")
    pairs = [(a, "the circle"), (b, "the box"), (a, ""), ("missing.png", "x"), (a, "the big box"),
             (EXAMPLE_IMAGE, "red")]
    grouped = Segmenter(segmenter.backbone, segmenter.proposals, segmenter.config, segmenter.parser,
                        images_per_pass=images_per_pass)
    answers = list(segment_pairs(grouped, pairs, workers=workers))
    assert [x.pair.expression for x in answers] == [e for _, e in pairs]
    assert [x.ok for x in answers] == [True, True, False, False, True, True]
    assert "empty" in answers[2].error and "no such file" in answers[3].error
    alone = segmenter.segment_many(a, ["the circle", "the big box"])
    for got, expected in zip((answers[0].result, answers[4].result), alone):
        assert got.score == pytest.approx(expected.score, abs=0 if images_per_pass == 1 else 1e-5)
        assert got.proposal_index == expected.proposal_index
        np.testing.assert_array_equal(got.mask, expected.mask)


def test_segment_pairs_refuses_what_is_not_a_pair(segmenter):
    from zsris.errors import ZsrisError
    from zsris.jobs import segment_pairs

    with pytest.raises(ZsrisError, match="pair 0 is not an"):
        segment_pairs(segmenter, ["just a string"])
    with pytest.raises(ZsrisError, match="give a path"):
        segment_pairs(segmenter, [(np.zeros((4, 4, 3), np.uint8), "x")])


@pytest.mark.slow
def test_file_proposals_given_as_an_object_reach_the_worker_processes(segmenter, photos, tmp_path):
    """One truth for the proposals: a FileProposals object handed to create_segmenter is what the
    worker processes use (rebuilt from its spec), never classical proposals rebuilt from a
    default config. The file's masks are not what classical proposals would make."""
    import warnings

    from zsris import create_segmenter
    from zsris.jobs import segment_pairs
    from zsris.masks import encode_rle
    from zsris.proposals import FileProposals

    a, b = photos / "a.png", photos / "sub" / "b.JPG"
    records = {}
    for image in (a, b):
        height, width = np.asarray(Image.open(image)).shape[:2]
        masks = np.zeros((3, height, width), bool)
        masks[0, :10, :10] = masks[1, 20:60, 30:90] = masks[2, height // 2:, :] = True
        records[image.name] = [{"segmentation": encode_rle(m), "score": 1.0 - i / 10} for i, m in enumerate(masks)]
    (tmp_path / "masks.json").write_text(json.dumps(records))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        given = create_segmenter(weights="random", parser=segmenter.parser,
                                 proposals=FileProposals(tmp_path / "masks.json"))
    assert given.config.proposals.name == "file"
    pairs = [(a, "the circle"), (b, "the box"), (a, "the big box")]
    here = list(segment_pairs(given, pairs, workers=0))
    pooled = list(segment_pairs(given, pairs, workers=2))
    for one, other, (image, _) in zip(here, pooled, pairs):
        assert one.ok and other.ok
        file_masks = [decode_rle(r["segmentation"]) for r in records[image.name]]
        assert any(np.array_equal(other.result.mask, m) for m in file_masks)  # a mask of the file ...
        np.testing.assert_array_equal(one.result.mask, other.result.mask)  # ... the one chosen here too
        assert len(other.result.scores.fused) == 3 and other.result.score == one.result.score


def test_batch_job_in_python_writes_and_resumes_what_the_cli_writes(segmenter, photos, tmp_path):
    """BatchJob is the command's work without argparse: the same folder of outputs, resumable."""
    from zsris.jobs import BatchJob, Execution

    pairs = folder_pairs(photos, ["the circle", ""])
    quiet = Execution(proposal_workers=0, progress=False)
    summary = BatchJob(segmenter, pairs, tmp_path / "out", save_masks=True, coco=True, top_k=2,
                       execution=quiet).run()
    assert (summary.pairs, summary.done, summary.failed, summary.skipped) == (6, 3, 3, 0)
    assert summary.failed_overall == 3 and summary.timing["images"] == 3
    records = _results(tmp_path / "out")
    assert [r["id"] for r in records] == [p.id for p in pairs if p.expression]
    assert all(len(r["top_proposals"]) == 2 for r in records)
    assert len(_results(tmp_path / "out", "errors.jsonl")) == 3
    assert len(list((tmp_path / "out" / "masks").glob("*.png"))) == 3
    assert all((tmp_path / "out" / r["files"]["mask"]).is_file() for r in records)  # #37: a record names its files
    assert all("overlay" not in r["files"] for r in records)
    assert json.loads((tmp_path / "out" / "coco_results.json").read_text())[0]["pair_id"] == records[0]["id"]
    again = BatchJob(segmenter, pairs, tmp_path / "out", top_k=2, execution=quiet).run()
    assert (again.done, again.skipped, again.images_this_run) == (0, 6, 0)
    shutil.rmtree(tmp_path / "out" / "masks")  # #38: pictures asked for by a rerun of a finished batch
    pictures = BatchJob(segmenter, pairs, tmp_path / "out", top_k=2, save_masks=True, save_overlays=True,
                        execution=quiet).run()
    assert pictures.done == 0 and len(list((tmp_path / "out" / "masks").glob("*.png"))) == 3
    assert len(list((tmp_path / "out" / "overlays").glob("*.png"))) == 3
    named = [r["files"] for r in _results(tmp_path / "out")]
    assert all((tmp_path / "out" / f["mask"]).is_file() and (tmp_path / "out" / f["overlay"]).is_file() for f in named)
    assert len({f["mask"] for f in named}) == 3
    retried = BatchJob(segmenter, pairs, tmp_path / "out", top_k=2, retry_failed=True, execution=quiet).run()
    assert (retried.retried, retried.failed) == (3, 3)


def test_overwrite_deletes_nothing_while_another_process_holds_the_folder(segmenter, photos, tmp_path):
    """--overwrite takes the folder's lock first: a run in progress elsewhere keeps its results."""
    from zsris.errors import ZsrisError
    from zsris.jobs import BatchJob, Execution
    from zsris.store import BatchStore

    out = tmp_path / "out"
    with BatchStore(out / "batch.sqlite", {"someone": "else"}):  # the lock is per open file: held here
        (out / "results.jsonl").write_text('{"id": "kept"}\n')
        with pytest.raises(ZsrisError, match="in use by another zsris process"):
            BatchJob(segmenter, folder_pairs(photos, ["x"]), out, overwrite=True,
                     execution=Execution(proposal_workers=0, progress=False)).run()
        assert (out / "results.jsonl").read_text() == '{"id": "kept"}\n' and (out / "batch.sqlite").exists()


def test_ray_is_refused_for_a_generator_its_actors_cannot_rebuild():
    from zsris.errors import ZsrisError
    from zsris.jobs import Execution
    from zsris.proposals import ClassicalProposals

    class Specless(ClassicalProposals):
        spec = None

    with pytest.raises(ZsrisError, match="has none: register it"):
        Execution(engine="ray").check(Specless())
    Execution(engine="ray").check(ClassicalProposals(scales=(50,)))  # its spec says its settings: rebuilt as it is

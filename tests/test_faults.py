"""Bad inputs that used to hurt quietly (issue #26): each is now one line, or fails alone.

Every case here fails on the code before it was handled: a FIFO blocked ``open`` for ever; an
overlong expression held the model for minutes and failed its neighbours; a deeply nested
manifest line raised RecursionError; a dataset with a repeated sentence id lost a sentence
without a word, one whose ref names another image's annotation died mid-run; a symbolic link
led a manifest row out of its folder; an unusable output folder was found after the work; an
eval with no images exited 0 with metrics; an empty sentence or a malformed polygon stopped the
whole split; a state dict that did not fit named nothing; a full disk under the store was a
traceback.

Where the test of each of #26's cases is (those not in this file sit beside the code they test):
 1 --overwrite under another run: test_batch::test_overwrite_deletes_nothing_while_another_process_holds_the_folder
 2 short compressed RLE: here, test_compressed_rle_counts_that_do_not_cover_the_mask_are_refused
 3 GELU checkpoints: here, test_a_local_checkpoint_takes_its_activation_from_its_pretrained_tag
 4 FileProposals in workers: test_batch::test_file_proposals_given_as_an_object_reach_the_worker_processes
 5 --max-proposals for files: test_proposals::test_file_proposals_keep_the_cap_by_score_before_decoding
 6, 14 repeated sentence ids, a ref of another image: here, test_datasets_that_would_lose_or_break_sentences_...
 7 no images: here, test_an_eval_whose_images_are_missing_or_all_fail_is_no_result
 8 one pair's bad text: here, test_one_pairs_text_does_not_fail_its_neighbours
 9 float images: test_images::test_a_float_images_scale_is_given_never_guessed
10 resumes of changed data: here, test_a_resumed_eval_redoes_... and test_a_resumed_batch_redoes_...
11 FIFOs and stuck workers: here, test_a_pipe_is_refused_before_it_is_opened; test_engine (the image timeout)
12, 16 overlong expressions: here, test_expressions_have_a_length_limit; test_service::test_malformed_requests (422)
13 bounded caches: test_text::test_text_caches_are_bounded_least_recently_used_first (and benchmarks/serve_memory.py)
15 deep manifest lines: here, test_a_manifest_line_nested_too_deeply_is_one_line
17 full disk: here, test_a_full_disk_under_the_store_is_one_line_and_keeps_what_was_committed
18 empty sentence, bad polygon: here, test_an_empty_sentence_or_a_malformed_polygon_fails_alone_...
19 unusable -o: here, test_an_unusable_output_folder_is_found_before_the_work
20 links out of a manifest: here, test_a_link_out_of_the_manifest_folder_is_refused_like_dot_dot
21 state dicts that do not fit: here, test_a_state_dict_that_does_not_fit_names_the_first_tensors
22 36 MP images: test_proposals (the mask budget); here, test_the_server_has_its_own_lower_pixel_limit
and a small request behind a giant one: test_service_fairness (and benchmarks/serve_fairness.py).
"""
from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from zsris.datasets import ReferDataset
from zsris.errors import DatasetError, ExpressionError, ImageError, ZsrisError
from zsris.images import load_image
from zsris.jobs.pairs import ManifestError, read_manifest
from zsris.text import MAX_EXPRESSION_CHARS, check_expression


def test_a_pipe_is_refused_before_it_is_opened(tmp_path):
    fifo = tmp_path / "photo.jpg"
    os.mkfifo(fifo)  # opening it for reading would wait for a writer for ever
    with pytest.raises(ImageError, match="photo.jpg: not a regular file"):
        load_image(fifo)


def test_expressions_have_a_length_limit():
    assert check_expression("a" * MAX_EXPRESSION_CHARS)
    with pytest.raises(ExpressionError, match=f"4,001 characters, over the limit of {MAX_EXPRESSION_CHARS:,}"):
        check_expression("a" * (MAX_EXPRESSION_CHARS + 1))


@pytest.fixture(scope="module")
def segmenter(tiny_vit):
    from zsris.proposals import ClassicalProposals
    from zsris.segmenter import Segmenter

    return Segmenter(tiny_vit, ClassicalProposals(max_proposals=4))


def test_one_pairs_text_does_not_fail_its_neighbours(segmenter, monkeypatch):
    """An overlong expression fails its own pair; and where scoring an image's expressions
    together fails for one of them (a parser error), the others are scored alone."""
    from zsris.jobs.batch import image_results
    from zsris.jobs.pairs import Pair

    pixels = np.zeros((64, 64, 3), np.uint8)
    pixels[10:40, 10:40] = (200, 30, 30)
    pairs = [Pair(str(n), "a.png", "a.png", text, f"e{n}")
             for n, text in enumerate(["the dog", "x" * (MAX_EXPRESSION_CHARS + 8), "the red square", "boom"])]
    original = segmenter.parser.parse_many

    def parse_many(expressions):
        if "boom" in expressions:
            raise ValueError("[E088] Text of length 1000008 exceeds maximum")  # what spaCy raises
        return original(expressions)

    monkeypatch.setattr(segmenter.parser, "parse_many", parse_many)
    answers = image_results(segmenter, pairs, pixels, "a.png")
    assert [a.ok for a in answers] == [True, False, True, False]
    assert "over the limit" in answers[1].error and answers[3].error.startswith("ValueError: [E088]")
    assert answers[0].result.expression == "the dog" and answers[2].result.noun_phrase == "the red square"


def test_a_manifest_line_nested_too_deeply_is_one_line(tmp_path):
    manifest = tmp_path / "deep.jsonl"
    manifest.write_text('{"image": "a.png", "expression": "x"}\n' + "[" * 200_000 + "]" * 200_000 + "\n")
    with pytest.raises(ManifestError, match="line 2: not a manifest row .nested too deeply"):
        read_manifest(manifest)


def test_json_files_nested_too_deeply_are_refused_in_one_line(tmp_path):
    """A dataset's instances and refs, a calibration file, a proposals file: one line each, not a
    RecursionError; a cache entry so nested is made anew."""
    from zsris.cache import ProposalCache
    from zsris.calibration import read_calibration
    from zsris.datasets import ReferDataset, read_json_list
    from zsris.errors import DatasetError, ProposalError, ZsrisError
    from zsris.proposals.file import FileProposals

    deep = "[" * 200_000 + "]" * 200_000
    path = tmp_path / "deep.json"
    path.write_text(deep)
    with pytest.raises(DatasetError, match="deep.json: not a list of refs .nested too deeply to read.$"):
        read_json_list(path, "refs")
    with pytest.raises(ZsrisError, match="deep.json: not a calibration file .nested too deeply"):
        read_calibration(path)
    with pytest.raises(ProposalError, match="deep.json: not a proposals file .nested too deeply"):
        FileProposals._read_json(path)
    dataset = ReferDataset.__new__(ReferDataset)
    dataset.instances_path = path
    with pytest.raises(DatasetError, match="deep.json: not COCO instances .nested too deeply"):
        dataset._read_instances()
    cache = ProposalCache(tmp_path / "cache", "classical-v3")
    cache._path("image").write_text(deep)
    assert cache.get("image") is None


def test_a_link_out_of_the_manifest_folder_is_refused_like_dot_dot(tmp_path):
    outside = tmp_path / "private"
    outside.mkdir()
    Image.new("RGB", (8, 8)).save(outside / "secret.png")
    folder = tmp_path / "job"
    folder.mkdir()
    (folder / "link").symlink_to(outside)
    Image.new("RGB", (8, 8)).save(folder / "mine.png")
    manifest = folder / "pairs.jsonl"
    rows = [{"image": "link/secret.png", "expression": "x"}, {"image": "mine.png", "expression": "y"},
            {"image": "../private/secret.png", "expression": "z"}]
    manifest.write_text("".join(json.dumps(row) + "\n" for row in rows))
    refused = [pair.error for pair in read_manifest(manifest)]
    assert "outside the manifest's folder through a link" in refused[0]
    assert refused[1] is None and "outside the manifest's folder;" in refused[2]
    assert all(pair.error is None for pair in read_manifest(manifest, allow_outside=True))


def _tiny_refer(root: Path, refs: list[dict], annotations: list[dict]) -> Path:
    """A REFER layout with two 32 x 32 images and the given refs and annotations."""
    (root / "refcoco").mkdir(parents=True)
    (root / "images" / "train2014").mkdir(parents=True)
    images = []
    for image_id in (1, 2):
        name = f"COCO_train2014_{image_id:012d}.jpg"
        Image.new("RGB", (32, 32), (image_id * 60, 0, 0)).save(root / "images" / "train2014" / name)
        images.append({"id": image_id, "file_name": name, "height": 32, "width": 32})
    (root / "refcoco" / "instances.json").write_text(json.dumps(
        {"images": images, "annotations": annotations, "categories": [{"id": 1, "name": "thing"}]}))
    (root / "refcoco" / "refs(unc).p").write_bytes(pickle.dumps(refs))
    return root


def _ann(ann_id: int, image_id: int) -> dict:
    return {"id": ann_id, "image_id": image_id, "category_id": 1, "iscrowd": 0, "area": 64.0,
            "bbox": [4, 4, 8, 8], "segmentation": [[4, 4, 12, 4, 12, 12, 4, 12]]}


def _ref(ref_id: int, ann_id: int, image_id: int, sent_ids: list[int]) -> dict:
    return {"ref_id": ref_id, "ann_id": ann_id, "image_id": image_id, "split": "val", "category_id": 1,
            "file_name": f"COCO_train2014_{image_id:012d}_{ann_id}.jpg", "sent_ids": sent_ids,
            "sentences": [{"sent_id": s, "raw": f"thing {s}", "sent": f"thing {s}", "tokens": ["thing"]}
                          for s in sent_ids]}


def test_datasets_that_would_lose_or_break_sentences_are_refused_naming_the_id(tmp_path):
    good = _tiny_refer(tmp_path / "good", [_ref(1, 10, 1, [100, 101]), _ref(2, 20, 2, [102])],
                       [_ann(10, 1), _ann(20, 2)])
    assert sum(len(r.sentences) for r in ReferDataset(good, "refcoco").refs) == 3
    twice = _tiny_refer(tmp_path / "twice", [_ref(1, 10, 1, [100, 101]), _ref(2, 20, 2, [101])],
                        [_ann(10, 1), _ann(20, 2)])
    with pytest.raises(DatasetError, match=r"sentence id 101 is given twice \(ref 1 and ref 2\)"):
        ReferDataset(twice, "refcoco")
    elsewhere = _tiny_refer(tmp_path / "elsewhere", [_ref(1, 20, 1, [100])], [_ann(10, 1), _ann(20, 2)])
    with pytest.raises(DatasetError, match="ref 1 is about image 1, but its annotation 20 is of image 2"):
        ReferDataset(elsewhere, "refcoco")


@pytest.mark.skipif(os.geteuid() == 0 and not Path("/proc/self").exists(), reason="needs /proc")
def test_an_unusable_output_folder_is_found_before_the_work(tmp_path):
    from zsris.jobs.run import writable_folder

    assert writable_folder(tmp_path / "new" / "out").is_dir()
    (tmp_path / "file").write_text("x")
    with pytest.raises(ZsrisError, match="is a file"):
        writable_folder(tmp_path / "file")
    with pytest.raises(ZsrisError, match="/proc/zsris-out: cannot write the results there"):
        writable_folder(Path("/proc/zsris-out"))


def test_an_eval_whose_images_are_missing_or_all_fail_is_no_result(tmp_path, capsys):
    """No image of the split in --images: refused before any model loads. Every image failing
    (here: none decodes): the report is written, and the run exits 1 saying so."""
    from zsris.cli import main

    data = _tiny_refer(tmp_path / "data", [_ref(1, 10, 1, [100]), _ref(2, 20, 2, [101])], [_ann(10, 1), _ann(20, 2)])
    empty = tmp_path / "empty"
    empty.mkdir()
    common = ["eval", "--data", str(data), "--split", "val", "--no-cache", "--weights", "random",
              "--max-proposals", "3", "--proposal-workers", "0"]
    assert main([*common, "--images", str(empty), "--out", str(tmp_path / "run-empty")]) == 1
    assert "none of the 2 images of refcoco val is in" in capsys.readouterr().err
    assert not (tmp_path / "run-empty").exists()
    broken = tmp_path / "broken"
    broken.mkdir()
    for image in (data / "images" / "train2014").iterdir():
        (broken / image.name).write_bytes(b"not a jpeg")
    assert main([*common, "--images", str(broken), "--out", str(tmp_path / "run-broken")]) == 1
    assert "every one of the 2 sentences failed (the first: " in capsys.readouterr().err
    assert (tmp_path / "run-broken" / "metrics.json").exists()
    assert main([*common, "--out", str(tmp_path / "run-good")]) == 0  # the same data with its images


def test_an_empty_sentence_or_a_malformed_polygon_fails_alone_and_the_split_goes_on(tmp_path):
    """Both used to stop the whole evaluation at that image, on every resume."""
    from zsris.cli import main
    from zsris.store import PredictionStore

    refs = [_ref(1, 10, 1, [100, 101]), _ref(2, 20, 2, [102])]
    refs[0]["sentences"][1]["raw"] = refs[0]["sentences"][1]["sent"] = "   "
    broken = _ann(20, 2)
    broken["segmentation"] = [[4, 4, 12]]  # not a polygon
    data = _tiny_refer(tmp_path / "data", refs, [_ann(10, 1), broken])
    out = tmp_path / "run"
    assert main(["eval", "--data", str(data), "--split", "val", "--no-cache", "--weights", "random",
                 "--max-proposals", "3", "--proposal-workers", "0", "--out", str(out)]) == 0
    with PredictionStore(out / "predictions.sqlite", json.loads((out / "metrics.json").read_text())["settings"]) as s:
        records = {r["sent_id"]: r for r in s.records()}
    assert set(records) == {100, 101, 102}
    assert "error" not in records[100] and records[100]["union"] > 0  # its neighbour is scored
    assert "empty" in records[101]["error"] and records[101]["iou"] == 0.0
    assert "annotation 20: malformed segmentation" in records[102]["error"]


def test_a_resumed_eval_redoes_images_whose_data_changed(tmp_path, capsys):
    """#26: a sentence's text and its object's polygon edited after the run, another image file
    replaced: a resume used to keep the old records; it redoes exactly those images."""
    from zsris.cli import main
    from zsris.store import PredictionStore

    refs = [_ref(1, 10, 1, [100]), _ref(2, 20, 2, [101])]
    data = _tiny_refer(tmp_path / "data", refs, [_ann(10, 1), _ann(20, 2)])
    out = tmp_path / "run"
    command = ["eval", "--data", str(data), "--split", "val", "--no-cache", "--weights", "random",
               "--max-proposals", "3", "--proposal-workers", "0", "--out", str(out)]
    assert main(command) == 0

    def records():
        settings = json.loads((out / "metrics.json").read_text())["settings"]
        with PredictionStore(out / "predictions.sqlite", settings) as store:
            return {r["sent_id"]: r for r in store.records()}

    before = records()
    assert main(command) == 0 and "changed since" not in capsys.readouterr().err  # nothing changed: nothing redone
    refs[0]["sentences"][0]["raw"] = "the other thing"
    small = _ann(10, 1)
    small["segmentation"] = [[4, 4, 6, 4, 6, 6, 4, 6]]
    _tiny_refer(tmp_path / "data2", refs, [small, _ann(20, 2)])
    for name in ("refcoco/refs(unc).p", "refcoco/instances.json"):
        (data / name).write_bytes((tmp_path / "data2" / name).read_bytes())
    assert main(command) == 0
    assert "1 image(s) changed since their results were saved" in capsys.readouterr().err
    after = records()
    assert after[100]["expression"] == "the other thing" and after[100]["union"] < before[100]["union"]
    assert after[101] == before[101]
    image = data / "images" / "train2014" / "COCO_train2014_000000000002.jpg"
    Image.new("RGB", (32, 32), (0, 200, 0)).save(image)  # another photo under the same name
    assert main(command) == 0
    assert "image 2" in capsys.readouterr().err


def test_a_resumed_batch_redoes_the_pairs_of_a_replaced_image(tmp_path, capsys):
    """#26: a.jpg replaced by another photo after the run: its old mask used to stay."""
    from zsris.cli import main

    def photo(size, colour):
        image = Image.new("RGB", size, (240, 240, 240))
        ImageDraw.Draw(image).rectangle([6, 6, size[0] // 2, size[1] - 8], fill=colour)
        return image

    photos = tmp_path / "photos"
    photos.mkdir()
    photo((48, 40), (200, 30, 30)).save(photos / "a.png")
    photo((48, 40), (30, 30, 200)).save(photos / "b.png")
    out = tmp_path / "out"
    command = ["batch", str(photos), "-e", "a thing", "-o", str(out), "--weights", "random", "--max-proposals", "3",
               "--proposal-workers", "0"]
    assert main(command) == 0

    def results():
        lines = (out / "results.jsonl").read_text().splitlines()
        return {json.loads(line)["image"]: json.loads(line) for line in lines}

    before = results()
    assert main(command) == 0 and "changed since" not in capsys.readouterr().err
    photo((64, 30), (30, 200, 30)).save(photos / "a.png")  # another photo, another size
    assert main(command) == 0
    assert "1 image(s) changed since their results were saved (the first: " in capsys.readouterr().err
    after = results()
    a = next(k for k in after if k.endswith("a.png"))
    b = next(k for k in after if k.endswith("b.png"))
    assert after[a]["mask"]["size"] == [30, 64] and before[a]["mask"]["size"] == [40, 48]
    assert after[b] == before[b]


def test_a_state_dict_that_does_not_fit_names_the_first_tensors():
    """torch's message opens with a heading that names nothing; the reason shown is the next line."""
    import torch
    from torch import nn

    from zsris.backbones import first_reason

    model = nn.Sequential(nn.Linear(2, 3), nn.Linear(3, 1))
    state = {"0.weight": torch.zeros(3, 2), "1.weight": torch.zeros(1, 4), "extra.bias": torch.zeros(1)}
    with pytest.raises(RuntimeError) as raised:
        model.load_state_dict(state)
    reason = first_reason(f"as ViT-B-32: {raised.value}")
    assert reason.startswith("as ViT-B-32: Error(s) in loading state_dict for Sequential:")
    assert "0.bias" in reason or "size mismatch for 1.weight" in reason or "extra.bias" in reason
    assert len(first_reason("x" * 1000)) == 300 and first_reason("one\ntwo") == "one"


def test_a_full_disk_under_the_store_is_one_line_and_keeps_what_was_committed(tmp_path, monkeypatch, capsys):
    from zsris.cli import main
    from zsris.store import BatchStore

    photos = tmp_path / "photos"
    photos.mkdir()
    for number in range(2):
        Image.new("RGB", (48, 40), (40 + 100 * number, 80, 20)).save(photos / f"{number}.png")
    original, calls = BatchStore.add, []

    def add(self, rows, keys=None):
        calls.append(1)
        if len(calls) == 2:
            import sqlite3

            raise sqlite3.OperationalError("database or disk is full")
        return original(self, rows, keys)

    monkeypatch.setattr(BatchStore, "add", add)
    out = tmp_path / "out"
    code = main(["batch", str(photos), "-e", "a thing", "-o", str(out), "--weights", "random", "--max-proposals", "3",
                 "--proposal-workers", "0"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and err[-1].startswith("zsris: error: the results store failed (database or disk is full)")
    assert "Traceback" not in "\n".join(err)
    with BatchStore(out / "batch.sqlite", json.loads((out / "settings.json").read_text())) as store:
        assert list(store.done()) == ["0.png#1"]  # the first image's result, committed before, is kept


def test_compressed_rle_counts_that_do_not_cover_the_mask_are_refused(tmp_path):
    """pycocotools decodes them into uninitialised memory: a different mask on every call."""
    from zsris.errors import ProposalError
    from zsris.masks import compressed_counts, decode_rle, encode_rle
    from zsris.proposals import FileProposals

    small = np.zeros((10, 10), bool)
    small[2:5, 3:8] = True
    text = encode_rle(small)["counts"]
    assert sum(compressed_counts(text.encode())) == 100
    np.testing.assert_array_equal(decode_rle({"size": [10, 10], "counts": text}), small)
    with pytest.raises(ValueError, match="RLE counts cover 100 pixels, the mask has 273,?000"):
        decode_rle({"size": [520, 525], "counts": text})
    record = {"image_id": 1, "segmentation": {"size": [520, 525], "counts": text}}
    (tmp_path / "short.json").write_text(json.dumps([record]))
    with pytest.raises(ProposalError, match="RLE counts cover 100 pixels"):
        FileProposals(tmp_path / "short.json")(np.zeros((520, 525, 3), np.uint8), "1")
    rng = np.random.default_rng(0)
    for _ in range(50):  # real encodings of random masks all pass, and decode to themselves
        mask = rng.random(tuple(rng.integers(1, 40, 2))) > rng.random()
        np.testing.assert_array_equal(decode_rle(encode_rle(mask)), mask)


def test_the_server_has_its_own_lower_pixel_limit():
    from zsris.cli import make_parser
    from zsris.service import DEFAULT_SERVE_MAX_PIXELS

    parser = make_parser()
    assert parser.parse_args(["serve"]).max_pixels == DEFAULT_SERVE_MAX_PIXELS == 16_000_000
    assert parser.parse_args(["serve", "--max-pixels", "30000000"]).max_pixels == 30_000_000
    assert parser.parse_args(["segment", "a.png", "x"]).max_pixels == 40_000_000  # the command line's own


def test_a_local_checkpoint_takes_its_activation_from_its_pretrained_tag():
    """A state dict does not say whether its model used QuickGELU (OpenAI's) or GELU (LAION's,
    DataComp's ...): the --pretrained tag does, and a tag open_clip does not know is refused."""
    from zsris.backbones import weights_source
    from zsris.errors import WeightsError

    assert weights_source("ViT-B/32", "openai", "clip.bin").quick_gelu
    assert not weights_source("ViT-B/32", "laion2b_s34b_b79k", "clip.safetensors").quick_gelu
    with pytest.raises(WeightsError, match="no pretrained tag 'mine'.*the tag says how the file was trained"):
        weights_source("ViT-B/32", "mine", "clip.bin")


def test_a_proposals_file_is_taken_only_as_it_can_be_meant(tmp_path):
    """Scores that rank (finite), boxes that can be cropped (finite, near the image), one entry per
    image, and an image whose stem is '..' reads no folder above the proposals'."""
    from zsris.errors import ProposalError
    from zsris.masks import encode_rle
    from zsris.proposals.file import FileProposals

    image = np.zeros((40, 60, 3), np.uint8)
    mask = np.zeros((40, 60), bool)
    mask[5:20, 10:30] = True
    good = {"segmentation": encode_rle(mask), "score": 0.5}

    def proposals(records, text=None):
        path = tmp_path / "p.json"
        path.write_text(text if text is not None else json.dumps({"a.jpg": records}))
        return FileProposals(path, max_proposals=1)(image, "a.jpg")

    assert len(proposals([good, good])) == 1
    with pytest.raises(ProposalError, match="proposal 1 of image 'a.jpg' has the score nan; scores are finite"):
        proposals([good, {**good, "score": float("nan")}])
    for box, why in (([0, 0, float("inf"), 10], "is not finite"), ([0, 0, 1e7, 10], "far outside the 60x40 image"),
                     ([-1e6, 0, 10, 10], "far outside")):
        with pytest.raises(ProposalError, match=why):
            proposals([{**good, "box": box}])
    assert len(proposals([{**good, "box": [-3, -2, 62, 41]}])) == 1  # a little outside, as FreeSOLO's may be
    twice = '{"a.jpg": [%s], "a.jpg": []}' % json.dumps(good)
    with pytest.raises(ProposalError, match="'a.jpg' is named twice in one object"):
        proposals(None, twice)
    folder = tmp_path / "masks" / "inner"
    folder.mkdir(parents=True)
    Image.fromarray(mask.astype(np.uint8) * 255).save(tmp_path / "masks" / "up.png")  # beside inner/, not in it
    with pytest.raises(ProposalError, match="no proposal masks for image '...png'"):
        FileProposals(folder)(image, "...png")


def test_a_pipe_or_device_is_never_read_as_a_manifest_calibration_or_image_to_hash(tmp_path):
    """A FIFO would block for ever and a link to /dev/zero never end: each is refused in one line
    (the resume key's hash of an image too, so the image then fails saying why)."""
    import signal

    from zsris.cache import file_digest
    from zsris.calibration import read_calibration

    fifo = tmp_path / "pipe.csv"
    os.mkfifo(fifo)
    zero = tmp_path / "zero.jsonl"
    zero.symlink_to("/dev/zero")
    signal.alarm(20)  # a regression would hang here: fail instead
    try:
        for path in (fifo, zero):
            with pytest.raises(ManifestError, match="not a regular file .a pipe, socket or device., not a manifest"):
                read_manifest(path)
        with pytest.raises(ZsrisError, match="not a regular file .* not a calibration file"):
            read_calibration(zero)
        with pytest.raises(OSError, match="not a regular file"):
            file_digest(fifo)
    finally:
        signal.alarm(0)
    assert len(file_digest(__file__)) == 64  # a regular file is hashed as before


@pytest.mark.parametrize("damage", ["cut in half", "header overwritten"])
def test_a_damaged_store_says_how_to_start_over(tmp_path, damage):
    """Running again would fail the same way for ever: the message says what is intact and how to
    start over, and --overwrite's way (clearing the folder before the store opens) does."""
    import shutil

    from zsris.store import BatchStore, PredictionStore

    path = tmp_path / "run" / "batch.sqlite"
    with BatchStore(path, {"a": 1}) as store:
        store.add([(f"p{i}", i, "a.png", f"expression {i} " * 40, True, {"mask": "x" * 3000}) for i in range(300)])
    with BatchStore(path, {"a": 1}) as store:  # intact: opens and resumes
        assert len(store.done()) == 300
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2] if damage == "cut in half" else b"\0" * 100 + data[100:])
    for extra in (path.parent / "batch.sqlite-wal", path.parent / "batch.sqlite-shm"):
        extra.unlink(missing_ok=True)
    with pytest.raises(ZsrisError, match="batch.sqlite is damaged .*, so this run cannot go on; the results.jsonl "
                                         "and errors.jsonl beside it hold every pair done before; give --overwrite"):
        BatchStore(path, {"a": 1})
    with pytest.raises(ZsrisError, match="is damaged .*; use another --out to start over"):
        PredictionStore(path, {"a": 1})
    with BatchStore(path, {"a": 1}, on_locked=lambda: shutil.rmtree(path.parent, ignore_errors=True) or
                    path.parent.mkdir()) as store:
        assert store.done() == {}

"""A small request does not wait behind a large one (#26): the model lock is granted in order,
a large image's work goes in steps that each take it anew, and the steps change no answer."""
from __future__ import annotations

import contextlib
import threading
import time

import numpy as np
import pytest
import torch

from zsris.proposals import ClassicalProposals
from zsris.segmenter import Segmenter
from zsris.service import FairLock, SegmentationService


@pytest.fixture(scope="module")
def segmenter(tiny_vit) -> Segmenter:
    with pytest.warns(Warning):
        return Segmenter(tiny_vit, ClassicalProposals(max_proposals=10))


def _photo(side: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    image = np.zeros((side, side, 3), dtype=np.uint8)
    for _ in range(6):
        y, x = rng.integers(0, side - side // 4, 2)
        image[y:y + side // 4, x:x + side // 4] = rng.integers(0, 255, 3)
    return image


def test_the_lock_goes_to_the_longest_waiting_thread():
    lock, order = FairLock(), []
    waiting = threading.Barrier(2)

    def waiter() -> None:
        waiting.wait()
        with lock:
            order.append("waiter")

    with lock:
        thread = threading.Thread(target=waiter)
        thread.start()
        waiting.wait()
        time.sleep(0.2)  # the waiter is queued for the lock
    with lock:  # released and asked for again at once: the waiter goes first
        order.append("holder again")
    thread.join(5)
    assert order == ["waiter", "holder again"]


def test_steps_change_no_answer(segmenter):
    image = _photo(96, 0)
    proposals = segmenter.proposals(image)
    whole = segmenter.image_features(image, proposals=proposals)
    steps = []

    def step():
        steps.append(1)
        return contextlib.nullcontext()

    one_step = segmenter.image_features(image, proposals=proposals, step=step)
    assert len(steps) == 1  # fits one step: computed exactly as without steps
    for name in ("global_features", "local_features", "visual_features"):
        assert torch.equal(getattr(one_step, name), getattr(whole, name))
    steps.clear()
    split = segmenter.image_features(image, proposals=proposals, step=step, step_pixels=96 * 96 * 3)
    assert len(steps) == 1 + -(-len(proposals) // 3)  # the image tensors, then 3 proposals a step
    assert split.proposals is proposals
    for name in ("global_features", "local_features", "visual_features"):
        torch.testing.assert_close(getattr(split, name), getattr(whole, name), rtol=1e-5, atol=1e-5)


def test_a_small_request_runs_after_one_step_of_a_large_one(segmenter):
    service = SegmentationService(segmenter, step_pixels=320 * 320)  # the large image: one proposal a step
    events: list[tuple[str, str]] = []
    first_step_done, small_arrived = threading.Event(), threading.Event()
    lock = service.model_turn()

    @contextlib.contextmanager
    def recorded_turn():
        who = threading.current_thread().name
        if who == "small":
            small_arrived.set()
        with lock:
            events.append((who, "step"))
            yield
        if who == "large":
            first_step_done.set()
            small_arrived.wait(30)  # the small request asks for the model before the large one asks again
            time.sleep(0.2)

    service.model_turn = recorded_turn
    answers = {}

    def large() -> None:
        answers["large"] = service.segment(_photo(320, 1), ["the big square"])

    def small() -> None:
        first_step_done.wait(30)
        answers["small"] = service.segment(_photo(48, 2), ["the red square"])

    threads = [threading.Thread(target=large, name="large"), threading.Thread(target=small, name="small")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    service.close()
    large_steps = [i for i, (who, _) in enumerate(events) if who == "large"]
    small_steps = [i for i, (who, _) in enumerate(events) if who == "small"]
    assert len(large_steps) == 1 + len(answers["large"][1])  # the tensors, then one proposal a step
    assert small_steps == [1]  # the small image's one step came right after the large one's first
    assert answers["small"][2][0].expression == "the red square"

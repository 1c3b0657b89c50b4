"""Shared fixtures: random-weight CLIP models of the real classes, real images and real data."""
from __future__ import annotations

import os
import socket
import sqlite3
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import open_clip
import pytest
import torch
from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg

from zsris.backbones import ClipBackbone, load_backbone

REPO = Path(__file__).resolve().parents[1]
#: The refcoco-mini data: $ZSRIS_TEST_DATA, else the shared folder beside the repository.
REFCOCO_MINI = Path(os.environ.get("ZSRIS_TEST_DATA") or REPO.parent / "shared" / "data" / "refcoco-mini")


def _tiny(vision: CLIPVisionCfg, seed: int) -> ClipBackbone:
    torch.manual_seed(seed)
    text = CLIPTextCfg(width=64, heads=2, layers=2)
    model = CLIP(embed_dim=32, vision_cfg=vision, text_cfg=text, quick_gelu=True).eval()
    size = vision.image_size
    return ClipBackbone(model, open_clip.get_tokenizer("ViT-B-32"), "tiny", "random", int(size))


@pytest.fixture(scope="session")
def tiny_vit() -> ClipBackbone:
    """open_clip's VisionTransformer in a small config: 4 blocks, 4x4 patch grid."""
    return _tiny(CLIPVisionCfg(layers=4, width=64, head_width=32, patch_size=16, image_size=64), 0)


@pytest.fixture(scope="session")
def tiny_resnet() -> ClipBackbone:
    """open_clip's ModifiedResNet in a small config: one bottleneck per stage, 3x3 final map."""
    return _tiny(CLIPVisionCfg(layers=(1, 1, 1, 1), width=8, head_width=16, image_size=96), 1)


@pytest.fixture(scope="session")
def vit_b32() -> ClipBackbone:
    """Full-size ViT-B/32 with random weights (the paper's backbone)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return load_backbone("ViT-B/32", weights="random")


@pytest.fixture(scope="session")
def two_shapes() -> np.ndarray:
    """A red square on the left and a blue box on the right, on grey: 72 x 100."""
    pixels = np.full((72, 100, 3), 200, np.uint8)
    pixels[8:40, 6:40] = (220, 30, 30)
    pixels[20:64, 50:92] = (30, 30, 220)
    return pixels


@pytest.fixture(scope="session")
def refcoco_mini() -> Path:
    if not (REFCOCO_MINI / "refcoco" / "refs(unc).p").is_file():
        pytest.skip(f"refcoco-mini not found at {REFCOCO_MINI} (set ZSRIS_TEST_DATA to its folder)")
    return REFCOCO_MINI


@pytest.fixture(scope="session")
def real_image_path(refcoco_mini: Path) -> Path:
    return refcoco_mini / "images" / "train2014" / "COCO_train2014_000000000312.jpg"


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


def count_rows(database: Path, table: str) -> int:
    """Rows of ``table`` in a run's SQLite store, 0 while it does not exist or is locked (a run
    being watched from outside)."""
    try:
        with sqlite3.connect(database, timeout=1) as connection:
            return connection.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]
    except sqlite3.Error:
        return 0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """A real `zsris serve` process on loopback, its log, and a way to stop it."""

    def __init__(self, args: list[str], log: Path, env: dict[str, str] | None = None) -> None:
        import httpx

        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        self.log = log
        with open(log, "w") as stream:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "zsris.cli", "serve", "--port", str(port), "--weights", "random", *args],
                stdout=stream, stderr=subprocess.STDOUT,
                env={**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", **(env or {})})
        deadline = time.time() + 180
        while time.time() < deadline:
            if self.process.poll() is not None:
                pytest.fail(f"server exited: {log.read_text()[-2000:]}")
            try:
                if httpx.get(f"{self.url}/api/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.5)
        self.stop()
        pytest.fail(f"server did not start: {log.read_text()[-2000:]}")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=30)


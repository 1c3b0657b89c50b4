"""The one look-up of a proposal generator's checkpoint (zsris.checkpoints.find_checkpoint)."""
from __future__ import annotations

from pathlib import Path

from zsris.checkpoints import FoundCheckpoint, find_checkpoint
from zsris.proposals.configs import CHECKPOINT_SOURCES, FREESOLO_WEIGHTS, SAM2_WEIGHTS, SAM_WEIGHTS


def _cached(cache: Path, repo: str, file: str) -> Path:
    """``file`` of ``repo`` in a Hugging Face cache at ``cache``, as the hub's client leaves it."""
    base = cache / f"models--{repo.replace('/', '--')}"
    (base / "refs").mkdir(parents=True)
    (base / "refs" / "main").write_text("0123abcd")
    (base / "snapshots" / "0123abcd").mkdir(parents=True)
    (base / "snapshots" / "0123abcd" / file).write_text("{}")
    return base / "snapshots" / "0123abcd" / file


def test_the_flag_then_the_environment_then_the_cache_then_the_hub(monkeypatch, tmp_path):
    """Every generator's weights are looked for in one order: given, its environment variable, the
    hub's copy in the Hugging Face cache (a folder in the transformers format, else the file), then,
    online, the hub (a folder's id: transformers downloads it). SAM's are not on the hub."""
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr("zsris.checkpoints.network_reachable", lambda *a, **k: False)
    for source in CHECKPOINT_SOURCES:
        monkeypatch.delenv(source.env, raising=False)
    tiny = _cached(tmp_path, "facebook/sam2.1-hiera-tiny", "config.json")
    freesolo = _cached(tmp_path, "xinlongwang/FreeSOLO", "FreeSOLO_R101_30k_pl.pth")
    monkeypatch.setenv("ZSRIS_SAM2_CHECKPOINT", "from-env")
    assert find_checkpoint(SAM2_WEIGHTS, "given", "tiny") == FoundCheckpoint("given", "given")
    assert find_checkpoint(SAM2_WEIGHTS, None, "tiny") == FoundCheckpoint("from-env", "env")
    monkeypatch.delenv("ZSRIS_SAM2_CHECKPOINT")
    assert find_checkpoint(SAM2_WEIGHTS, None, "tiny") == FoundCheckpoint(str(tiny.parent), "cache")
    assert find_checkpoint(FREESOLO_WEIGHTS, None) == FoundCheckpoint(str(freesolo), "cache")
    assert find_checkpoint(SAM2_WEIGHTS, None, "large") is None  # not cached, and no network
    assert find_checkpoint(SAM_WEIGHTS, None, "vit_h") is None  # no hub copy: given or nothing
    monkeypatch.setattr("zsris.checkpoints.network_reachable", lambda *a, **k: True)
    assert find_checkpoint(SAM2_WEIGHTS, None, "large") == FoundCheckpoint("facebook/sam2.1-hiera-large", "hub")
    assert find_checkpoint(SAM2_WEIGHTS, None, "large", online=False) is None  # zsris weights never goes online

"""Optional extras: the modules each one installs, and a one-line error naming it when absent."""
from __future__ import annotations

import importlib.util

from .errors import ZsrisError

#: extra -> the top-level modules it installs (see pyproject.toml's optional-dependencies).
EXTRAS: dict[str, tuple[str, ...]] = {
    "serve": ("gradio", "fastapi", "uvicorn", "multipart"),
    "ray": ("ray",),
    "sam": ("segment_anything",),
    "hf": ("transformers",),
    "hybridgl": ("cv2", "segment_anything"),
}


def require_extra(extra: str, purpose: str) -> None:
    """Raise ZsrisError naming ``pip install 'zsris[extra]'`` when a module of ``extra`` is missing.

    Checked by module spec, before anything is imported, so a missing extra costs no time."""
    missing = [name for name in EXTRAS[extra] if importlib.util.find_spec(name) is None]
    if missing:
        raise ZsrisError(f"{purpose} needs the '{extra}' extra ({', '.join(missing)} missing): "
                         f"pip install 'zsris[{extra}]'")

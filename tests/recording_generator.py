"""A proposal generator that leaves a note of each image it starts, naming the process, in the
folder its ``folder`` option gives, then makes classical proposals (or, for an image whose name
holds "dies", ends its process, as a crash or the out-of-memory killer would): Ray tasks import
it by name (``recording_generator:factory``) to show where, and how far ahead, images are prepared."""
from __future__ import annotations

import os
import time
from pathlib import Path


class RecordsWhereItRuns:
    name = "records"
    cache_key = "records-v1"

    def __init__(self, folder: str) -> None:
        self.folder = Path(folder)

    def __call__(self, image, image_id=None):
        from zsris.proposals import ClassicalProposals

        (self.folder / f"{image_id}.started").write_text(f"{os.getpid()} {time.time()}")
        if image_id and "dies" in image_id:
            os._exit(1)
        return ClassicalProposals(max_proposals=3)(image)


def factory(spec, device):
    return RecordsWhereItRuns(spec.options["folder"])

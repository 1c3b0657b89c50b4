"""A proposal generator that never returns for an image whose name holds "hang" (a file that
blocks, a decoder that never ends), classical proposals for the others: the engine's workers
import it by name (``hanging_generator:factory``), so it lives in a light module of its own."""
from __future__ import annotations

import time


class HangsOnSomeImages:
    name = "hangs"
    cache_key = "hangs-v1"

    def __call__(self, image, image_id=None):
        from zsris.proposals import ClassicalProposals

        if image_id and "hang" in image_id:
            time.sleep(3600)
        return ClassicalProposals(max_proposals=3)(image)


def factory(spec, device):
    return HangsOnSomeImages()

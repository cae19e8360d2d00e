"""Training and evaluation data: ShareGPT conversations, intents, flipping, splits.

Public entry points::

    from userlm_local.data import Dialogue, load_dialogues, split_counts, flip, Sample
"""

from __future__ import annotations

from .dialogue import Dialogue
from .flip import Sample, flip
from .sharegpt import SPLITS, load_dialogues, split_counts, split_of

__all__ = ["Dialogue", "Sample", "SPLITS", "flip", "load_dialogues", "split_counts", "split_of"]

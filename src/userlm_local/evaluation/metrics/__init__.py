"""The paper's metrics as pure functions over texts, logprobs and scores (no model calls here)."""

from __future__ import annotations

from .decomposition import intent_decomposition, turn_overlap
from .diversity import first_turn_diversity, unigram_set
from .perplexity import perplexity
from .termination import best_f1, f1_at, roc_auc

__all__ = ["best_f1", "f1_at", "first_turn_diversity", "intent_decomposition", "perplexity",
           "roc_auc", "turn_overlap", "unigram_set"]

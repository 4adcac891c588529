"""Text classifier: prompt embeddings → per-class synonym embeddings (K, S, D) and a synonym mask.

The text encoder graph turns the 14 ViLD prompts of every synonym into embeddings; here they are
L2-normalised, averaged over the templates and normalised again (FZ ``get_text_classifier``), then
laid out as (K, S, D) with a (K, S) mask of valid synonyms, so that "max over synonyms" is a masked
``amax`` and K, S stay dynamic in exported graphs. Torch only; used by every backend.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from cmpf.spec import CONTEXT_LENGTH
from cmpf.vocabulary import VILD_PROMPT, Vocabulary


@dataclass(frozen=True)
class TextClassifier:
    """embeddings (K, S, D) float32, unit norm where valid, zeros elsewhere; synonym_mask (K, S) bool."""

    embeddings: torch.Tensor
    synonym_mask: torch.Tensor

    @property
    def num_classes(self) -> int:
        return self.embeddings.shape[0]

    def to(self, device: torch.device | str) -> "TextClassifier":
        return TextClassifier(self.embeddings.to(device), self.synonym_mask.to(device))


def tokenize(prompts: list[str]) -> torch.Tensor:
    """open_clip tokens (P, 77) int64 (BPE tokenizer shipped inside open_clip; no download)."""
    from open_clip.tokenizer import tokenize as oc_tokenize

    return oc_tokenize(prompts, context_length=CONTEXT_LENGTH)


def synonym_embeddings(prompt_embeddings: torch.Tensor) -> torch.Tensor:
    """(T*14, D) un-normalised prompt embeddings (template-minor) → (T, D) synonym embeddings."""
    x = prompt_embeddings.float()
    x = x / x.norm(dim=-1, keepdim=True)
    x = x.reshape(-1, len(VILD_PROMPT), x.shape[-1]).mean(1)
    return x / x.norm(dim=-1, keepdim=True)


def from_synonym_embeddings(synonyms: torch.Tensor, num_synonyms: list[int]) -> TextClassifier:
    """(T, D) synonym embeddings in class order + synonyms per class → padded ``TextClassifier``."""
    if synonyms.shape[0] != sum(num_synonyms):
        raise ValueError(f"{synonyms.shape[0]} synonym embeddings for {sum(num_synonyms)} synonyms")
    k, s, d = len(num_synonyms), max(num_synonyms), synonyms.shape[-1]
    emb = synonyms.new_zeros(k, s, d)
    mask = torch.zeros(k, s, dtype=torch.bool, device=synonyms.device)
    start = 0
    for i, n in enumerate(num_synonyms):
        emb[i, :n] = synonyms[start:start + n]
        mask[i, :n] = True
        start += n
    return TextClassifier(emb, mask)


def encode_vocabulary(vocabulary: Vocabulary, encode: Callable[[torch.Tensor], torch.Tensor],
                      batch: int = 128, device: torch.device | str = "cpu") -> TextClassifier:
    """Tokenise every prompt of ``vocabulary`` and encode them ``batch`` at a time.

    Args:
        encode: (P, 77) int64 token ids → (P, D) prompt embeddings (the text tower or its graph).
    """
    tokens = tokenize(vocabulary.prompts()).to(device)
    feats = torch.cat([encode(tokens[i:i + batch]) for i in range(0, tokens.shape[0], batch)])
    return from_synonym_embeddings(synonym_embeddings(feats), vocabulary.num_synonyms)


class TextCache:
    """Text classifiers per vocabulary for one text-encoder runner: it runs once per vocabulary."""

    def __init__(self, runner, batch: int = 128):
        self.runner, self.batch = runner, batch
        self._cache: dict[tuple, TextClassifier] = {}

    def get(self, vocabulary: Vocabulary) -> TextClassifier:
        if vocabulary.classes not in self._cache:
            encode = lambda tokens: self.runner({"token_ids": tokens})["text_features"]  # noqa: E731
            self._cache[vocabulary.classes] = encode_vocabulary(vocabulary, encode, self.batch)
        return self._cache[vocabulary.classes]

    def put(self, vocabulary: Vocabulary, classifier: TextClassifier) -> None:
        """Use a precomputed classifier for ``vocabulary`` (e.g. stored reference embeddings)."""
        self._cache[vocabulary.classes] = classifier


def classification_logits(
    x: torch.Tensor,
    text: torch.Tensor,
    synonym_mask: torch.Tensor,
    void: torch.Tensor,
    logit_scale: torch.Tensor,
) -> torch.Tensor:
    """Cosine logits, max over synonyms, void column last (FZ ``get_classification_logits``).

    Args:
        x: (B, Q, D) embeddings (normalised here).
        text: (K, S, D) synonym embeddings; synonym_mask (K, S) bool.
        void: (1, D) normalised void embedding.
        logit_scale: () learnable log-scale; exp() is clamped at 100.
    Returns:
        (B, Q, K + 1) logits.
    """
    k, s, d = text.shape
    x = F.normalize(x, dim=-1)
    scale = torch.clamp(logit_scale.exp(), max=100)
    classifier = torch.cat([text.reshape(k * s, d), void], 0)
    logits = (scale * x) @ classifier.t()  # (B, Q, K*S + 1)
    per_synonym = logits[..., : k * s].unflatten(-1, (k, s))
    per_class = per_synonym.masked_fill(~synonym_mask, float("-inf")).amax(-1)
    return torch.cat([per_class, logits[..., k * s:]], dim=-1)

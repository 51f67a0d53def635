"""Prepared inputs: one decoded file with each featurizer's per-item work done.

What the decode workers hand on (:mod:`scanner.pipeline.prepare`), and what an
index build (:mod:`scanner.pipeline.build`) and the matchers of
:mod:`scanner.match` take: no featurizer runs here but through
:func:`embed_prepared`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from scanner.features.base import Featurizer
from scanner.media import Input

#: Items embedded (and searched) together.
BATCH = 64


@dataclass
class Prepared:
    """One decoded input with each featurizer's per-item work done."""

    item: Input
    sha256: str | None = None
    prepared: dict[str, np.ndarray] = field(default_factory=dict)
    featureless: str | None = None
    error: str | None = None
    #: a reference's thumbnail (WebP bytes) for the index's ``thumbs/``, and its
    #: sidecar (an audio strip's ``{"duration": seconds}``)
    thumb: bytes | None = None
    thumb_meta: dict[str, Any] | None = None
    #: a video's keyframes and soundtrack, each prepared as an image or audio
    #: input of its own (their ``timecode``: seconds into the video), and what
    #: its decoding found (:func:`scanner.pipeline.prepare.prepare_one`)
    parts: list[Prepared] | None = None
    timecode: float | None = None
    video: dict[str, Any] | None = None
    #: rows already embedded by a featurizer with a model (:func:`scanner.pipeline.prepare.embed_ahead`), by name:
    #: float32 ``[shape=(codes_per_item, dim)]``
    vectors: dict[str, np.ndarray] = field(default_factory=dict)
    #: a picture's (width, height) as decoded (at most the featurizers' decode side)
    size: tuple[int, int] | None = None


def embed_prepared(feat: Featurizer, batch: Sequence[Prepared]) -> tuple[list[int], np.ndarray]:
    """Vectors of ``feat`` for the items of ``batch`` that decoded.

    Returns the items' positions and their vectors, ``feat.codes_per_item``
    rows per item, item-major.
    """
    pos = [i for i, p in enumerate(batch) if p.error is None and feat.name in p.prepared]
    if not pos:
        return [], np.zeros((0, 0))
    if all(feat.name in batch[i].vectors for i in pos):  # embedded ahead, on another worker
        return pos, np.concatenate([batch[i].vectors[feat.name] for i in pos])
    return pos, feat.embed([batch[i].prepared[feat.name] for i in pos])

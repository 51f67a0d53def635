"""Featurizers: one module each, all with the interface of :mod:`scanner.features.base`.

Use :func:`make` to build one by name; heavy libraries are imported only by the
featurizer that needs them.
"""

from __future__ import annotations

from typing import Any

from scanner.errors import ParameterError
from scanner.features.base import WEIGHT_FREE as WEIGHT_FREE, Featurizer

#: Every featurizer name likeness knows, in the order reports list them.
NAMES = ("image-phash", "image-local", "image-sscd", "image-clip", "image-face", "audio-fingerprint",
         "audio-melody", "audio-voice")
#: Dense features whose distances are read against each query's neighbourhood in the index
#: (a learned copy descriptor: :mod:`scanner.match.dense`).
QUERY_ADAPTIVE = frozenset({"image-sscd"})
#: Landmark features and the copy descriptor that proposes works to them: the works it ranks
#: first are verified by the landmarks' geometry against a null of its own proposals
#: (:mod:`scanner.match.landmarks`), whatever the keypoints' own vote found.
PROPOSERS = {"image-local": "image-sscd"}


def make(name: str, **options: Any) -> Featurizer:
    """Build the featurizer called ``name``.

    Parameters
    ----------
    name : str
        One of :data:`NAMES`.
    **options
        Passed to the featurizer's constructor (``model``, ``pretrained``,
        ``models_dir``, ``device`` for ``image-clip``; ``model``, ``device``,
        ``threads``, ``expect_sha256``, ``version`` for ``image-sscd``); unknown ones are ignored
        by featurizers that take none.

    Raises
    ------
    ParameterError
        If ``name`` is unknown.
    """
    if name == "image-phash":
        from scanner.features.phash import PHash

        return PHash()
    if name == "image-local":
        from scanner.features.local import LocalORB

        return LocalORB()
    if name == "image-sscd":
        from scanner.features.sscd import SSCD

        return SSCD(**{k: v for k, v in options.items()
                       if k in ("model", "device", "threads", "expect_sha256", "version") and v is not None})
    if name == "image-face":
        from scanner.features.face import Face

        return Face()
    if name == "audio-voice":
        from scanner.features.voice import Voice

        return Voice()
    if name == "image-clip":
        from scanner.features.clip import Clip

        return Clip(**{k: v for k, v in options.items() if v is not None})
    if name == "audio-fingerprint":
        from scanner.features.fingerprint import Fingerprint

        return Fingerprint()
    if name == "audio-melody":
        from scanner.features.melody import Melody

        return Melody()
    raise ParameterError(f"unknown feature {name!r}; known: {', '.join(NAMES)}")

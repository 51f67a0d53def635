"""Matching: from a batch of prepared inputs to per-work evidence, one module per feature kind.

================  =============================  =======================================
kind              module                         features
================  =============================  =======================================
``binary``        :mod:`scanner.match.hashes`    ``image-phash``
``dense``         :mod:`scanner.match.dense`     ``image-clip``
``landmark``      :mod:`scanner.match.landmarks` ``image-local``
``postings``      :mod:`scanner.match.postings`  ``audio-fingerprint``
``segments``      :mod:`scanner.match.segments`  ``audio-melody``
``face``          :mod:`scanner.match.faces`     ``image-face`` (talents)
``voice``         :mod:`scanner.match.voices`    ``audio-voice`` (talents)
================  =============================  =======================================

Each kind follows :class:`scanner.match.base.FeatureKind`; :func:`kind_of`
is the one place that maps a feature to its kind. :mod:`scanner.match.fusion`
fuses two copy kinds' evidence on one work; :mod:`scanner.match.video`
gathers a video's keyframes' and soundtrack's evidence.
"""

from __future__ import annotations

from typing import Any, Mapping

from scanner.errors import IndexError_
from scanner.match.base import Evidence, FeatureKind, Judge

__all__ = ["Evidence", "FeatureKind", "Judge", "KINDS", "kind_of"]


from scanner.match.dense import Dense  # noqa: E402
from scanner.match.faces import Faces  # noqa: E402
from scanner.match.hashes import Hashes  # noqa: E402
from scanner.match.landmarks import Landmarks  # noqa: E402
from scanner.match.postings import Postings  # noqa: E402
from scanner.match.segments import Segments  # noqa: E402
from scanner.match.voices import Voices  # noqa: E402

#: Kind name -> its implementation: the registry. A new kind is a module and a line here.
KINDS: dict[str, FeatureKind] = {k.name: k for k in (Hashes(), Dense(), Landmarks(), Postings(), Segments(),
                                                        Faces(), Voices())}


def kind_of(feature: Any) -> FeatureKind:
    """The kind that stores and matches a feature.

    Parameters
    ----------
    feature : a :class:`~scanner.features.base.Featurizer`, or a feature's
        manifest entry (its identity): ``kind`` and ``codes_per_item``

    Dense rows of which an item yields any number (``codes_per_item`` 0: melody
    windows) are aligned segments; every other kind is named as it is.
    """
    spec: Mapping[str, Any] = feature if isinstance(feature, Mapping) else {
        "kind": feature.kind, "codes_per_item": feature.codes_per_item}
    name = spec.get("kind")
    if name == "dense" and spec.get("codes_per_item") == 0:
        name = "segments"
    if name not in KINDS:
        raise IndexError_(f"unknown feature kind {name!r} (known: {', '.join(KINDS)}); "
                          "a newer likeness may have written this index")
    return KINDS[name]

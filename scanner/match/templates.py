"""What the talent kinds share (:mod:`scanner.match.faces`, :mod:`scanner.match.voices`): templates.

A talent's templates (face descriptors, voice stretches) are float32 rows in an
exact faiss index (a registry of people is small), with their row map and per-row
arrays (boxes, spans) beside it. They are biometric data: the files are readable
by the owner only, covered by the manifest's checksums (and its HMAC) like every
index file, and removing a talent's references deletes them.
"""

from __future__ import annotations

import os
from typing import Any, ClassVar

import numpy as np

from scanner.match.base import FeatureKind, IndexFiles, Staged

#: The files a template feature keeps.
TEMPLATE_FILES = (".faiss", ".rows.npy", ".npz")


def talent_numbers(talents: dict[int, str], works: np.ndarray) -> np.ndarray:
    """Each row's talent as a number (names sorted), -1 for a row of no talent; int64 ``[shape=(n,)]``.

    Parameters
    ----------
    talents : work id -> talent name (:meth:`scanner.index.store.Index.work_talents`)
    works : int ``[shape=(n,)]`` each row's work
    """
    number = {t: k for k, t in enumerate(sorted(set(talents.values())))}
    return np.array([number.get(talents.get(int(w), ""), -1) for w in works], np.int64)


class Templates(FeatureKind):
    """A talent kind's storage: float32 rows searched exactly by :attr:`metric`, arrays beside them."""

    has_arrays = True
    #: ``"l2"`` (faiss ``IndexFlatL2``) or ``"ip"`` (``IndexFlatIP``)
    metric: ClassVar[str]
    #: the per-row array saying how each template was described (a face's rendering, a voice's
    #: channel); an index built before it had every template as recorded (0)
    described: ClassVar[str | None] = None

    def empty(self, spec: dict[str, Any]) -> np.ndarray:
        return np.zeros((0, spec["dim"]), np.float32)

    def read(self, staged: Staged) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]] | None:
        old = staged.read_faiss()
        if old is None or not old.ntotal:
            return None
        arrays = staged.load_npz(".npz")
        if self.described and self.described not in arrays:
            # built before: its templates as recorded, so references added now keep theirs apart
            arrays[self.described] = np.zeros(int(old.ntotal), np.uint8)
        return old.reconstruct_n(0, old.ntotal), staged.load_npy(".rows.npy"), arrays

    def write(self, staged: Staged) -> int:
        import faiss

        vecs, rows = staged.final()
        index = (faiss.IndexFlatL2 if self.metric == "l2" else faiss.IndexFlatIP)(int(staged.spec["dim"]))
        index.add(np.ascontiguousarray(vecs, np.float32))
        staged.save_faiss(index)
        staged.save_npy(".rows.npy", np.ascontiguousarray(rows, np.int32))
        staged.save_npz(".npz", {k: np.ascontiguousarray(v) for k, v in staged.arrays().items()})
        for suffix in TEMPLATE_FILES:  # biometric templates: readable by the owner only
            os.chmod(staged.path(suffix), 0o600)
        return int(index.ntotal)

    def stored(self, index: IndexFiles, name: str) -> int:
        return int(index.faiss_index(name).ntotal)

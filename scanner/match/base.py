"""The protocol every feature kind follows, and the evidence every kind gives.

A *feature kind* (packed hash codes, dense vectors, keypoint landmarks,
fingerprint postings, aligned segments) is one unit, one module of this
package, registered by its name in :mod:`scanner.match`. It says

* what an index keeps of it: which files, how they are written and read back
  when the index is extended (:meth:`FeatureKind.read`, :meth:`FeatureKind.write`,
  given a :class:`Staged` view of the index being written), and how many rows
  they hold (:meth:`FeatureKind.stored`, for ``index verify``);
* what a build adds per reference (:meth:`FeatureKind.add`) and the null it
  fits on the references themselves (:meth:`FeatureKind.fit_null`);
* how a scan turns a batch of prepared inputs into per-work evidence, each
  with its expected number of chance matches (:meth:`FeatureKind.open`, then
  :meth:`Judge.evidence`).

The store and the pipeline loop over features and call these; neither asks
which kind it holds. The kinds see the index through the small interfaces
below (:class:`Staged` while one is written, :class:`IndexFiles` once it is
open), never through the store's classes.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar, NamedTuple, Protocol, Sequence

import numpy as np

from scanner.features.base import Featurizer
from scanner.features.prepared import Prepared
from scanner.search_choice import Plan


@dataclass(frozen=True)
class Evidence:
    """The closest row of one work to one query, for one feature.

    Attributes
    ----------
    work_id : int
    feature : str
    raw : float
        Search score as returned (Hamming bits, or cosine).
    distance : float
        Smaller-is-closer form: Hamming bits, or ``1 - cosine``.
    locator : int
        Which row of the work matched (its view, tile or segment).
    query_locator : int
        Which of the query's rows matched.
    row : int
        The index row that matched (-1 for landmark evidence).
    detail : dict, optional
        Landmark evidence: where the match sits (boxes, shares, inliers).
    pending : tuple, optional
        Landmark evidence verified without its boxes: what
        :func:`landmark_detail` builds them from, when they are asked for.
    """

    work_id: int
    feature: str
    raw: float
    distance: float
    locator: int
    query_locator: int = 0
    row: int = -1
    detail: dict[str, Any] | None = None
    pending: tuple | None = field(default=None, repr=False, compare=False)


class Placement(NamedTuple):
    """Where one work lies in an input (:meth:`Judge.placements`).

    Attributes
    ----------
    work_id : int
    where : float64 ``[shape=(2, 3)]``, the work's picture to the input's, both in coordinates
        normalised to their width and height
    region : bool
        ``where`` spans the part of the input the evidence covers, not the work carried over by a
        fitted transform: a cut there is all input, no ground where the work would reach past it
    """

    work_id: int
    where: np.ndarray
    region: bool = False


def to_distance(raw: np.ndarray, metric: str) -> np.ndarray:
    """Raw search scores in smaller-is-closer form (``1 - cosine`` for ``ip``)."""
    raw = np.asarray(raw, dtype=np.float64)
    return raw if metric == "hamming" else 1.0 - raw


def best_per_work(D: np.ndarray, I: np.ndarray, rows: np.ndarray, *, feature: str,
                  metric: str, codes_per_query: int = 1) -> list[list[Evidence]]:
    """Group each query's neighbours by work, keeping each work's closest row.

    Parameters
    ----------
    D, I : ``[shape=(n * codes_per_query, k)]`` search results
        (:func:`scanner.search.knn`), query rows item-major
    rows : int32 ``[shape=(n_rows, 2)]`` row -> (work_id, locator)
    feature : feature name, copied into the evidence
    metric : ``"hamming"`` or ``"ip"``
    codes_per_query : rows each query item has (all are pooled)

    Returns
    -------
    list of lists
        Per query, evidence sorted closest first, one entry per work.
    """
    k = D.shape[1]
    D = D.reshape(-1, codes_per_query * k)
    I = I.reshape(-1, codes_per_query * k)
    dist = to_distance(D, metric)
    valid = I >= 0
    safe = np.where(valid, I, 0)
    works = np.asarray(rows)[safe, 0]
    locs = np.asarray(rows)[safe, 1]
    out: list[list[Evidence]] = []
    for q in range(len(I)):
        order = np.argsort(dist[q], kind="stable")
        seen: set[int] = set()
        ev = []
        for j in order:
            if not valid[q, j] or int(works[q, j]) in seen:
                continue
            seen.add(int(works[q, j]))
            ev.append(Evidence(int(works[q, j]), feature, float(D[q, j]), float(dist[q, j]), int(locs[q, j]),
                               int(j // k), int(I[q, j])))
        out.append(ev)
    return out


class WorkRows:
    """Row numbers of each work, the rows in any order: one stable sort, then a binary search a work.

    For a build's rows (a few works asked about); a scan's memory-mapped row map in
    work order is read with :func:`work_spans`, which keeps only ``O(works)``.
    """

    def __init__(self, work_of_row: np.ndarray):
        works = np.asarray(work_of_row)
        self.order = np.argsort(works, kind="stable")
        self.sorted = works[self.order]

    def __call__(self, work_id: int) -> np.ndarray:
        """The rows of ``work_id``, int64, in row order (empty when it has none)."""
        return self.order[np.searchsorted(self.sorted, work_id, "left"):np.searchsorted(self.sorted, work_id, "right")]


def work_spans(work_of_row: np.ndarray, block: int = 1 << 24) -> tuple[np.ndarray, np.ndarray] | None:
    """Where each work's rows start and end, when rows are in work order (as an index writes them).

    Returns the works (sorted) and their bounds (``bounds[i]:bounds[i + 1]``
    are the rows of ``works[i]``), or ``None`` when the rows are out of
    order. Read in blocks: the row map may be a memory-mapped file of
    billions of rows, and only ``O(works)`` is kept.
    """
    works: list[np.ndarray] = []
    starts: list[np.ndarray] = []
    last = None
    for lo in range(0, len(work_of_row), block):
        col = np.asarray(work_of_row[lo:lo + block])
        if np.any(col[1:] < col[:-1]) or (last is not None and col[0] < last):
            return None
        cut = np.flatnonzero(col[1:] != col[:-1]) + 1
        if last is None or col[0] != last:
            cut = np.concatenate([[0], cut])
        works.append(col[cut])
        starts.append(cut + lo)
        last = col[-1]
    if not works:
        return np.zeros(0, np.int64), np.zeros(1, np.int64)
    return (np.concatenate(works).astype(np.int64),
            np.concatenate([*starts, [len(work_of_row)]]).astype(np.int64))


class RowsByWork:
    """Row numbers of each work of an open index's row map, worked out when first asked: from the
    spans of rows in work order (:func:`work_spans`, ``O(works)`` kept, as an index writes them),
    else (works removed and re-added) by one sort (:class:`WorkRows`)."""

    def __init__(self, work_of_row: np.ndarray):
        self.work_of_row = work_of_row
        self._found: tuple[np.ndarray, np.ndarray] | WorkRows | None = None

    def __call__(self, work_id: int) -> np.ndarray:
        """The rows of ``work_id``, int64, in row order (empty when it has none)."""
        if self._found is None:
            self._found = work_spans(self.work_of_row) or WorkRows(np.asarray(self.work_of_row))
        if isinstance(self._found, WorkRows):
            return self._found(work_id)
        works, bounds = self._found
        at = int(np.searchsorted(works, work_id))
        if at < len(works) and works[at] == work_id:
            return np.arange(bounds[at], bounds[at + 1], dtype=np.int64)
        return np.zeros(0, np.int64)


# --- what a kind sees of an index -----------------------------------------------------


class IndexFiles(Protocol):
    """An open index as a kind reads it (:class:`scanner.index.store.Index`)."""

    null: dict[str, Any]

    def faiss_index(self, feature: str) -> Any: ...

    def rows(self, feature: str) -> np.ndarray: ...

    def codes(self, feature: str) -> np.ndarray: ...

    def landmarks(self, feature: str) -> dict[str, np.ndarray]: ...

    def row_weights(self, feature: str) -> np.ndarray | None: ...

    def work_talents(self) -> dict[int, str]: ...


class Writer(Protocol):
    """An index being written, as a kind adds to it and fits its null (:class:`scanner.index.writer.IndexWriter`)."""

    def add_vectors(self, identity: dict[str, Any], vectors: np.ndarray, work_ids: np.ndarray,
                    locators: np.ndarray | None = None, extra: dict[str, np.ndarray] | None = None) -> None: ...

    def vectors(self, name: str) -> tuple[np.ndarray, np.ndarray]: ...

    def extras(self, name: str) -> dict[str, np.ndarray]: ...

    def derived(self, name: str, make: Callable[[], Any]) -> Any: ...

    def set_row_weights(self, name: str, weights: np.ndarray | None) -> None: ...

    def spec(self, name: str) -> dict[str, Any]: ...

    def feature_names(self) -> list[str]: ...

    def work_talents(self) -> dict[int, str]: ...


class Staged(Protocol):
    """One feature of an index being written, as its kind reads and writes its files.

    Attributes
    ----------
    name : the feature's name
    spec : its manifest entry, written to the manifest after :meth:`FeatureKind.write`
        (a kind may add to it: ``index`` parameters)
    stream : ``(VectorStream, rows)`` when the feature is built from a stream, else ``None``
    removed : int32 ``[shape=(n,)]`` ids of works removed by this write
    added : vector blocks queued by this write, in order
    added_rows : their rows, int32 ``[shape=(m, 2)]`` each
    """

    name: str
    spec: dict[str, Any]
    stream: tuple[Any, np.ndarray] | None
    removed: np.ndarray
    added: list[np.ndarray]
    added_rows: list[np.ndarray]

    def path(self, suffix: str) -> Path: ...

    def final(self) -> tuple[np.ndarray, np.ndarray]: ...

    def arrays(self) -> dict[str, np.ndarray]: ...

    def derived(self, make: Callable[[], Any]) -> Any: ...

    def read_faiss(self) -> Any: ...

    def load_npy(self, suffix: str) -> np.ndarray: ...

    def load_npz(self, suffix: str) -> dict[str, np.ndarray]: ...

    def save_npy(self, suffix: str, array: np.ndarray) -> None: ...

    def save_npz(self, suffix: str, arrays: dict[str, np.ndarray]) -> None: ...

    def save_faiss(self, index: Any) -> None: ...

    def drop(self, suffix: str) -> None: ...


# --- the protocol -----------------------------------------------------------------------


#: Neighbours fetched per query row and feature.
K = 10


class Judge(ABC):
    """One feature of an open index, ready to judge batches (:meth:`FeatureKind.open`).

    A judge with a :attr:`proposer` also takes, per input, the works that feature
    ranked first (``proposed``, its :attr:`proposals` best) and verifies them too.
    """

    #: the feature whose best works this one verifies (``None``: it verifies none)
    proposer: str | None = None
    #: how many of them, per input
    proposals: int = 0
    #: whether its evidence says where in the input each work lies (:meth:`placements`)
    locates: bool = False
    #: how many works placed by another feature it looks at again per input (:meth:`aligned`; 0: none)
    looks: int = 0

    def placements(self, found: tuple[list[Evidence], np.ndarray] | None, n: int) -> list[Placement]:
        """Where the ``n`` strongest works of one input's evidence ``found`` lie in it, for a judge
        that :attr:`locates`."""
        return []

    def aligned(self, batch: Sequence[Prepared], placed: Sequence[Sequence[Placement]], *,
                by: str = "") -> list[tuple[list[Evidence], np.ndarray] | None]:
        """Evidence of a second look at each input, cut to where feature ``by`` placed a work
        (``placed``: per input, :meth:`placements`), for a judge with :attr:`looks`; as :meth:`evidence`."""
        return [None] * len(batch)

    @abstractmethod
    def evidence(self, batch: Sequence[Prepared]) -> list[tuple[list[Evidence], np.ndarray] | None]:
        """Per-work evidence of each input of ``batch``, with its expected chance matches.

        A judge with a :attr:`proposer` is also given ``proposed=``: per input, work ids, best first.

        Returns
        -------
        list, one entry per input: ``(evidence, expected)``, the works found and
        each one's expected number of chance matches this strong, float
        ``[shape=(len(evidence),)]``; ``None`` where the input gave nothing
        """


class FeatureKind(ABC):
    """One kind of feature: what the index keeps, the null fitted on it, and how it matches.

    Instances hold no state (one per kind, in the registry of
    :mod:`scanner.match`); what a scan loads lives in the :class:`Judge` that
    :meth:`open` returns.
    """

    #: the kind's name in the registry (featurizers' ``kind``)
    name: ClassVar[str]
    #: what a match's ``raw`` counts, as results name it (``raw_kind``)
    raw_kind: ClassVar[str]
    #: whether rows come with per-row arrays (positions, times) kept in ``<feature>.npz``
    has_arrays: ClassVar[bool] = False
    #: whether a feature of this kind can be built from a vector stream (more rows than memory)
    streams: ClassVar[bool] = False
    #: whether its evidence on a pair of works can be fused with a landmark's (:mod:`scanner.match.fusion`)
    fuses: ClassVar[bool] = False

    def fusable(self, name: str) -> bool:
        """Whether feature ``name`` of this kind fuses with a landmark feature (:attr:`fuses` by default)."""
        return self.fuses

    # -- what the index keeps
    @abstractmethod
    def empty(self, spec: dict[str, Any]) -> np.ndarray:
        """No rows, of the dtype and width this kind stores (what rows are concatenated to)."""

    @abstractmethod
    def read(self, staged: Staged) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]] | None:
        """The rows the index being extended holds already: ``(vectors, rows, arrays)``, or ``None``."""

    @abstractmethod
    def write(self, staged: Staged) -> int:
        """Write the feature's files into the staged index; returns the rows written."""

    @abstractmethod
    def stored(self, index: IndexFiles, name: str) -> int:
        """Rows an open index holds of feature ``name`` (``index verify`` checks them against the manifest)."""

    def arrays(self, index: IndexFiles, name: str) -> dict[str, np.ndarray]:
        """Per-row arrays of feature ``name`` in an open index, each row-aligned (``<feature>.npz``
        for kinds that keep them, :attr:`has_arrays`)."""
        return index.landmarks(name) if self.has_arrays else {}

    # -- building
    def declare(self, writer: Writer, feat: Featurizer) -> None:
        """Make the feature present in a new index even if no reference gives it rows (nothing by default)."""

    def add(self, writer: Writer, feat: Featurizer, items: Sequence[Prepared], work_ids: Sequence[int | None], *,
            timecodes: np.ndarray | None = None) -> None:
        """Queue the rows of new references (``work_ids[i]`` ``None``: not added).

        ``timecodes``: int ms ``[shape=(len(items),)]`` when the items are a video
        work's keyframes: the rows' locators carry them. By default each work's
        own rows, any number, from :meth:`Featurizer.index_rows` (:func:`item_rows`).
        """
        item_rows(writer, feat, items, work_ids, timecodes)

    @abstractmethod
    def fit_null(self, writer: Writer, name: str, *, featureless: np.ndarray,
                 chance_pairs: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]) -> dict[str, Any]:
        """The feature's null, fitted on pairs of different works' rows (featureless works left out).

        A kind whose chance evidence can be fused with another's leaves its
        ``(strength, reference, candidate work)`` triples in ``chance_pairs[name]``.
        """

    def pair_scores(self, writer: Writer, name: str, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """Evidence between works ``a[i]`` and ``b[i]``, larger is closer (kinds that fuse)."""
        raise NotImplementedError(f"{self.name} features do not score pairs of works")

    # -- scanning
    def detail(self, e: Evidence) -> dict[str, Any] | None:
        """Where a match sits, built now for evidence found without it (``e.pending``: the
        scanner asks only for the matches it shows); ``e.detail`` by default."""
        return e.detail

    @abstractmethod
    def open(self, index: IndexFiles, feat: Featurizer, *, plan: Plan | None = None) -> Judge:
        """Load (and verify) what a scan needs of feature ``feat``; returns its judge, which
        searches by ``plan`` (device, backend, precision; the default plan when None)."""


def item_rows(writer: Writer, feat: Featurizer, items: Sequence[Prepared], work_ids: Sequence[int | None],
              timecodes: np.ndarray | None) -> None:
    """Queue each new work's own rows (any number, none included: keypoints, hashes, windows).

    Locators number the rows of a work; a video keyframe's rows all carry its timecode (ms).
    """
    for k, (p, wid) in enumerate(zip(items, work_ids)):
        if wid is None or p.error is not None or feat.name not in p.prepared:
            continue
        codes, extra = feat.index_rows(p.prepared[feat.name])
        locators = (np.arange(len(codes), dtype=np.int32) if timecodes is None
                    else np.full(len(codes), timecodes[k], np.int32))
        writer.add_vectors(feat.identity(), codes, np.full(len(codes), wid, np.int32), locators, extra=extra)

"""The one interface every featurizer implements.

A featurizer turns decoded media into fixed-size vectors in two steps:

* :meth:`Featurizer.prepare` works on one decoded item and is thread-safe; the
  pipeline runs it in its decode workers, so a model never waits on disk.
* :meth:`Featurizer.embed` works on a batch of prepared items and returns one
  row per item.

Landmark featurizers (kind ``"landmark"``: keypoints) yield a variable number
of rows per item, each with a position; :meth:`Featurizer.index_rows` says what
the index keeps of a reference, and :mod:`scanner.match` verifies their geometry.

Postings featurizers (kind ``"postings"``: audio fingerprint hashes) yield a
variable number of integer keys per item, each with a time; the index keeps
them as sorted plain arrays (``<feature>.npz``, no faiss) that are looked up
with :func:`numpy.searchsorted`, and :mod:`scanner.match.postings` aligns them.

Audio featurizers (:class:`AudioFeaturizer`, ``modality = "audio"``) do not
take a whole decoded file: the pipeline decodes each audio file once, in
bounded chunks (:meth:`scanner.media.Audio.chunks`), and feeds every chunk to
every audio featurizer through :meth:`AudioFeaturizer.start`,
:meth:`~AudioFeaturizer.update` and :meth:`~AudioFeaturizer.finish`, so memory
stays bounded for a 3-hour file and the file is read once for all of them.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Any, Literal, Sequence

import numpy as np
from PIL import Image

from scanner.features.content import Content

if TYPE_CHECKING:
    from scanner.media import Audio, AudioChunk


#: Featurizers that need no downloaded weights (:mod:`scanner.features` exports it).
WEIGHT_FREE = ("image-phash", "image-local", "audio-fingerprint", "audio-melody")


class Featurizer(ABC):
    """Base class of all featurizers.

    Attributes
    ----------
    name : str
        Feature name used on the command line and in the index (``image-phash``).
    modality : {"image", "audio"}
    kind : {"dense", "binary", "landmark", "postings"}
        ``dense`` rows are float32 and L2-normalised (inner product = cosine);
        ``binary`` rows are packed bits, uint8 ``[shape=(n, dim // 8)]``;
        ``landmark`` rows are packed bits too, any number per item, each with
        a position kept beside the index (``<feature>.npz``);
        ``postings`` rows are uint32 hash keys, any number per item, each with
        a time; the index keeps them sorted by key in ``<feature>.npz``.
    metric : {"ip", "hamming"}
    codes_per_item : int
        Rows each item yields (views of one picture: whole, content inside
        frames, tiles). :meth:`embed` returns them item-major; row ``j`` of an
        item is its locator ``j``. 0 for landmark features (variable).
    decode_side : int
        Longest side (pixels) an image featurizer wants pictures decoded to;
        the pipeline decodes once, at the largest its featurizers ask for.
    embeds_with_model : bool
        Whether :meth:`embed` runs a model (an accelerator's work, batched; a
        distributed engine embeds ahead on GPU workers); weight-free featurizers
        do their work in :meth:`prepare`, in the decode workers.
    reads_turn : bool
        Whether :meth:`prepare` reads :attr:`Content.turn` (a copy turned on a
        plain ground, set upright). The pipeline's content analysis looks for a
        turn only when a featurizer reads it: the search costs about as much as
        the rest of the analysis together.
    """

    name: str
    modality: Literal["image", "audio"] = "image"
    kind: Literal["dense", "binary", "landmark", "postings", "face", "voice"]
    metric: Literal["ip", "hamming", "l2"]
    codes_per_item: int = 1
    decode_side: int = 512
    embeds_with_model: bool = False
    reads_turn: bool = False
    #: a talent feature (faces, voices): built from talents' references only, never from works
    for_talents: bool = False

    @property
    def forkable(self) -> bool:
        """Whether decode workers may be forked processes with this featurizer in them: true
        for the weight-free ones; a featurizer with a model says so itself when each forked
        worker loads its own copy (:meth:`forked`) and no accelerator is in use."""
        return self.name in WEIGHT_FREE

    def forked(self) -> None:
        """Called in a freshly forked decode worker, before its first item: drop what must not
        cross a fork (a loaded model's session and its threads) and run on one thread (the
        worker's siblings hold the other cores). Nothing to do for weight-free featurizers."""

    @property
    @abstractmethod
    def version(self) -> str:
        """Version string; a new version invalidates vectors built by an older one."""

    @property
    @abstractmethod
    def dim(self) -> int:
        """Vector dimension (number of bits for binary features)."""

    @property
    def model_id(self) -> str | None:
        """Identity of the model weights, or ``None`` for weight-free features."""
        return None

    def runtime(self) -> dict[str, Any] | None:
        """Where this featurizer's model runs (device, runtime, threads) for ``run.json``; ``None``
        for weight-free features."""
        return None

    def identity(self) -> dict[str, Any]:
        """What the index manifest records to refuse a mismatched scan later."""
        return {
            "name": self.name,
            "version": self.version,
            "modality": self.modality,
            "kind": self.kind,
            "metric": self.metric,
            "dim": self.dim,
            "codes_per_item": self.codes_per_item,
            "model": self.model_id,
        }

    @abstractmethod
    def prepare(self, image: Image.Image, content: Content | None = None) -> np.ndarray:
        """Per-item work that can run in a worker thread.

        Parameters
        ----------
        image : PIL.Image.Image
            RGB image as returned by :func:`scanner.media.load_image`.
        content : Content, optional
            :func:`scanner.features.content.analyse` of ``image``, when the
            caller has it already (computed here otherwise, if needed).

        Returns
        -------
        np.ndarray
            Whatever :meth:`embed` takes, for one item.
        """

    def prepare_reference(self, image: Image.Image, content: Content | None = None) -> np.ndarray:
        """:meth:`prepare` for a reference being indexed.

        The same by default; a featurizer may keep more of a reference than a
        query needs (more keypoints), or less (no mirrored view).
        """
        return self.prepare(image, content)

    def index_rows(self, prepared: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """Landmark and postings features: what the index keeps of one prepared reference.

        Returns
        -------
        codes : uint8 ``[shape=(n, dim // 8)]`` (landmark), or uint32 ``[shape=(n,)]`` keys (postings)
        extra : per-row arrays (positions, times), each ``[shape=(n, ...)]``
        """
        raise NotImplementedError(f"{self.name} is not a landmark or postings feature")

    @abstractmethod
    def embed(self, prepared: Sequence[np.ndarray]) -> np.ndarray:
        """Vectors for a batch of prepared items.

        Returns
        -------
        np.ndarray [shape=(n * codes_per_item, dim)] float32, L2-normalised, for
        dense features; np.ndarray [shape=(n * codes_per_item, dim // 8)] uint8
        for binary features. Rows are item-major.
        """

    def cut(self, prepared: np.ndarray, placement: np.ndarray) -> np.ndarray | None:
        """A prepared query re-cut to where another feature placed a work, prepared as that work was.

        Parameters
        ----------
        prepared : this featurizer's :meth:`prepare` of the query
        placement : float64 ``[shape=(2, 3)]`` mapping the work's picture to the query's, both
            normalised to their width and height (:meth:`scanner.match.base.Judge.placements`)

        Returns
        -------
        the cut, as :meth:`prepare` returns an item; ``None`` where this featurizer cannot
        cut (the default)
        """
        return None

    def informative(self, vectors: np.ndarray) -> np.ndarray:
        """Which rows carry enough detail to be evidence, bool ``[shape=(n,)]``."""
        return np.ones(len(vectors), dtype=bool)

    def locator(self, query_row: int, ref_row: int) -> dict[str, Any] | None:
        """Evidence of where the match sits, from the query's and the work's row numbers."""
        return None

    def raw_to_similarity(self, raw: np.ndarray) -> np.ndarray:
        """Map raw search scores to a similarity in [0, 1] (1 = identical)."""
        if self.metric == "hamming":
            return 1.0 - np.asarray(raw, dtype=np.float64) / self.dim
        return np.clip(np.asarray(raw, dtype=np.float64), 0.0, 1.0)


class AudioFeaturizer(Featurizer):
    """Base class of audio featurizers: fed decoded chunks, decoded once per file.

    The pipeline opens each audio file once (:func:`scanner.media.open_audio`)
    and runs, for every audio featurizer of the index::

        state = feat.start(sr=audio.sr, reference=reference)
        for chunk in audio.chunks():          # contiguous, mono float32, bounded
            feat.update(state, chunk)
        prepared = feat.finish(state)          # what embed() / index_rows() take

    ``state`` is the featurizer's own object (a dict, a small class): whatever
    it must carry between chunks (the samples of an unfinished frame, features
    so far). Keep it bounded by what the result needs, never by the whole
    signal. Chunks are contiguous and do not overlap (:class:`scanner.media.AudioChunk`);
    times in results are seconds from the file's start (``chunk.start / sr``).
    :meth:`prepare` runs the same loop on an :class:`~scanner.media.Audio` for
    callers outside the pipeline (tests, benchmarks).

    Decoding has already mixed to mono at :data:`scanner.media.ANALYSIS_SR`,
    replaced NaN/inf by 0, and the pipeline judges silence and too-short files
    featureless (never flagged) from the same pass; a featurizer returns an
    empty result for them rather than raising.
    """

    modality = "audio"

    @abstractmethod
    def start(self, *, sr: int, reference: bool = False) -> Any:
        """A fresh state for one file at ``sr`` Hz (``reference``: the file is being indexed)."""

    @abstractmethod
    def update(self, state: Any, chunk: AudioChunk) -> None:
        """Take the next chunk of the file into ``state``."""

    @abstractmethod
    def finish(self, state: Any) -> np.ndarray:
        """The prepared item for the whole file (what :meth:`embed` takes)."""

    def prepare(self, audio: Audio, content: Content | None = None) -> np.ndarray:  # type: ignore[override]
        """Decode ``audio`` and run :meth:`start`/:meth:`update`/:meth:`finish` on it."""
        return self._run(audio, reference=False)

    def prepare_reference(self, audio: Audio, content: Content | None = None) -> np.ndarray:  # type: ignore[override]
        """:meth:`prepare` for a reference being indexed."""
        return self._run(audio, reference=True)

    def _run(self, audio: Audio, *, reference: bool) -> np.ndarray:
        state = self.start(sr=audio.sr, reference=reference)
        for chunk in audio.chunks():
            self.update(state, chunk)
        return self.finish(state)

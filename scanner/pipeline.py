"""Build and scan: the one path from files to verdicts.

``files → media → features → index search → match → policy → report``

The CLI, the demo and the benchmarks all call these functions; nothing else
wires the stages together.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import time
from collections import Counter
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Protocol, Sequence

import numpy as np

from scanner import __version__
from scanner import ledger, media, policy as pol, thumbs
from scanner.errors import DecodeError, IndexError_, LikenessError, ParameterError
from scanner.features import WEIGHT_FREE, Featurizer, make
from scanner.features.content import analyse
from scanner.index import search, store
from scanner.match import (LANDMARK_STATISTICS, STATISTIC_TOP, LandmarkTable, best_per_work, landmark_detail,
                           landmark_evidence, landmark_null_scores)
from scanner.match_audio import AUDIO_TOP, WINDOW, PostingsTable, align, postings_null_scores
from scanner.match_melody import WorkFrames, fit_melody_null, melody_evidence, melody_null_scores, span_for
from scanner.match_melody import expected_chance as melody_expected

#: Longest side images are decoded to unless a featurizer asks for more
#: (:attr:`Featurizer.decode_side`: ``image-local`` wants 1024, so the content
#: inside a margin, or one of a query's tiles, keeps the 512 pixels its
#: keypoints are found at); every image featurizer resamples from it.
DECODE_SIDE = Featurizer.decode_side
#: Longest side of video keyframes: up to two thousand per file, one at a time.
KEYFRAME_SIDE = 512
#: Items embedded and searched together.
BATCH = 64
#: Neighbours fetched per query and feature.
K = 10
#: Matches listed per result.
MAX_MATCHES = 5
#: Key of a match whose locator is still to be built (:meth:`Scanner._shown_locators`);
#: never in a result.
PENDING = "_locator_pending"


class Progress(Protocol):
    """What the pipeline reports progress to (the CLI draws it with rich)."""

    def start(self, total: int, description: str) -> None: ...

    def advance(self, n: int = 1) -> None: ...


class _NoProgress:
    def start(self, total: int, description: str) -> None:
        pass

    def advance(self, n: int = 1) -> None:
        pass


@dataclass
class FeatureOptions:
    """Which featurizers to run and how (``image-clip`` needs a checkpoint).

    Parameters
    ----------
    names : feature names, or ``None`` for every featurizer that can run here
    clip_model, clip_pretrained : open_clip model name (or JSON config path)
        and pretrained tag (or checkpoint path)
    models_dir : where fetched/imported checkpoints live
    device : ``auto``, ``cpu`` or ``cuda``
    """

    names: Sequence[str] | None = None
    clip_model: str | None = None
    clip_pretrained: str | None = None
    models_dir: str | None = None
    device: str = "auto"

    def clip_options(self) -> dict[str, Any]:
        return {"model": self.clip_model, "pretrained": self.clip_pretrained,
                "models_dir": self.models_dir, "device": self.device}


def available_features(options: FeatureOptions) -> tuple[list[Featurizer], list[str]]:
    """Featurizers to build an index with, and notes on those left out.

    With ``options.names`` unset: the weight-free ones, plus ``image-clip`` when
    its checkpoint resolves locally (CLIP joins when a checkpoint is present).
    """
    if options.names:
        return [make(n, **options.clip_options()) for n in options.names], []
    feats: list[Featurizer] = []
    notes = []
    for n in WEIGHT_FREE:
        try:
            feats.append(make(n))
        except ModuleNotFoundError as exc:
            if not (exc.name or "").startswith("scanner."):
                raise
            notes.append(f"{n} not used: this likeness has no {exc.name} module")
    try:
        from scanner.features.clip import DEFAULT_MODEL, DEFAULT_PRETRAINED
        from scanner.models import default_models_dir, resolve_checkpoint

        # look for weights first (a registry read): torch is imported only when they exist
        model = options.clip_model or DEFAULT_MODEL
        resolve_checkpoint(Path(model).stem if model.endswith(".json") else model,
                           options.clip_pretrained or DEFAULT_PRETRAINED,
                           models_dir=options.models_dir or default_models_dir())
        clip = make("image-clip", **options.clip_options())
        clip.model_id  # loads and verifies the checkpoint (once), or raises
        feats.append(clip)
    except LikenessError as exc:
        notes.append(f"image-clip not used: {str(exc).split('. ')[0]} (see `likeness models --help`)")
    except ImportError as exc:
        notes.append(f"image-clip not used: {exc.name} is not installed (pip install likeness-scanner[clip])")
    return feats, notes


def features_for_index(index: store.Index, options: FeatureOptions) -> list[Featurizer]:
    """Featurizers matching an index's manifest; a different model is refused."""
    feats = []
    for name, spec in index.features.items():
        if name == "image-clip":
            opts = options.clip_options()
            model, _, tag = (spec.get("model") or ":").partition(":")
            opts["model"] = opts["model"] or spec.get("model_name") or model
            if not opts["pretrained"]:
                opts["pretrained"] = tag
                if tag.startswith("sha256:"):  # built from a file: find it by content in models/
                    from scanner.models import default_models_dir, find_by_sha256

                    models_dir = Path(options.models_dir or default_models_dir())
                    entry = find_by_sha256(spec.get("checkpoint_sha256", ""), models_dir=models_dir)
                    if entry is not None:
                        opts["pretrained"] = entry.get("pretrained") or str(models_dir / entry["file"])
            feat = make(name, **opts)
        else:
            feat = make(name)
        index.check_featurizer(feat.identity())
        feats.append(feat)
    return feats


# --- decoding and preparing, in worker threads -----------------------------------------


@dataclass
class Prepared:
    """One decoded input with each featurizer's per-item work done."""

    item: media.Input
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
    #: its decoding found (:func:`_prepare_video`)
    parts: list[Prepared] | None = None
    timecode: float | None = None
    video: dict[str, Any] | None = None
    #: rows already embedded by a featurizer with a model (:func:`embed_ahead`), by name:
    #: float32 ``[shape=(codes_per_item, dim)]``
    vectors: dict[str, np.ndarray] = field(default_factory=dict)


def decode_side(featurizers: Sequence[Featurizer]) -> int:
    """Longest side pictures are decoded to for these featurizers, pixels:
    the largest any image featurizer asks for, at least :data:`DECODE_SIDE`."""
    return max([DECODE_SIDE, *(f.decode_side for f in featurizers if f.modality == "image")])


def _prepare_one(item: media.Input, featurizers: Sequence[Featurizer], reference: bool = False) -> Prepared:
    out = Prepared(item)
    try:
        out.sha256 = media.sha256_file(item.path)
    except OSError:
        pass  # load_image names the problem below
    try:
        if item.modality == "video":
            _prepare_video(out, featurizers, reference)
            return out
        if not any(f.modality == item.modality for f in featurizers):
            raise DecodeError(item.path, f"{item.modality} files are not supported by this index "
                                         f"(it holds no {item.modality} features)")
        if item.modality == "audio":
            _prepare_audio(out, featurizers, reference)
            return out
        image = media.load_image(item.path, max_side=decode_side(featurizers))
        if reference:  # from the decoded picture: reports show works without their files
            out.thumb = thumbs.encode(image)
        _prepare_image(out, image, featurizers, reference)
    except DecodeError as exc:
        out.error = exc.reason
    except LikenessError as exc:
        out.error = str(exc)
    except Exception as exc:  # a featurizer bug must not stop the scan or lose results
        out.error = f"could not be checked ({type(exc).__name__}: {exc})"
    return out


def _prepare_image(out: Prepared, image: Any, featurizers: Sequence[Featurizer], reference: bool) -> None:
    """Run every image featurizer's per-item work on one decoded picture (a file or a keyframe)."""
    content = analyse(image)
    out.featureless = content.featureless
    for feat in featurizers:
        if feat.modality == "image":
            prepare = feat.prepare_reference if reference else feat.prepare
            out.prepared[feat.name] = prepare(image, content)


def _prepare_audio(out: Prepared, featurizers: Sequence[Featurizer], reference: bool,
                   audio: media.Audio | None = None) -> None:
    """Decode an audio input (or a video's soundtrack) once, in bounded chunks, feeding every audio featurizer."""
    audio = audio or media.open_audio(out.item.path)
    feats = [f for f in featurizers if f.modality == "audio"]
    states = [f.start(sr=audio.sr, reference=reference) for f in feats]  # type: ignore[attr-defined]
    strip = thumbs.StripBuilder(audio.sr) if reference else None  # reports show works without their files
    for chunk in audio.chunks():
        for feat, state in zip(feats, states):
            feat.update(state, chunk)  # type: ignore[attr-defined]
        if strip is not None:
            strip.update(chunk.y)
    if strip is not None:
        out.thumb, out.thumb_meta = strip.finish(), {"duration": round(strip.duration, 3)}
    out.featureless = audio.featureless()
    for feat, state in zip(feats, states):
        out.prepared[feat.name] = feat.finish(state)  # type: ignore[attr-defined]


def _prepare_video(out: Prepared, featurizers: Sequence[Featurizer], reference: bool) -> None:
    """Decode a video: its keyframes through the image featurizers, its soundtrack through the audio ones.

    Each keyframe and the soundtrack become a part (:attr:`Prepared.parts`),
    prepared exactly as an image or audio file is, with its timecode. Only
    the keyframes' prepared features are kept, never decoded frames
    (:meth:`scanner.video.Video.keyframes` bounds their number).
    """
    from scanner import video as vid

    clip = vid.open_video(out.item.path)
    image_feats = [f for f in featurizers if f.modality == "image"]
    audio_feats = [f for f in featurizers if f.modality == "audio"]
    if not (image_feats and clip.has_video) and not (audio_feats and clip.has_audio):
        kind = "picture" if clip.has_video else "sound"
        raise DecodeError(out.item.path, f"this video's {kind} cannot be checked: the index holds no "
                                         f"{'image' if clip.has_video else 'audio'} features")
    out.parts = []
    first = None
    if image_feats and clip.has_video:
        for key in clip.keyframes(max_side=KEYFRAME_SIDE):
            part = Prepared(media.Input(out.item.path, "image"), timecode=key.time)
            _prepare_image(part, key.image, image_feats, reference)
            if reference and out.thumb is None and (first is None or not part.featureless):
                # reports show the work by its first keyframe with content
                first = thumbs.encode(key.image)
                if not part.featureless:
                    out.thumb = first
            out.parts.append(part)
        out.thumb = out.thumb or first
    if audio_feats and clip.has_audio:
        # its times are from its first sample: ``timecode`` puts that on the picture's timeline
        part = Prepared(media.Input(out.item.path, "audio"), timecode=clip.audio_offset)
        _prepare_audio(part, audio_feats, reference, clip.soundtrack())
        part.thumb = part.thumb_meta = None
        out.parts.append(part)
    reasons = [p.featureless for p in out.parts]
    if all(reasons):
        out.featureless = f"featureless throughout ({reasons[0] or 'nothing decoded'})"
    out.video = {"duration": clip.duration, "width": clip.width, "height": clip.height,
                 "fps": round(clip.fps, 3) if clip.fps else None, "codec": clip.codec,
                 "frames_decoded": clip.frames_decoded,
                 "keyframes": sum(p.item.modality == "image" for p in out.parts),
                 "soundtrack": any(p.item.modality == "audio" for p in out.parts),
                 "bad_packets": clip.bad_packets,
                 # what the index's features could not look at (an audio-only index: the picture)
                 "not_checked": [k for k, has, fs in (("picture", clip.has_video, image_feats),
                                                      ("soundtrack", clip.has_audio, audio_feats)) if has and not fs]}


#: Featurizers seen by forked decode processes (set before the pool forks).
_FORKED_FEATURIZERS: Sequence[Featurizer] = ()
#: The scanner forked decode processes judge with, if they judge (set before the pool forks).
_FORKED_SCANNER: Scanner | None = None


def forks(featurizers: Sequence[Featurizer]) -> bool:
    """Whether :func:`prepare_stream` prepares for these featurizers in forked processes:
    weight-free ones only (a model must not be forked), where the system forks."""
    return hasattr(os, "fork") and all(f.name in WEIGHT_FREE for f in featurizers)


def _worker_start(parent: int, judge: bool) -> None:
    """Decode worker start-up: go when the scan process goes, even by ``kill -9``;
    a judging worker searches on one thread (its siblings hold the other cores).

    Otherwise a killed scan leaves its workers behind, holding memory and the
    terminal's pipes, waiting forever for work. Linux sends the worker SIGKILL
    when its parent dies (``PR_SET_PDEATHSIG``); elsewhere nothing is set up.
    """
    import ctypes
    import signal

    if judge:
        # one thread also keeps faiss's OpenMP off a thread team inherited from the parent
        search.configure_faiss(1)
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGKILL))  # 1: PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # the parent died before the request took effect
        os._exit(1)


def _prepare_chunk(items: Sequence[media.Input], featurizers: Sequence[Featurizer] | None = None,
                   reference: bool = False, judge: bool = False) -> list[Prepared] | list[Result]:
    prepared = [_prepare_one(item, _FORKED_FEATURIZERS if featurizers is None else featurizers, reference)
                for item in items]
    if not judge or _FORKED_SCANNER is None:
        return prepared
    # pictures only: a recording's or a video's features are large, and judging them
    # here would add the search's memory to the decoder's peak in the same process
    pictures = [p for p in prepared if p.item.modality == "image"]
    judged = iter(_FORKED_SCANNER.judge(pictures) if pictures else [])
    return [next(judged) if p.item.modality == "image" else p for p in prepared]


def prepare_stream(items: Iterable[media.Input], featurizers: Sequence[Featurizer], *,
                   workers: int | None = None, reference: bool = False,
                   judge: Scanner | None = None) -> Iterator[Prepared | Result]:
    """Decode and prepare items ahead of the caller, in order, with bounded look-ahead.

    ``reference=True`` prepares references being indexed
    (:meth:`Featurizer.prepare_reference`).

    Weight-free featurizers run in forked processes (decoding and hashing hold
    the GIL part of the time; processes scale to every core); featurizers with
    a model run in threads, since a model must not be forked and Pillow
    releases the GIL while decoding.

    ``judge``: a scanner the forked processes inherit and judge pictures with
    (only where they fork, :func:`forks`): the stream then yields a
    :class:`Result` per picture, and a :class:`Prepared` for any other item
    and for one whose decoder crashed its process.
    """
    global _FORKED_FEATURIZERS, _FORKED_SCANNER
    cpus = len(os.sched_getaffinity(0))
    if forks(featurizers):
        import multiprocessing

        _FORKED_FEATURIZERS = featurizers  # inherited by the forked workers, never pickled
        _FORKED_SCANNER = judge
        context = multiprocessing.get_context("fork")
        chunk, args = 16, (None, reference, judge is not None)

        def new_pool() -> Any:
            return ProcessPoolExecutor(workers or cpus, mp_context=context, initializer=_worker_start,
                                       initargs=(os.getpid(), judge is not None))
    else:
        if judge is not None:
            raise ParameterError("only forked decode workers judge: these featurizers are prepared in threads")
        chunk, args = 1, (featurizers, reference)

        def new_pool() -> Any:
            return ThreadPoolExecutor(workers or min(8, cpus + 1), thread_name_prefix="likeness-decode")
    ahead = (workers or cpus + 1) * 4
    pool = new_pool()
    pending: list[tuple[Any, list[media.Input]]] = []

    def collect(fut: Any, batch: list[media.Input]) -> list[Prepared]:
        nonlocal pool, pending
        try:
            return fut.result()
        except BrokenProcessPool:
            # a decoder killed its worker (a crash in a C library): the pool is
            # gone with every pending chunk; find the culprit one file at a time
            # and carry on with the rest in a fresh pool
            pool.shutdown(wait=False, cancel_futures=True)
            pool = new_pool()
            out = []
            for item in batch:
                try:
                    out.extend(pool.submit(_prepare_chunk, [item], *args).result())
                except BrokenProcessPool:
                    pool.shutdown(wait=False, cancel_futures=True)
                    pool = new_pool()
                    out.append(Prepared(item, error="the decoder crashed on this file"))
            pending = [(pool.submit(_prepare_chunk, b, *args), b) for _, b in pending]
            return out

    try:
        batch: list[media.Input] = []
        for item in items:
            batch.append(item)
            # a video ends its chunk (its keyframes' features are many): it travels alone or nearly
            if len(batch) == chunk or item.modality == "video":
                pending.append((pool.submit(_prepare_chunk, batch, *args), batch))
                batch = []
            # videos in flight (each ends its chunk) are bounded by the workers: each holds its keyframes' features
            while pending and (len(pending) >= ahead
                               or sum(b[-1].modality == "video" for _, b in pending) > (workers or cpus)):
                yield from collect(*pending.pop(0))
        if batch:
            pending.append((pool.submit(_prepare_chunk, batch, *args), batch))
        while pending:
            yield from collect(*pending.pop(0))
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        _FORKED_SCANNER = None


def _batches(stream: Iterator[Prepared | Result], size: int) -> Iterator[list[Prepared | Result]]:
    batch: list[Prepared | Result] = []
    weight = 0
    for p in stream:
        batch.append(p)
        # a video weighs its keyframes: a batch never holds many films' features
        weight += len(p.parts) if isinstance(p, Prepared) and p.parts else 1
        if weight >= size:
            yield batch
            batch = []
            weight = 0
    if batch:
        yield batch


def _embed(feat: Featurizer, batch: Sequence[Prepared]) -> tuple[list[int], np.ndarray]:
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


def has_model(feat: Featurizer) -> bool:
    """Whether ``feat`` embeds through a model (an accelerator's work), not by hashing."""
    return feat.name not in WEIGHT_FREE and feat.kind not in ("landmark", "postings") and bool(feat.codes_per_item)


def embed_ahead(batch: Sequence[Prepared], featurizers: Sequence[Featurizer]) -> None:
    """Embed the model features of a batch now, keeping each item's rows in :attr:`Prepared.vectors`.

    A distributed engine runs this on GPU workers between decoding and
    judging; :meth:`Scanner.judge` and :func:`build_index` then use the rows
    instead of embedding again. A video's keyframes are embedded
    :data:`BATCH` at a time.
    """
    flat = [q for p in batch for q in (p.parts if p.parts is not None else [p])]
    for feat in featurizers:
        if not has_model(feat):
            continue
        m = feat.codes_per_item
        for lo in range(0, len(flat), BATCH):
            chunk = flat[lo:lo + BATCH]
            pos, vecs = _embed(feat, chunk)
            for j, i in enumerate(pos):
                chunk[i].vectors[feat.name] = vecs[j * m:(j + 1) * m]


# --- building ----------------------------------------------------------------------------


@dataclass
class BuildSummary:
    """What an index build or add did."""

    index_id: str
    added: int = 0
    duplicates: list[str] = field(default_factory=list)
    errors: list[tuple[str, str]] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    features: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    n_works: int = 0


def _fit_nulls(writer: store.IndexWriter) -> dict[str, Any]:
    """Fit each feature's null from pairs of rows of different works.

    Featureless works and uninformative rows are left out: they collide by
    construction, and are never evidence at scan time either.
    """
    nulls = {}
    chance_pairs: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
    featureless = writer.featureless_work_ids()
    for name in writer.feature_names():
        vecs, rows = writer.vectors(name)
        if writer.feature_kind(name) == "postings":
            table = PostingsTable.from_arrays(vecs, rows[:, 0], writer.extras(name))
            scores = postings_null_scores(table, feature=name, skip=featureless)
            # candidates that aligned at all: the empty slots of a small library
            # would pile up at 0 and make the tail look steeper than it is
            scores = scores[scores > 0]
            nulls[name] = _bounded_tail({**pol.fit_inlier_null(scores, candidates=AUDIO_TOP, prior=pol.PRIOR_ALIGNED),
                                         "window": WINDOW}, scores)
            continue
        if writer.feature_kind(name) == "landmark":
            nulls[name] = _fit_landmark_null(name, vecs, rows, writer.extras(name), writer.landmark_index(name),
                                             featureless, chance_pairs)
            continue
        if name in WEIGHT_FREE and writer.feature_kind(name) == "dense" and not make(name).codes_per_item:
            nulls[name] = _fit_melody_null(name, vecs, rows, featureless)
            continue
        keep = ~np.isin(rows[:, 0], featureless)
        if name in WEIGHT_FREE:
            keep &= make(name).informative(vecs)
        all_vecs, all_rows = vecs, rows
        vecs, rows = vecs[keep], rows[keep]
        a, b = pol.sample_pairs(rows[:, 0])
        if vecs.dtype == np.uint8:  # binary codes: Hamming distances standardised by code density
            ones = _ones(vecs)
            d = pol.standardize_hamming(pol.hamming_pairs(vecs, a, b), ones[a], ones[b], vecs.shape[1] * 8)
            nulls[name] = pol.fit_null(d, prior=pol.PRIOR_HAMMING_Z)
            # stock shapes recur across works: a match on a crowded code is weaker evidence
            writer.set_row_weights(name, pol.crowding(all_vecs, all_rows[:, 0], nulls[name], usable=keep))
        else:
            d = 1.0 - np.einsum("ij,ij->i", vecs[a], vecs[b])
            nulls[name] = pol.fit_null(d, prior=pol.PRIOR_COSINE_DISTANCE)
    writer.set("fusion", _fit_fusion(writer, nulls, chance_pairs))
    return nulls


def _fit_melody_null(name: str, vecs: np.ndarray, rows: np.ndarray, featureless: np.ndarray) -> dict[str, Any]:
    """A melody feature's null: reference excerpts aligned against the other works, as a scan would
    (:func:`scanner.match_melody.melody_null_scores`), searched in an index of the rows to be written."""
    if not len(vecs):
        return fit_melody_null({}, 0)
    index, _ = search.build_faiss_index(np.ascontiguousarray(vecs, np.float32), "ip")
    frames = WorkFrames(rows, lambda ids: vecs[ids])
    scores, works = melody_null_scores(rows, frames, lambda q: search.knn(index, q, K), feature=name,
                                       skip=[int(w) for w in featureless])
    return fit_melody_null(scores, works)


def _reconstruct(index: Any, ids: np.ndarray) -> np.ndarray:
    """Stored vectors of a dense faiss index by row number, float32 ``[shape=(len(ids), d)]``
    (an inverted file gets its id map built on first use)."""
    import faiss

    ids = np.ascontiguousarray(ids, np.int64)
    try:
        return index.reconstruct_batch(ids)
    except RuntimeError:
        faiss.extract_index_ivf(index).make_direct_map()
        return index.reconstruct_batch(ids)


def _fit_fusion(writer: store.IndexWriter, nulls: dict[str, Any],
                chance_pairs: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]) -> list[dict[str, Any]]:
    """How correlated the copy features' evidence is between unrelated works.

    For each landmark feature and each binary hash feature of the same
    modality, the (reference, chance candidate) pairs the landmark null was
    fitted on are scored by the hash feature too, and the rank correlation
    of the two is kept: :func:`scanner.policy.fused_rate` discounts fused
    evidence by it.

    Returns
    -------
    list of ``{"features": [a, b], "correlation": rho, "pairs": m}``
    """
    out = []
    for landmark, (scores, q, c) in chance_pairs.items():
        for name in writer.feature_names():
            if writer.feature_kind(name) != "binary" or name not in nulls:
                continue
            ok = c >= 0
            vecs, rows = writer.vectors(name)
            rho = pol.PRIOR_FUSION_CORRELATION
            if ok.sum() >= pol.MIN_NULL_PAIRS:
                z = _best_work_z(vecs, rows[:, 0], q[ok], c[ok])
                rho = pol.score_correlation(scores[ok], -z)
            out.append({"features": sorted([landmark, name]), "correlation": round(float(rho), 4),
                        "pairs": int(ok.sum())})
    return out


def _best_work_z(codes: np.ndarray, work_ids: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Smallest standardised Hamming distance between any code of work ``a[i]`` and any of ``b[i]``."""
    order = np.argsort(work_ids, kind="stable")
    sorted_ids = work_ids[order]
    ones = _ones(codes)
    dim = codes.shape[1] * 8
    out = np.full(len(a), np.inf)
    for i, (wa, wb) in enumerate(zip(a, b)):  # a few hundred pairs of a few codes each, once per build
        ra = order[np.searchsorted(sorted_ids, wa):np.searchsorted(sorted_ids, wa, "right")]
        rb = order[np.searchsorted(sorted_ids, wb):np.searchsorted(sorted_ids, wb, "right")]
        if len(ra) and len(rb):
            x, y = np.repeat(ra, len(rb)), np.tile(rb, len(ra))
            out[i] = pol.standardize_hamming(pol.hamming_pairs(codes, x, y), ones[x], ones[y], dim).min()
    return np.where(np.isfinite(out), out, 0.0)


def _bounded_tail(null: dict[str, Any], scores: np.ndarray) -> dict[str, Any]:
    """Keep a fitted exponential tail no heavier than twice what its own sample allows.

    A body that does not fall off before the sample ends (a small library:
    chance counts bunched at a few values) gives no slope, and the fitted
    scale runs to its cap, far heavier than the sample: ``n`` chance scores
    whose largest is ``m`` say ``P(X > m)`` is about ``1 / n``, i.e. a scale
    near ``(m + 1 - u) / ln(p_u n)``. Twice that is kept as the bound (the
    tail beyond the sample is unknown), before the usual widening.
    """
    if null.get("prior") or not len(scores):
        return null
    u, p_u, n = null["threshold"], null["p_threshold"], len(scores)
    if p_u * n <= np.e:
        return null
    bound = 2.0 * (float(scores.max()) + 1.0 - u) / np.log(p_u * n)
    if bound < null["scale"]:
        null = {**null, "scale_fitted": null["scale"], "scale": max(bound, pol.MIN_INLIER_SCALE)}
    return null


def _fit_landmark_null(name: str, codes: np.ndarray, rows: np.ndarray, extra: dict[str, np.ndarray],
                       index: Any, featureless: np.ndarray,
                       chance_pairs: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]) -> dict[str, Any]:
    """A landmark feature's null: references queried against the other works, as a scan would.

    The ``unique`` statistic's model is the null itself (as indexes built
    before the others had it); each other statistic's is kept under its name.
    The (chance, reference, candidate work) triples of the evidence a scan
    would keep, the more significant statistic per pair, go to
    ``chance_pairs[name]`` for :func:`_fit_fusion`.
    """
    none = np.zeros((0, 2), np.float32)
    table = LandmarkTable(rows, codes, extra.get("xy", none), extra.get("size", none))
    stats = landmark_null_scores(table, index, feature=name, skip=featureless)
    null = pol.fit_inlier_null(stats["unique"][0], candidates=STATISTIC_TOP["unique"])
    for stat in LANDMARK_STATISTICS:
        if stat != "unique":
            null[stat] = pol.fit_inlier_null(stats[stat][0], candidates=STATISTIC_TOP[stat],
                                             prior=pol.PRIOR_REPEATED_INLIERS)
    scores, q, c = (np.concatenate(parts) for parts in zip(*stats.values()))
    kinds = np.repeat(list(stats), [len(v[0]) for v in stats.values()])
    strength = -np.log(pol.expected_landmark(scores, kinds, _landmark_nulls(null)))
    # one pair per (reference, candidate): the stronger statistic; slots without a candidate stay
    key = np.where(c >= 0, q * (int(c.max(initial=0)) + 1) + c, -1 - np.arange(len(c)))
    order = np.lexsort((-strength, key))
    first = np.ones(len(order), bool)
    first[1:] = key[order][1:] != key[order][:-1]
    keep = order[first]
    chance_pairs[name] = (strength[keep], q[keep], c[keep])
    return null


def _landmark_nulls(null: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Statistic -> null of a landmark feature: ``unique`` always, the others where the index fitted them."""
    return {"unique": null, **{s: null[s] for s in LANDMARK_STATISTICS if s != "unique" and s in null}}


def _ones(codes: np.ndarray) -> np.ndarray:
    """Bits set per packed code, int ``[shape=(n,)]``."""
    return np.bitwise_count(codes).sum(axis=1, dtype=np.int32)


def build_index(refs: Sequence[str | Path], index_dir: str | Path, *, options: FeatureOptions | None = None,
                metadata: str | Path | None = None, create: bool = True, policy: pol.Policy | None = None,
                hmac_key: bytes | None = None, progress: Progress | None = None,
                engine: Engine | None = None) -> BuildSummary:
    """Build (``create=True``) or extend an index of protected reference works.

    Parameters
    ----------
    refs : files and folders of reference works (walked like scan inputs)
    index_dir : the index directory (replaced atomically on success)
    options : which featurizers; when extending, the index's own are used
    metadata : CSV/JSON sidecar with title, rights_holder, licence, notes, licensed
    policy : thresholds to store in the manifest (defaults when building)
    engine : where references are decoded and featurized (:class:`LocalEngine`
        by default; ``scanner.engine_ray.RayEngine`` on a cluster); the index is
        written here, by this process, either way

    Returns
    -------
    BuildSummary

    Raises
    ------
    IndexError_, IndexLockedError, IndexMismatchError, ModelError, ParameterError
    """
    options = options or FeatureOptions()
    progress = progress or _NoProgress()
    meta = store.read_metadata(metadata) if metadata else {}
    index_dir = Path(index_dir)
    with store.IndexWriter(index_dir, create=create, hmac_key=hmac_key) as writer:
        if create:
            featurizers, notes = available_features(options)
        else:
            featurizers, notes = features_for_index(store.Index(index_dir, writer.manifest, verify=False),
                                                    options), []
        summary = BuildSummary(writer.manifest["index_id"], notes=notes,
                               features=[f.name for f in featurizers])
        for feat in featurizers:
            if feat.kind == "postings":  # present even when no work has audio: audio scans check against none
                codes, extra = feat.index_rows(np.zeros(0, feat.hash_dtype))  # type: ignore[attr-defined]
                writer.add_vectors(feat.identity(), codes, np.zeros(0, np.int32), extra=extra)
        roots = [Path(r) for r in refs]
        items = []
        for found in media.discover(roots):
            if isinstance(found, media.Skipped):
                summary.skipped.append((str(found.path), found.reason))
            else:
                items.append(found)
        progress.start(len(items), "indexing references")
        seen: dict[str, str] = {}
        for batch in _batches((engine or LocalEngine()).prepare(items, featurizers, reference=True), BATCH):
            work_ids = []
            for p in batch:
                wid = None
                if p.error is not None:
                    summary.errors.append((str(p.item.path), p.error))
                elif p.sha256 in seen or writer.has_sha256(p.sha256 or ""):
                    summary.duplicates.append(str(p.item.path))
                else:
                    seen[p.sha256 or ""] = str(p.item.path)
                    root = next((r for r in roots if r.is_dir() and r in p.item.path.parents), None)
                    wid = writer.add_work(path=str(p.item.path), sha256=p.sha256 or "",
                                          modality=p.item.modality, featureless=p.featureless,
                                          **store.match_metadata(meta, p.item.path, root))
                    if p.thumb is not None:
                        writer.add_thumbnail(wid, p.thumb, p.thumb_meta)
                    summary.added += 1
                work_ids.append(wid)
            for p, wid in zip(batch, work_ids):
                if wid is not None and p.parts is not None:
                    _add_video_rows(writer, featurizers, p, wid)
            for feat in featurizers:
                # rows of their own per item: keypoints, hashes, or dense windows of any number (audio-melody)
                if feat.kind in ("landmark", "postings") or not feat.codes_per_item:
                    _add_landmarks(writer, feat, batch, work_ids)
                    continue
                pos, vecs = _embed(feat, batch)
                m = feat.codes_per_item
                keep = [j for j, i in enumerate(pos) if work_ids[i] is not None]
                if keep:
                    rows = (np.repeat(np.array(keep) * m, m) + np.tile(np.arange(m), len(keep)))
                    writer.add_vectors(feat.identity(), vecs[rows],
                                       np.repeat(np.array([work_ids[pos[j]] for j in keep], np.int32), m),
                                       np.tile(np.arange(m, dtype=np.int32), len(keep)))
            progress.advance(len(batch))
        _check_models(writer, featurizers)
        writer.set("null", _fit_nulls(writer))
        if create or "policy" not in writer.manifest or not writer.manifest["policy"]:
            writer.set("policy", (policy or pol.Policy()).validate().get_params())
        elif policy is not None:
            writer.set("policy", policy.validate().get_params())
        writer.commit()
        summary.n_works = writer.manifest["works"]["count"]
    return summary


def _add_landmarks(writer: store.IndexWriter, feat: Featurizer, batch: Sequence[Prepared],
                   work_ids: Sequence[int | None]) -> None:
    """Queue each new work's keypoints (any number, none included) with their positions."""
    for p, wid in zip(batch, work_ids):
        if wid is None or p.error is not None or feat.name not in p.prepared:
            continue
        codes, extra = feat.index_rows(p.prepared[feat.name])
        writer.add_vectors(feat.identity(), codes, np.full(len(codes), wid, np.int32),
                           np.arange(len(codes), dtype=np.int32), extra=extra)


def _add_video_rows(writer: store.IndexWriter, featurizers: Sequence[Featurizer], p: Prepared, wid: int) -> None:
    """Queue a video work's rows: its keyframes' and its soundtrack's, all under the one work.

    A keyframe's rows carry its timecode as their locator, so a match says
    where in the reference video it sits: milliseconds for keypoints, and
    ``ms * codes_per_item + view`` for hashes and embeddings (decoded by
    :meth:`Scanner._match`). Featureless keyframes (black, flat) add nothing:
    they carry no identifiable expression. The soundtrack's rows are an
    audio work's.
    """
    frames = [q for q in p.parts or [] if q.item.modality == "image" and q.error is None and not q.featureless]
    sound = [q for q in p.parts or [] if q.item.modality == "audio" and q.error is None]
    for feat in featurizers:
        if feat.modality == "audio":
            _add_landmarks(writer, feat, sound, [wid] * len(sound))
            continue
        have = [q for q in frames if feat.name in q.prepared]
        ms = np.array([round((q.timecode or 0.0) * 1000) for q in have], np.int64)
        if feat.kind == "landmark":
            for q, t in zip(have, ms):
                codes, extra = feat.index_rows(q.prepared[feat.name])
                writer.add_vectors(feat.identity(), codes, np.full(len(codes), wid, np.int32),
                                   np.full(len(codes), t, np.int32), extra=extra)
            continue
        m = max(feat.codes_per_item, 1)
        for lo in range(0, len(have), BATCH):
            vecs = _embed(feat, have[lo:lo + BATCH])[1]
            locators = np.repeat(ms[lo:lo + BATCH] * m, m) + np.tile(np.arange(m), len(vecs) // m)
            writer.add_vectors(feat.identity(), vecs, np.full(len(vecs), wid, np.int32), locators.astype(np.int32))


def _check_models(writer: store.IndexWriter, featurizers: Sequence[Featurizer]) -> None:
    """Refuse a checkpoint whose embeddings of the references are degenerate."""
    for feat in featurizers:
        if feat.name == "image-clip" and feat.name in writer.feature_names():
            from scanner.features.clip import check_informative

            vecs, _ = writer.vectors(feat.name)
            check_informative(vecs, model_id=feat.model_id or "?")


def remove_from_index(index_dir: str | Path, work_ids: Iterable[int], *,
                      hmac_key: bytes | None = None) -> list[int]:
    """Remove works by id; returns the ids that were found (and removed)."""
    with store.IndexWriter(index_dir, hmac_key=hmac_key) as writer:
        found = writer.remove_works(work_ids)
        writer.set("null", _fit_nulls(writer))
        writer.commit()
    return found


# --- scanning ----------------------------------------------------------------------------


@dataclass
class Result:
    """The verdict for one input, as one line of ``results.jsonl``."""

    path: str
    sha256: str | None
    modality: str
    verdict: str
    reason: str
    score: float = 0.0
    error: str | None = None
    index_id: str | None = None
    matches: list[dict[str, Any]] = field(default_factory=list)
    candidates: list[dict[str, Any]] | None = None
    #: why the input carries no identifiable expression (never flagged), if so
    featureless: str | None = None
    #: strongest evidence per feature, expected chance matches (not written to
    #: results: calibration reads it in-process)
    best_expected: dict[str, float] = field(default_factory=dict, repr=False)
    #: a person's decision from the ledger that settled this verdict (see :mod:`scanner.ledger`)
    decision: dict[str, Any] | None = None
    #: a video's decoding (duration, size, keyframes checked) and ``timeline``:
    #: where in it each matched work shows (:meth:`scanner.match_video.VideoEvidence.timeline`)
    video: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        line = {"path": self.path, "sha256": self.sha256, "modality": self.modality,
                "verdict": self.verdict, "score": round(self.score, 4), "reason": self.reason,
                "error": self.error, "index_id": self.index_id, "matches": self.matches}
        if self.candidates is not None:
            line["candidates"] = self.candidates
        if self.featureless is not None:
            line["featureless"] = self.featureless
        if self.decision is not None:
            line["decision"] = self.decision
        if self.video is not None:
            line["video"] = self.video
        return line


def provenance(index: store.Index, policy: pol.Policy | None = None) -> dict[str, Any]:
    """What a scan's results were judged against, for ``run.json`` and report headers.

    From the manifest alone (no model is loaded): the featurizers a scan uses
    are the index's own (:func:`features_for_index` refuses any other).
    """
    policy = policy or pol.Policy.from_params(index.policy)
    # a feature's manifest entry is its featurizer's identity plus what the store adds
    features = [{k: v for k, v in spec.items() if k not in store.FEATURE_STORAGE_KEYS}
                for spec in index.features.values()]
    return {"tool": "likeness", "tool_version": __version__, "index_id": index.index_id,
            "index_path": str(index.path), "n_works": index.n_works,
            "features": features, "policy": policy.get_params()}


class Scanner:
    """An opened index with its featurizers, ready to judge batches of inputs.

    Parameters
    ----------
    index_dir : the index to match against
    options : featurizer options (must agree with the index's models)
    policy : thresholds; the index's own by default
    candidates : also record this many nearest works per input, whatever the
        verdict (for evaluation: precision-recall curves need the scores of
        non-matches too)
    """

    def __init__(self, index_dir: str | Path, *, options: FeatureOptions | None = None,
                 policy: pol.Policy | None = None, hmac_key: bytes | None = None, candidates: int = 0):
        from scanner.models import set_offline

        set_offline()
        self.index = store.open_index(index_dir, hmac_key=hmac_key)
        self.options = options or FeatureOptions()
        self.policy = policy or pol.Policy.from_params(self.index.policy)
        self.featurizers = features_for_index(self.index, self.options)
        self.index.catalog()  # verified now, with every other file, before the first result
        self.works = self.index.work_lookup()  # read as matches need them
        self.candidates = candidates
        self.decisions = ledger.load(index_dir)  # people's decisions are honoured, not re-escalated
        self._ones: dict[str, np.ndarray] = {}
        self._tables: dict[str, LandmarkTable] = {}
        self._postings: dict[str, PostingsTable] = {}
        self._frames: dict[str, WorkFrames] = {}
        # load and verify everything before the first result (and before decode workers
        # fork and judge with this scanner: what they inherit is the index opened here,
        # even if a writer swaps another in while the scan runs)
        for feat in self.featurizers:
            if feat.kind == "postings":
                extra = self.index.landmarks(feat.name)
                self._postings[feat.name] = PostingsTable.from_arrays(
                    extra["key"], np.asarray(self.index.rows(feat.name))[:, 0], extra)
                continue
            self.index.faiss_index(feat.name)
            self.index.rows(feat.name)
            self.index.row_weights(feat.name)
            if feat.kind == "landmark":
                self._landmarks(feat.name)
            elif feat.metric == "hamming" and feat.codes_per_item:
                self._ref_ones(feat.name)

    def _ref_ones(self, feature: str) -> np.ndarray:
        if feature not in self._ones:
            self._ones[feature] = _ones(self.index.codes(feature))
        return self._ones[feature]

    def _landmarks(self, feature: str) -> LandmarkTable:
        if feature not in self._tables:
            extra = self.index.landmarks(feature)
            none = np.zeros((0, 2), np.float32)  # an index whose works gave no keypoints at all
            # plain arrays over the memory map: each verified work indexes them, and a
            # numpy.memmap wraps every slice of one in an object of its own
            self._tables[feature] = LandmarkTable(np.asarray(self.index.rows(feature)),
                                                  np.asarray(self.index.codes(feature)),
                                                  extra.get("xy", none), extra.get("size", none))
        return self._tables[feature]

    def describe(self) -> dict[str, Any]:
        """Provenance for ``run.json`` and report headers."""
        return provenance(self.index, self.policy)

    def judge(self, batch: Sequence[Prepared]) -> list[Result]:
        """Embed, search, match and decide one batch of prepared inputs.

        A video's keyframes and soundtrack are judged as inputs of their own,
        :data:`BATCH` at a time, and gathered into the video's evidence as
        they come (:meth:`_judge_video`).
        """
        plain = [p for p in batch if p.parts is None]
        decided = iter([self._result(p, ev) for p, ev in zip(plain, self._evidence(plain))] if plain else [])
        return [next(decided) if p.parts is None else self._judge_video(p) for p in batch]

    def _judge_video(self, p: Prepared) -> Result:
        """A video's verdict from its keyframes' and soundtrack's evidence, with a timeline.

        Each keyframe is one more chance to match by chance: a keyframe's
        expected chance matches are multiplied by the number of keyframes
        checked (Bonferroni), so a two-hour film is held to the same chance
        rate as one picture. The soundtrack's evidence is scaled by its own
        length already (:meth:`_judge_postings`). Featureless keyframes (black,
        flat) and a silent soundtrack give no evidence.
        """
        from scanner.match_video import VideoEvidence
        from scanner.video import timecode

        parts = p.parts or []
        frames = [q for q in parts if q.item.modality == "image"]
        checked = max(1, sum(1 for q in frames if not q.featureless and q.error is None))
        gathered = VideoEvidence([q.timecode or 0.0 for q in frames], (p.video or {}).get("duration"),
                                 keep_at=self.policy.review_at)
        numbers = {id(q): k for k, q in enumerate(frames)}
        for lo in range(0, len(parts), BATCH):
            chunk = parts[lo:lo + BATCH]
            for q, ev in zip(chunk, self._evidence(chunk)):
                if q.error is not None or q.featureless or not ev:
                    continue
                self._shown_locators(ev)  # a keyframe's locator gains its timecode below
                ev = ev + self._fused(ev)  # within one keyframe: both copy features saw the same picture
                if q.item.modality == "image":
                    scaled = []
                    for m in ev:
                        x = float(m["expected"]) * checked
                        loc = {**(m.get("locator") or {}), "timecode": q.timecode,
                               "timecode_text": timecode(q.timecode)}
                        scaled.append({**m, "expected": x, "chance": pol.one_in(x), "locator": loc,
                                       "score": round(float(pol.strength(np.array([x]), self.policy)[0]), 4)})
                    gathered.add(scaled, keyframe=numbers[id(q)])
                else:
                    if q.timecode:  # a soundtrack that starts apart from the picture
                        ev = [{**m, "locator": {**m["locator"], "query_start": round(m["locator"]["query_start"]
                                                                                   + q.timecode, 3)}}
                              if (m.get("locator") or {}).get("query_start") is not None else m for m in ev]
                    gathered.add(ev)
        result = self._result(p, gathered.best(), fuse=False)
        if p.error is None:
            result.video = {**(p.video or {}), "keyframes_checked": checked if frames else 0,
                            "timeline": gathered.timeline() if result.verdict != "clear" else []}
        return result

    def _evidence(self, batch: Sequence[Prepared]) -> list[list[dict[str, Any]]]:
        """Per-work evidence of every featurizer, for each prepared input of one batch."""
        evidence: list[list[dict[str, Any]]] = [[] for _ in batch]
        for feat in self.featurizers:
            if feat.kind == "landmark":
                self._judge_landmarks(feat, batch, evidence)
                continue
            if feat.kind == "postings":
                self._judge_postings(feat, batch, evidence)
                continue
            if not feat.codes_per_item:
                self._judge_segments(feat, batch, evidence)
                continue
            pos, vecs = _embed(feat, batch)
            if not pos:
                continue
            # --device: dense features go to torch on CUDA when asked (auto: when present)
            D, I = search.knn(self.index.faiss_index(feat.name), vecs, K, device=self.options.device)
            I[~feat.informative(vecs)] = -1  # a flat code's neighbours are no evidence
            rows = self.index.rows(feat.name)
            per_query = best_per_work(D, I, rows, feature=feat.name, metric=feat.metric,
                                      codes_per_query=feat.codes_per_item)
            null = self.index.null[feat.name]
            # every (query row, index row) comparison is a chance to match by chance
            comparisons = len(rows) * feat.codes_per_item
            crowd = self.index.row_weights(feat.name)
            for j, (i, evs) in enumerate(zip(pos, per_query)):
                if not evs:
                    continue
                dist = np.array([e.distance for e in evs])
                if feat.metric == "hamming":
                    q_ones = _ones(vecs[[j * feat.codes_per_item + e.query_locator for e in evs]])
                    r_ones = self._ref_ones(feat.name)[[e.row for e in evs]]
                    dist = pol.standardize_hamming(dist, q_ones, r_ones, feat.dim)
                expected = pol.expected_chance(dist, null, comparisons)
                if crowd is not None:
                    expected = expected * crowd[[e.row for e in evs]]
                strength = pol.strength(expected, self.policy)
                for e, x, s in zip(evs, expected, strength):
                    evidence[i].append(self._match(feat, e, float(x), float(s)))
        return evidence

    def _judge_landmarks(self, feat: Featurizer, batch: Sequence[Prepared],
                         evidence: list[list[dict[str, Any]]]) -> None:
        """Landmark features: any number of keypoints per item, verified per work by geometry."""
        pos = [i for i, p in enumerate(batch) if p.error is None and feat.name in p.prepared]
        nulls = _landmark_nulls(self.index.null[feat.name])

        def expected(inliers: np.ndarray, statistics: np.ndarray) -> np.ndarray:
            return pol.expected_landmark(inliers, statistics, nulls)

        found = landmark_evidence([batch[i].prepared[feat.name] for i in pos], self.index.faiss_index(feat.name),
                                  self._landmarks(feat.name), feature=feat.name, statistics=tuple(nulls),
                                  choose=expected,  # per work, its most significant statistic
                                  boxes=False)  # built for the matches shown (_shown_locators)
        for i, evs in zip(pos, found):
            if evs:
                x = expected(np.array([e.raw for e in evs]), np.array([e.detail["statistic"] for e in evs]))
                strength = pol.strength(x, self.policy)
                evidence[i].extend(self._match(feat, e, float(xe), float(se)) for e, xe, se in zip(evs, x, strength))

    def _judge_segments(self, feat: Featurizer, batch: Sequence[Prepared],
                        evidence: list[list[dict[str, Any]]]) -> None:
        """Dense windows, any number per item (audio-melody): chroma frames aligned in time per work.

        Every window is searched like any dense row; the hits vote for lines
        (work, transposition, tempo ratio, offset) and the best lines are
        scored frame by frame against the works' frames
        (:func:`scanner.match_melody.melody_evidence`); the chance of each
        score comes from the null fitted on the same statistic at build time.
        """
        pos = [i for i, p in enumerate(batch)
               if p.error is None and feat.name in p.prepared and len(p.prepared[feat.name])]
        if not pos:
            return
        items = [batch[i].prepared[feat.name] for i in pos]
        vecs = feat.embed(items)
        D, I = search.knn(self.index.faiss_index(feat.name), vecs, K, device=self.options.device)
        I[~feat.informative(vecs)] = -1  # silent windows are no evidence
        rows = self.index.rows(feat.name)
        frames = self._work_frames(feat.name)
        null = self.index.null[feat.name]
        end = np.cumsum([len(p) for p in items])
        spans = [float(k) for k in null["spans"]]
        for i, item, hi in zip(pos, items, end):
            lo = hi - len(item)
            seconds = float(item["start"].max()) + feat.window  # type: ignore[attr-defined]
            span = span_for(seconds, spans)
            found = melody_evidence(D[lo:hi], I[lo:hi], rows, item, frames, feature=feat.name, span=span)
            if not found:
                continue
            expected = melody_expected(found, null, span=span, query_seconds=seconds)
            strength = pol.strength(expected, self.policy)
            evidence[i].extend(self._match(feat, e, float(x), float(s)) for e, x, s in zip(found, expected, strength))

    def _work_frames(self, feature: str) -> WorkFrames:
        """Reference frames of a melody feature, read back from its faiss index as matches need them."""
        if feature not in self._frames:
            self._frames[feature] = WorkFrames(self.index.rows(feature),
                                               lambda ids: _reconstruct(self.index.faiss_index(feature), ids))
        return self._frames[feature]

    def _judge_postings(self, feat: Featurizer, batch: Sequence[Prepared],
                        evidence: list[list[dict[str, Any]]]) -> None:
        """Postings features (audio fingerprints): hashes looked up, aligned per work in time."""
        null = self.index.null[feat.name]
        table = self._postings[feat.name]
        for i, p in enumerate(batch):
            if p.error is not None or feat.name not in p.prepared:
                continue
            hashes = p.prepared[feat.name]
            evs = align(hashes, table, feature=feat.name)
            if not evs:
                continue
            # the count is over the best window of the null's length; a longer
            # query has that many more windows to find a chance alignment in
            length = float(hashes["t"].max() - hashes["t"].min()) if len(hashes) else 0.0
            windows = max(1.0, length / null.get("window", WINDOW))
            expected = pol.expected_inliers(np.array([e.raw for e in evs]), null) * windows
            strength = pol.strength(expected, self.policy)
            evidence[i].extend(self._match(feat, e, float(x), float(s)) for e, x, s in zip(evs, expected, strength))

    def _match(self, feat: Featurizer, e: Any, expected: float, strength: float) -> dict[str, Any]:
        work = self.works.get(e.work_id)
        raw = int(e.raw) if feat.metric == "hamming" else round(e.raw, 4)
        raw_kind = {"landmark": "inliers", "binary": "hamming_bits",
                    "postings": "aligned_hashes"}.get(feat.kind, "cosine")
        return {
            "work_id": e.work_id, "ref_path": work.path if work else None,
            "title": work.title if work else None, "rights_holder": work.rights_holder if work else None,
            "licence": work.licence if work else None, "licensed": bool(work and work.licensed),
            "feature": feat.name, "score": round(strength, 4), "raw": raw,
            "raw_kind": raw_kind,
            "expected": expected, "chance": pol.one_in(expected),
            "featureless_ref": work.featureless if work else None,
            "locator": self._locator(feat, e, work),
            **({PENDING: lambda: self._locator(feat, replace(e, detail=landmark_detail(e), pending=None), work)}
               if e.pending is not None else {}),
        }

    @staticmethod
    def _shown_locators(matches: Iterable[dict[str, Any]]) -> None:
        """Landmark matches about to be shown get their boxes and heat maps, left for now
        when verified (:func:`scanner.match.verify_landmarks`): a scan verifies several
        works per query and shows few."""
        for m in matches:
            build = m.pop(PENDING, None)
            if build is not None:
                m["locator"] = build()

    def _locator(self, feat: Featurizer, e: Any, work: Any) -> dict[str, Any] | None:
        """Where a match sits; in a video work, also the reference keyframe's ``ref_timecode`` (seconds).

        A video work's keyframe rows carry the keyframe's timecode in their
        locator (:func:`_add_video_rows`): milliseconds for keypoints,
        ``ms * codes_per_item + view`` for hashes and embeddings.
        """
        video = work is not None and work.modality == "video"
        if e.detail is not None:
            loc = dict(e.detail)
            ms = loc.pop("ref_locator", None)  # an image work's is a keypoint number: no use to anyone
            if video and ms is not None:
                loc["ref_timecode"] = round(ms / 1000, 3)
            return loc
        if not video:
            return feat.locator(e.query_locator, e.locator)
        ms, view = divmod(int(e.locator), max(feat.codes_per_item, 1))
        return {**(feat.locator(e.query_locator, view) or {}), "ref_timecode": round(ms / 1000, 3)}

    def _fused(self, evidence: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Evidence of two copy features for one work, fused (:func:`scanner.policy.fused_rate`).

        Two moderate matches on one work, a hash and a geometry, are stronger
        together than either alone, by as much as their correlation between
        unrelated works allows (measured at build, ``manifest["fusion"]``).
        A fused match is added only where it is stronger than its parts; it
        keeps the stronger part's locator and lists its parts.
        """
        fusions = self.index.manifest.get("fusion") or []
        n = max(self.index.n_works, 1)
        out = []
        for spec in fusions:
            a, b = spec["features"]
            best: dict[int, dict[str, dict[str, Any]]] = {}
            for m in evidence:
                if m["feature"] in (a, b) and not m["featureless_ref"]:
                    cur = best.setdefault(m["work_id"], {}).get(m["feature"])
                    if cur is None or m["expected"] < cur["expected"]:
                        best[m["work_id"]][m["feature"]] = m
            both = [(w, ms) for w, ms in best.items() if len(ms) == 2]
            if not both:
                continue
            rates = np.array([[min(ms[f]["expected"] / n, 1.0) for f in (a, b)] for _, ms in both])
            fused = pol.fused_rate(rates, spec["correlation"]) * n
            for (w, ms), e in zip(both, fused):
                parts = sorted(ms.values(), key=lambda m: m["expected"])
                if e >= parts[0]["expected"]:
                    continue
                out.append({**parts[0], "feature": f"{a}+{b}", "expected": float(e), "chance": pol.one_in(e),
                            "score": round(float(pol.strength(e, self.policy)), 4), "raw": None,
                            "raw_kind": "fused", "fused_from": {m["feature"]: m["expected"] for m in parts}})
        return out

    def _result(self, p: Prepared, evidence: list[dict[str, Any]], fuse: bool = True) -> Result:
        base = dict(path=str(p.item.path), sha256=p.sha256, modality=p.item.modality,
                    index_id=self.index.index_id)
        if p.error is not None:
            return Result(verdict="error", reason=p.error, error=p.error, **base)
        if fuse:  # (a video's evidence is fused per keyframe already)
            evidence = evidence + self._fused(evidence)
        verdict, reason = pol.decide(evidence, self.policy, featureless=p.featureless)
        shown = sorted((m for m in evidence if m["expected"] <= self.policy.review_at),
                       key=lambda m: m["expected"])[:MAX_MATCHES]
        if verdict == "clear":
            shown = []
        # collisions on featureless content carry no strength worth showing
        best = 0.0 if p.featureless else max(
            (m["score"] for m in evidence if not m["featureless_ref"]), default=0.0)
        result = Result(verdict=verdict, reason=reason, score=best, matches=shown,
                        featureless=p.featureless, **base)
        for m in evidence:
            if not m["featureless_ref"]:
                f = m["feature"]
                result.best_expected[f] = min(result.best_expected.get(f, np.inf), m["expected"])
        if self.candidates:
            nearest: dict[int, dict[str, Any]] = {}
            for m in sorted(evidence, key=lambda m: m["expected"]):
                nearest.setdefault(m["work_id"], m)
            result.candidates = list(nearest.values())[: self.candidates]
            self._shown_locators(result.candidates)
        self._shown_locators(result.matches)
        ledger.honour(result, self.decisions, self.works)
        return result

    def check_paths(self, items: Iterable[media.Input]) -> Iterator[Result]:
        """Results for items, in order.

        Where decoding runs in forked processes (:func:`forks`) and the
        search on the CPU, each process judges the pictures it decoded, with
        this scanner as forked (the index's large files are memory-mapped,
        their pages shared): every core decodes and searches pictures. The
        rest (recordings, videos, everything when decoding runs in threads)
        is judged here, in batches.
        """
        judge = self if forks(self.featurizers) and not search.may_use_gpu(self.options.device) else None
        for batch in _batches(prepare_stream(items, self.featurizers, judge=judge), BATCH):
            todo = [p for p in batch if isinstance(p, Prepared)]
            judged = iter(self.judge(todo) if todo else [])
            yield from (next(judged) if isinstance(p, Prepared) else p for p in batch)

    def close(self) -> None:
        self.index.close()


class Engine(Protocol):
    """Where the work of a build or a scan runs; results and index writes stay in this process."""

    name: str

    def prepare(self, items: Sequence[media.Input], featurizers: Sequence[Featurizer], *,
                reference: bool = False) -> Iterator[Prepared]:
        """Decoded and featurized items, in order (``reference``: works being indexed)."""
        ...

    def scanner(self, index_dir: str | Path, **kwargs: Any) -> Any:
        """An opened scanner: ``describe()``, ``check_paths(items)`` yielding one
        :class:`Result` per item (any order), ``close()``; ``kwargs`` as :class:`Scanner`'s."""
        ...

    def describe(self) -> dict[str, Any]:
        """The engine's provenance for ``run.json``."""
        ...


class LocalEngine:
    """The default engine: decoding in this machine's worker processes, judging in this process."""

    name = "local"

    def prepare(self, items: Sequence[media.Input], featurizers: Sequence[Featurizer], *,
                reference: bool = False) -> Iterator[Prepared]:
        return prepare_stream(items, featurizers, reference=reference)

    def scanner(self, index_dir: str | Path, **kwargs: Any) -> Scanner:
        return Scanner(index_dir, **kwargs)

    def describe(self) -> dict[str, Any]:
        return {"name": self.name}


@dataclass
class ScanSummary:
    """Counts of a scan (every verdict, errors and skips) and where results went."""

    counts: Counter = field(default_factory=Counter)
    skipped: int = 0
    resumed: int = 0
    out_dir: str | None = None
    run: dict[str, Any] = field(default_factory=dict)

    def exit_code(self) -> int:
        """Exit code of DESIGN.md: 1 flagged, else 3 errors, else 4 review, else 0."""
        if self.counts["flagged"]:
            return 1
        if self.counts["error"]:
            return 3
        if self.counts["review"]:
            return 4
        return 0


def iter_results(path: str | Path) -> Iterator[dict[str, Any]]:
    """Complete lines of a ``results.jsonl``, one dict at a time, in file order.

    A torn last line (killed writer) and any line that is not JSON are
    skipped; a missing file yields nothing. Only one line is held at a time,
    so a file of millions of results (2-5 KB a line) is read in constant memory.

    Parameters
    ----------
    path : a ``results.jsonl`` written by a scan

    Yields
    ------
    result : dict
        One result line as written by :meth:`Result.to_dict`.
    """
    try:
        with open(path, "rb") as fh:
            for line in fh:
                if not line.endswith(b"\n"):
                    break
                try:
                    yield json.loads(line)
                except ValueError:
                    continue
    except FileNotFoundError:
        return


class ResultsFile:
    """A ``results.jsonl`` that can be iterated more than once: each pass re-reads the file.

    What the end-of-scan writers take (:func:`scanner.report.write_all`
    makes two passes), so no pass holds more than one line of the file.

    Parameters
    ----------
    path : a ``results.jsonl``
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return iter_results(self.path)

    def __repr__(self) -> str:
        return f"ResultsFile({str(self.path)!r})"


def read_results(path: str | Path) -> list[dict[str, Any]]:
    """Complete lines of a ``results.jsonl`` as a list (see :func:`iter_results`, which streams them).

    Holds every line in memory: for small files and tests; the pipeline streams.
    """
    return list(iter_results(path))


def scan(inputs: Sequence[str | Path], index_dir: str | Path, *, out_dir: str | Path | None = None,
         resume: bool = False, options: FeatureOptions | None = None, policy: pol.Policy | None = None,
         hmac_key: bytes | None = None, progress: Progress | None = None, candidates: int = 0,
         on_result: Callable[[Result], None] | None = None, thumbnails: bool = True,
         engine: Engine | None = None) -> ScanSummary:
    """Scan inputs against an index, streaming one result line per input.

    Parameters
    ----------
    inputs : files and folders (folders walked; explicit files always inputs)
    index_dir : the index
    out_dir : where ``results.jsonl``, ``results.csv``, ``report.html`` and
        ``run.json`` go; ``None`` writes nothing (results via ``on_result``)
    resume : skip inputs already in ``out_dir/results.jsonl``
    candidates : also record this many nearest works per input (see :class:`Scanner`)
    on_result : called with every new result as it is decided
    thumbnails : keep small thumbnails of flagged, review and licensed outputs in
        ``out_dir/thumbs/`` for the report (``False``: no picture of an output
        is kept or embedded)
    engine : where inputs are decoded, embedded and judged (:class:`LocalEngine`
        by default; ``scanner.engine_ray.RayEngine`` on a cluster); results are
        written here, by this process, either way

    Returns
    -------
    ScanSummary
    """
    progress = progress or _NoProgress()
    started = _dt.datetime.now(_dt.timezone.utc)
    t0 = time.perf_counter()
    engine = engine or LocalEngine()
    scanner = engine.scanner(index_dir, options=options, policy=policy, hmac_key=hmac_key, candidates=candidates)
    summary = ScanSummary(out_dir=str(out_dir) if out_dir else None)
    items = []
    for found in media.discover([Path(i) for i in inputs]):
        if isinstance(found, media.Skipped):
            summary.skipped += 1
        else:
            items.append(found)
    sink = None
    results_path = None
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        results_path = out / "results.jsonl"
        if resume:
            # one pass keeping paths and counts only, not millions of whole result lines
            done_paths = set()
            for r in iter_results(results_path):
                done_paths.add(r["path"])
                summary.counts[r["verdict"]] += 1
            _truncate_torn_tail(results_path)
            before = len(items)
            items = [i for i in items if str(i.path) not in done_paths]
            summary.resumed = before - len(items)
        sink = open(results_path, "a" if resume else "w", encoding="utf-8")
    progress.start(len(items), "scanning")
    try:
        for result in scanner.check_paths(items):
            summary.counts[result.verdict] += 1
            if sink is not None:
                sink.write(_json_line(result.to_dict()))
                sink.flush()
            if on_result is not None:
                on_result(result)
            progress.advance()
    finally:
        if sink is not None:
            sink.close()
        summary.run = {
            **scanner.describe(), "started_at": started.isoformat(timespec="seconds"),
            "ended_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "seconds": round(time.perf_counter() - t0, 3), "inputs": [str(i) for i in inputs],
            "counts": {v: summary.counts[v] for v in pol.VERDICTS}, "skipped": summary.skipped,
            "resumed": summary.resumed, "engine": engine.describe(),
        }
        scanner.close()
        if out_dir is not None:
            _write_outputs(Path(out_dir), summary.run, thumbnails=thumbnails)
    return summary


def _json_line(record: dict[str, Any]) -> str:
    """One ``results.jsonl`` line, newline included, that always encodes as UTF-8.

    A file name that is not UTF-8 (bytes the OS allows) reaches Python as lone
    surrogates; written as ``\\udcXX`` escapes the line stays valid JSON and
    reads back to the same path string, so ``--resume`` recognises it.
    """
    line = json.dumps(record, ensure_ascii=False)
    try:
        line.encode("utf-8")
    except UnicodeEncodeError:
        line = json.dumps(record)
    return line + "\n"


def _truncate_torn_tail(path: Path, *, block: int = 1 << 16) -> None:
    """Cut a partial last line left by a killed scan, so appends start on a new line.

    Reads backwards from the end, one block at a time, so a results file of
    millions of lines is never held in memory.
    """
    try:
        with open(path, "rb+") as fh:
            end = fh.seek(0, os.SEEK_END)
            if end == 0:
                return
            fh.seek(end - 1)
            if fh.read(1) == b"\n":
                return
            pos = end
            while pos > 0:
                start = max(0, pos - block)
                fh.seek(start)
                newline = fh.read(pos - start).rfind(b"\n")
                if newline >= 0:
                    fh.truncate(start + newline + 1)
                    return
                pos = start
            fh.truncate(0)
    except FileNotFoundError:
        pass


def _write_outputs(out: Path, run: dict[str, Any], *, thumbnails: bool = True) -> None:
    """Write ``run.json``, ``results.csv``, ``report.html`` and ``timeline.csv`` from ``out/results.jsonl``.

    The results are streamed from the file (two passes), never all held: memory
    is bounded by the outputs a person must look at plus the clear lines the
    page lists (:data:`scanner.report.html.MAX_CLEAR`), whatever the run's size.
    """
    from scanner.report import write_all
    from scanner.report.timeline import write_timeline

    tmp = out / "run.json.tmp"
    tmp.write_text(json.dumps(run, indent=2))
    os.replace(tmp, out / "run.json")
    listed = write_all(ResultsFile(out / "results.jsonl"), run, out, thumbnails=thumbnails)
    # the timeline lists only outputs a person must look at, all of which the listing kept (in file
    # order), so it is written from there rather than by a third pass over the file
    write_timeline(listed.results, out / "timeline.csv")  # where each matched work shows, with timecodes


def check(path: str | Path, index_dir: str | Path, *, options: FeatureOptions | None = None,
          hmac_key: bytes | None = None) -> tuple[Result, dict[str, Any]]:
    """Judge one file (always an input, whatever its name); returns the result and provenance."""
    scanner = Scanner(index_dir, options=options, hmac_key=hmac_key)
    try:
        modality = media.sniff(Path(path)) or "image"
        result = next(scanner.check_paths([media.Input(Path(path), modality)]))
        return result, scanner.describe()
    finally:
        scanner.close()


def review(target: str | Path, index_dir: str | Path, *, decision: str, by: str, why: str,
           work_ids: Sequence[int] | None = None, options: FeatureOptions | None = None,
           hmac_key: bytes | None = None) -> ledger.Decision:
    """Record a person's decision on one output in the index's decision ledger.

    Parameters
    ----------
    target : the output file, or its sha256 (64 hex digits)
    index_dir : the index the decision is made against (the ledger lives beside it)
    decision : ``approved``, ``rejected`` or ``licensed``
    by, why : who decides and why
    work_ids : the works it concerns; default: for a file, the works it matches
        now (checked against the index), else the output as a whole

    Returns
    -------
    ledger.Decision, as appended

    Raises
    ------
    ParameterError
        A target that is neither a file nor a sha256, an unknown work id, or a
        bad decision.
    """
    path = Path(target)
    if path.is_file():
        sha256 = media.sha256_file(path)
        shown_path: str | None = str(path)
    elif ledger.is_sha256(str(target)):
        sha256, shown_path = str(target).lower(), None
    else:
        raise ParameterError(f"{target} is neither an existing file nor a sha256 (64 hex digits)")
    ledger.Decision(sha256, decision, by, why).validate()  # before a check that may take a while
    with store.open_index(index_dir, hmac_key=hmac_key) as index:
        index_id, works = index.index_id, index.works()
    if work_ids:
        unknown = sorted(set(work_ids) - set(works))
        if unknown:
            raise ParameterError(f"no work {', '.join(map(str, unknown))} in index {index_dir} "
                                 "(see `likeness index info` or the report)")
        ids = list(dict.fromkeys(work_ids))
    elif shown_path is not None:
        result, _ = check(path, index_dir, options=options, hmac_key=hmac_key)
        ids = list(dict.fromkeys(m["work_id"] for m in result.matches if m["work_id"] in works))
    else:
        ids = []
    concerned = [{"work_id": i, "sha256": works[i].sha256, "title": works[i].title} for i in ids]
    return ledger.append(index_dir, ledger.Decision(sha256, decision, by, why, works=concerned,
                                                    index_id=index_id, path=shown_path))


# --- calibration ---------------------------------------------------------------------------


@dataclass
class Calibration:
    """What :func:`calibrate` found: the policy, the labelled-set report, and whether it was stored."""

    policy: pol.Policy
    report: dict[str, Any]
    written: bool = False


def calibrate(index_dir: str | Path, positives: Sequence[str | Path], negatives: Sequence[str | Path], *,
              target_precision: float = 0.99, max_flag_rate: float = 0.01, max_review_rate: float = 0.05,
              options: FeatureOptions | None = None, hmac_key: bytes | None = None, write: bool = True,
              progress: Progress | None = None) -> Calibration:
    """Set an index's verdict thresholds from labelled examples.

    Scans ``positives`` (outputs that copy a work of the index) and
    ``negatives`` (outputs that copy none), takes each one's strongest
    evidence on the expected-chance-matches scale, and chooses thresholds
    with :func:`scanner.policy.calibrate`. With ``write=True`` the thresholds
    and the report go into the manifest (an atomic index write), so later
    scans use them.

    Inputs that could not be checked and featureless ones (never flagged
    whatever their score) are left out and counted in the report.

    Returns
    -------
    Calibration
    """
    best: dict[str, list[tuple[float, float]]] = {"positives": [], "negatives": []}
    left_out: Counter = Counter()
    index_policy = None
    for label, inputs in (("positives", positives), ("negatives", negatives)):
        if not inputs:
            raise ParameterError(f"calibration needs {label}: none given")
        results: list[Result] = []
        summary = scan(inputs, index_dir, options=options, hmac_key=hmac_key, progress=progress,
                       on_result=results.append)
        index_policy = summary.run["policy"]
        copy = set(index_policy.get("copy_features") or pol.COPY_EVIDENCE)
        for r in results:
            if r.verdict == "error" or r.featureless:
                left_out[f"{label} {'unreadable' if r.verdict == 'error' else 'featureless'}"] += 1
                continue
            e = r.best_expected
            best[label].append((min((v for f, v in e.items() if f in copy), default=np.inf),
                                min(e.values(), default=np.inf)))
    pos = np.array(best["positives"], dtype=np.float64).reshape(-1, 2)
    neg = np.array(best["negatives"], dtype=np.float64).reshape(-1, 2)
    policy, report = pol.calibrate(pos[:, 0], neg[:, 0], pos[:, 1], neg[:, 1],
                                   target_precision=target_precision, max_flag_rate=max_flag_rate,
                                   max_review_rate=max_review_rate,
                                   base=pol.Policy.from_params(index_policy))
    report["left_out"] = dict(left_out)
    report["calibrated_at"] = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    out = Calibration(policy, report)
    if write:
        with store.IndexWriter(index_dir, hmac_key=hmac_key) as writer:
            writer.set("policy", policy.get_params())
            writer.set("calibration", report)
        out.written = True
    return out

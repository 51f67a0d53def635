"""Preparing inputs: decoding files and running each featurizer's per-item work, ahead of the caller.

Decode workers (forked processes where every featurizer may be forked, threads
otherwise), bounded look-ahead, crash isolation (a decoder that kills its
process costs one file, not the scan), batching for the judges, and embedding
ahead for a distributed engine's GPU workers.
"""

from __future__ import annotations

import os
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any, Callable, Iterable, Iterator, Protocol, Sequence

from scanner import media, search, search_choice, thumbs
from scanner.errors import DecodeError, LikenessError, ParameterError
from scanner.features import Featurizer
from scanner.features.content import analyse
from scanner.features.prepared import BATCH, Prepared, embed_prepared
from scanner.results import Result


#: Told how far a long file's decoding has got: a dict with ``stage`` ("picture" for a video's
#: pictures, "sound" for audio or a video's soundtrack), ``seconds`` decoded and ``duration``
#: (seconds per the file's header, or None). Called from the decoding thread.
Progress = Callable[[dict[str, Any]], None]


class Judges(Protocol):
    """What forked decode workers judge pictures with (:class:`scanner.pipeline.scan.Scanner`)."""

    def judge(self, batch: Sequence[Prepared]) -> list[Result]: ...

#: Longest side images are decoded to unless a featurizer asks for more
#: (:attr:`Featurizer.decode_side`: ``image-local`` wants 1024, so the content
#: inside a margin, or one of a query's tiles, keeps the 512 pixels its
#: keypoints are found at); every image featurizer resamples from it.
DECODE_SIDE = Featurizer.decode_side
#: Longest side of video keyframes: up to two thousand per file, one at a time.
KEYFRAME_SIDE = 512
#: Inputs a forked decode worker prepares (and judges) per task: a batch for a model, few
#: enough that the workers finish a scan together.
FORK_CHUNK = 16


def decode_side(featurizers: Sequence[Featurizer]) -> int:
    """Longest side pictures are decoded to for these featurizers, pixels:
    the largest any image featurizer asks for, at least :data:`DECODE_SIDE`."""
    return max([DECODE_SIDE, *(f.decode_side for f in featurizers if f.modality == "image")])


def prepare_one(item: media.Input, featurizers: Sequence[Featurizer], reference: bool = False,
                progress: Progress | None = None) -> Prepared:
    """Decode one file and run every featurizer's per-item work on it.

    Parameters
    ----------
    item : the file and its modality
    featurizers : those of the index (each runs on the inputs of its modality)
    reference : prepare as a reference work (thumbnails, reference-side templates)
    progress : told how far decoding has got, for audio and video (see :data:`Progress`)

    Returns
    -------
    Prepared
        With :attr:`Prepared.error` set, never raised, when the file cannot be checked.
    """
    out = Prepared(item)
    try:
        out.sha256 = media.sha256_file(item.path)
    except OSError:
        pass  # load_image names the problem below
    try:
        if item.modality == "video":
            _prepare_video(out, featurizers, reference, progress)
            return out
        if not any(f.modality == item.modality for f in featurizers):
            raise DecodeError(item.path, f"{item.modality} files are not supported by this index "
                                         f"(it holds no {item.modality} features)")
        if item.modality == "audio":
            _prepare_audio(out, featurizers, reference, progress=progress)
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
    content = analyse(image, turn=any(f.reads_turn for f in featurizers if f.modality == "image"))
    out.featureless = content.featureless
    out.size = image.size
    for feat in featurizers:
        if feat.modality == "image":
            prepare = feat.prepare_reference if reference else feat.prepare
            out.prepared[feat.name] = prepare(image, content)


def _prepare_audio(out: Prepared, featurizers: Sequence[Featurizer], reference: bool,
                   audio: media.Audio | None = None, progress: Progress | None = None) -> None:
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
        if progress is not None:
            progress({"stage": "sound", "seconds": round((chunk.start + len(chunk.y)) / chunk.sr, 1),
                      "duration": audio.duration})
    if strip is not None:
        out.thumb, out.thumb_meta = strip.finish(), {"duration": round(strip.duration, 3)}
    out.featureless = audio.featureless()
    for feat, state in zip(feats, states):
        out.prepared[feat.name] = feat.finish(state)  # type: ignore[attr-defined]


def _prepare_video(out: Prepared, featurizers: Sequence[Featurizer], reference: bool,
                   progress: Progress | None = None) -> None:
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
            if progress is not None:
                progress({"stage": "picture", "seconds": key.time, "duration": clip.duration})
        out.thumb = out.thumb or first
    if audio_feats and clip.has_audio:
        # its times are from its first sample: ``timecode`` puts that on the picture's timeline
        part = Prepared(media.Input(out.item.path, "audio"), timecode=clip.audio_offset)
        _prepare_audio(part, audio_feats, reference, clip.soundtrack(), progress)
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
_FORKED_SCANNER: Judges | None = None


def forks(featurizers: Sequence[Featurizer]) -> bool:
    """Whether :func:`prepare_stream` prepares for these featurizers in forked processes:
    where the system forks and every featurizer may be (:attr:`Featurizer.forkable`:
    the weight-free ones, and a model each worker loads for itself on the CPU)."""
    return hasattr(os, "fork") and all(f.forkable for f in featurizers)


def before_fork() -> None:
    """Collect this process's garbage now, before workers are forked from it.

    A forked worker must never destroy what it inherited from a model's runtime:
    an onnxruntime session's destructor waits for the threads of its pool, and
    those stayed in the parent, so a worker whose garbage collector meets a
    parent's unreachable session (a reference cycle not yet collected) hangs for
    ever. Collected here, where its threads are; :func:`start_worker` then
    freezes what the worker inherited (:func:`gc.freeze`).
    """
    import gc

    gc.collect()


def _worker_start(parent: int, judge: bool) -> None:
    """Decode worker start-up (:func:`start_worker` with the featurizers it was forked with)."""
    start_worker(parent, (*_FORKED_FEATURIZERS, *getattr(_FORKED_SCANNER, "featurizers", ())), judge)


def start_worker(parent: int, featurizers: Sequence[Featurizer], judge: bool) -> None:
    """Start-up of a freshly forked worker: go when the parent goes, even by ``kill -9``;
    BLAS, a judging worker's searches and each featurizer's model run on one thread
    (its siblings hold the other cores; :meth:`Featurizer.forked`).

    Otherwise a killed scan leaves its workers behind, holding memory and the
    terminal's pipes, waiting forever for work. Linux sends the worker SIGKILL
    when its parent dies (``PR_SET_PDEATHSIG``); elsewhere nothing is set up.

    Parameters
    ----------
    parent : the forking process's id
    featurizers : those the worker runs (each told it was forked)
    judge : whether the worker also searches the index
    """
    import ctypes
    import gc
    import signal

    from scanner import blas

    # what the worker inherited is never collected here (see before_fork); also spares its memory pages
    gc.freeze()

    # each worker works on its own pictures: BLAS threads would only spin between their small products
    blas.limit_threads(1)
    for feat in {id(f): f for f in featurizers}.values():
        feat.forked()
    if judge:
        # one thread also keeps faiss's OpenMP off a thread team inherited from the parent;
        # faiss only: a torch copy of the rows in every worker would multiply the index's memory
        search.configure_faiss(1)
        search_choice.faiss_only()
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGKILL))  # 1: PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # the parent died before the request took effect
        os._exit(1)


def _prepare_chunk(items: Sequence[media.Input], featurizers: Sequence[Featurizer] | None = None,
                   reference: bool = False, judge: bool = False) -> list[Prepared] | list[Result]:
    prepared = [prepare_one(item, _FORKED_FEATURIZERS if featurizers is None else featurizers, reference)
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
                   judge: Judges | None = None) -> Iterator[Prepared | Result]:
    """Decode and prepare items ahead of the caller, in order, with bounded look-ahead.

    ``reference=True`` prepares references being indexed
    (:meth:`Featurizer.prepare_reference`).

    Featurizers that may be forked (:func:`forks`: the weight-free ones, and
    image-sscd on the CPU, each worker loading its own session) run in forked
    processes (decoding and hashing hold the GIL part of the time; processes
    scale to every core); others (a torch model, a GPU) run in threads, since
    their models must not be forked and Pillow releases the GIL while decoding.

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
        chunk, args = FORK_CHUNK, (None, reference, judge is not None)

        def new_pool() -> Any:
            before_fork()
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


def batches(stream: Iterator[Prepared | Result], size: int) -> Iterator[list[Prepared | Result]]:
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


def embed_ahead(batch: Sequence[Prepared], featurizers: Sequence[Featurizer]) -> None:
    """Embed the model features of a batch now, keeping each item's rows in :attr:`Prepared.vectors`.

    A distributed engine runs this on GPU workers between decoding and
    judging; :meth:`Scanner.judge` and :func:`build_index` then use the rows
    instead of embedding again. A video's keyframes are embedded
    :data:`BATCH` at a time.
    """
    flat = [q for p in batch for q in (p.parts if p.parts is not None else [p])]
    for feat in featurizers:
        if not feat.embeds_with_model:
            continue
        m = feat.codes_per_item
        for lo in range(0, len(flat), BATCH):
            chunk = flat[lo:lo + BATCH]
            pos, vecs = embed_prepared(feat, chunk)
            for j, i in enumerate(pos):
                chunk[i].vectors[feat.name] = vecs[j * m:(j + 1) * m]

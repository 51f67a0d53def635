"""Build (or reuse) the evaluation set of one half: references, queries, negatives.

Layout under ``WORK/<corpus>-seed<S>/<half>/``::

    refs/<topic>/...           symbolic links to the corpus files that get indexed
    queries/<transform>/rNNNN_<name>.png|jpg
    negatives/nNNNN_<name>.png
    set.json                   what everything is (and the config it was made with)

A set whose ``set.json`` records the same configuration (corpus, half, seed,
counts, size limit, transform definitions) and whose files all exist is reused,
so iterating on the scanner does not pay for the transforms again.

References are one file per work: no two pixel-identical, no two of one
family of recoloured drawings (:mod:`known_copies`). Negatives (and collage
backgrounds) are drawn from the half's negative folders, minus files
pixel-identical to a reference and known copies of a reference.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import warnings
from concurrent.futures import Executor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
from PIL import Image, ImageOps

from scanner import media
from scanner.demo import flatten
from scanner.errors import DecodeError
from scanner.features.content import analyse
from scanner.pipeline import DECODE_SIDE

from . import corpora, known_copies
from . import transforms as tf

warnings.simplefilter("ignore", Image.DecompressionBombWarning)
DEEP_MODES = ("I", "I;16", "I;16L", "I;16B", "I;16N", "F")
#: Extra unseen pictures validated for collage backgrounds (from the negative folders).
BACKGROUNDS = 100
HALF_IDS = {"tune": 1, "report": 2}


@dataclass(frozen=True)
class SetConfig:
    """Everything that determines a set's content."""

    corpus: str
    half: str
    seed: int
    refs: int
    negatives: int
    max_side: int
    transforms: tuple[str, ...]
    version: str = tf.VERSION
    exclusions: str = known_copies.VERSION


def check_file(path: str) -> dict[str, Any]:
    """Decode one file as the scanner does: why it cannot be used, or its featureless reason and pixel hash."""
    try:
        image = media.load_image(path, max_side=DECODE_SIDE)
    except DecodeError as exc:
        return {"path": path, "error": exc.reason}
    except Exception as exc:  # noqa: BLE001 - any failure means: skip this file
        return {"path": path, "error": f"{type(exc).__name__}: {exc}"}
    return {"path": path, "error": None, "featureless": analyse(image).featureless,
            "pixels": hashlib.sha1(image.tobytes() + repr(image.size).encode()).hexdigest(),
            "size": list(image.size)}


def flat(path: str | Path, max_side: int) -> Image.Image:
    """The picture as a person sees it: composited over white, at most ``max_side`` pixels long (Lanczos)."""
    with Image.open(path) as im:
        im.load()
        im = ImageOps.exif_transpose(im)
        rgb = media.load_image(path) if im.mode in DEEP_MODES else flatten(im.convert("RGBA"))
    if max(rgb.size) > max_side:
        scale = max_side / max(rgb.size)
        rgb = rgb.resize((max(1, round(rgb.width * scale)), max(1, round(rgb.height * scale))),
                         Image.Resampling.LANCZOS)
    return rgb


def pick(pool: list[Path], n: int, ex: Executor, *, exclude_pixels: set[str] = frozenset(),
         work_of: Callable[[Path], str] | None = None
         ) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[Path]]:
    """The first ``n`` usable, mutually distinct files of ``pool`` (in order).

    ``work_of`` gives files of the same work one key
    (:func:`known_copies.work_key`): at most one file per work is picked
    (by default every file is a work of its own).

    Returns
    -------
    accepted, skipped, rest
        ``skipped`` holds undecodable files, pixel-identical duplicates (of
        one another or of ``exclude_pixels``) and other files of a picked work,
        with the reason; ``rest`` is the part of the pool not examined.
    """
    accepted: list[dict[str, Any]] = []
    skipped: list[dict[str, Any]] = []
    seen = set(exclude_pixels)
    work_of = work_of or str
    works: dict[str, str] = {}
    start = 0
    while len(accepted) < n and start < len(pool):
        chunk = pool[start:start + max(16, 2 * (n - len(accepted)))]
        start += len(chunk)
        for info in ex.map(check_file, [str(p) for p in chunk]):
            if len(accepted) >= n:
                start -= 1  # not examined after all: give it back to the rest
                continue
            if info["error"]:
                skipped.append(info)
            elif info["pixels"] in seen:
                skipped.append({**info, "error": "same pixels as another picked file"})
            elif (work := work_of(Path(info["path"]))) in works:
                skipped.append({**info, "error": f"the same work as {works[work]} (known_copies)"})
            else:
                seen.add(info["pixels"])
                works[work] = info["path"]
                accepted.append(info)
    return accepted, skipped, pool[start:]


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)[:60]


def _init_worker() -> None:
    try:
        import cv2

        cv2.setNumThreads(1)
    except ImportError:  # transforms needing OpenCV will say so
        pass


def _render_queries(job: dict[str, Any]) -> list[tuple[str, list[dict[str, Any]]]]:
    """Make every transform of one reference (runs in a worker process)."""
    base = flat(job["src"], job["max_side"])
    out = []
    for t in job["transforms"]:
        rng = np.random.default_rng(t["seed"])
        background = None
        if t["background"]:
            background = flat(t["background"], job["max_side"])
        rendered = tf.apply(t["name"], base, rng, tf.Context(background, job["max_side"]))
        path = rendered.save(Path(t["stem"]))
        params = rendered.params + ([{"background": t["background"]}] if t["background"] else [])
        out.append((str(path), params))
    return out


def _render_negative(job: tuple[str, str, int]) -> None:
    src, out, max_side = job
    flat(src, max_side).save(out, "PNG", compress_level=1)


def _cached(path: Path, config: SetConfig) -> dict[str, Any] | None:
    try:
        the_set = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if the_set.get("config") != _jsonable(asdict(config)):
        return None
    files = [*the_set["queries"], *the_set["negatives"], *(r["link"] for r in the_set["refs"])]
    return the_set if all(Path(f).exists() for f in files) else None


def _jsonable(obj: Any) -> Any:
    return json.loads(json.dumps(obj))


def build(corpus: corpora.Corpus, split: dict[str, list[str]], config: SetConfig, root: Path,
          ex: Executor, *, reuse: bool = True, log: Any = print) -> dict[str, Any]:
    """Make (or reuse) the set of one half under ``root``.

    Parameters
    ----------
    corpus : the listed corpus
    split : group -> topics (:func:`corpora.split_topics`)
    config : counts, seed, half, size limit, transforms
    root : this half's work folder (its ``refs``, ``queries``, ``negatives`` are replaced)
    ex : process pool for decoding and rendering
    reuse : reuse a matching set already there

    Returns
    -------
    dict
        The set description written to ``root/set.json``.
    """
    set_path = root / "set.json"
    if reuse:
        cached = _cached(set_path, config)
        if cached is not None:
            log(f"  reusing the {config.half} set in {root}")
            return cached
    half, seed = config.half, config.seed
    ref_topics, neg_topics = split[f"{half}-refs"], split[f"{half}-negatives"]
    ref_pool = corpora.round_robin(corpus.topics, ref_topics, seed * 1000 + HALF_IDS[half])
    neg_pool = corpora.round_robin(corpus.topics, neg_topics, seed * 1000 + HALF_IDS[half] + 500)
    same_work = known_copies.work_key(corpus.name, corpus.root)
    refs, ref_skipped, _ = pick(ref_pool, config.refs, ex, work_of=same_work)
    ref_pixels = {r["pixels"] for r in refs}
    copies = known_copies.KnownCopies(corpus.name, corpus.root, [Path(r["path"]) for r in refs])
    left_out = [{"path": str(p), "error": copies.copy_of(p)} for p in neg_pool if copies.copy_of(p)]
    neg_pool = [p for p in neg_pool if not copies.copy_of(p)]
    negs, neg_skipped, rest = pick(neg_pool, config.negatives, ex, exclude_pixels=ref_pixels)
    backgrounds, _, _ = pick(rest, BACKGROUNDS, ex, exclude_pixels=ref_pixels)
    if not backgrounds:  # a small corpus: paste into the negatives themselves
        backgrounds = negs
    notes = []
    if len(refs) < config.refs:
        notes.append(f"only {len(refs)} usable references in {ref_topics} ({config.refs} wanted)")
    if len(negs) < config.negatives:
        notes.append(f"only {len(negs)} usable negatives in {neg_topics} ({config.negatives} wanted)")
    for n in notes:
        log(f"  note: {n}")
    if not refs or not negs:
        raise SystemExit(f"no usable references or negatives for the {half} half")

    for sub in ("refs", "queries", "negatives"):
        shutil.rmtree(root / sub, ignore_errors=True)
    set_path.unlink(missing_ok=True)
    for sub in ("refs", "negatives", *(f"queries/{t}" for t in config.transforms)):
        (root / sub).mkdir(parents=True)

    topic_of = {str(p): t for t in (*ref_topics, *neg_topics) for p in corpus.topics[t]}
    bg_paths = [b["path"] for b in backgrounds]
    jobs = []
    for i, r in enumerate(refs):
        src = Path(r["path"])
        link = root / "refs" / src.relative_to(corpus.root)
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(src)
        r["link"] = str(link)
        r["topic"] = topic_of[r["path"]]
        ts = []
        for j, name in enumerate(config.transforms):
            s = [seed, HALF_IDS[half], i, j]
            bg = None
            if tf.needs_background(name):
                bg = bg_paths[int(np.random.default_rng([*s, 7]).integers(len(bg_paths)))]
            ts.append({"name": name, "seed": s, "background": bg,
                       "stem": str(root / "queries" / name / f"r{i:04d}_{_safe(src.stem)}")})
        jobs.append({"src": r["path"], "max_side": config.max_side, "transforms": ts})
    queries: dict[str, dict[str, Any]] = {}
    for i, (job, made) in enumerate(zip(jobs, ex.map(_render_queries, jobs, chunksize=2))):
        for t, (path, params) in zip(job["transforms"], made):
            queries[path] = {"transform": t["name"], "ref_index": i, "ref": job["src"],
                             "featureless_ref": refs[i]["featureless"], "params": params}
    negatives: dict[str, dict[str, Any]] = {}
    njobs = []
    for i, n in enumerate(negs):
        src = Path(n["path"])
        out = root / "negatives" / f"n{i:04d}_{_safe(src.stem)}.png"
        negatives[str(out)] = {"source": str(src), "topic": topic_of[n["path"]]}
        njobs.append((str(src), str(out), config.max_side))
    list(ex.map(_render_negative, njobs, chunksize=4))

    the_set = {
        "config": _jsonable(asdict(config)),
        "corpus_root": str(corpus.root), "links_left_out": corpus.links_left_out,
        "topic_sizes": {t: len(f) for t, f in corpus.topics.items()},
        "split": split, "ref_topics": ref_topics, "negative_topics": neg_topics, "notes": notes,
        "refs": [{k: r[k] for k in ("path", "link", "topic", "featureless", "size")} for r in refs],
        "queries": queries, "negatives": negatives, "backgrounds": bg_paths,
        "skipped": [{k: s.get(k) for k in ("path", "error")} for s in ref_skipped + neg_skipped],
        "known_copies_left_out": left_out,
    }
    set_path.write_text(json.dumps(the_set, indent=1))
    return the_set


def make_pool(workers: int) -> Executor:
    """A process pool whose workers keep OpenCV on one thread each."""
    from concurrent.futures import ProcessPoolExecutor

    return ProcessPoolExecutor(workers, initializer=_init_worker)


"""Installed corpora as topic folders, and the seeded four-way folder split.

A *topic* is a folder of related works. Every topic goes wholly to one of four
groups: TUNE references, TUNE negatives, REPORT references, REPORT negatives,
so negatives are unseen works of the same style and nothing chosen on TUNE
has seen a REPORT folder. Only regular files are listed: the openclipart
corpus's symbolic links point across topic folders and would put one work on
both sides.

``openclipart``
    ``/usr/share/openclipart/png/<topic>/`` (Debian ``openclipart-png``): one
    topic per top-level folder, PNG clip art with transparency.
``wesnoth``
    ``/usr/share/games/wesnoth/1.16/data/core/images/`` (Debian
    ``wesnoth-1.16-data``): painted portraits (``portraits/<race>``, one topic
    per race), unit sprites (``units/<race>``, one per race, still frames only:
    animation frames, names with a digit or ``<unit>-<pose>`` /
    ``<unit>_<effect>`` beside ``<unit>``, are near-copies of the unit and left out), and the
    ``story``, ``maps`` (without its ``l10n`` translations of the same maps),
    ``scenery``, ``items``, ``attacks`` and ``icons`` folders. Terrain tiles,
    halos, projectiles, masks and interface pieces are left out: they are
    fragments made to tile or overlay, not works.
"""

from __future__ import annotations

import os
import random
import re
from dataclasses import dataclass
from pathlib import Path

OPENCLIPART = Path("/usr/share/openclipart/png")
WESNOTH = Path("/usr/share/games/wesnoth/1.16/data/core/images")
#: How to install each corpus.
PACKAGES = {"openclipart": "openclipart-png", "wesnoth": "wesnoth-1.16-data"}
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
WESNOTH_PER_RACE = ("portraits", "units")
WESNOTH_WHOLE = ("story", "maps", "scenery", "items", "attacks", "icons")
GROUPS = ("tune-refs", "tune-negatives", "report-refs", "report-negatives")
#: Folders (under the corpus root) of stock geometry: generated stars, arrows, callouts,
#: flowchart and jigsaw pieces, 100-pixel fill-pattern tiles and gradients, the issue's
#: "stars, arrows, letters, plain frames" that recur across many works and that
#: distinctiveness weighting is meant to count for little. They stay in the sets and in
#: every target; the report adds each transform's recall with them set apart, so a reader
#: sees whether misses are stock geometry or distinctive work. (wesnoth's terrain tiles,
#: fragments made to tile, are left out of that corpus altogether; its sets hold no such folder.)
STOCK_FOLDERS: dict[str, tuple[str, ...]] = {
    "openclipart": ("shapes/stars", "shapes/arrows", "shapes/callouts", "shapes/flowchart", "shapes/jigsaw",
                    "special/patterns", "special/gradients"),
    "wesnoth": (),
}

_FRAME = re.compile(r"\d")
_SEPARATOR = re.compile(r"[-_]")


def is_stock(corpus: str, root: str | Path, path: str | Path) -> bool:
    """Whether ``path`` lies in one of the corpus's :data:`STOCK_FOLDERS`."""
    rel = Path(os.path.relpath(path, root)).as_posix()
    return any(rel.startswith(folder + "/") for folder in STOCK_FOLDERS.get(corpus, ()))


@dataclass(frozen=True)
class Corpus:
    """A corpus: its root and its files by topic (sorted).

    Attributes
    ----------
    name : ``"openclipart"`` or ``"wesnoth"``
    root : where it is installed
    topics : topic name -> regular image files, sorted
    links_left_out : symbolic links not used
    """

    name: str
    root: Path
    topics: dict[str, list[Path]]
    links_left_out: int


def _walk(folder: Path, *, skip_dirs: tuple[str, ...] = ()) -> tuple[list[Path], int]:
    files: list[Path] = []
    links = 0
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if d not in skip_dirs)
        for name in sorted(filenames):
            path = Path(dirpath) / name
            if not name.lower().endswith(IMAGE_SUFFIXES):
                continue
            if path.is_symlink():
                links += 1
            elif path.is_file():
                files.append(path)
    return files, links


def _still_frames(files: list[Path]) -> list[Path]:
    """Unit sprites without their animation frames and pose variants."""
    stems = {(p.parent, p.stem) for p in files}
    keep = []
    for p in files:
        if _FRAME.search(p.stem):
            continue
        cuts = [m.start() for m in _SEPARATOR.finditer(p.stem)]
        if any((p.parent, p.stem[:k]) in stems for k in cuts):
            continue  # <unit>-<pose> or <unit>_<effect> beside <unit>
        keep.append(p)
    return keep


def load(name: str) -> Corpus:
    """List an installed corpus by topic.

    Raises
    ------
    SystemExit
        If the corpus is not installed (naming the package).
    """
    if name == "openclipart":
        root = OPENCLIPART
    elif name == "wesnoth":
        root = WESNOTH
    else:
        raise SystemExit(f"unknown corpus {name!r}")
    if not root.is_dir():
        raise SystemExit(f"{root} is missing: apt-get install {PACKAGES[name]}")
    topics: dict[str, list[Path]] = {}
    links = 0
    if name == "openclipart":
        for top in sorted(p for p in root.iterdir() if p.is_dir() and not p.is_symlink()):
            files, n = _walk(top)
            links += n
            if files:
                topics[top.name] = files
    else:
        for top in WESNOTH_PER_RACE:
            for sub in sorted(p for p in (root / top).iterdir() if p.is_dir() and not p.is_symlink()):
                files, n = _walk(sub)
                links += n
                if top == "units":
                    files = _still_frames(files)
                if files:
                    topics[f"{top}/{sub.name}"] = files
        for top in WESNOTH_WHOLE:
            if (root / top).is_dir():
                files, n = _walk(root / top, skip_dirs=("l10n",))
                links += n
                if files:
                    topics[top] = files
    return Corpus(name, root, topics, links)


def split_topics(topics: dict[str, list[Path]], seed: int, *, refs: int, negatives: int) -> dict[str, list[str]]:
    """Deal topic folders to the four :data:`GROUPS`, seeded, in proportion to what each needs.

    Topics are shuffled with ``seed`` and dealt one by one, largest share of
    need first: each goes to the group whose file count so far is the smallest
    fraction of what it needs (``refs`` for reference groups, ``negatives``
    for negative groups), so negative groups get about twice the files when
    twice as many negatives are wanted.

    Returns
    -------
    dict
        group -> sorted topic names
    """
    order = sorted(topics)
    random.Random(seed).shuffle(order)
    need = {g: max(1, refs if g.endswith("refs") else negatives) for g in GROUPS}
    have = {g: 0 for g in GROUPS}
    out: dict[str, list[str]] = {g: [] for g in GROUPS}
    for t in order:
        g = min(GROUPS, key=lambda g: (have[g] / need[g], GROUPS.index(g)))
        out[g].append(t)
        have[g] += len(topics[t])
    return {g: sorted(v) for g, v in out.items()}


def round_robin(topics: dict[str, list[Path]], names: list[str], seed: int) -> list[Path]:
    """Files of ``names`` in a seeded order that takes one file from each topic in turn.

    Picking the first N of this order spreads a set over its topics, so no
    single large folder (thousands of near-identical shapes) dominates a half.
    """
    rng = random.Random(seed)
    queues = []
    for t in sorted(names):
        files = list(topics[t])
        rng.shuffle(files)
        queues.append(files)
    rng.shuffle(queues)
    out: list[Path] = []
    i = 0
    while any(queues):
        q = queues[i % len(queues)]
        if q:
            out.append(q.pop())
        i += 1
    return out

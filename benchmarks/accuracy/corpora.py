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
``photos``
    Photographs and paintings of Debian's desktop wallpaper packages
    (:data:`PHOTO_PACKAGES`), under ``/usr/share/backgrounds/`` and
    ``/usr/share/wallpapers/`` (root ``/usr/share``), listed from each
    package's own file list so that other wallpaper packages installed there
    do not change the corpus. A package ships several resolutions of one
    picture (and light/dark or portrait variants): those are one *work*.
    Files are grouped into works by name (a plasma ``<Name>/contents/images*/``
    folder is one work; elsewhere the stem without a resolution suffix
    ``_3840x2160`` or a ``-Light``/``-Dark`` suffix), then any two files whose
    64-bit pHash (of the picture as a scan decodes it) differ in at most
    :data:`PHOTO_MERGE_BITS` bits are joined into one work (recoloured
    versions of one design). Each work is represented by one file (a light,
    landscape one of width closest to 1920 pixels). Files a scan finds
    featureless are left out: mate's transparent overlays (white patterns on
    transparency, meant to lie over a desktop colour) are blank over white.
    SVG and XML files are not pictures, and plasma's ``screenshot`` thumbnails
    are not listed. There are no topic folders: *every work is a topic of its
    own*, named ``<package>/<work>``, so :func:`split_topics` deals works (one
    file each) to the four groups in proportion to the references and
    negatives asked for, and every negative is a work no reference of its
    half belongs to.
"""

from __future__ import annotations

import os
import random
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

OPENCLIPART = Path("/usr/share/openclipart/png")
WESNOTH = Path("/usr/share/games/wesnoth/1.16/data/core/images")
PHOTOS = Path("/usr/share")
#: Wallpaper packages of the photos corpus -> (topic prefix, their folder under PHOTOS).
#: ``lomiri-wallpapers`` itself ships one picture and pulls in the two that hold the photographs.
PHOTO_PACKAGES = {
    "mate-backgrounds": ("mate", "backgrounds/mate"),
    "plasma-workspace-wallpapers": ("plasma", "wallpapers"),
    "ukui-wallpapers": ("ukui", "backgrounds"),
    "lomiri-wallpapers": ("lomiri", "backgrounds"),
    "lomiri-wallpapers-16.04": ("lomiri", "backgrounds"),
    "lomiri-wallpapers-20.04": ("lomiri", "backgrounds"),
}
#: How to install each corpus.
PACKAGES = {"openclipart": "openclipart-png", "wesnoth": "wesnoth-1.16-data",
            "photos": "mate-backgrounds plasma-workspace-wallpapers ukui-wallpapers lomiri-wallpapers"}
#: Files of two names whose pHashes differ in at most this many of 64 bits are one work. Measured
#: on the installed packages: variants of one picture (resolutions, light/dark, recolourings) lie
#: 0-12 bits apart (plasma's portrait crops up to 20, but their folder joins them), two different
#: works 18 or more.
PHOTO_MERGE_BITS = 12
#: The width a work's representative file is picked nearest to.
PHOTO_WIDTH = 1920
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
    "photos": (),
}

_FRAME = re.compile(r"\d")
_SEPARATOR = re.compile(r"[-_]")
_RESOLUTION = re.compile(r"[-_ ]?\d{3,5}x\d{3,5}$")
_SHADE = re.compile(r"[-_ ](light|dark)$", re.IGNORECASE)


def is_stock(corpus: str, root: str | Path, path: str | Path) -> bool:
    """Whether ``path`` lies in one of the corpus's :data:`STOCK_FOLDERS`."""
    rel = Path(os.path.relpath(path, root)).as_posix()
    return any(rel.startswith(folder + "/") for folder in STOCK_FOLDERS.get(corpus, ()))


@dataclass(frozen=True)
class Corpus:
    """A corpus: its root and its files by topic (sorted).

    Attributes
    ----------
    name : ``"openclipart"``, ``"wesnoth"`` or ``"photos"``
    root : where it is installed
    topics : topic name -> regular image files, sorted
    links_left_out : symbolic links not used
    notes : what was left out or joined while listing, for the log
    """

    name: str
    root: Path
    topics: dict[str, list[Path]]
    links_left_out: int
    notes: tuple[str, ...] = ()


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


def _package_files(package: str) -> list[Path] | None:
    """The paths a Debian package installed (``dpkg-query -L``), sorted; None if it is not installed."""
    try:
        proc = subprocess.run(["dpkg-query", "-L", package], check=False, capture_output=True, text=True)
    except OSError:  # no dpkg: not a Debian system
        return None
    if proc.returncode != 0:
        return None
    return sorted(Path(line) for line in proc.stdout.splitlines() if line.strip())


def _photo_files() -> tuple[list[tuple[str, Path]], int, list[str]]:
    """Every picture the photo packages installed.

    Returns
    -------
    files, links, missing
        ``(package, path)`` of each regular image file; the symbolic links
        left out (plasma links every screen size to one file); the packages
        not installed.
    """
    files: list[tuple[str, Path]] = []
    links = 0
    missing: list[str] = []
    for package in PHOTO_PACKAGES:
        listed = _package_files(package)
        if listed is None:
            missing.append(package)
            continue
        for path in listed:
            if not path.name.lower().endswith(IMAGE_SUFFIXES):
                continue  # SVG, XML slideshows, metadata: not pictures
            if PHOTO_PACKAGES[package][0] == "plasma" and not path.parent.name.startswith("images"):
                continue  # contents/screenshot.*: a thumbnail of the work beside its images
            if path.is_symlink():
                links += 1
            elif path.is_file():
                files.append((package, path))
    return files, links, missing


def _photo_name(package: str, path: Path) -> str:
    """The work a file's name says it belongs to, ``<prefix>/<name>``.

    plasma: the ``<Name>`` folder (its ``contents/images*/`` hold one
    picture's sizes, light and dark); the other packages: the folder and the
    stem without a resolution (``Elephants_3840x2160``) or light/dark suffix.
    """
    prefix, folder = PHOTO_PACKAGES[package]
    rel = path.relative_to(PHOTOS / folder)
    if prefix == "plasma":
        return f"{prefix}/{rel.parts[0]}"
    stem = _SHADE.sub("", _RESOLUTION.sub("", path.stem))
    return f"{prefix}/{rel.parent.joinpath(stem).as_posix()}"


def _representative(paths: list[Path], sizes: dict[Path, tuple[int, int]]) -> Path:
    """The file that stands for a work: light before dark, landscape before portrait
    (plasma's portrait files are phone crops), then width nearest :data:`PHOTO_WIDTH`,
    the larger on a tie."""
    def key(p: Path) -> tuple[bool, bool, int, int, str]:
        w, h = sizes[p]
        dark = "dark" in p.parent.name.lower() or p.stem.lower().endswith("dark")
        return dark, h > w, abs(w - PHOTO_WIDTH), -w, str(p)

    return min(paths, key=key)


def _join(n: int, pairs: list[tuple[int, int]]) -> list[list[int]]:
    """Connected groups of ``range(n)`` under ``pairs`` (each group sorted, groups by first member)."""
    parent = list(range(n))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for a, b in pairs:
        parent[find(b)] = find(a)
    groups: dict[int, list[int]] = {}
    for i in range(n):
        groups.setdefault(find(i), []).append(i)
    return sorted(groups.values())


def _load_photos() -> Corpus:
    """The photos corpus: one topic per work, holding the work's one representative file.

    Every file is decoded once as a scan decodes it (at most 512 pixels), for
    the featureless check and the pHash that joins variants (about 10 s).

    Raises
    ------
    SystemExit
        If none of :data:`PHOTO_PACKAGES` is installed.
    """
    import imagehash  # only this corpus needs the hash and the scanner's decoder to list its works
    from PIL import Image

    from scanner import media
    from scanner.errors import DecodeError
    from scanner.features.content import analyse

    files, links, missing = _photo_files()
    if not files:
        raise SystemExit(f"no photo package installed: apt-get install {PACKAGES['photos']}")
    notes = [f"not installed, left out: {', '.join(missing)}"] if missing else []
    kept: list[tuple[str, Path]] = []
    hashes, sizes, dropped = [], {}, []
    for package, path in files:
        try:
            image = media.load_image(path, max_side=512)
        except DecodeError as exc:
            dropped.append(f"{path.name} ({exc.reason})")
            continue
        featureless = analyse(image).featureless
        if featureless:
            dropped.append(f"{path.name} ({featureless})")
            continue
        with Image.open(path) as im:  # the size before the decode's downscale
            sizes[path] = im.size
        kept.append((package, path))
        hashes.append(imagehash.phash(image))
    names = [_photo_name(package, path) for package, path in kept]
    by_name = [(i, j) for i in range(len(kept)) for j in range(i + 1, len(kept)) if names[i] == names[j]]
    by_hash = [(i, j) for i in range(len(kept)) for j in range(i + 1, len(kept))
               if names[i] != names[j] and hashes[i] - hashes[j] <= PHOTO_MERGE_BITS]
    topics: dict[str, list[Path]] = {}
    for group in _join(len(kept), by_name + by_hash):
        rep = _representative([kept[i][1] for i in group], sizes)
        topics[names[next(i for i in group if kept[i][1] == rep)]] = [rep]
    notes.append(f"{len(files)} pictures from {len(PHOTO_PACKAGES) - len(missing)} packages, "
                 f"{len(dropped)} left out (featureless or undecodable: {', '.join(dropped) or 'none'}), "
                 f"the other {len(kept)} grouped into {len(topics)} works")
    if by_hash:
        joined = "; ".join(f"{names[i]} + {names[j]} ({int(hashes[i] - hashes[j])})" for i, j in by_hash)
        notes.append(f"joined by pHash (<= {PHOTO_MERGE_BITS} bits apart): {joined}")
    return Corpus("photos", PHOTOS, dict(sorted(topics.items())), links, tuple(notes))


def load(name: str) -> Corpus:
    """List an installed corpus by topic.

    Raises
    ------
    SystemExit
        If the corpus is not installed (naming the package).
    """
    if name == "photos":
        return _load_photos()
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

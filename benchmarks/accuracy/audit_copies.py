#!/usr/bin/env python
"""List cross-folder pairs of a corpus that a feature calls copies, for a person to check.

Every work of the corpus is indexed and scanned against that index (through
the command line); a pair of works from *different* topic folders whose
expected chance matches is at most ``--expected`` is a candidate copy. Pairs
already known (:mod:`known_copies`) are marked. Writes ``pairs.tsv`` and
contact sheets (``sheet-N.png``, the pair side by side with its number) under
``--work``; confirmed copies go into ``known_copies.AUDITED`` by hand.

Usage::

    python benchmarks/accuracy/audit_copies.py --corpus wesnoth [--features image-phash]
        [--expected 1e-3] [--work /tmp/likeness-acc/audit]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make ``benchmarks.accuracy`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from PIL import Image, ImageDraw  # noqa: E402

from benchmarks.accuracy import corpora, known_copies  # noqa: E402
from benchmarks.accuracy.run import SCAN_OK, feature_tag, likeness_command, run_timed  # noqa: E402
from scanner.demo import flatten  # noqa: E402


def cross_pairs(results: list[dict], topic: dict[str, str], expected: float) -> dict[tuple[str, str], float]:
    """Cross-topic (path, path) pairs among the candidates at most ``expected``, strongest value kept."""
    pairs: dict[tuple[str, str], float] = {}
    for r in results:
        q = os.path.realpath(r["path"])
        for c in r.get("candidates") or []:
            ref = os.path.realpath(c["ref_path"])
            if ref == q or c["expected"] > expected or topic.get(ref) == topic.get(q):
                continue
            key = tuple(sorted((q, ref)))
            pairs[key] = min(pairs.get(key, 1.0), float(c["expected"]))
    return pairs


def sheets(pairs: list[tuple[str, str, float]], out: Path, per: int = 12, tile: int = 160) -> list[Path]:
    """Contact sheets of the pairs, two pairs a row, numbered."""
    Image.MAX_IMAGE_PIXELS = None
    paths = []
    for s in range(0, len(pairs), per):
        chunk = pairs[s:s + per]
        sheet = Image.new("RGB", (4 * tile, tile * ((len(chunk) + 1) // 2)), "gray")
        draw = ImageDraw.Draw(sheet)
        for i, (a, b, _) in enumerate(chunk):
            x0, y0 = (i % 2) * 2 * tile, (i // 2) * tile
            for j, p in enumerate((a, b)):
                with Image.open(p) as im:
                    im.draft("RGB", (2 * tile, 2 * tile))
                    pic = flatten(im.convert("RGBA"))
                pic.thumbnail((tile - 10, tile - 20))
                sheet.paste(pic, (x0 + j * tile, y0))
            draw.text((x0 + 2, y0 + tile - 17), str(s + i), fill="yellow")
        path = out / f"sheet-{s // per}.png"
        sheet.save(path)
        paths.append(path)
    return paths


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--corpus", choices=("openclipart", "wesnoth"), required=True)
    ap.add_argument("--features", default="image-phash")
    ap.add_argument("--expected", type=float, default=1e-3, help="list pairs at most this many expected chance matches")
    ap.add_argument("--work", type=Path, default=Path("/tmp/likeness-acc/audit"))
    args = ap.parse_args(argv)
    corpus = corpora.load(args.corpus)
    work = args.work.resolve() / f"{args.corpus}-{feature_tag(args.features)}"
    shutil.rmtree(work, ignore_errors=True)
    topic = {}
    for t, files in corpus.topics.items():
        for p in files:
            link = work / "all" / p.relative_to(corpus.root)
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(p)
            topic[str(p)] = t
    cli = likeness_command()
    run_timed(cli + ["index", "build", str(work / "all"), "--index", str(work / "index"),
                     "--features", args.features, "-q"], (0,))
    run_timed(cli + ["scan", str(work / "all"), "--index", str(work / "index"), "--out", str(work / "out"),
                     "--candidates", "3", "-q"], SCAN_OK)
    results = [json.loads(x) for x in (work / "out" / "results.jsonl").read_text().splitlines() if x.strip()]
    pairs = sorted(((a, b, e) for (a, b), e in cross_pairs(results, topic, args.expected).items()),
                   key=lambda t: t[2])
    with open(work / "pairs.tsv", "w") as fh:
        for i, (a, b, e) in enumerate(pairs):
            known = known_copies.KnownCopies(args.corpus, corpus.root, [Path(b)]).copy_of(Path(a))
            ra, rb = (Path(x).relative_to(corpus.root).as_posix() for x in (a, b))
            line = f"{i}\t{e:.2g}\t{ra}\t{rb}\t{known or ''}"
            fh.write(line + "\n")
            print(line)
    made = sheets(pairs, work)
    print(f"{len(pairs)} cross-folder pairs; {work / 'pairs.tsv'}; sheets: {', '.join(map(str, made))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The accuracy harness's evaluation sets: one reference per work."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from PIL import Image

from benchmarks.accuracy import known_copies
from benchmarks.accuracy.sets import pick
from scanner.demo import synthetic_picture


def test_a_half_takes_one_member_of_a_family_of_recoloured_drawings(tmp_path: Path) -> None:
    patterns = tmp_path / "special" / "patterns"
    patterns.mkdir(parents=True)
    tile = synthetic_picture(3, (120, 120))
    tile.save(patterns / "pattern-herringbone-1.png")
    Image.eval(tile, lambda v: 255 - v).save(patterns / "pattern-herringbone-3.png")  # recoloured
    synthetic_picture(4, (120, 120)).save(patterns / "pattern-dots-square-grid-10.png")
    pool = sorted(patterns.iterdir())
    with ThreadPoolExecutor(2) as ex:
        alone, _, _ = pick(pool, 3, ex)
        refs, skipped, _ = pick(pool, 3, ex, work_of=known_copies.work_key("openclipart", tmp_path))
    assert len(alone) == 3
    assert [Path(r["path"]).name for r in refs] == ["pattern-dots-square-grid-10.png", "pattern-herringbone-1.png"]
    assert [Path(s["path"]).name for s in skipped] == ["pattern-herringbone-3.png"]
    assert "pattern-herringbone-1.png" in skipped[0]["error"]
    # as a negative, the other member is a known copy of the reference
    copies = known_copies.KnownCopies("openclipart", tmp_path, [patterns / "pattern-herringbone-1.png"])
    assert "recoloured" in copies.copy_of(patterns / "pattern-herringbone-3.png")
    assert copies.copy_of(patterns / "pattern-dots-square-grid-10.png") is None


def test_every_family_member_and_audited_pair_names_a_distinct_file() -> None:
    for corpus, families in known_copies.FAMILIES.items():
        for group, what in families:
            assert len(set(group)) == len(group) >= 2 and what, (corpus, group)
    for corpus, pairs in known_copies.AUDITED.items():
        assert all(a != b for a, b, _ in pairs), corpus

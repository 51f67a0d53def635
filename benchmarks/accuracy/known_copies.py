"""Works that are copies of each other across topic folders: never used as negatives of each other.

A folder split keeps *most* copies on one side, but both corpora hold copies
across folders: openclipart ships the same drawing as regular files in two
topics (``buildings/homes/home13.png`` and ``computer/.../home13.png``), and
wesnoth derives works from others (a zombie recolour of a portrait, a rider
sprite that contains its mount). A scanner that flags such a "negative" is
right, so these pairs are kept out of the negatives of a half whose references
hold the other side.

Two rules:

* openclipart: the same file name in two folders is the same work (wesnoth
  reuses names for a unit's portrait and its sprite, different pictures, so
  the rule is not applied there);
* :data:`AUDITED`: pairs checked by eye. They come from
  ``benchmarks/accuracy/audit_copies.py`` (every corpus work scanned against an
  index of the whole corpus; cross-folder pairs down to 1e-3 expected chance
  matches with image-phash, looked at side by side). Stock shapes that merely
  look alike (two flags, a globe and a CD) are *not* copies and stay. Add
  pairs here when a stronger feature finds more real derivatives.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

#: Bump when the rules or the list change: cached sets are rebuilt.
VERSION = "known-copies-1"
SAME_NAME_CORPORA = frozenset({"openclipart"})

#: corpus -> (path, path, what) with paths relative to the corpus root.
AUDITED: dict[str, tuple[tuple[str, str, str], ...]] = {
    "openclipart": (
        ("animals/fish/kallisti-grenade_1_nurbl_01.png", "tools/weapons/kallisti-grenade_2_nurbl_01.png",
         "same drawing"),
        ("decorations/diamante_illuminati_ingo_.png", "signs_and_symbols/illuminati_ingoenius_.png",
         "same drawing"),
        ("shapes/clipart_by_nicu_buculei_-_baloon1_04_01.png", "signs_and_symbols/awards/ribbon.png",
         "recoloured drawing"),
        ("shapes/clipart_by_nicu_buculei_-_baloon1_04_02.png", "signs_and_symbols/awards/ribbon.png",
         "recoloured drawing"),
        ("tools/utensile_sega_architetto_01.png", "unsorted/sega_per_legno.png", "recoloured drawing"),
        ("tools/paint_roller_banner_gera_01.png", "unsorted/wet_paint_sign_gerald_g._01.png",
         "same roller, other lettering"),
        ("signs_and_symbols/ex_yves_guillou_01.png", "transportation/roadsigns/EX.png", "same sign"),
        ("plants/trees/evergreen/tree.png", "recreation/holiday/christmas/xmas.png", "same tree, decorated"),
        ("science/provetta_plasma_sangue_a_01.png", "unsorted/provetta.png", "recoloured drawing"),
        ("buildings/homes/pinkhome-simple.png", "computer/icons/lemon-theme/filesystems/pinkhome.png",
         "same house, ornaments added"),
    ),
    "wesnoth": (
        ("attacks/rectangular-shield.png", "icons/shield_tower_merfolk.png", "same icon"),
        ("attacks/heater-shield.png", "icons/shield_wooden.png", "same icon"),
        ("portraits/monsters/gryphon.png", "portraits/undead/zombie-gryphon.png", "recoloured portrait"),
        ("portraits/dwarves/gryphon-rider.png", "portraits/monsters/gryphon.png", "rider painted onto the gryphon"),
        ("portraits/dwarves/gryphon-rider.png", "portraits/undead/zombie-gryphon.png", "same gryphon painting"),
        ("portraits/monsters/woodland_boar.png", "portraits/undead/zombie-boar.png", "recoloured portrait"),
        ("units/dwarves/gryphon-rider.png", "units/monsters/gryphon.png", "the mount inside the rider sprite"),
        ("units/goblins/direwolver.png", "units/monsters/direwolf.png", "the mount inside the rider sprite"),
        ("units/goblins/wolf-rider.png", "units/monsters/wolf.png", "the mount inside the rider sprite"),
    ),
}


class KnownCopies:
    """Which corpus files are known copies of a given set of references.

    Parameters
    ----------
    corpus : corpus name
    root : corpus root (the audited paths are relative to it)
    refs : the references of one half
    """

    def __init__(self, corpus: str, root: Path, refs: Iterable[Path]):
        self.corpus = corpus
        self.root = root
        refs = [Path(r) for r in refs]
        self.ref_names = {r.name.lower(): r for r in refs} if corpus in SAME_NAME_CORPORA else {}
        rel = {self._rel(r): r for r in refs}
        self.pairs: dict[str, tuple[Path, str]] = {}
        for a, b, what in AUDITED.get(corpus, ()):
            for x, y in ((a, b), (b, a)):
                if y in rel:
                    self.pairs[x] = (rel[y], what)

    def _rel(self, path: Path) -> str:
        try:
            return Path(path).relative_to(self.root).as_posix()
        except ValueError:
            return str(path)

    def copy_of(self, path: Path) -> str | None:
        """Why ``path`` is a known copy of one of the references (None if it is not)."""
        ref = self.ref_names.get(Path(path).name.lower())
        if ref is not None and Path(ref) != Path(path):
            return f"same file name as reference {self._rel(ref)}"
        hit = self.pairs.get(self._rel(Path(path)))
        if hit is not None:
            return f"{hit[1]}: audited copy of reference {self._rel(hit[0])}"
        return None

"""Works that are the same work as others: never negatives of each other, never two references.

A folder split keeps *most* copies on one side, but both corpora hold copies
across folders: openclipart ships the same drawing as regular files in two
topics (``buildings/homes/home13.png`` and ``computer/.../home13.png``), and
wesnoth derives works from others (a zombie recolour of a portrait, a rider
sprite that contains its mount). A scanner that flags such a "negative" is
right, so these pairs are kept out of the negatives of a half whose references
hold the other side.

Inside a folder the corpora hold families of one drawing: openclipart's fill
tiles come in recolourings (``pattern-herringbone-1`` to ``-4``), its card
decks share every card's drawing, its Australian states come black and
shaded; wesnoth's ``X+female`` sprites are ``X`` with the head repainted, two
story landscapes come relit or with the fallen painted out, and a few
portraits and sprites differ by an added rider, torch, flag or gear. The
scanner is meant to see through recolouring (hue shifts and grayscale are
hard transforms it must catch), so a copy of one member matched to another is
right, not "wrong work": a half takes at most one member of a family as a
reference (as DISC21's reference set was cleared of near-duplicates), the
first its round robin reaches.

Rules, all joined transitively (:func:`work_key`):

* openclipart: the same file name in two folders is the same work (wesnoth
  reuses names for a unit's portrait and its sprite, different pictures, so
  the rule is not applied there);
* :data:`AUDITED`: pairs checked by eye. They come from
  ``benchmarks/accuracy/audit_copies.py`` (every corpus work scanned against an
  index of the whole corpus; cross-folder pairs down to 1e-3 expected chance
  matches with image-phash, looked at side by side). Stock shapes that merely
  look alike (two flags, a globe and a CD) are *not* copies and stay. Add
  pairs here when a stronger feature finds more real derivatives.
* :data:`FAMILIES`: groups inside a folder checked by eye, every member on
  one contact sheet (found from the "wrong work" lines of the accuracy
  harness, then each family looked at whole). Series that differ in drawing,
  not colour, are *not* families: the dot grids of ``pattern-dots-square-grid``
  (the dots grow), the three dot grids, a card's suits, the
  falcon's poses, wesnoth's unit lines (a longbowman and a master bowman, a
  sergeant and a lieutenant: drawn on one body, each redrawn) and the galleon
  that sails the other way.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterable

#: Bump when the rules or the list change: cached sets are rebuilt.
VERSION = "known-copies-5"
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
        ("plants/trees/evergreen/simple_evergreen_with_highlights_01.png",
         "decorations/lightly_decorated_evergreen_01.png", "same tree, decorated"),
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


def _numbered(stem: str, numbers: Iterable[int]) -> tuple[str, ...]:
    return tuple(f"{stem}-{n}.png" for n in numbers)


_PATTERNS = "special/patterns/pattern-"
_CARDS = "recreation/games/cards"
_RANKS = [*map(str, range(2, 11)), "a", "j", "q", "k"]
_WESNOTH_FEMALE = (
    "dunefolk/burner/burner", "dunefolk/burner/firetrooper", "dunefolk/burner/scorcher",
    "elves-wood/archer", "elves-wood/avenger", "elves-wood/marksman", "elves-wood/ranger",
    "elves-wood/sharpshooter", "human-magi/arch-mage", "human-magi/great-mage", "human-magi/mage",
    "human-magi/red-mage", "human-magi/silver-mage", "human-magi/white-cleric", "human-magi/white-mage",
    "human-outlaws/assassin", "human-outlaws/footpad", "human-outlaws/fugitive", "human-outlaws/outlaw",
    "human-outlaws/rogue", "human-outlaws/thief", "monsters/horse/horse-larger",
    "undead-necromancers/adept", "undead-necromancers/dark-sorcerer", "undead-necromancers/necromancer",
)

#: corpus -> ((paths...), what): each group one work, paths relative to the corpus root.
FAMILIES: dict[str, tuple[tuple[tuple[str, ...], str], ...]] = {
    "openclipart": (
        *((_numbered(_PATTERNS + name, numbers), "one tiling, recoloured") for name, numbers in (
            ("arches-intersecting", range(1, 4)), ("arrow-heads", range(1, 4)), ("arrows-reverse", range(1, 5)),
            ("chevrons", range(1, 4)), ("circles", range(1, 5)), ("crosses", range(1, 4)),
            ("curves-anglo-roman", range(2, 4)), ("deltoids", range(1, 5)), ("diamond-cubes", range(1, 4)),
            ("diamond-harlequin", range(1, 5)), ("diamond-squares", range(1, 5)),
            ("herringbone", range(1, 5)), ("parquet", range(2, 4)), ("puzzle-jigsaw", range(1, 3)),
            ("square-and-diamonds", range(1, 4)), ("squares-and-octagons", range(1, 5)),
            ("squares-angled", range(1, 3)), ("triangle-squares", range(1, 6)), ("triangles", range(1, 3)),
            ("triangles-byzantine", range(1, 3)), ("warning", range(1, 6)), ("x-hatch", range(1, 5)))),
        *(((f"geography/{state}-black.png", f"geography/{state}-shaded.png"), "one outline, black and shaded")
          for state in ("new-south-wales", "northern-territory", "queensland", "south-australia", "tasmania",
                        "victoria", "western-australia")),
        (("geography/svg_globe.png", "geography/svg_globe_blue.png", "geography/svg_globe_green.png"),
         "one globe, recoloured"),
        (_numbered(_PATTERNS + "checkers", range(1, 3)), "one tiling, recoloured"),
        (("plants/bamboo_01.png", "plants/bamboo_danny_allen_r.png"), "one drawing, on another page"),
        (("plants/arbre_modern_jean-victor_01.png", "plants/arbre_modern_bw_jean-vic_01.png"),
         "one drawing, filled and outlined"),
        (("recreation/toys/rubber_duck1_ganson.png", "recreation/toys/rubber_duck2_ganson.png"),
         "one duck, the beak recoloured"),
        (("recreation/toys/rubik_s_cube_petri_lumme_01.png", "recreation/toys/rubik_s_cube_simple_petr_01.png"),
         "one cube, with and without its body"),
        (("science/astronomy/the_moon_dan_gerhards_01.png", "science/astronomy/full_moon_dan_gerhards_01.png"),
         "one moon drawing, relit"),
        (("geography/astronomy/southen_cross_01.png", "geography/astronomy/southen_cross_black_01.png"),
         "one constellation, outlined and filled"),
        (tuple(f"geography/astronomy/{n}.png" for n in (
            "00_moonphases_openclipa_01", "02_waxingcrescent_openc_01", "03_firstquarter_opencli_01",
            "04_waxinggibbous_opencl_01", "05_fullmoon_openclipart_01", "06_waninggibbous_opencl_01",
            "07_lastquarter_openclip_01", "08_waningcrescent_openc_01")),
         "one moon drawing in its phases (the first: all of them side by side)"),
        (tuple(f"unsorted/foglie_{c}.png" for c in ("arancioni", "marroni", "rosse", "verdi")),
         "one drawing, recoloured"),
        *((tuple(f"{_CARDS}/{deck}/{deck}_{card}.png" for deck in ("simple", "white", "bordered", "ornamental")),
           "one card in four decks (other card stock and frame)")
          for card in (*(f"{suit}_{rank}" for suit in "cdhs" for rank in _RANKS), "jk_b", "jk_r")),
    ),
    "wesnoth": (
        *(((f"units/{u}.png", f"units/{u}+female.png"), "one sprite, the head repainted") for u in _WESNOTH_FEMALE),
        (("story/landscape-bridge.jpg", "story/landscape-bridge_sun.jpg"), "one painting, relit"),
        (("story/landscape-battlefield.jpg", "story/landscape-battlefield_nohumans.jpg"),
         "one painting, the fallen painted out"),
        (("units/transport/pirate-galleon.png", "units/transport/transport-galleon.png"), "one ship, another flag"),
        (tuple(f"portraits/nagas/naga-mace_warrior{n}.png" for n in (1, 2, 3)), "one portrait, its gear repainted"),
        (("units/goblins/knight.png", "units/goblins/pillager.png"), "one rider, a torch added"),
        (("portraits/undead/zombie-horse.png", "portraits/undead/zombie-rider.png"), "one horse, a rider added"),
    ),
}


def work_key(corpus: str, root: Path) -> Callable[[Path], str]:
    """A function giving each corpus file a key shared by every file of the same work.

    The rules of this module, joined transitively: the same file name (in
    the corpora whose names say so), :data:`AUDITED` pairs and
    :data:`FAMILIES`. A file no rule names is a work of its own (its key is
    its path relative to ``root``).
    """
    same_name = corpus in SAME_NAME_CORPORA

    def own(rel: str) -> str:
        return Path(rel).name.lower() if same_name else rel

    parent: dict[str, str] = {}

    def find(x: str) -> str:
        while parent.get(x, x) != x:
            x = parent[x]
        return x

    groups = [(a, b) for a, b, _ in AUDITED.get(corpus, ())] + [g for g, _ in FAMILIES.get(corpus, ())]
    for group in groups:
        first = find(own(group[0]))
        for other in group[1:]:
            parent[find(own(other))] = first

    def key(path: Path) -> str:
        try:
            rel = Path(path).relative_to(root).as_posix()
        except ValueError:
            rel = str(path)
        return find(own(rel))

    return key


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
        self.key = work_key(corpus, root)
        self.refs = {self.key(Path(r)): Path(r) for r in refs}
        self.why = {p: what for group, what in (*((g[:2], g[2]) for g in AUDITED.get(corpus, ())),
                                                *FAMILIES.get(corpus, ())) for p in group}

    def _rel(self, path: Path) -> str:
        try:
            return Path(path).relative_to(self.root).as_posix()
        except ValueError:
            return str(path)

    def copy_of(self, path: Path) -> str | None:
        """Why ``path`` is a known copy of one of the references (None if it is not)."""
        ref = self.refs.get(self.key(Path(path)))
        if ref is None or ref == Path(path):
            return None
        why = self.why.get(self._rel(Path(path))) or self.why.get(self._rel(ref))
        if why is None or ref.name.lower() == Path(path).name.lower():
            why = "same file name"
        return f"{why}: same work as reference {self._rel(ref)}"

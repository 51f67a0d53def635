"""Distinctiveness: a match on a code that recurs across the library (a stock shape) counts for less."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from scanner import policy as pol
from scanner.demo import synthetic_picture
from scanner.index import store
from scanner import media
from scanner.pipeline import FeatureOptions, Scanner, build_index


def _flip_bits(code: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    bits = np.unpackbits(code)
    bits[rng.choice(len(bits), n, replace=False)] ^= 1
    return np.packbits(bits)


def test_crowding_penalises_codes_many_works_share() -> None:
    rng = np.random.default_rng(0)
    codes = rng.integers(0, 256, (400, 32), dtype=np.uint8)
    for i in range(1, 25):  # 25 works hold near-identical codes: a stock shape
        codes[i] = _flip_bits(codes[0], 12, rng)
    codes[30] = _flip_bits(codes[31], 12, rng)  # one pair of variants of one picture
    works = np.arange(400)
    null = pol.fit_null(np.random.default_rng(1).normal(0, 1, 10_000), prior=pol.PRIOR_HAMMING_Z)
    rho = pol.crowding(codes, works, null)
    assert rho.shape == (400,) and rho.dtype == np.float32 and np.all(rho >= 1)
    assert np.all(rho[:25] > 10)  # the stock shape: its matches are far weaker evidence
    assert 1 < rho[30] < 3 and 1 < rho[31] < 3  # variants: a small penalty
    assert np.all(rho[40:] == 1)  # distinctive codes keep their full weight
    # the same work's own codes never crowd it
    rho_same = pol.crowding(codes[:25], np.zeros(25, np.int64), null)
    assert np.all(rho_same == 1)
    # unusable codes are neither counted nor penalised
    usable = np.ones(400, bool)
    usable[1:25] = False
    assert pol.crowding(codes, works, null, usable=usable)[0] < 2


def _star(i: int, size: int = 256) -> Image.Image:
    """A five-pointed star, slightly different per work: stock clip art."""
    im = Image.new("RGB", (size, size), "white")
    c, r_out, r_in = size / 2, size * (0.42 + 0.003 * i), size * 0.17
    pts = []
    for k in range(10):
        r = r_out if k % 2 == 0 else r_in
        a = np.pi / 2 + k * np.pi / 5 + 0.01 * i
        pts.append((c + r * np.cos(a), c - r * np.sin(a)))
    ImageDraw.Draw(im).polygon(pts, fill=(20, 20, 20))
    return im


def test_index_keeps_crowding_and_scans_weigh_matches_by_it(tmp_path: Path) -> None:
    refs = tmp_path / "refs"
    refs.mkdir()
    for i in range(12):
        _star(i).save(refs / f"star{i}.png")
    for i in range(12):
        synthetic_picture(700 + i).save(refs / f"pic{i}.png")
    index = tmp_path / "index"
    build_index([refs], index, options=FeatureOptions(names=["image-phash"]))
    with store.open_index(index) as ix:
        rho = ix.row_weights("image-phash")
        rows = np.asarray(ix.rows("image-phash"))
        paths = {w.id: Path(w.path).name for w in ix.works().values()}
    assert rho is not None and rho.shape == (len(rows),)
    star_rows = np.array([paths[w].startswith("star") for w in rows[:, 0]])
    assert np.median(rho[star_rows]) > 3 and rho[~star_rows].max() < 1.5
    assert store.verify_index(index)  # the weights are a checksummed index file like the others

    copies = tmp_path / "copies"
    copies.mkdir()
    Image.open(refs / "star3.png").resize((200, 200)).save(copies / "star.png")
    Image.open(refs / "pic3.png").resize((200, 200)).save(copies / "pic.png")
    inputs = [media.Input(p, "image") for p in sorted(copies.iterdir())]

    def best(crowding: bool) -> dict[str, float]:
        scanner = Scanner(index, options=FeatureOptions(names=["image-phash"]))
        if not crowding:
            scanner.index.row_weights = lambda feature: None
        try:
            return {Path(r.path).name: r.best_expected["image-phash"] for r in scanner.check_paths(inputs)}
        finally:
            scanner.close()

    weighed, plain = best(True), best(False)
    # the distinctive picture's match keeps its weight; the star's carries the crowd of stars
    assert weighed["pic.png"] == plain["pic.png"]
    assert weighed["star.png"] > 3 * plain["star.png"]


def test_fused_rate_follows_the_correlation() -> None:
    both = np.array([[1e-3, 1e-3]])
    independent = pol.fused_rate(both, 0.0)[0]
    correlated = pol.fused_rate(both, 0.6)[0]
    same = pol.fused_rate(both, 1.0)[0]
    # two moderate pieces of evidence are stronger together, less so the more they move together
    assert independent < correlated < same
    assert same == pytest.approx(1e-3, rel=0.05)
    assert independent < 1e-4
    # a feature without evidence (rate 1) only dilutes
    assert pol.fused_rate(np.array([[1e-6, 1.0]]), 0.0)[0] > 1e-6


def test_score_correlation_is_a_clipped_rank_correlation() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=500)
    assert pol.score_correlation(x, x ** 3) == pytest.approx(1.0)
    assert pol.score_correlation(x, -x) == 0.0
    assert abs(pol.score_correlation(x, rng.normal(size=500))) < 0.15
    assert pol.score_correlation(x[:10], x[:10]) == pol.PRIOR_FUSION_CORRELATION


def test_decide_treats_fused_copy_evidence_as_copy_evidence() -> None:
    policy = pol.Policy()
    fused = {"feature": "image-local+image-phash", "expected": 1e-5, "licensed": False, "featureless_ref": None,
             "fused_from": {"image-local": 5e-3, "image-phash": 8e-3}}
    assert pol.decide([fused], policy)[0] == "flagged"
    semantic = {**fused, "feature": "image-clip+image-phash", "fused_from": {"image-clip": 1e-3, "image-phash": 8e-3}}
    assert pol.decide([semantic], policy)[0] == "review"

"""image-local: ORB keypoints, voting, geometric verification, landmark storage and null."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps

from scanner import policy as pol
from scanner.demo import flatten, synthetic_picture
from scanner.features import WEIGHT_FREE, make
from scanner.features.local import KEYPOINT_DTYPE, extract
from scanner.index import store, writer
from scanner.search import binary_codes
from scanner.match import landmarks
from scanner.match.landmarks import landmark_votes
from scanner.pipeline import FeatureOptions, build_index, check, remove_from_index, scan

FEATURES = ["image-phash", "image-local"]


@pytest.fixture(scope="module")
def local_index(refs_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A phash + local index of the ten shared references (do not modify)."""
    index = tmp_path_factory.mktemp("local") / "index"
    build_index([refs_dir], index, options=FeatureOptions(names=FEATURES), metadata=refs_dir.parent / "meta.csv")
    return index


def _ref(refs_dir: Path, i: int) -> Image.Image:
    return flatten(Image.open(refs_dir / f"ref{i}.png"))


def _local(result) -> list[dict]:
    return [m for m in result.matches if m["feature"] == "image-local"]


def _pasted_low_right(local_index: Path, refs_dir: Path, tmp_path: Path, ground: Image.Image, i: int,
                      width: int, margin: tuple[int, int]) -> tuple:
    """Reference ``i`` at ``width`` pixels pasted into ``ground`` ``margin`` (x, y) from its
    bottom-right corner, checked: (result, its image-local matches of that work)."""
    ref = _ref(refs_dir, i)
    small = ref.resize((width, round(width * ref.height / ref.width)))
    ground.paste(small, (ground.width - width - margin[0], ground.height - small.height - margin[1]))
    ground.save(tmp_path / "pasted.png")
    result, _ = check(tmp_path / "pasted.png", local_index)
    return result, [m for m in _local(result) if Path(m["ref_path"]).name == f"ref{i}.png"]


def test_keypoints_of_both_views_are_deterministic() -> None:
    pic = synthetic_picture(0)
    feat = make("image-local")
    a, b = feat.prepare(pic), feat.prepare(pic.copy())
    assert a.dtype == KEYPOINT_DTYPE and np.array_equal(a, b)
    # as given, mirrored, and the four tiles of a picture at least TILE_MIN_SIDE wide
    assert set(np.unique(a["view"])) == {0, 1, 2, 3, 4, 5}
    assert 100 < (a["view"] == 0).sum() <= feat.n_features
    assert set(np.unique(feat.prepare(pic.resize((160, 120)))["view"])) == {0, 1, 2, 3, 4, 5}
    tiny = feat.prepare(pic.resize((96, 72)))
    assert set(np.unique(tiny["view"])) == {0, 1}  # a tile of it would be a few dozen pixels
    assert ((a["xy"] >= 0) & (a["xy"] <= 1)).all()
    ref = feat.prepare_reference(pic)
    assert (ref["view"] == 0).all() and len(ref) > (a["view"] == 0).sum()
    codes, extra = feat.index_rows(ref)
    assert codes.shape == (len(ref), 32) and codes.dtype == np.uint8
    assert extra["xy"].shape == extra["size"].shape == (len(ref), 2)
    # a mirrored picture's mirrored view is the picture's own view, keypoint for keypoint
    m = feat.prepare(ImageOps.mirror(pic))
    assert abs(int((m["view"] == 1).sum()) - int((a["view"] == 0).sum())) <= 5


def test_featureless_pictures_have_no_keypoints(local_index: Path, tmp_path: Path) -> None:
    flat = Image.new("RGB", (300, 200), (200, 30, 30))
    assert len(extract(flat)) == 0
    grad = Image.fromarray(np.tile(np.linspace(0, 2, 300, dtype=np.uint8), (200, 1))).convert("RGB")
    assert len(extract(grad)) == 0
    grad.save(tmp_path / "near-uniform.png")
    result, _ = check(tmp_path / "near-uniform.png", local_index)
    assert result.verdict == "clear" and not _local(result)


def test_half_crop_is_flagged_with_its_work_and_the_cropped_part(local_index: Path, refs_dir: Path,
                                                                 tmp_path: Path) -> None:
    ref = _ref(refs_dir, 0)
    w, h = ref.size
    ref.crop((w // 4, h // 4, w // 4 + w // 2, h // 4 + h // 2)).save(tmp_path / "crop.png")
    result, _ = check(tmp_path / "crop.png", local_index)
    assert result.verdict == "flagged", result.reason
    m = result.matches[0]
    assert m["feature"] == "image-local" and Path(m["ref_path"]).name == "ref0.png"
    assert m["expected"] <= 1e-3 and m["raw_kind"] == "inliers" and m["raw"] == m["locator"]["inliers"]
    loc = m["locator"]
    assert np.allclose(loc["ref_box"], [0.25, 0.25, 0.75, 0.75], atol=0.03), loc
    assert loc["query_share"] > 0.95 and 0.2 < loc["ref_share"] < 0.3 and not loc["mirrored"]
    # the heat map of matched keypoints: all over the crop, only the middle of the work
    q, r = (np.array([int(c) for c in loc[k]]).reshape(8, 8) for k in ("query_heat", "ref_heat"))
    assert (q > 0).sum() >= 12 and r[:2].sum() == r[-2:].sum() == r[:, :2].sum() == r[:, -2:].sum() == 0
    assert r[2:6, 2:6].max() == 9
    from scanner.pipeline import scan

    scan([tmp_path / "crop.png"], local_index, out_dir=tmp_path / "res", candidates=3)  # the report draws it
    assert (tmp_path / "res" / "report.html").read_text().count('class="heat"') == (q > 0).sum() + (r > 0).sum()
    # boxes are built for what a result shows, matches and candidates alike, and nothing else rides along
    line = json.loads((tmp_path / "res" / "results.jsonl").read_text().splitlines()[0])
    local = [m for m in line["matches"] + line["candidates"] if m["feature"] == "image-local"]
    assert local and all("query_box" in m["locator"] and "ref_heat" in m["locator"] for m in local)
    assert not any(k.startswith("_") for m in line["matches"] + line["candidates"] for k in m)


def test_work_pasted_into_another_picture_is_flagged_with_the_pasted_area(local_index: Path, refs_dir: Path,
                                                                           tmp_path: Path) -> None:
    ref = _ref(refs_dir, 4)
    ground = synthetic_picture(900, (640, 480))
    small = ref.resize((288, round(288 * ref.height / ref.width)))
    ground.paste(small, (300, 150))
    ground.save(tmp_path / "collage.png")
    result, _ = check(tmp_path / "collage.png", local_index)
    assert result.verdict == "flagged", result.reason
    m = _local(result)[0]
    assert Path(m["ref_path"]).name == "ref4.png"
    pasted = [300 / 640, 150 / 480, (300 + small.width) / 640, (150 + small.height) / 480]
    assert np.allclose(m["locator"]["query_box"], pasted, atol=0.03), m["locator"]
    assert m["locator"]["ref_share"] > 0.9


def test_small_work_in_a_busy_picture_is_found_through_the_tiles(local_index: Path, refs_dir: Path,
                                                                  tmp_path: Path) -> None:
    """A work at a third of the width of a detailed picture: few of the whole view's
    keypoints fall on it, and it sits at a scale the pyramid barely reaches."""
    from scanner.features import local

    ref = _ref(refs_dir, 2)
    ground = synthetic_picture(901, (1000, 1000))
    small = ref.resize((330, round(330 * ref.height / ref.width)))
    ground.paste(small, (620, 610))
    ground.save(tmp_path / "busy.png")
    result, _ = check(tmp_path / "busy.png", local_index)
    found = [m for m in _local(result) if Path(m["ref_path"]).name == "ref2.png"]
    assert found and result.verdict == "flagged", result.reason
    x0, y0 = found[0]["locator"]["query_box"][:2]
    assert x0 > 0.5 and y0 > 0.5  # the box is where the work was pasted
    # without the tiles the whole view alone does not make the case
    feat = make("image-local")
    whole = local.extract(flatten(Image.open(tmp_path / "busy.png")), mirror=True, n_features=feat.n_features)
    assert set(np.unique(whole["view"])) == {0, 1}


def test_spread_keypoints_give_every_part_of_the_picture_a_share() -> None:
    """A busy half with every strong corner and a flat half with weak ones:
    the strongest alone would all be the busy half's; the extra ones are dealt by cell."""
    from scanner.features.local import spread_keypoints

    rng = np.random.default_rng(0)
    busy = np.c_[rng.uniform(0, 256, 1000), rng.uniform(0, 512, 1000)]
    flat = np.c_[rng.uniform(256, 512, 100), rng.uniform(0, 512, 100)]
    xy, response = np.r_[busy, flat], np.r_[rng.uniform(10, 20, 1000), rng.uniform(1, 5, 100)]
    kept = spread_keypoints(xy, response, (512, 512), 200, 100, grid=4)
    assert len(kept) == 300 and len(np.unique(kept)) == 300
    assert np.all(np.diff(response[kept]) <= 0)                      # strongest first
    assert np.isin(np.argsort(-response)[:200], kept).all()          # the strongest are all kept
    assert (xy[kept, 0] >= 256).sum() >= 40                           # the flat half has its share of the extra
    assert (xy[np.argsort(-response)[:300], 0] >= 256).sum() == 0     # which strength alone gives it not
    assert sorted(spread_keypoints(xy[:50], response[:50], (512, 512), 200, 100)) == list(range(50))


def test_tiles_of_a_tall_or_wide_picture_run_along_it() -> None:
    """Tiles near square: 2 x 2 on a square box, a row of four along a long one, covering it."""
    from scanner.features.local import tile_boxes

    for box, shape in (((0, 0, 400, 400), (2, 2)), ((0, 0, 350, 1000), (1, 4)), ((20, 10, 1020, 410), (4, 1))):
        tiles = np.array(tile_boxes(box))
        assert len(tiles) == 4
        assert (len(np.unique(tiles[:, 0])), len(np.unique(tiles[:, 1]))) == shape
        assert tiles[:, :2].min(axis=0).tolist() == list(box[:2]) and tiles[:, 2:].max(axis=0).tolist() == list(box[2:])
        sides = tiles[:, 2:] - tiles[:, :2]
        assert np.all(np.maximum(sides[:, 0], sides[:, 1]) <= 1.5 * np.minimum(sides[:, 0], sides[:, 1]))
        assert np.all(tiles[1:, :2].sum(axis=1) < tiles[:-1, 2:].sum(axis=1))  # neighbours overlap


def test_flat_work_pasted_into_a_busy_picture_gets_keypoints_in_the_tiles(local_index: Path, refs_dir: Path,
                                                                          tmp_path: Path) -> None:
    """Clip art (flat colours) at half the width of a picture of coarse noise:
    every strong corner of the picture is the noise's, and only keypoints
    spread over each tile put some on the work."""
    rng = np.random.default_rng(1)
    ground = Image.fromarray(rng.integers(0, 256, (600 // 16, 800 // 16, 3), dtype=np.uint8)).resize(
        (800, 600), Image.NEAREST)
    result, found = _pasted_low_right(local_index, refs_dir, tmp_path, ground, 3, 400, (30, 30))
    assert found and result.verdict == "flagged", result.reason
    assert found[0]["locator"]["query_box"][0] > 0.4  # where the work was pasted


def test_work_pasted_low_in_a_tall_picture_is_found_through_a_row_of_tiles(local_index: Path, refs_dir: Path,
                                                                          tmp_path: Path) -> None:
    """A work at 45% of the width of a picture three times as tall as wide: a
    2 x 2 tile (0.65 of the height) would show it no larger than the whole
    view of a square picture; a row of four tiles down the picture does."""
    result, found = _pasted_low_right(local_index, refs_dir, tmp_path, synthetic_picture(900, (340, 1000)), 0, 153,
                                      (10, 40))
    assert found and result.verdict == "flagged", result.reason
    assert found[0]["locator"]["query_box"][1] > 0.75  # near the bottom, where it was pasted


def test_work_in_a_small_collage_is_found_through_the_tiles(local_index: Path, refs_dir: Path,
                                                            tmp_path: Path) -> None:
    """A 240-pixel picture with a work pasted at 38% of its width: small
    pictures get tiles too (a tile of it, enlarged to the working side, still
    shows the pasted work larger than the whole view does)."""
    from scanner.features import local

    ground = synthetic_picture(911, (240, 240))
    result, found = _pasted_low_right(local_index, refs_dir, tmp_path, ground, 5, 91, (8, 8))
    assert set(np.unique(local.extract(ground, mirror=True, tiles=True)["view"])) == {0, 1, 2, 3, 4, 5}
    assert found and result.verdict == "flagged", result.reason
    x0, y0 = found[0]["locator"]["query_box"][:2]
    assert x0 > 0.5 and y0 > 0.5  # where the work was pasted


def test_work_in_a_small_scene_on_a_wide_page_keeps_its_detail(local_index: Path, refs_dir: Path,
                                                                tmp_path: Path) -> None:
    """A 400-pixel scene on a 1000-pixel white page, the work at 40% of the
    scene: the content box is found inside the margin, and only a decode at
    twice the keypoints' working side leaves it enough pixels for tiles."""
    from scanner.features import local
    from scanner.media import load_image

    ref = _ref(refs_dir, 2)
    scene = synthetic_picture(902, (400, 400))
    small = ref.resize((160, round(160 * ref.height / ref.width)))
    scene.paste(small, (400 - 160 - 20, 400 - small.height - 20))
    page = Image.new("RGB", (1000, 1000), "white")
    page.paste(scene, (300, 300))
    page.save(tmp_path / "page.png")
    result, _ = check(tmp_path / "page.png", local_index)
    found = [m for m in _local(result) if Path(m["ref_path"]).name == "ref2.png"]
    assert found and result.verdict == "flagged", result.reason
    x0, y0, x1, y1 = found[0]["locator"]["query_box"]
    assert 0.5 < x0 and 0.5 < y0 and x1 < 0.71 and y1 < 0.71  # where the work sits on the page
    # decoded at 512, the scene is 205 pixels: no tiles, and the work 82 pixels wide
    at_512 = local.extract(load_image(tmp_path / "page.png", max_side=512), mirror=True)
    assert set(np.unique(at_512["view"])) == {0, 1}


def test_mirrored_copy_is_found(local_index: Path, refs_dir: Path, tmp_path: Path) -> None:
    ImageOps.mirror(_ref(refs_dir, 5)).crop((0, 0, 260, 240)).save(tmp_path / "mirror.png")
    result, _ = check(tmp_path / "mirror.png", local_index)
    assert result.verdict == "flagged", result.reason
    m = _local(result)[0]
    assert Path(m["ref_path"]).name == "ref5.png" and m["locator"]["mirrored"]


def test_unrelated_pictures_give_no_local_evidence(local_index: Path, tmp_path: Path) -> None:
    for seed in range(600, 612):
        synthetic_picture(seed, (400, 300)).save(tmp_path / f"new{seed}.png")
    results = []
    summary = scan([tmp_path], local_index, on_result=results.append)
    assert summary.counts["clear"] == 12, summary.counts
    assert not any(_local(r) for r in results)


def test_landmarks_round_trip_through_the_store(refs_dir: Path, tmp_path: Path) -> None:
    index = tmp_path / "index"
    build_index([refs_dir], index, options=FeatureOptions(names=["image-local"]))
    with store.open_index(index) as a, store.open_index(index) as b:
        assert np.array_equal(a.codes("image-local"), b.codes("image-local"))
        assert np.array_equal(a.rows("image-local"), b.rows("image-local"))
        la, lb = a.landmarks("image-local"), b.landmarks("image-local")
        assert sorted(la) == ["size", "xy"] and all(np.array_equal(la[k], lb[k]) for k in la)
        before = {k: v.copy() for k, v in la.items()}
        rows_before = np.array(a.rows("image-local"))
        assert a.null["image-local"]["kind"] == "inliers"
    assert store.verify_index(index)["files"] == 4  # catalog, faiss, rows, npz

    more = tmp_path / "more"
    more.mkdir()
    for s in (50, 51):
        synthetic_picture(s).save(more / f"m{s}.png")
    assert build_index([more], index, create=False).added == 2
    assert remove_from_index(index, [2]) == [2]
    with store.open_index(index) as idx:
        rows, lm = idx.rows("image-local"), idx.landmarks("image-local")
        assert len(rows) == len(lm["xy"]) == len(lm["size"]) == idx.faiss_index("image-local").ntotal
        assert 2 not in set(rows[:, 0]) and {11, 12} <= set(rows[:, 0])
        kept = rows_before[:, 0] != 2
        n = int(kept.sum())  # the older works' rows come first, in their order
        assert np.array_equal(rows[:n], rows_before[kept])
        assert np.array_equal(lm["xy"][:n], before["xy"][kept])
    store.verify_index(index)


def test_large_landmark_sets_use_an_inverted_file() -> None:
    import faiss

    rng = np.random.default_rng(0)
    codes = rng.integers(0, 256, (landmarks.IVF_FROM + 100, 32), dtype=np.uint8)
    index = landmarks.binary_index(codes)
    assert isinstance(index, faiss.IndexBinaryIVF) and index.ntotal == len(codes)
    assert np.array_equal(binary_codes(index), codes)
    D, I = index.search(codes[:50], 1)
    assert (D[:, 0] == 0).all() and np.array_equal(I[:, 0], np.arange(50))


def test_a_large_inverted_file_picks_its_lists_through_a_coarse_one(monkeypatch) -> None:
    """Many lists: the lists a descriptor probes are found through an inverted file over the
    centroids; the same lists, one more probed, nearly the same neighbours, the stored index untouched."""
    import faiss

    from scanner import search

    rng = np.random.default_rng(0)

    def flipped(x: np.ndarray, p: float) -> np.ndarray:
        return x ^ np.packbits(rng.random((len(x), 256)) < p, axis=1)

    # descriptors gather around shapes, and shapes around kinds of shape: the structure lists
    # follow (uniform random codes have none, and no inverted file finds their neighbours)
    kinds = rng.integers(0, 256, (40, 32), dtype=np.uint8)
    shapes = flipped(kinds[rng.integers(0, 40, 600)], 0.12)
    codes = flipped(shapes[rng.integers(0, 600, landmarks.IVF_FROM + 100)], 0.08)
    index = landmarks.binary_index(codes)
    assert search.coarse_probing(index) is index  # too few lists (nlist 724) to pay
    monkeypatch.setattr(search, "COARSE_FROM", 256)
    fast = search.coarse_probing(index)
    assert fast is not index and isinstance(fast, faiss.IndexBinaryIVF)
    assert (fast.nlist, fast.ntotal) == (index.nlist, index.ntotal) and fast.nprobe == search.COARSE_LIST_PROBES
    assert isinstance(faiss.downcast_IndexBinary(index.quantizer), faiss.IndexBinaryFlat)
    # a copy with a few bits flipped: the probed lists must still hold its original
    noisy = flipped(codes[:400], 0.03)
    _, want = index.search(noisy, 1)
    _, got = fast.search(noisy, 1)
    # the flat quantizer's own recall is the yardstick
    found, found_fast = (want[:, 0] == np.arange(400)).mean(), (got[:, 0] == np.arange(400)).mean()
    assert found > 0.8 and found_fast > found - 0.05, (found, found_fast)
    del index  # the fast one holds the lists' owner
    _, again = fast.search(noisy, 1)
    assert np.array_equal(again, got)


def test_inlier_null_fit_and_expected_chance() -> None:
    rng = np.random.default_rng(0)
    chance = np.concatenate([np.zeros(200), 3 + rng.geometric(0.45, 1000) - 1, rng.integers(50, 300, 60)])
    null = pol.fit_inlier_null(chance, candidates=6)
    assert "prior" not in null and null["threshold"] >= 3
    e = pol.expected_inliers(np.array([0, 5, 10, 20, 40, 80]), null)
    assert e[0] == 6 and (np.diff(e) <= 0).all() and e[-1] < 1e-6
    # the related works in the top 5% do not drag the tail out
    assert pol.expected_inliers(40, null) < 1e-3
    few = pol.fit_inlier_null(chance[:20], candidates=6)
    assert few["prior"] and few["threshold"] == pol.PRIOR_INLIERS["threshold"]


def test_image_local_is_a_default_weight_free_feature() -> None:
    assert "image-local" in WEIGHT_FREE
    feat = make("image-local")
    assert feat.kind == "landmark" and feat.model_id is None and feat.identity()["dim"] == 256


def test_votes_weigh_stock_descriptors_little() -> None:
    rows = np.array([[w, 0] for w in range(1, 6)], np.int32)  # row r belongs to work r + 1
    # keypoint 0 is near one work only; keypoint 1 is equally near four works (a stock shape)
    D = np.array([[5, 40, 50, 60], [10, 12, 13, 14]])
    I = np.array([[0, 1, 2, 3], [1, 2, 3, 4]])
    works, views, votes = landmark_votes(D, I, rows, np.zeros(2, np.uint8))
    got = dict(zip(works.tolist(), votes.tolist()))
    assert got == {1: 1.0, 2: 0.25, 3: 0.25, 4: 0.25, 5: 0.25} and (views == 0).all()
    # a reference queried against its own index passes over its own rows: keypoint 0's
    # nearest other work is then work 2
    works, _, votes = landmark_votes(D, I, rows, exclude=1)
    assert dict(zip(works.tolist(), votes.tolist())) == {2: 1.25, 3: 0.25, 4: 0.25, 5: 0.25}



def test_build_measures_how_hash_and_geometry_evidence_correlate(local_index: Path) -> None:
    from scanner.index.store import open_index

    fusion = open_index(local_index).manifest["fusion"]
    assert [f["features"] for f in fusion] == [["image-local", "image-phash"]]
    assert 0.0 <= fusion[0]["correlation"] <= 1.0 and fusion[0]["pairs"] >= 0


def test_heat_grid_marks_the_cells_where_points_lie() -> None:
    from scanner.match.geometry import heat_grid

    grid = heat_grid(np.array([[0.05, 0.05], [0.06, 0.07], [0.95, 0.5]]))
    assert len(grid) == 64 and grid[0] == "9" and grid[4 * 8 + 7] == "5"
    assert grid.count("0") == 62
    assert heat_grid(np.zeros((0, 2))) == "0" * 64


def test_an_inverted_file_keeps_its_codes_memory_mapped_beside_it(tmp_path: Path) -> None:
    """Reading codes back out of an inverted file walks every list (a second per
    million codes); the store keeps a plain copy that opens memory-mapped."""
    rng = np.random.default_rng(1)
    n = landmarks.IVF_FROM + 500
    codes = rng.integers(0, 256, (n, 32), dtype=np.uint8)
    identity = make("image-local").identity()
    path = tmp_path / "index"
    with writer.IndexWriter(path, create=True) as w:
        wid = w.add_work(path="w.png", sha256="0" * 64, modality="image")
        w.add_vectors(identity, codes, np.full(n, wid), extra={"xy": np.zeros((n, 2), np.float32),
                                                                "size": np.ones((n, 2), np.float32)})
    with store.open_index(path) as idx:
        got = idx.codes("image-local")
        assert isinstance(got, np.memmap) and np.array_equal(got, codes)
        assert "image-local.codes.npy" in idx.manifest["files"]  # checksummed with the rest
    store.verify_index(path)
    # a modified copy is refused like any index file
    with open(path / "image-local.codes.npy", "r+b") as fh:
        fh.seek(-1, 2)
        fh.write(b"\x00" if codes[-1, -1] else b"\x01")
    with pytest.raises(Exception, match="codes.npy"):
        store.verify_index(path)


def test_work_rows_from_spans_and_from_a_map() -> None:
    """A work's keypoint rows: spans when rows are in work order (read in blocks), a map otherwise."""
    from scanner.match.base import work_spans as _work_spans
    from scanner.match.landmarks import LandmarkTable

    rng = np.random.default_rng(3)
    for trial in range(100):
        n = int(rng.integers(0, 80))
        col = np.sort(rng.integers(0, 12, n)).astype(np.int32)
        if trial % 3 == 0 and n > 2:
            col = rng.permutation(col)  # works removed and added again
        rows = np.stack([col, np.arange(n, dtype=np.int32)], axis=1)
        table = LandmarkTable(rows, np.zeros((n, 32), np.uint8), np.zeros((n, 2), np.float32),
                              np.zeros((n, 2), np.float32))
        for w in range(-1, 14):
            np.testing.assert_array_equal(np.sort(table.work_rows(w)), np.flatnonzero(col == w))
        spans = _work_spans(col, block=int(rng.integers(1, 9)))
        assert (spans is None) == bool(np.any(np.diff(col) < 0))
        if spans is not None:
            works, bounds = spans
            assert len(np.unique(works)) == len(works)
            for w, lo, hi in zip(works, bounds[:-1], bounds[1:]):
                assert hi > lo and np.all(col[lo:hi] == w)


def _lattice(size: int = 120, period: int = 40) -> Image.Image:
    """A fill tile: one arrow head drawn on every cell of a 3 x 3 lattice."""
    from PIL import ImageDraw

    im = Image.new("RGB", (size, size), "white")
    draw = ImageDraw.Draw(im)
    for y in range(0, size, period):
        for x in range(0, size, period):
            draw.polygon([(x + 6, y + 8), (x + 32, y + 20), (x + 6, y + 32), (x + 14, y + 20)], fill=(20, 40, 160))
    return im


def test_repeated_elements_are_matched_by_the_repeated_statistic() -> None:
    """Every arrow of a lattice looks like every other, so Lowe's ratio test
    drops nearly all keypoints; keeping the alike ones as hypotheses lets one
    transform pick the right ones, each keypoint counted once."""
    from scanner.match.landmarks import LandmarkTable, landmark_detail, verify_landmarks

    feat = make("image-local")
    codes, extra = feat.index_rows(feat.prepare_reference(_lattice()))
    rows = np.stack([np.zeros(len(codes), np.int32), np.arange(len(codes), dtype=np.int32)], 1)
    table = LandmarkTable(rows, codes, extra["xy"], extra["size"])
    query = feat.prepare(_lattice().rotate(9, resample=Image.Resampling.BICUBIC, fillcolor="white"))

    lowe, several = (verify_landmarks(query, [(0, 0)], table, feature="image-local", statistics=[stat])
                     for stat in ("unique", "repeated"))
    n_lowe = int(lowe[0].raw) if lowe else 0
    assert several and several[0].raw >= 40 and several[0].raw >= 3 * max(n_lowe, 1), (lowe, several)
    assert several[0].detail["statistic"] == "repeated" and all(e.detail["statistic"] == "unique" for e in lowe)
    assert several[0].detail["inliers"] == several[0].raw <= min((query["view"] == 0).sum(), len(codes))
    # a scan leaves the boxes for the matches it shows: built later, they are the same
    later = verify_landmarks(query, [(0, 0)], table, feature="image-local", statistics=["repeated"], boxes=False)
    assert later[0].detail == {"inliers": several[0].raw, "statistic": "repeated"}
    assert landmark_detail(later[0]) == several[0].detail and landmark_detail(several[0]) is several[0].detail


def test_expected_landmark_scores_each_statistic_by_its_own_null() -> None:
    unique = {**pol.PRIOR_INLIERS, "candidates": 6}
    repeated = {**pol.PRIOR_REPEATED_INLIERS, "candidates": 6}
    both = {"unique": unique, "repeated": repeated}
    got = pol.expected_landmark(np.array([12, 12, 30]), np.array(["unique", "repeated", "repeated"]), both)
    # a scan keeps the more significant of two statistics: each is counted twice (Bonferroni)
    assert got[0] == pytest.approx(2 * pol.expected_inliers(12, unique))
    assert got[1] == pytest.approx(2 * pol.expected_inliers(12, repeated)) and got[1] > got[0] > got[2] / 100
    # an index with the unique null alone (built before the repeated one existed) is scored as it was
    alone = pol.expected_landmark(np.array([12]), np.array(["unique"]), {"unique": unique})
    assert alone[0] == pytest.approx(pol.expected_inliers(12, unique))


def test_fill_tile_copy_is_found_by_the_repeated_statistic(refs_dir: Path, tmp_path: Path) -> None:
    """A rotated copy of a fill tile: Lowe's test keeps too few keypoints to make
    a case, the repeated statistic (with its own null, fitted at build) does."""
    refs = tmp_path / "refs"
    refs.mkdir()
    for i in range(6):
        _ref(refs_dir, i).save(refs / f"ref{i}.png")
    _lattice().save(refs / "tile.png")
    build_index([refs], tmp_path / "index", options=FeatureOptions(names=FEATURES))
    null = store.open_index(tmp_path / "index").null["image-local"]
    assert set(null["repeated"]) >= {"threshold", "p_threshold", "scale"}
    _lattice().rotate(9, resample=Image.Resampling.BICUBIC, fillcolor="white").save(tmp_path / "copy.png")
    result, _ = check(tmp_path / "copy.png", tmp_path / "index")
    assert result.verdict in ("review", "flagged"), result.reason
    m = _local(result)[0]
    assert Path(m["ref_path"]).name == "tile.png" and m["locator"]["statistic"] == "repeated"
    assert m["raw"] >= 40 and len({(x["work_id"], x["feature"]) for x in result.matches}) == len(result.matches)
    from scanner.report.words import describe_match

    assert "repeated elements" in describe_match(m)["words"]  # the report says how the keypoints were paired


def test_pictures_are_decoded_at_the_largest_side_the_featurizers_ask_for() -> None:
    from scanner.features.local import WORK_SIDE
    from scanner.pipeline import DECODE_SIDE, decode_side

    # keypoints are found at WORK_SIDE on a part of the picture (its content
    # box, a tile): the decode keeps twice that when image-local is indexed
    assert decode_side([make("image-phash")]) == DECODE_SIDE
    assert decode_side([make("image-phash"), make("image-local")]) == 2 * WORK_SIDE > DECODE_SIDE


def test_a_turned_copy_spends_its_keypoints_on_the_work_not_on_the_ground(local_index: Path, refs_dir: Path,
                                                                          tmp_path: Path) -> None:
    """A work turned 11 degrees, its corners filled in a plain colour: the
    edges between picture and ground are strong corners that belong to no
    work. The query is described set upright, so no keypoint lies on them,
    and positions still map onto the turned copy (the match is drawn there)."""
    from scanner.features.content import analyse

    turned = _ref(refs_dir, 3).rotate(11, resample=Image.Resampling.BICUBIC, expand=True,
                                      fillcolor=(40, 90, 200))
    content = analyse(turned)
    assert content.turn is not None
    to_turned = np.asarray(content.turn.matrix)
    w, h = content.turn.size

    def edge_distance(kp: np.ndarray) -> np.ndarray:
        px = kp["xy"] * np.array([turned.width, turned.height])
        mirrored = kp["view"] == 1
        px[mirrored, 0] = turned.width - px[mirrored, 0]
        up = (px - to_turned[:, 2]) @ to_turned[:, :2]  # a rotation: its inverse is its transpose
        return np.minimum(np.minimum(up[:, 0], w - up[:, 0]), np.minimum(up[:, 1], h - up[:, 1]))

    upright_kp = extract(turned, content, mirror=True, tiles=True, turned_back=True)
    as_given = extract(turned, content, mirror=True, tiles=True)
    assert len(upright_kp) > 500
    assert (edge_distance(upright_kp) > 4).all()
    assert (np.abs(edge_distance(as_given)) < 4).mean() > 0.1  # what the edges took before
    turned.save(tmp_path / "turned.png")
    result, _ = check(tmp_path / "turned.png", local_index)
    found = [m for m in _local(result) if Path(m["ref_path"]).name == "ref3.png"]
    assert found and result.verdict == "flagged", result.reason
    x0, y0, x1, y1 = found[0]["locator"]["query_box"]
    assert x0 < 0.15 and y0 < 0.15 and x1 > 0.85 and y1 > 0.85  # the whole turned copy


def test_decode_workers_judge_the_pictures_they_decode_as_this_process_would(
        local_index: Path, refs_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every core decodes and searches: a scan's forked decode workers judge their pictures
    with the scanner they inherit (each reads the catalog through its own connection), and
    the results are those of judging in this process."""
    import os

    from scanner import media, pipeline
    from scanner.demo import MILD_TRANSFORMS

    outs = tmp_path / "outs"
    outs.mkdir()
    for i in (0, 3, 5):
        MILD_TRANSFORMS["jpeg-q40"](_ref(refs_dir, i)).save(outs / f"copy{i}.jpg")
    synthetic_picture(4321).save(outs / "unrelated.png")
    (outs / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
    judged_in = tmp_path / "judged-in"
    real = pipeline.Scanner.judge

    def judge(self, batch):
        with open(judged_in, "a") as fh:
            fh.write(f"{os.getpid()}\n")
        return real(self, batch)

    monkeypatch.setattr(pipeline.Scanner, "judge", judge)
    seen = []
    scan([outs], local_index, on_result=seen.append)
    pids = set(judged_in.read_text().split())
    assert pids and str(os.getpid()) not in pids  # judged in the workers only

    scanner = pipeline.Scanner(local_index)
    items = [i for i in media.discover([outs]) if isinstance(i, media.Input)]
    here = real(scanner, [pipeline.prepare_one(i, scanner.featurizers) for i in items])
    assert [r.to_dict() for r in seen] == [r.to_dict() for r in here]
    by_name = {Path(r.path).name: r for r in seen}
    for i in (0, 3, 5):
        r = by_name[f"copy{i}.jpg"]
        assert r.verdict == "flagged" and r.matches[0]["title"] == f"Work {i}", r.reason
    assert by_name["unrelated.png"].verdict == "clear"
    assert by_name["broken.png"].verdict == "error"

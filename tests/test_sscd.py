"""image-sscd: the learned copy descriptor from the installed package, its query-adaptive null,
and adding it to an index built without it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from scanner.cli import app
from scanner.demo import MILD_TRANSFORMS, clip_art, flatten, synthetic_picture
from scanner.errors import IndexMismatchError, ModelError
from scanner.features import make, sscd
from scanner import models
from scanner.models import file_sha256
from scanner.match.base import Evidence
from scanner import policy as pol
from scanner.match.dense import ADAPT_RANK, Dense, adaptive_distances, other_work_distance
from scanner.index.store import open_index
from scanner.pipeline import FeatureOptions, available_features, build_index, check, read_results

needs_sscd = pytest.mark.skipif(not sscd.available(), reason=f"image-sscd models not installed ({sscd.INSTALL})")


def clip_art_works(tmp_path: Path, n: int) -> Path:
    """A folder ``refs/`` of ``n`` clip-art works on white, ``r0.png`` ..."""
    refs = tmp_path / "refs"
    refs.mkdir()
    for i in range(n):
        flatten(clip_art(i)).save(refs / f"r{i}.png")
    return refs


@pytest.fixture(scope="module")
def feat():
    return make("image-sscd", model="distilled")


@needs_sscd
def test_a_copy_is_nearer_than_unrelated_pictures(feat) -> None:
    works = [flatten(clip_art(i)) for i in range(6)]
    copies = [MILD_TRANSFORMS[t](works[0]) for t in ("resize-50", "jpeg-q40", "border-5")]
    prepared = [feat.prepare(p) for p in works + copies]
    assert prepared[0].shape == (sscd.SIDE, sscd.SIDE, 3) and prepared[0].dtype == np.uint8
    v = feat.embed(prepared)
    assert v.shape == (9, 512) and np.allclose(np.linalg.norm(v, axis=1), 1, atol=1e-5)
    sims = v @ v[0]
    assert sims[6:].min() > sims[1:6].max()


@needs_sscd
def test_the_identity_names_the_model_file_and_another_file_is_refused(feat) -> None:
    ident = feat.identity()
    assert ident["model_sha256"] == file_sha256(sscd.model_file("distilled"))
    assert ident["model"].startswith("sscd-distilled:sha256:") and ident["model_package"].startswith(sscd.PACKAGE)
    other = make("image-sscd", model="distilled", expect_sha256="0" * 64)
    with pytest.raises(ModelError, match="0000000000000000.*" + ident["model_sha256"][:16]):
        other.embed([feat.prepare(synthetic_picture(1))])


def test_without_the_package_it_is_left_out_with_the_install_command(monkeypatch) -> None:
    monkeypatch.setattr(sscd, "package_dir", lambda: None)
    feats, notes = available_features(FeatureOptions())
    assert "image-sscd" not in [f.name for f in feats]
    assert any("image-sscd not used" in n and sscd.INSTALL in n for n in notes)
    with pytest.raises(ModelError, match="ignore-requires-python"):
        sscd.model_file("full")


def test_distances_are_read_against_the_querys_neighbourhood() -> None:
    ev = lambda w, d: Evidence(work_id=w, feature="image-sscd", raw=1 - d, distance=d, locator=0,  # noqa: E731
                               query_locator=0, row=w)
    adapt = {"rank": ADAPT_RANK, "centre": 0.6}
    generic = [ev(1, 0.30)] + [ev(w, 0.35 + 0.01 * w) for w in range(2, 10)]   # close to many works
    distinct = [ev(1, 0.30)] + [ev(w, 0.70 + 0.01 * w) for w in range(2, 10)]  # close to one
    g, d = adaptive_distances(generic, adapt), adaptive_distances(distinct, adapt)
    assert g[0] > d[0]                             # the same distance counts for less on a generic query
    assert np.isclose(d[0], 0.30 - distinct[ADAPT_RANK].distance + 0.6)
    assert adaptive_distances([ev(1, 0.3)], adapt)[0] == 0.3


def test_other_work_distance_skips_the_rows_own_work() -> None:
    rng = np.random.default_rng(0)
    v = rng.normal(size=(40, 16)).astype(np.float32)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    works = np.repeat(np.arange(20), 2)
    v[1] = v[0]                                     # a work's two rows are the same picture
    r = other_work_distance(v, works, np.array([0, 5]), rank=3)
    sims = v[0] @ v.T
    others = sorted({w: max(sims[works == w]) for w in range(1, 20)}.values(), reverse=True)
    assert np.isclose(r[0], 1 - others[2], atol=1e-5)



def test_the_null_measures_its_lower_tail_and_extrapolates_it() -> None:
    """Distances with a log-linear lower tail (a Laplace law: P(d <= x) = exp((x - 1) / 0.05) / 2
    below 1) are read from their own quantiles as far as the pairs reach, and along the tail's
    slope below: the bulk's normal law, fitted to the middle half, is far lighter there (and far
    heavier than a learned descriptor's real tail)."""
    rng = np.random.default_rng(0)
    d = 1.0 + rng.laplace(0.0, 0.05, 200_000)
    null = {**pol.fit_null(d, prior=pol.PRIOR_COSINE_DISTANCE), "tail": pol.fit_tail(d)}
    truth = lambda x: 0.5 * np.exp((x - 1.0) / 0.05)  # noqa: E731
    x = np.array(null["tail"]["distance"])
    assert np.all(np.diff(x) > 0) and null["tail"]["log10_rate"][-1] == np.log10(pol.TAIL_TOP)
    measured = pol.pair_rate(x, null)
    assert np.all(np.abs(np.log10(measured / truth(x))) < 0.25)         # within the count noise of its pairs
    deep = np.array([x[0] - 0.1, x[0] - 0.3])                            # 5e-6 and 8e-8: no pair there
    err = np.log10(pol.pair_rate(deep, null) / truth(deep))
    assert np.all((err > -0.15) & (err < 0.6))                          # on the safe side, within 4x
    plain = {k: v for k, v in null.items() if k != "tail"}
    assert pol.pair_rate(deep, plain)[0] < pol.pair_rate(deep, null)[0] / 100   # the normal law's tail
    above = np.array([1.0, 1.2])
    assert np.allclose(pol.pair_rate(above, null), pol.pair_rate(above, plain))  # the bulk: unchanged
    grid = np.linspace(0.2, 1.3, 500)
    assert np.all(np.diff(pol.pair_rate(grid, null)) >= 0)                      # rates grow with the distance


def test_a_tail_is_measured_only_from_enough_pairs_and_never_extrapolates_upward() -> None:
    assert pol.fit_tail(np.linspace(0, 1, 50_000)) is None             # not two decades of tail
    flat = {"distance": [0.2, 0.2, 0.2, 0.2, 0.2], "log10_rate": [-3.0, -2.75, -2.5, -2.25, -2.0]}
    assert pol.tail_rate(np.array([0.0]), flat)[0] == pytest.approx(1e-3)   # no slope: its last point
    assert pol.tail_rate(np.array([0.9]), flat)[0] == 1.0                   # above its top: the bulk's


def test_a_descriptor_null_fitted_on_enough_pairs_carries_its_tail() -> None:
    rng = np.random.default_rng(1)
    n = 480
    v = rng.normal(size=(n, 32)).astype(np.float32)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    rows = np.stack([np.arange(n), np.zeros(n, int)], axis=1)
    a, b = pol.sample_pairs(rows[:, 0])
    null = Dense().fit(None, "image-sscd", v, rows, np.ones(n, bool), a, b)
    assert null["tail"]["pairs"] == len(a) and null["adaptive"]["rank"] == ADAPT_RANK
    assert null["tail"]["log10_rate"][0] <= np.log10(pol.TAIL_TOP) - pol.TAIL_DECADES
    k = 300                                                             # 44,850 pairs: the normal law alone
    small = Dense().fit(None, "image-sscd", v[:k], rows[:k], np.ones(k, bool), *pol.sample_pairs(rows[:k, 0]))
    assert "tail" not in small
    assert "tail" not in Dense().fit(None, "image-clip", v, rows, np.ones(n, bool), a, b)

@needs_sscd
def test_a_feature_is_added_to_an_index_built_without_it(tmp_path: Path) -> None:
    refs = clip_art_works(tmp_path, 12)
    synthetic_picture(99).save(tmp_path / "stranger.png")
    index = tmp_path / "index"
    build_index([refs], index, options=FeatureOptions(names=["image-phash"]))
    runner = CliRunner()
    res = runner.invoke(app, ["index", "add-feature", str(refs), str(tmp_path / "stranger.png"), "--index", str(index),
                              "--features", "image-sscd", "--sscd-model", "distilled", "-q"])
    assert res.exit_code == 0, res.output
    assert "added image-sscd to 12 of 12 work(s)" in res.stdout and "1 skipped" in res.stdout
    manifest = json.loads((index / "manifest.json").read_text())
    spec = manifest["features"]["image-sscd"]
    assert spec["model_sha256"] == file_sha256(sscd.model_file("distilled"))
    assert "image-sscd" in manifest["policy"]["copy_features"]
    assert manifest["null"]["image-sscd"]["adaptive"]["rank"] == ADAPT_RANK
    # the new rows sit under the right works: a copy's nearest row is its work's
    opened = open_index(index)
    feat = make("image-sscd", model="distilled")
    q = feat.embed([feat.prepare(MILD_TRANSFORMS["resize-50"](flatten(clip_art(4))))])
    _, I = opened.faiss_index("image-sscd").search(q, 1)
    work = opened.rows("image-sscd")[I[0, 0], 0]
    assert Path(opened.work_lookup()[int(work)].path).name == "r4.png"
    opened.close()
    res = runner.invoke(app, ["index", "add-feature", str(refs), "--index", str(index), "--features", "image-sscd"])
    assert res.exit_code != 0 and "already has image-sscd" in res.output
    assert runner.invoke(app, ["index", "verify", "--index", str(index)]).exit_code == 0


@needs_sscd
def test_an_index_refuses_a_different_model_file(tmp_path: Path, monkeypatch) -> None:
    refs = clip_art_works(tmp_path, 6)
    build_index([refs], tmp_path / "index", options=FeatureOptions(names=["image-sscd"], sscd_model="distilled"))
    synthetic_picture(3).save(tmp_path / "q.png")
    monkeypatch.setattr(models, "_FILE_SHA", {str(sscd.model_file("distilled")): "f" * 64})
    with pytest.raises(IndexMismatchError, match="sscd-distilled:sha256:ffffffffffffffff"):
        check(tmp_path / "q.png", tmp_path / "index")


def test_an_outline_only_hash_match_needs_the_copy_descriptor_to_flag() -> None:
    from scanner import policy as pol

    policy = pol.Policy()

    def m(feature, work, expected, **kw):
        return {"feature": feature, "work_id": work, "expected": expected, "licensed": False,
                "featureless_ref": None, **kw}

    coin = [m("image-phash", 1, 1e-6)]                                   # the descriptor sees nothing
    pol.outline_only(coin, policy, confirmed_by=True)
    assert pol.decide(coin, policy)[0] == "review" and "not confirmed by image-sscd" in pol.decide(coin, policy)[1]
    copy = [m("image-phash", 1, 1e-6), m("image-sscd", 1, 0.3)]          # it sees the same work
    pol.outline_only(copy, policy, confirmed_by=True)
    assert pol.decide(copy, policy)[0] == "flagged"
    other = [m("image-phash", 1, 1e-6), m("image-sscd", 2, 1e-4)]        # it sees another work
    pol.outline_only(other, policy, confirmed_by=True)
    assert "unconfirmed" in other[0]
    keypoints = [m("image-phash", 1, 1e-6), m("image-local", 1, 1e-5)]   # a second copy feature agrees
    pol.outline_only(keypoints, policy, confirmed_by=True)
    assert pol.decide(keypoints, policy)[0] == "flagged"
    unseen = [m("image-phash", 1, 1e-6)]                                 # an index without the descriptor
    pol.outline_only(unseen, policy, confirmed_by=False)
    assert pol.decide(unseen, policy)[0] == "flagged"


def test_the_copy_descriptor_fuses_with_keypoints_and_scores_pairs_as_a_scan_reads_them() -> None:
    from scanner.match.dense import Dense

    rng = np.random.default_rng(1)
    v = rng.normal(size=(30, 16)).astype(np.float32)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    v[3] = v[2] * 0.9 + v[3] * 0.1                                       # works 2 and 3 alike
    v[3] /= np.linalg.norm(v[3])
    rows = np.stack([np.arange(30), np.zeros(30)], 1).astype(np.int32)

    class Writer:
        def vectors(self, name):
            return v, rows

    kind = Dense()
    assert kind.fusable("image-sscd") and not kind.fusable("image-clip")
    s = kind.pair_scores(Writer(), "image-sscd", np.array([2, 2, 5]), np.array([3, 7, 9]))
    assert s[0] > s[1] and np.isfinite(s).all()


@needs_sscd
def test_an_index_fuses_image_local_with_image_sscd(tmp_path: Path) -> None:
    refs = clip_art_works(tmp_path, 8)
    build_index([refs], tmp_path / "index", options=FeatureOptions(names=["image-local", "image-sscd"]))
    fusion = json.loads((tmp_path / "index" / "manifest.json").read_text())["fusion"]
    assert [f["features"] for f in fusion] == [["image-local", "image-sscd"]]


@needs_sscd
def test_works_the_descriptor_ranks_first_are_verified_by_keypoints_against_a_null_of_its_proposals(
        tmp_path: Path, monkeypatch) -> None:
    from scanner.match import landmarks

    refs = clip_art_works(tmp_path, 12)
    index = tmp_path / "index"
    build_index([refs], index, options=FeatureOptions(names=["image-local", "image-sscd"]))
    null = json.loads((index / "manifest.json").read_text())["null"]["image-local"]["proposals"]
    assert (null["by"], null["top"], null["candidates"]) == ("image-sscd", landmarks.PROPOSALS, landmarks.PROPOSALS)
    assert null["samples"] > 0 and "repeated" in null
    copy = tmp_path / "copy.png"
    MILD_TRANSFORMS["resize-50"](flatten(clip_art(4))).save(copy)
    found, _ = check(copy, index)
    assert found.verdict == "flagged"
    assert all("proposed_by" not in (m["locator"] or {}) for m in found.matches)  # the vote found it already
    # a vote that finds nothing: the work the descriptor ranks first is verified all the same
    monkeypatch.setattr(landmarks, "landmark_evidence", lambda queries, *a, **k: [[] for _ in queries])
    found, _ = check(copy, index)
    local = [m for m in found.matches if m["feature"] == "image-local"]
    assert local and Path(local[0]["ref_path"]).name == "r4.png"
    assert local[0]["locator"]["proposed_by"] == "image-sscd" and local[0]["locator"]["proposals"] == landmarks.PROPOSALS
    assert local[0]["locator"]["query_box"]  # the boxes are built for the match shown
    assert local[0]["expected"] < 1e-3 and found.verdict == "flagged"
    stranger = tmp_path / "stranger.png"
    synthetic_picture(99).save(stranger)
    assert check(stranger, index)[0].verdict == "clear"   # proposals are made for every input; chance stays chance


def test_a_proposed_works_evidence_says_who_proposed_it() -> None:
    from scanner.report.words import describe_match

    m = {"feature": "image-local", "raw": 40, "raw_kind": "inliers", "expected": 1e-5,
         "locator": {"statistic": "unique", "proposed_by": "image-sscd", "proposals": 3}}
    assert "image-sscd ranked among its 3 nearest" in str(describe_match(m))


@needs_sscd
def test_a_scan_forks_its_decode_workers_with_image_sscd_and_judges_as_threads_would(
        tmp_path: Path, monkeypatch) -> None:
    import importlib

    from scanner.pipeline import prepare, scan

    scan_mod = importlib.import_module("scanner.pipeline.scan")  # the module, not the function it exports

    refs = clip_art_works(tmp_path, 8)
    index = tmp_path / "index"
    build_index([refs], index, options=FeatureOptions(names=["image-phash", "image-local", "image-sscd"]))
    outs = tmp_path / "outs"
    outs.mkdir()
    for i in range(4):
        MILD_TRANSFORMS["jpeg-q40"](flatten(clip_art(i))).save(outs / f"copy{i}.png")
        synthetic_picture(500 + i).save(outs / f"other{i}.png")
    feats = [make("image-phash"), make("image-local"), make("image-sscd", model="distilled")]
    assert prepare.forks(feats)  # on the CPU each forked worker loads its own session

    def lines(out: Path) -> dict[str, tuple]:
        return {Path(r["path"]).name: (r["verdict"], r["score"], [(m["work_id"], m["feature"], m["raw"])
                                                                  for m in r["matches"]])
                for r in read_results(out / "results.jsonl")}

    # the parent has used the very session the workers inherit: theirs are their own (dropping the
    # inherited one in a worker would wait forever for its threads, which stayed in the parent)
    real_init = scan_mod.Scanner.__init__

    def warmed(self, *a, **k):
        real_init(self, *a, **k)
        for f in self.featurizers:
            if f.name == "image-sscd":
                f.embed([np.zeros((sscd.SIDE, sscd.SIDE, 3), np.uint8)])
    monkeypatch.setattr(scan_mod.Scanner, "__init__", warmed)
    scan([outs], index, out_dir=tmp_path / "forked", thumbnails=False)
    forked = lines(tmp_path / "forked")
    monkeypatch.setattr(scan_mod, "forks", lambda featurizers: False)
    monkeypatch.setattr(prepare, "forks", lambda featurizers: False)
    scan([outs], index, out_dir=tmp_path / "threads", thumbnails=False)
    assert forked == lines(tmp_path / "threads")
    assert [forked[f"copy{i}.png"][0] for i in range(4)] == ["flagged"] * 4
    assert {forked[f"other{i}.png"][0] for i in range(4)} == {"clear"}
    # run.json says where the model ran; the weight-free features have none
    models_run = json.loads((tmp_path / "forked" / "run.json").read_text())["models"]
    assert list(models_run) == ["image-sscd"]
    assert models_run["image-sscd"]["runtime"] == "onnxruntime"
    assert models_run["image-sscd"]["providers"] == ["CPUExecutionProvider"]


@needs_sscd
def test_cuda_is_asked_for_where_listed_and_a_provider_that_cannot_start_is_named(monkeypatch, caplog) -> None:
    import logging
    import warnings

    import onnxruntime as ort

    from scanner.errors import ParameterError

    cpu = make("image-sscd", model="distilled", device="cpu")
    assert cpu.providers() == ["CPUExecutionProvider"] and cpu.forkable
    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this onnxruntime has a CUDA provider: the fallback cannot be shown here")
    cuda = make("image-sscd", model="distilled", device="cuda")
    with pytest.raises(ParameterError, match="--device cuda.*onnxruntime-gpu"):
        cuda.providers()
    assert cuda.runtime() == {"runtime": "onnxruntime", "device": "cuda", "providers": []}  # run.json, never raising
    # a GPU build lists its CUDA provider even where CUDA or cuDNN is missing, and falls back
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    auto = make("image-sscd", model="distilled")
    assert auto.providers()[0] == "CUDAExecutionProvider"
    assert not auto.forkable  # a GPU context is never forked: decoding stays in threads
    picture = [np.full((sscd.SIDE, sscd.SIDE, 3), 128, np.uint8)]
    with warnings.catch_warnings(), caplog.at_level(logging.WARNING, logger="scanner.features.sscd"):
        warnings.simplefilter("ignore")  # onnxruntime's own, about the provider it lacks
        assert auto.embed(picture).shape == (1, 512)
    assert "could not start its CUDAExecutionProvider; the model runs on the CPU" in caplog.text
    assert auto.runtime()["providers"] == ["CPUExecutionProvider"]  # what ran, not what was asked
    with warnings.catch_warnings(), pytest.raises(ModelError, match="--device cuda.*could not start.*--device cpu"):
        warnings.simplefilter("ignore")
        make("image-sscd", model="distilled", device="cuda").embed(picture)


def test_a_landmark_match_places_its_work_in_the_query_as_given_or_mirrored() -> None:
    from scanner.features.local import KEYPOINT_DTYPE
    from scanner.match.landmarks import MIRRORED_VIEW, LandmarkTable, placement

    # the work (working size 400 x 300) shown at half size from (100, 50) in a query of working size 800 x 600
    m = np.array([[2.0, 0.0, -200.0], [0.0, 2.0, -100.0]])       # query px -> work px
    query = np.zeros(1, KEYPOINT_DTYPE)
    query["size"] = (800, 600)
    table = LandmarkTable(np.zeros((1, 2), np.int32), np.zeros((1, 32), np.uint8),
                          np.zeros((1, 2), np.float32), np.array([[400, 300]], np.float32))
    e = Evidence(7, "image-local", 20.0, -20.0, 0, pending=(query, table, "unique", 20, 0, m, np.array([0]), np.array([0])))
    where = placement(e)
    corners = where @ np.array([[0.0, 1.0], [0.0, 1.0], [1.0, 1.0]])   # the work's top-left and bottom-right
    assert np.allclose(corners.T, [[100 / 800, 50 / 600], [300 / 800, 200 / 600]])
    mirrored = placement(Evidence(7, "image-local", 20.0, -20.0, 1,
                                  pending=(query, table, "unique", 20, MIRRORED_VIEW, m, np.array([0]), np.array([0]))))
    assert np.allclose((mirrored @ np.array([0.0, 0.0, 1.0])), [1 - 100 / 800, 50 / 600])
    assert placement(Evidence(7, "image-local", 20.0, -20.0, 0)) is None      # no geometry kept


def test_a_prepared_picture_is_cut_where_a_work_was_placed() -> None:
    feat = sscd.SSCD.__new__(sscd.SSCD)   # cutting needs no model
    side = sscd.SIDE
    picture = np.zeros((side, side, 3), np.uint8)
    picture[:, : side // 2] = (200, 30, 30)                        # the left half red, the right half blue
    picture[:, side // 2:] = (30, 30, 200)
    left = feat.cut(picture, np.array([[0.5, 0.0, 0.0], [0.0, 1.0, 0.0]]))
    assert left.shape == (side, side, 3) and left.dtype == np.uint8
    assert np.abs(left[:, :-2].astype(int) - (200, 30, 30)).max() <= 2
    beyond = feat.cut(picture, np.array([[1.0, 0.0, 0.5], [0.0, 1.0, 0.0]]))   # half of the work past the edge
    assert (beyond[:, side // 2 + 2:] == 255).all() and np.abs(beyond[:, : side // 2 - 2].astype(int) - (30, 30, 200)).max() <= 2


def test_a_descriptor_null_measures_plain_pairs_for_aligned_looks_over_one_decade() -> None:
    from scanner.match.dense import ALIGNED_TAIL_DECADES

    rng = np.random.default_rng(2)
    n = 160                                                             # 12,720 pairs: one decade of tail
    v = rng.normal(size=(n, 32)).astype(np.float32)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    rows = np.stack([np.arange(n), np.zeros(n, int)], axis=1)
    a, b = pol.sample_pairs(rows[:, 0])
    null = Dense().fit(None, "image-sscd", v, rows, np.ones(n, bool), a, b)
    aligned = null["aligned"]
    assert "tail" not in null and aligned["tail"]["pairs"] == len(a)
    assert aligned["tail"]["log10_rate"][0] <= np.log10(pol.TAIL_TOP) - ALIGNED_TAIL_DECADES
    d = 1.0 - np.einsum("ij,ij->i", v[a], v[b])
    close = float(np.quantile(d, 1e-3))
    assert pol.pair_rate(close, aligned) == pytest.approx(1e-3, rel=0.5)    # plain distances, as measured
    k = 100                                                             # 4,950 pairs: no aligned looks
    assert "aligned" not in Dense().fit(None, "image-sscd", v[:k], rows[:k], np.ones(k, bool),
                                       *pol.sample_pairs(rows[:k, 0]))
    assert "aligned" not in Dense().fit(None, "image-clip", v, rows, np.ones(n, bool), a, b)


def test_a_look_again_where_keypoints_placed_the_work_is_never_fused_with_them() -> None:
    from scanner.match.fusion import fuse

    def match(feature: str, expected: float, locator: dict | None = None) -> dict:
        return {"work_id": 3, "feature": feature, "expected": expected, "featureless_ref": None,
                "locator": locator, "raw": 0.9, "raw_kind": "cosine", "score": 0.5}

    spec = [{"features": ["image-local", "image-sscd"], "correlation": 0.0}]
    local = match("image-local", 0.5, {"inliers": 9})
    looked = match("image-sscd", 0.01, {"aligned_by": "image-local", "looks": 2, "query_box": [0, 0, 0.5, 0.5]})
    assert fuse([local, looked], spec, 150, pol.Policy()) == []
    assert fuse([local, match("image-sscd", 0.01)], spec, 150, pol.Policy())        # the whole picture's fuses


@needs_sscd
def test_a_work_pasted_into_a_larger_picture_is_looked_at_again_where_keypoints_placed_it(tmp_path: Path,
                                                                                       monkeypatch) -> None:
    from scanner import media
    from scanner.match import landmarks
    from scanner.match.dense import ALIGNED_LOOKS
    from scanner.pipeline.scan import Scanner

    refs = clip_art_works(tmp_path, 150)          # 11,175 pairs: the aligned looks' null has its decade
    index = tmp_path / "index"
    build_index([refs], index, options=FeatureOptions(names=["image-local", "image-sscd"]))
    assert json.loads((index / "manifest.json").read_text())["null"]["image-sscd"]["aligned"]["tail"]
    info = CliRunner().invoke(app, ["index", "info", "--index", str(index)])
    assert "looks again where another feature places a work" in " ".join(info.output.split())
    collage = synthetic_picture(1017, (640, 480)).convert("RGB")
    collage.paste(flatten(clip_art(17)).resize((190, 190)), (77, 57))   # a sixth of the picture
    collage.save(tmp_path / "collage.png")
    stranger = tmp_path / "stranger.png"
    synthetic_picture(1018, (640, 480)).save(stranger)
    # a policy that flags nothing yet: every input is looked at again
    scanner = Scanner(index, policy=pol.Policy(flag_at=1e-12, review_at=2e-2))
    found, other = scanner.check_paths([media.Input(tmp_path / "collage.png", "image"), media.Input(stranger, "image")])
    looked = [m for m in found.matches if (m["locator"] or {}).get("aligned_by") == "image-local"]
    assert looked and Path(looked[0]["ref_path"]).name == "r17.png" and looked[0]["feature"] == "image-sscd"
    assert looked[0]["expected"] < 1e-3 and 1 <= looked[0]["locator"]["looks"] <= ALIGNED_LOOKS
    x0, y0, x1, y1 = looked[0]["locator"]["query_box"]                 # where it was pasted
    assert abs(x0 - 77 / 640) < 0.03 and abs(y0 - 57 / 480) < 0.03 and abs(x1 - 267 / 640) < 0.03 and abs(y1 - 247 / 480) < 0.03
    assert np.allclose(looked[0]["locator"]["ref_box"], [0, 0, 1, 1], atol=0.03)        # all of the work is there
    assert other.verdict == "clear"
    # were the transform collapsed (a repeated element), the part of the output its inliers span is
    # looked at instead (here: the pasted area), its chance counted as a whole picture's against every work
    monkeypatch.setattr(landmarks, "placement", lambda e: None)
    monkeypatch.setattr(landmarks, "inlier_region", lambda e: np.array([[190 / 640, 0, 77 / 640], [0, 190 / 480, 57 / 480]]))
    scanner = Scanner(index, policy=pol.Policy(flag_at=1e-12, review_at=1.0))
    found, other = scanner.check_paths([media.Input(tmp_path / "collage.png", "image"), media.Input(stranger, "image")])
    region = [m for m in found.matches if (m["locator"] or {}).get("region")]
    assert region and Path(region[0]["ref_path"]).name == "r17.png" and region[0]["feature"] == "image-sscd"
    assert abs(region[0]["raw"] - looked[0]["raw"]) < 0.02                  # the same cut of the output
    assert looked[0]["expected"] < region[0]["expected"] < 0.2             # read against every work
    assert np.allclose(region[0]["locator"]["query_box"], [77 / 640, 57 / 480, 267 / 640, 247 / 480], atol=0.01)
    assert other.verdict == "clear"


def test_a_look_again_says_which_feature_placed_the_work_and_where() -> None:
    from scanner.report.words import describe_match

    m = {"feature": "image-sscd", "raw": 0.84, "raw_kind": "cosine", "expected": 2e-5,
         "locator": {"aligned_by": "image-local", "looks": 3, "query_box": [0.1, 0.1, 0.6, 0.5]}}
    shown = describe_match(m)
    assert "where image-local placed the work" in shown["words"] and "3 such looks" in shown["words"]
    assert "the work placed on 20% of the output" in shown["where"]


def test_a_transform_that_collapses_the_output_onto_a_spot_of_the_work_places_nothing() -> None:
    from scanner.features.local import KEYPOINT_DTYPE
    from scanner.match.landmarks import PLACED_SCALES, LandmarkTable, placement

    query = np.zeros(1, KEYPOINT_DTYPE)
    query["size"] = (512, 512)
    table = LandmarkTable(np.zeros((1, 2), np.int32), np.zeros((1, 32), np.uint8),
                          np.zeros((1, 2), np.float32), np.array([[512, 512]], np.float32))
    for scale, placed in ((0.02, False), (PLACED_SCALES[0] * 1.5, True), (2.0, True), (PLACED_SCALES[1] * 2, False)):
        m = np.array([[scale, 0.0, 100.0], [0.0, scale, 80.0]])
        e = Evidence(3, "image-local", 9.0, -9.0, 0, pending=(query, table, "repeated", 9, 0, m, np.array([0]), np.array([0])))
        assert (placement(e) is not None) == placed, scale


def test_a_collapsed_transform_places_its_work_on_the_part_of_the_query_its_inliers_span() -> None:
    from scanner.features.local import KEYPOINT_DTYPE
    from scanner.match.base import Placement
    from scanner.match.landmarks import (INLIER_REGION_MARGIN, MIRRORED_VIEW, LandmarkJudge, LandmarkTable,
                                         inlier_region, placement)

    query = np.zeros(2, KEYPOINT_DTYPE)
    query["size"] = (400, 200)
    table = LandmarkTable(np.zeros((1, 2), np.int32), np.zeros((1, 32), np.uint8),
                          np.zeros((1, 2), np.float32), np.array([[100, 100]], np.float32))
    collapsed = np.array([[0.02, 0.0, 5.0], [0.0, 0.02, 5.0]])               # the query onto a period of the tile
    q_px = np.array([[100.0, 50.0], [200.0, 150.0], [150.0, 100.0]])          # inliers on the pasted tile

    def evidence(view: int, px: np.ndarray, m: np.ndarray = collapsed, work: int = 4) -> Evidence:
        return Evidence(work, "image-local", 9.0, -9.0, view,
                        pending=(query, table, "repeated", 9, view, m, np.array([0, 1, 0]), np.array([0, 0, 0]), px, px))

    e = evidence(0, q_px)
    assert placement(e) is None
    pad = INLIER_REGION_MARGIN * np.array([0.25, 0.5])
    where = inlier_region(e)
    assert np.allclose(where @ np.array([[0.0, 1.0], [0.0, 1.0], [1.0, 1.0]]),
                       np.array([[0.25 - pad[0], 0.5 + pad[0]], [0.25 - pad[1], 0.75 + pad[1]]]))
    mirrored = inlier_region(evidence(MIRRORED_VIEW, q_px))                   # read back in the query as given
    assert np.allclose(mirrored @ np.array([0.0, 0.0, 1.0]), [0.5 - pad[0], 0.25 - pad[1]])
    assert inlier_region(evidence(0, q_px * [1.0, 0.0] + [0.0, 100.0])) is None   # a line of inliers: no region
    assert inlier_region(Evidence(4, "image-local", 9.0, -9.0, 0)) is None         # no geometry kept
    # placements: a work placed by its transform as before, a collapsed one on its inliers' part
    judge = LandmarkJudge.__new__(LandmarkJudge)
    placed = judge.placements(([evidence(0, q_px, np.array([[0.5, 0.0, 0.0], [0.0, 0.5, 0.0]]), 3), e],
                               np.array([1e-4, 1e-3])), 3)
    assert [(p.work_id, p.region) for p in placed] == [(3, False), (4, True)] and isinstance(placed[0], Placement)


def test_a_region_look_says_the_keypoints_span_it_and_its_chance_counts_every_work() -> None:
    from scanner.report.words import describe_match

    m = {"feature": "image-sscd", "raw": 0.84, "raw_kind": "cosine", "expected": 2e-5,
         "locator": {"aligned_by": "image-local", "looks": 3, "region": True, "query_box": [0.1, 0.1, 0.6, 0.5]}}
    shown = describe_match(m)
    assert "matching keypoints span" in shown["words"] and "against every work" in shown["words"]
    assert "a part on 20% of the output" in shown["where"]


@needs_sscd
def test_an_index_keeps_the_picture_preparation_it_was_built_with(tmp_path: Path, monkeypatch) -> None:
    from PIL import Image

    from scanner.pipeline import features_for_index

    picture = flatten(clip_art(3)).resize((150, 420))  # one side grows, the other shrinks
    old, new = make("image-sscd", model="distilled", version="1-288"), make("image-sscd", model="distilled")
    assert new.version == sscd.VERSION != "1-288"
    assert make("image-sscd", **old.get_params()).version == "1-288"  # as a worker elsewhere (Ray) makes it again
    pillow = np.asarray(picture.resize((sscd.SIDE, sscd.SIDE), Image.Resampling.BICUBIC, reducing_gap=3.0))
    assert np.array_equal(old.prepare(picture), pillow)
    prepared = new.prepare(picture)
    assert prepared.shape == (sscd.SIDE, sscd.SIDE, 3) and prepared.dtype == np.uint8
    assert 0 < np.abs(prepared.astype(int) - pillow).mean() < 4  # another resampler, the same picture
    a, b = new.embed([prepared, pillow])
    assert float(a @ b) > 0.95
    # an index built before the change is scanned as it was built
    refs = clip_art_works(tmp_path, 6)
    monkeypatch.setattr(sscd, "VERSION", "1-288")
    build_index([refs], tmp_path / "index", options=FeatureOptions(names=["image-sscd"], sscd_model="distilled"))
    monkeypatch.undo()
    opened = open_index(tmp_path / "index")
    assert opened.features["image-sscd"]["version"] == "1-288"
    (feat,) = features_for_index(opened, FeatureOptions())
    assert feat.version == "1-288" and np.array_equal(feat.prepare(picture), pillow)
    q = feat.embed([feat.prepare(MILD_TRANSFORMS["jpeg-q40"](flatten(clip_art(2))))])
    D, I = opened.faiss_index("image-sscd").search(q, 1)
    assert Path(opened.work_lookup()[int(opened.rows("image-sscd")[I[0, 0], 0])].path).name == "r2.png"
    opened.close()
    with pytest.raises(Exception, match="unknown to this likeness"):
        make("image-sscd", model="distilled", version="9-288")

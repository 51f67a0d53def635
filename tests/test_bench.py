"""``likeness bench search``: keys, recall, and the synthetic data's shape."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from scanner import bench
from scanner.cli import app
from scanner.errors import ParameterError


def test_mixture_is_normalised_and_structured() -> None:
    mix = bench.GaussianMixture(32, n_clusters=8, seed=0)
    x = mix.sample(2000, seed=1)
    assert x.shape == (2000, 32) and x.dtype == np.float32
    assert np.allclose(np.linalg.norm(x, axis=1), 1, atol=1e-5)
    assert np.array_equal(x, mix.sample(2000, seed=1))            # deterministic
    # anisotropic: the leading principal direction carries far more than 1/32 of the variance
    ev = np.linalg.eigvalsh(np.cov(x.T))
    assert ev[-1] / ev.sum() > 3 / 32


def test_codes_have_near_neighbours() -> None:
    codes = bench.synthetic_codes(3000, 64, seed=0)
    assert codes.shape == (3000, 8) and codes.dtype == np.uint8
    d = np.unpackbits(codes[:50, None] ^ codes[None, 50:], axis=-1).sum(-1)
    assert d.min(1).mean() < 16                                     # uniform codes would be ~20+


@pytest.mark.parametrize("backend,precision", [("faiss", "fp32"), ("numpy", "fp32"), ("torch", "bf16")])
def test_bench_search_dense(backend: str, precision: str) -> None:
    r = bench.bench_search(n_refs=2000, dim=32, n_queries=50, k=5, backend=backend, precision=precision,
                           measure_peak=False)
    assert tuple(r) == bench.KEYS
    assert r["recall"] >= 0.95 and r["qps"] > 0 and r["n_refs"] == 2000


def test_bench_search_binary() -> None:
    r = bench.bench_search(n_refs=3000, dim=64, n_queries=20, k=5, kind="binary", measure_peak=False)
    assert r["recall"] == 1.0
    # the numpy baseline finds rows as near as faiss's (ties may name other rows)
    r = bench.bench_search(n_refs=3000, dim=256, n_queries=20, k=5, kind="binary", backend="numpy",
                           measure_peak=False)
    assert r["recall"] == 1.0 and r["unit"] == "GB/s"


def test_bench_rejects_bad_values() -> None:
    with pytest.raises(ParameterError):
        bench.bench_search(n_refs=0, dim=8, n_queries=1)
    with pytest.raises(ParameterError):
        bench.bench_search(n_refs=10, dim=8, n_queries=1, kind="graph")


def test_cli_json_keys() -> None:
    res = CliRunner().invoke(app, ["bench", "search", "--refs", "1000", "--dim", "16", "--queries", "20",
                                   "--k", "3", "--json"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout.strip().splitlines()[-1])
    assert list(doc) == list(bench.KEYS)
    assert doc["peak_gflops"] > 0 and doc["ratio"] > 0


def test_cli_bad_backend_exits_2() -> None:
    res = CliRunner().invoke(app, ["bench", "search", "--refs", "100", "--backend", "nope"])
    assert res.exit_code == 2


def test_codes_past_the_pool_stay_near_their_pool_code() -> None:
    codes = bench.synthetic_codes(3000, 64, seed=0, pool=500)
    assert codes.shape == (3000, 8)
    head, tail = codes[:500], codes[500:600]
    d = np.unpackbits(tail[:, None] ^ head[None], axis=-1).sum(-1)
    assert d.min(1).max() <= 64 // 16                              # a pool code with nbits/16 flips


def test_bench_search_postings_runs_the_scan_lookup() -> None:
    r = bench.bench_search(n_refs=20000, n_queries=300, kind="postings", measure_peak=False, repeat=2)
    assert tuple(r) == bench.KEYS
    assert r["kind"] == "postings" and r["backend"] == "numpy" and r["unit"] == "GB/s"
    assert r["recall"] == 1.0 and r["qps"] > 0 and r["k"] > 0
    base = bench.bench_search(n_refs=20000, n_queries=300, kind="postings", backend="searchsorted",
                              measure_peak=False)
    assert base["recall"] == 1.0 and base["k"] == r["k"]            # same pairs, found another way
    with pytest.raises(ParameterError):
        bench.bench_search(n_refs=100, n_queries=10, kind="postings", backend="torch")


def test_cli_postings_json_has_its_limit() -> None:
    res = CliRunner().invoke(app, ["bench", "search", "--kind", "postings", "--refs", "5000", "--queries", "2000",
                                   "--json"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout.strip().splitlines()[-1])
    assert doc["unit"] == "GB/s" and doc["peak_gflops"] > 0 and doc["ratio"] > 0 and doc["load1"] >= 0


def test_bench_scan_small(tmp_path) -> None:
    """Both parts of ``bench scan`` on a tiny model and a small index (figures are not asserted)."""
    res = CliRunner().invoke(app, ["bench", "scan", "--work-dir", str(tmp_path), "--arch", "tiny", "--images", "8",
                                   "--check-works", "12", "--check-runs", "1", "--json"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout.strip().splitlines()[-1])
    assert doc["clip"]["e2e_images_s"] > 0 and doc["clip"]["encoder_images_s"] > 0 and doc["clip"]["ratio"] > 0
    assert doc["check"]["n_works"] == 12 and len(doc["check"]["cold_s"]) == 1
    assert doc["check"]["exit_codes"][0] in (0, 1, 4)       # a verdict, not a usage or index error
    # cached: a second call reuses the pictures, model and indexes
    assert (tmp_path / "check-index-12" / "manifest.json").exists()


def test_bench_scan_rejects_bad_part(tmp_path) -> None:
    res = CliRunner().invoke(app, ["bench", "scan", "--work-dir", str(tmp_path), "--skip", "everything"])
    assert res.exit_code == 2


def test_single_query_ivf_through_build_faiss_index() -> None:
    r = bench.bench_search(n_refs=4000, dim=16, n_queries=30, k=5, index="ivf", single=True, measure_peak=False)
    assert r["index"].startswith("ivf") and "nprobe" in r["index"]
    assert r["p50_ms"] > 0 and r["recall"] >= 0.8
    flat = bench.bench_search(n_refs=4000, dim=16, n_queries=30, k=5, single=True, measure_peak=False)
    assert flat["index"] == "flat" and flat["recall"] == 1.0 and flat["p50_ms"] > 0
    with pytest.raises(ParameterError):
        bench.bench_search(n_refs=100, dim=8, n_queries=1, index="ivf", backend="numpy")


def test_int8_peak_is_an_int8_gemm() -> None:
    pytest.importorskip("torch")
    assert bench.gemm_peak("int8", size=256, repeat=1) > 0
    r = bench.bench_search(n_refs=3000, dim=64, n_queries=40, k=5, backend="torch", precision="int8",
                           measure_peak=False)
    assert r["recall"] >= 0.99 and r["index_mb"] is not None and r["build_s"] >= 0


def test_compare_runs_paths_on_the_same_data_and_skips_absent_libraries(monkeypatch) -> None:
    import builtins

    real_import = builtins.__import__

    def no_usearch(name, *args, **kwargs):
        if name == "usearch" or name.startswith("usearch."):
            raise ImportError("hidden for the test")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_usearch)
    told: list[str] = []
    rows = bench.bench_compare(["faiss", "numpy", "usearch"], n_refs=2000, dim=16, n_queries=30, k=5,
                               repeat=2, measure_peak=False, skipped=told.append)
    assert [r["backend"] for r in rows] == ["faiss", "numpy"] and all(tuple(r) == bench.KEYS for r in rows)
    assert rows[0]["recall"] == rows[1]["recall"] == 1.0
    assert len(told) == 1 and told[0].startswith("usearch: not installed")
    with pytest.raises(ParameterError):
        bench.bench_compare(["faiss:int4"], n_refs=100, dim=8, n_queries=2)


@pytest.mark.parametrize("library", ["hnswlib", "usearch"])
def test_hnsw_libraries_side_by_side(library: str) -> None:
    pytest.importorskip(library)
    rows = bench.bench_compare(["faiss", library], n_refs=3000, dim=32, n_queries=60, k=10,
                               measure_peak=False)
    flat, graph = rows
    assert graph["backend"] == library and graph["index"].startswith("hnsw M16")
    assert graph["recall"] >= 0.9 and graph["gflops"] is None and graph["build_s"] > 0
    assert flat["recall"] == 1.0


def test_cli_compare_prints_a_json_list() -> None:
    res = CliRunner().invoke(app, ["bench", "search", "--refs", "1000", "--dim", "16", "--queries", "20", "--k", "3",
                                   "--compare", "faiss,numpy", "--json"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout.strip().splitlines()[-1])
    assert [r["backend"] for r in doc] == ["faiss", "numpy"] and list(doc[0]) == list(bench.KEYS)


@pytest.fixture
def no_torch(monkeypatch: pytest.MonkeyPatch) -> None:
    """torch as absent as in a base install (no ``clip`` extra): ``import torch`` fails."""
    import sys

    monkeypatch.setitem(sys.modules, "torch", None)
    assert not bench.has_torch()


def test_bench_search_without_torch_takes_its_peak_from_numpy(no_torch: None) -> None:
    res = CliRunner().invoke(app, ["bench", "search", "--refs", "2000", "--dim", "16", "--queries", "40",
                                   "--k", "3", "--json"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout.strip().splitlines()[-1])
    assert doc["backend"] == "faiss" and doc["peak_gflops"] > 0 and doc["ratio"] > 0
    assert bench.gemm_peak("int8", size=64, repeat=1) is None  # no library here multiplies int8


def test_bench_without_torch_leaves_torch_rows_out_in_one_line(no_torch: None, tmp_path) -> None:
    res = CliRunner().invoke(app, ["bench", "search", "--refs", "2000", "--dim", "16", "--queries", "40",
                                   "--compare", "faiss,torch:int8,torch-plain", "--json"])
    assert res.exit_code == 0, res.output
    assert [r["backend"] for r in json.loads(res.stdout.strip().splitlines()[-1])] == ["faiss"]
    assert res.stderr.count("torch is not installed (pip install 'likeness-scanner[clip]')") == 2
    assert "Traceback" not in res.output
    alone = CliRunner().invoke(app, ["bench", "search", "--refs", "100", "--backend", "torch"])
    assert alone.exit_code == 2 and "needs torch" in alone.output and "Traceback" not in alone.output
    scan = CliRunner().invoke(app, ["bench", "scan", "--work-dir", str(tmp_path), "--skip", "check", "--json"])
    assert scan.exit_code == 0 and json.loads(scan.stdout) == {}
    assert "image-clip part left out: torch is not installed (pip install 'likeness-scanner[clip]')" in scan.stderr


def test_the_default_row_is_the_scanners_choice_and_the_cache_can_be_listed_and_cleared(tmp_path,
                                                                                       monkeypatch) -> None:
    from scanner import search_choice

    monkeypatch.setenv(search_choice.ENV, str(tmp_path))
    monkeypatch.setattr(search_choice, "MIN_ROWS", 1000)
    r = bench.bench_search(n_refs=3000, dim=32, n_queries=100, k=5, measure_peak=False)
    assert r["chosen"] is True and r["recall"] >= search_choice.TARGET_RECALL
    entry = search_choice.cached()[0]
    assert (entry["backend"], entry["precision"]) == (r["backend"], r["precision"])
    rows = bench.bench_compare(["faiss", "numpy"], n_refs=3000, dim=32, n_queries=100, k=5, measure_peak=False)
    assert [row["chosen"] for row in rows] == [r["backend"] == "faiss", False]
    res = CliRunner().invoke(app, ["bench", "choice", "--json"], env={search_choice.ENV: str(tmp_path)})
    assert res.exit_code == 0 and json.loads(res.stdout)[0]["key"]["rows"] == 4096
    res = CliRunner().invoke(app, ["bench", "choice"], env={search_choice.ENV: str(tmp_path)})
    assert f"{r['backend']} {r['precision']}" in res.stdout and "faiss:fp32" in res.stdout
    res = CliRunner().invoke(app, ["bench", "choice", "--clear"], env={search_choice.ENV: str(tmp_path)})
    assert "cleared 1 cached search choice" in res.stdout and search_choice.cached() == []


def test_a_slow_blas_has_its_peak_measured_on_a_smaller_product(monkeypatch: pytest.MonkeyPatch) -> None:
    """A kernel far older than the CPU makes a 4096 product take seconds: the peak is measured on
    the largest product predicted to fit in PEAK_SECONDS, from one product of 1024."""
    import time

    monkeypatch.setattr(bench, "PEAK_SECONDS", 0.2)
    sizes: list[int] = []

    def make(per_1024: float):
        def product_of(n: int):
            sizes.append(n)
            return lambda: time.sleep(per_1024 * (n / 1024) ** 3)
        return product_of

    assert bench._peak_size(make(0.05), 4096) == 1024        # 2048 would take 0.4 s
    assert bench._peak_size(make(0.02), 4096) == 2048        # 0.16 s; 4096 would take 1.3 s
    assert bench._peak_size(make(0.001), 4096) == 4096
    assert bench._peak_size(make(1.0), 512) == 512 and sizes == [1024, 1024, 1024]  # asked small: kept, no probe

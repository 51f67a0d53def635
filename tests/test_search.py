"""Search backends agree with each other and with exact numpy search."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from scanner.errors import ParameterError
from scanner import search


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture(scope="module")
def dense() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    refs = _unit(rng.standard_normal((3000, 48)))
    queries = _unit(refs[:60] + 0.4 * rng.standard_normal((60, 48)))
    return refs, queries


@pytest.fixture(scope="module")
def truth(dense: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    refs, queries = dense
    return search.make_searcher(refs, backend="numpy").search(queries, 10)


@pytest.mark.parametrize("backend,precision,min_recall,tol", [
    ("faiss", "fp32", 1.0, 1e-5), ("numpy", "fp32", 1.0, 1e-6), ("torch", "fp32", 1.0, 1e-5),
    ("torch", "bf16", 0.97, 5e-3), ("torch", "fp16", 0.99, 1e-3), ("torch", "int8", 0.9, 2e-2)])
def test_backends_agree(dense, truth, backend, precision, min_recall, tol) -> None:
    refs, queries = dense
    # small ref blocks: the running top-k merge across chunks is exercised
    opts = {"ref_block": 700, "query_block": 25} if backend == "torch" else {}
    D, I = search.make_searcher(refs, backend=backend, precision=precision, **opts).search(queries, 10)
    assert D.shape == I.shape == (60, 10) and D.dtype == np.float32 and I.dtype == np.int64
    assert search.recall_at_k(I, truth[1]) >= min_recall
    # scores are fp32 re-scores of the rows found, sorted descending
    assert np.all(np.diff(D, axis=1) <= 1e-6)
    assert np.allclose(D[:, 0], truth[0][:, 0], atol=tol)


def test_grouped_topk_is_exact() -> None:
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(1)
    S = torch.from_numpy(rng.standard_normal((7, 5000)).astype(np.float32))
    v, c = search._topk_grouped(S, 10, 16)       # 5000 is not a multiple of 16: tail path
    want = S.topk(10, dim=1).values
    assert torch.equal(v.sort(1, descending=True).values, want)
    assert torch.equal(S.gather(1, c), v)


def test_knn_keeps_faiss_layout_and_backends(dense, truth) -> None:
    import faiss

    refs, queries = dense
    index = faiss.IndexFlatIP(refs.shape[1])
    index.add(refs)
    D, I = search.knn(index, queries, 10)
    assert np.array_equal(I, truth[1])
    D2, I2 = search.knn(index, queries, 10, backend="torch", precision="fp32")
    assert np.array_equal(I2, truth[1])
    # one query (the single-asset check) takes the same path
    D1, I1 = search.knn(index, queries[:1], 10)
    assert np.array_equal(I1, truth[1][:1])
    # more neighbours asked than rows: capped like faiss
    small = faiss.IndexFlatIP(refs.shape[1])
    small.add(refs[:3])
    assert search.knn(small, queries, 10)[1].shape == (60, 3)
    assert search.make_searcher(refs[:3], backend="torch").search(queries, 5)[1][:, 3:].tolist() == [[-1, -1]] * 60


def test_binary_backends_agree() -> None:
    rng = np.random.default_rng(2)
    codes = rng.integers(0, 256, (4000, 32), dtype=np.uint8)
    q = codes[:40].copy()
    q[:, :2] ^= 0x11                              # a few bits flipped: near copies
    Df, If = search.make_searcher(codes, metric="hamming", backend="faiss").search(q, 8)
    Dn, In = search.make_searcher(codes, metric="hamming", backend="numpy").search(q, 8)
    assert Df.dtype == Dn.dtype == np.int32
    assert np.array_equal(Df, Dn)                 # ties may order rows differently, distances may not
    assert np.array_equal(If[:, 0], np.arange(40)) and np.array_equal(In[:, 0], np.arange(40))


def test_faiss_on_a_gpu_where_faiss_has_one(dense, truth, monkeypatch) -> None:
    """faiss-gpu's calls are the path taken when faiss reports a GPU; faiss-cpu refuses with a clear message.

    faiss-cpu has no GPU code, so the GPU calls are stood in for by the CPU index
    they would copy (same searches): what is tested is the routing and the
    calls made, not a GPU."""
    import faiss

    refs, queries = dense
    assert search.faiss_gpus() == 0                               # the wheel this project installs
    with pytest.raises(ParameterError, match="faiss"):
        search.FaissSearcher(search.build_faiss_index(refs, "ip", kind="flat")[0], device="cuda")

    calls: list[tuple[str, int]] = []

    class Config:
        device = -1

    def to_gpu(res, gpu, index):
        calls.append(("dense", gpu))
        return index

    def binary_to_gpu(res, index, cfg):
        calls.append(("binary", cfg.device))
        return index

    for name, value in (("get_num_gpus", lambda: 2), ("StandardGpuResources", object),
                        ("index_cpu_to_gpu", to_gpu), ("GpuIndexBinaryFlatConfig", Config),
                        ("GpuIndexBinaryFlat", binary_to_gpu)):
        monkeypatch.setattr(faiss, name, value, raising=False)
    assert search.faiss_gpus() == 2
    s = search.make_searcher(refs, backend="faiss", device="cuda:1")
    D, I = s.search(queries, 10)
    assert calls == [("dense", 1)] and isinstance(s, search.FaissSearcher) and s.device == "cuda:1"
    assert np.array_equal(I, truth[1]) and np.allclose(D, truth[0], atol=1e-5)
    # binary codes with device auto go to faiss's GPU; dense ones would go to torch's
    rng = np.random.default_rng(3)
    codes = rng.integers(0, 256, (500, 32), dtype=np.uint8)
    index, _ = search.build_faiss_index(codes, "hamming")
    Db, Ib = search.knn(index, codes[:20], 3, device="auto")
    assert calls[-1] == ("binary", 0) and np.array_equal(Ib[:, 0], np.arange(20)) and (Db[:, 0] == 0).all()
    Db, Ib = search.knn(index, codes[:20], 3, device="cuda:1")
    assert calls[-1] == ("binary", 1) and np.array_equal(Ib[:, 0], np.arange(20))
    with pytest.raises(ParameterError):
        search.FaissSearcher(index, device="cuda:2")               # faiss sees 2 GPUs: 0 and 1
    search._CACHE.clear()


def test_hashes_asked_on_cuda_are_searched_where_faiss_can() -> None:
    """`scan --device cuda` over hash features: faiss-cpu searches the codes on the CPU instead of failing."""
    rng = np.random.default_rng(4)
    codes = rng.integers(0, 256, (300, 32), dtype=np.uint8)
    index, _ = search.build_faiss_index(codes, "hamming")
    D0, I0 = search.knn(index, codes[:10], 4)
    for device in ("cuda", "auto"):
        D, I = search.knn(index, codes[:10], 4, device=device)
        assert np.array_equal(I[:, 0], np.arange(10)) and np.array_equal(D, D0)


def test_bad_input_is_a_parameter_error(dense) -> None:
    refs, queries = dense
    with pytest.raises(ParameterError):
        search.make_searcher(refs, backend="gpu-magic")
    with pytest.raises(ParameterError):
        search.make_searcher(refs, backend="faiss", precision="bf16")
    with pytest.raises(ParameterError):
        search.make_searcher(refs, backend="numpy").search(queries[:, :10], 5)
    with pytest.raises(ParameterError):
        search.make_searcher(refs, backend="numpy").search(queries, 0)
    with pytest.raises(ParameterError):
        search.resolve_device("tpu")


def test_ivf_by_size(dense) -> None:
    refs, queries = dense
    index, params = search.build_faiss_index(refs, "ip")
    assert params["type"] == "flat"
    index, params = search.build_faiss_index(refs, "ip", kind="ivf", nlist=16)
    assert params["type"] == "ivf" and params["recall_at_10"] >= 0.95 and index.nprobe == params["nprobe"]


@pytest.mark.parametrize("first,second", [("faiss", "torch"), ("torch", "faiss")])
def test_import_order_of_faiss_and_torch(first: str, second: str) -> None:
    """Both OpenMP runtimes loaded, in either order: searching neither crashes nor hangs."""
    code = (f"import {first}, {second}\n"
            "import numpy as np\nfrom scanner import search\n"
            "r = np.random.default_rng(0).standard_normal((5000, 64)).astype('float32')\n"
            "r /= np.linalg.norm(r, axis=1, keepdims=True)\n"
            "a = search.make_searcher(r, backend='faiss').search(r[:300], 5)[1]\n"
            "b = search.make_searcher(r, backend='torch').search(r[:300], 5)[1]\n"
            "c = search.make_searcher(r, backend='faiss').search(r[:300], 5)[1]\n"
            "assert (a == b).all() and (a == c).all()\n")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_fused_kernel_in_triton_interpreter() -> None:
    """The CUDA kernels' arithmetic, run by Triton's CPU interpreter (fp32 and fp16, int8 rows).

    Covers the group and super-group maxima, the fp32 candidate re-score (rows past the
    end score -inf) and the fused searcher end to end with the two-level selection
    (more super-groups than k) over several query blocks. bf16 is left out: the
    interpreter misreads bf16 tensors (it runs on the GPU, see benchmarks/README.md).
    """
    triton = pytest.importorskip("triton")
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        # there the compiled kernel runs (benchmarks/search_sweep.py check, every variant
        # against a float64 product), and Triton before 3.7 cannot interpret its tl.range loop
        pytest.skip(f"a GPU is present (Triton {triton.__version__}): the kernels are checked compiled")
    code = ("import numpy as np, torch\nfrom scanner import search\n"
            "rng = np.random.default_rng(0)\n"
            "R = rng.standard_normal((2000, 64)).astype(np.float32); R /= np.linalg.norm(R, axis=1, keepdims=True)\n"
            "Q = R[:45].copy()\n"
            "S = np.pad(Q @ R.T, ((0, 0), (0, 48)), constant_values=-np.inf)\n"
            "want, wsup = S.reshape(45, 64, 32).max(-1)[:, :63], S.reshape(45, 16, 128).max(-1)\n"
            "for dt, tol in ((torch.float32, 1e-5), (torch.float16, 2e-3)):\n"
            "    g, s = search.ip_group_max(torch.from_numpy(Q).to(dt), torch.from_numpy(R).to(dt), group=32,\n"
            "                               super_group=128)\n"
            "    assert np.abs(g.numpy() - want).max() < tol and np.abs(s.numpy() - wsup).max() < tol\n"
            "R8 = np.rint(R * 100).astype(np.int8)\n"
            "g = search.ip_group_max(torch.from_numpy(Q).half(), torch.from_numpy(R8), group=32).numpy()\n"
            "w8 = np.pad(Q @ R8.T.astype(np.float32), ((0, 0), (0, 48)), constant_values=-np.inf)\n"
            "assert np.abs(g - w8.reshape(45, 64, 32).max(-1)[:, :63]).max() < 0.2\n"
            "cols = rng.integers(-1, 2100, (45, 40))\n"
            "sc = search.rescore_candidates(torch.from_numpy(Q), torch.from_numpy(R).half(), torch.from_numpy(cols))\n"
            "ok = (cols >= 0) & (cols < 2000)\n"
            "w = np.einsum('qd,qcd->qc', Q, R.astype(np.float16).astype(np.float32)[np.clip(cols, 0, 1999)])\n"
            "assert (np.isneginf(sc.numpy()) == ~ok).all() and np.abs(sc.numpy() - w)[ok].max() < 1e-5\n"
            "ref = search.make_searcher(R[:1995], backend='numpy').search(Q, 5)\n"
            "s = search.TorchSearcher(R[:1995], precision='fp32', group=32, query_block=40); s.fused = True\n"
            "assert (s.search(Q, 5)[1] == ref[1]).all()\n"
            "s = search.TorchSearcher(R[:1995], precision='fp16', group=16, query_block=40); s.fused = True\n"
            "s.compute_dtype = torch.float16  # the GPU's compute type (bf16 on the CPU)\n"
            "D, I = s.search(Q, 5)\n"
            "assert (I == ref[1]).all() and np.abs(D - ref[0]).max() < 1e-3\n")
    env = dict(os.environ, TRITON_INTERPRET="1")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=300, env=env)


def _pairs_by_search(keys: np.ndarray, probes: np.ndarray, source: np.ndarray, cap: int) -> set:
    """Every (source, row) with equal keys, the slow obvious way."""
    out = set()
    for s, p in zip(source, probes):
        rows = np.flatnonzero(keys == p)
        if len(rows) <= cap:
            out.update((int(s), int(r)) for r in rows)
    return out


@pytest.mark.parametrize("max_key", [50, 1 << 30])   # directory, and a key space too large for one
def test_postings_ranges_and_runs_match_a_scan(max_key: int) -> None:
    rng = np.random.default_rng(3)
    keys = np.sort(rng.integers(0, max_key, 2000).astype(np.uint32))
    directory = search.key_directory(keys)
    assert (directory is None) == (max_key > search.DIRECTORY_MAX_KEYS)
    # present keys, absent keys, keys past the last one, a wrapped (huge) key
    probes = np.concatenate([keys[rng.integers(0, len(keys), 40)], rng.integers(0, max_key, 40),
                             [max_key + 5, 2**32 - 7]]).astype(np.uint32)
    source = np.arange(len(probes)) // 2
    lo, hi = search.postings_ranges(keys, probes, directory=directory)
    want_lo = np.searchsorted(keys, probes, "left")
    assert np.array_equal(lo, want_lo)
    assert np.array_equal(hi - lo, np.searchsorted(keys, probes, "right") - want_lo)
    n = hi - lo
    n[n > 30] = 0                                           # the stop-word cap, as the postings matcher does
    q, r = search.expand_runs(source, lo, n)
    assert q.dtype == r.dtype == np.int64 and len(q) == len(r) == n.sum()
    assert set(zip(q.tolist(), r.tolist())) == _pairs_by_search(keys, probes, source, 30)
    assert len(set(zip(q.tolist(), r.tolist()))) == len(q)  # no pair twice


def test_postings_edges() -> None:
    empty = np.zeros(0, np.uint32)
    d = search.key_directory(empty)
    lo, hi = search.postings_ranges(empty, np.array([0, 5], np.uint32), directory=d)
    assert np.array_equal(hi - lo, [0, 0])
    q, r = search.expand_runs(np.arange(2), lo, hi - lo)
    assert len(q) == len(r) == 0
    q, r = search.expand_runs(np.array([7]), np.array([3]), np.array([4]))
    assert q.tolist() == [7] * 4 and r.tolist() == [3, 4, 5, 6]
    with pytest.raises(ParameterError):
        search.key_directory(np.zeros((2, 2), np.uint32))


def test_a_few_queries_on_a_flat_index_give_what_faiss_gives() -> None:
    """Below SMALL_BATCH queries the flat dense path is a BLAS product (faiss would scan on
    one thread); the neighbours are the same."""
    import faiss

    rng = np.random.default_rng(7)
    refs = rng.normal(size=(5000, 64)).astype(np.float32)
    refs /= np.linalg.norm(refs, axis=1, keepdims=True)
    index = faiss.IndexFlatIP(64)
    index.add(refs)
    q = refs[[3, 4000]] + 0.01 * rng.normal(size=(2, 64)).astype(np.float32)
    assert len(q) < search.SMALL_BATCH
    D, I = search.knn(index, q, 10)
    Df, If = search.searcher_for(index, backend="faiss").search(q, 10)
    assert np.array_equal(I, If) and np.allclose(D, Df, atol=1e-5)
    assert I[0, 0] == 3 and I[1, 0] == 4000


def test_int8_on_the_cpu_finds_the_exact_neighbours(monkeypatch) -> None:
    """int8 GEMM candidates, re-scored against the fp32 rows: the exact neighbours and scores."""
    from scanner.bench import GaussianMixture

    mix = GaussianMixture(64, n_clusters=32, seed=3)
    refs, queries = mix.sample(20000, seed=1), mix.sample(150, seed=2)
    D0, I0 = search.make_searcher(refs, backend="numpy").search(queries, 10)
    # ragged blocks: group maxima merged every 2 tiles of 3008 rows (7 tiles, the last one
    # padded), query blocks of 64
    monkeypatch.setattr(search, "INT8_MERGE_TILES", 2)
    s = search.make_searcher(refs, backend="torch", precision="int8", ref_block=3000, query_block=64)
    assert s.int8_gemm and s.refs.dtype.itemsize == 1 and s.nbytes == refs.size   # a quarter of fp32
    D, I = s.search(queries, 10)
    assert search.recall_at_k(I, I0) >= 0.99
    assert np.allclose(D, D0, atol=1e-5)                       # exact fp32 scores of the rows found
    D1, I1 = s.search(queries[:1], 3)                          # one query, the single-asset check
    assert np.array_equal(I1[0], I[0, :3]) and np.allclose(D1[0], D[0, :3])
    tiny = search.make_searcher(refs[:5], backend="torch", precision="int8").search(queries[:4], 10)[1]
    assert np.array_equal(np.sort(tiny[:, :5], 1), np.tile(np.arange(5), (4, 1))) and (tiny[:, 5:] == -1).all()
    # without the fp32 re-score of a shortlist (oversample 1) int8 rounding alone loses neighbours
    Dr, Ir = search.make_searcher(refs, backend="torch", precision="int8", oversample=1).search(queries, 10)
    assert search.recall_at_k(Ir, I0) < search.recall_at_k(I, I0)


@pytest.mark.parametrize("codec", ["sq8", "pq"])
def test_compressed_ivf_from_a_stream_by_size(monkeypatch, codec: str) -> None:
    """Past the size threshold: a compressed IVF built in one pass over blocks, recall measured against exact search."""
    import faiss

    from scanner.bench import GaussianMixture

    mix = GaussianMixture(32, n_clusters=16, seed=5)
    vecs = mix.sample(5000, seed=1)
    monkeypatch.setattr(search, "COMPRESSED_MAX_LISTS", 16)
    monkeypatch.setattr(search, "COMPRESSED_CODEC", codec)
    index, params = search.build_faiss_index(vecs, "ip", code_bytes=16)
    assert params["type"] == "flat"                                    # small: exact
    monkeypatch.setattr(search, "COMPRESSED_MIN_BYTES", vecs.nbytes)
    a, pa = search.build_faiss_index(vecs, "ip", code_bytes=16)
    b, pb = search.build_faiss_index(search.VectorStream.of(vecs, block=999), "ip", code_bytes=16)
    assert pa == pb and pa["type"] == f"ivf{codec}" and pa["nlist"] == 16
    assert pa["code_bytes"] == (32 if codec == "sq8" else 16)
    kind = faiss.IndexIVFScalarQuantizer if codec == "sq8" else faiss.IndexIVFPQ
    assert isinstance(a, kind) and a.ntotal == b.ntotal == 5000 and a.nprobe == pa["nprobe"]
    curve = list(pa["recall_by_nprobe"].values())
    assert curve[-1] == pa["recall_at_10"] and curve == sorted(curve) and 0.3 < curve[-1] <= 1
    if codec == "sq8":
        assert pa["recall_at_10"] >= 0.9                               # 8 bits a dimension: near exact
    q = mix.sample(40, seed=9)
    assert np.array_equal(search.knn(a, q, 5)[1], search.knn(b, q, 5)[1])
    # compressed codes are searched by faiss as built, whatever backend is asked for
    assert np.array_equal(search.knn(a, q, 5, backend="torch", precision="int8")[1], search.knn(a, q, 5)[1])
    assert "recall@10" in search.describe_index(pa) and f"IVF-{codec.upper()}" in search.describe_index(pa)
    with pytest.raises(ParameterError):
        search.build_faiss_index(vecs, "ip", kind="ivfpq", code_bytes=7)   # 7 does not divide 32

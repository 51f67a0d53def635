"""The dense search path chosen by measurement: when it measures, what it caches, and that every
path it may choose finds the same neighbours."""

from __future__ import annotations

import json

import faiss
import numpy as np
import pytest

from scanner import search, search_choice
from scanner.bench import GaussianMixture
from scanner.errors import ParameterError
from scanner.search_choice import Choice, Plan


@pytest.fixture()
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv(search_choice.ENV, str(tmp_path))
    return tmp_path / "search-choice.json"


@pytest.fixture(scope="module")
def rows() -> np.ndarray:
    return GaussianMixture(32, seed=3).sample(3000, seed=4)


def flat(rows: np.ndarray) -> faiss.Index:
    index = faiss.IndexFlatIP(rows.shape[1])
    index.add(rows)
    return index


def test_a_small_index_is_searched_by_faiss_without_measuring(cache, rows) -> None:
    c = search_choice.choose(len(rows), 32, 10, 64, refs=rows)
    assert c == Choice("faiss", "fp32", "rule") and not cache.exists()


def test_a_choice_is_measured_once_and_cached_for_this_machine(cache, rows, monkeypatch) -> None:
    monkeypatch.setattr(search_choice, "MIN_ROWS", 1000)
    c = search_choice.choose(len(rows), 32, 10, 64, refs=rows)
    assert c.source == "measured"
    assert set(c.timings) == {f"{b}:{p}" for b, p in search_choice.candidates()}
    ok = {n for n, t in c.timings.items() if (t["recall"] or 0) >= search_choice.TARGET_RECALL}
    assert c.label in ok or c.label == "faiss:fp32"
    entry = search_choice.cached()[0]
    # the key names the machine, its threads, the libraries and the shape
    for field in ("cpu", "flags", "threads", "numpy", "faiss", "torch", "likeness", "rows", "dim", "k", "batch"):
        assert field in entry["key"]
    assert entry["key"]["rows"] == 4096 and entry["key"]["batch"] == 64
    assert (entry["backend"], entry["precision"]) == (c.backend, c.precision)
    again = search_choice.choose(len(rows) + 5, 32, 10, 60, refs=None)     # same buckets: no rows needed
    assert again.source == "cache" and again.label == c.label
    # another thread count or shape measures again
    monkeypatch.setattr(search, "_n_threads", search.threads() + 1)
    assert search_choice.machine_key(len(rows), 32, 10, 64, search.threads()) not in json.loads(cache.read_text())
    assert search_choice.clear() == 1 and not cache.exists() and search_choice.cached() == []


def test_the_fastest_path_that_keeps_recall_is_picked() -> None:
    timings = {"faiss:fp32": {"qps": 100.0, "recall": 1.0}, "torch:int8": {"qps": 900.0, "recall": 0.95},
               "torch:fp32": {"qps": 300.0, "recall": 0.999}, "torch:bf16": {"qps": 50.0, "recall": None}}
    assert search_choice.pick(timings) == ("torch", "fp32")
    assert search_choice.pick({"torch:int8": {"qps": 9.0, "recall": 0.5}}) == ("faiss", "fp32")


def test_a_path_far_slower_on_one_call_is_not_timed_further(rows, monkeypatch) -> None:
    real = search.make_searcher

    class Slow:
        def __init__(self, s):
            self.s = s

        def search(self, q, k):
            import time

            time.sleep(0.2)
            return self.s.search(q, k)

    monkeypatch.setattr(search, "make_searcher",
                        lambda refs, **kw: Slow(real(refs, **kw)) if kw.get("backend") == "numpy" else real(refs, **kw))
    t = search_choice.measure(rows, 10, 64, paths=[("faiss", "fp32"), ("numpy", "fp32")])
    assert t["numpy:fp32"]["recall"] is None and t["faiss:fp32"]["recall"] == 1.0


def test_a_cache_that_cannot_be_written_still_chooses(tmp_path, rows, monkeypatch) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setenv(search_choice.ENV, str(blocker / "below"))          # a folder under a file
    monkeypatch.setattr(search_choice, "MIN_ROWS", 1000)
    assert search_choice.choose(len(rows), 32, 10, 64, refs=rows).source == "measured"


def test_a_damaged_cache_is_measured_anew(cache, rows, monkeypatch) -> None:
    cache.write_text("{not json")
    monkeypatch.setattr(search_choice, "MIN_ROWS", 1000)
    assert search_choice.choose(len(rows), 32, 10, 64, refs=rows).source == "measured"
    assert len(search_choice.cached()) == 1


PATHS = [("faiss", "fp32"), ("numpy", "fp32"), ("torch", "fp32"), ("torch", "int8"), ("torch", "bf16")]


@pytest.mark.parametrize("backend,precision", PATHS)
def test_every_path_the_choice_may_take_finds_the_same_neighbours(cache, rows, backend, precision,
                                                                  monkeypatch) -> None:
    """Whatever is chosen (here forced through the cache), a plan's search agrees with exact faiss."""
    if backend == "torch" and not search.has_torch():
        pytest.skip("torch not installed")
    monkeypatch.setattr(search_choice, "MIN_ROWS", 1000)
    index = flat(rows)
    queries = search_choice._queries(rows, 200, seed=9)
    key = search_choice.machine_key(len(rows), 32, 10, len(queries), search.threads())
    cache.write_text(json.dumps({key: {"backend": backend, "precision": precision, "timings": {}}}))
    plan = Plan("cpu")
    D, I = plan.knn(index, queries, 10)
    assert plan.choice(index, len(queries), 10) == Choice(backend, precision, "cache")
    assert plan.used[f"{len(rows)}x32"]["backend"] == backend
    D0, I0 = faiss.IndexFlatIP.search(index, queries, 10)
    assert search.recall_at_k(I, I0) >= search_choice.TARGET_RECALL
    same = I == I0
    np.testing.assert_allclose(D[same], D0[same], atol=1e-5)               # scores are fp32 re-scored


def test_a_named_backend_is_kept_and_a_bad_one_refused(rows) -> None:
    plan = Plan("cpu", "numpy")
    assert plan.choice(flat(rows), 64, 10) == Choice("numpy", "fp32", "user")
    with pytest.raises(ParameterError, match="torch"):
        Plan("cpu", "faiss", "int8")
    with pytest.raises(ParameterError, match="backend"):
        Plan("cpu", "hnsw")

"""The index directory: reopen, atomic swaps, locking, verification, tampering."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from scanner.demo import synthetic_picture
from scanner.errors import IndexError_, IndexLockedError, IndexMismatchError
from scanner.index import metadata, store, writer
from scanner.pipeline import FeatureOptions, build_index, remove_from_index


def test_index_reopens_identically(phash_index: Path) -> None:
    with store.open_index(phash_index) as a, store.open_index(phash_index) as b:
        assert a.index_id == b.index_id
        assert a.n_works == 10 == len(a.works())
        fa, fb = a.faiss_index("image-phash"), b.faiss_index("image-phash")
        assert np.array_equal(fa.reconstruct_n(0, fa.ntotal), fb.reconstruct_n(0, fb.ntotal))
        assert np.array_equal(a.rows("image-phash"), b.rows("image-phash"))
        assert {w.title for w in a.works().values()} == {f"Work {i}" for i in range(10)}
    # catalog, faiss index, row map, and the codes' crowding factors
    assert store.verify_index(phash_index)["files"] == 4


def _in_child(ask) -> bool:
    """``ask()`` answered in a forked child (through a pipe; the child leaves whatever happens)."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        ok = False
        try:
            ok = bool(ask())
        finally:
            os.write(write, b"1" if ok else b"0")
            os._exit(0)
    os.close(write)
    answer = os.read(read, 1)
    os.close(read)
    os.waitpid(pid, 0)
    return answer == b"1"


def test_a_forked_process_reads_the_catalog_through_its_own_connection(fresh_index: Path) -> None:
    """Decode workers judge with the scanner they inherit by fork: one SQLite connection
    must not serve two processes, and a worker started after a writer swapped the index
    still reads the catalog the scan opened."""
    with store.open_index(fresh_index) as idx:
        parent = idx.catalog()
        titles = {w.title for w in idx.works().values()}

        def reads_the_same_catalog() -> bool:
            lookup = idx.work_lookup()
            return idx.catalog() is not parent and {lookup[i].title for i in idx.works()} == titles \
                and sorted(lookup) == sorted(idx.works())

        assert _in_child(reads_the_same_catalog)
        with writer.IndexWriter(fresh_index) as w:  # swaps a new index in under the open one
            w.add_work(path="new.png", sha256="e" * 64, modality="image", title="New")
        with store.open_index(fresh_index) as new:
            assert new.n_works == len(titles) + 1
        assert _in_child(reads_the_same_catalog)
        assert idx.catalog() is parent  # this process keeps its own


def test_add_and_remove_keep_ids_and_vectors_consistent(fresh_index: Path, tmp_path: Path) -> None:
    more = tmp_path / "more"
    more.mkdir()
    for s in (50, 51):
        synthetic_picture(s).save(more / f"m{s}.png")
    before = store.open_index(fresh_index).index_id
    summary = build_index([more], fresh_index, create=False)
    assert summary.added == 2 and summary.n_works == 12
    again = build_index([more], fresh_index, create=False)  # same content is not added twice
    assert again.added == 0 and len(again.duplicates) == 2
    with store.open_index(fresh_index) as idx:
        assert idx.index_id == before
        ids = sorted(idx.works())
        assert ids == list(range(1, 13))
    assert remove_from_index(fresh_index, [2, 99]) == [2]
    with store.open_index(fresh_index) as idx:
        assert 2 not in idx.works() and idx.n_works == 11
        rows = idx.rows("image-phash")
        assert 2 not in set(rows[:, 0]) and len(rows) == idx.faiss_index("image-phash").ntotal == 2 * 11
    store.verify_index(fresh_index)


def test_failed_write_leaves_the_old_index_whole(fresh_index: Path) -> None:
    snapshot = {p.name: p.read_bytes() for p in fresh_index.rglob("*") if p.is_file() and not p.name.startswith(".")}
    with pytest.raises(RuntimeError):
        with writer.IndexWriter(fresh_index) as w:
            w.add_work(path="x.png", sha256="ab" * 32, modality="image")
            raise RuntimeError("killed")
    assert {p.name: p.read_bytes() for p in fresh_index.rglob("*") if p.is_file() and not p.name.startswith(".")} == snapshot
    assert not list(fresh_index.parent.glob(".index.tmp-*"))
    store.verify_index(fresh_index)


def test_swap_interrupted_between_renames_is_recovered(fresh_index: Path) -> None:
    old = fresh_index.parent / ".index.old-deadbeef"
    os.rename(fresh_index, old)  # as if killed right after the first rename
    with store.open_index(fresh_index) as idx:
        assert idx.n_works == 10
    assert fresh_index.exists() and not old.exists()


def _hold_lock(path: str, ready: "mp.synchronize.Event", release: "mp.synchronize.Event") -> None:
    with writer.IndexWriter(path):
        ready.set()
        release.wait(20)


def test_second_writer_gets_a_clear_locked_error(fresh_index: Path) -> None:
    ctx = mp.get_context("fork")
    ready, release = ctx.Event(), ctx.Event()
    proc = ctx.Process(target=_hold_lock, args=(str(fresh_index), ready, release))
    proc.start()
    try:
        assert ready.wait(20)
        with pytest.raises(IndexLockedError, match=f"locked by pid {proc.pid}"):
            with writer.IndexWriter(fresh_index):
                pass
        with store.open_index(fresh_index) as idx:  # readers are not blocked
            assert idx.n_works == 10
    finally:
        release.set()
        proc.join(20)


@pytest.mark.parametrize("victim", ["image-phash.faiss", "image-phash.rows.npy", "catalog.sqlite"])
def test_modified_data_file_is_refused_before_loading(fresh_index: Path, victim: str) -> None:
    path = fresh_index / victim
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(IndexError_, match="does not match the manifest"):
        store.verify_index(fresh_index)
    idx = store.open_index(fresh_index)
    with pytest.raises(IndexError_, match=victim.replace(".", r"\.")):
        idx.faiss_index("image-phash"), idx.rows("image-phash"), idx.works()


def test_verification_stamp_is_invalidated_by_a_change(fresh_index: Path) -> None:
    with store.open_index(fresh_index) as idx:
        idx.rows("image-phash")  # verified and stamped
    assert (fresh_index / store.STAMP).exists()
    rows = fresh_index / "image-phash.rows.npy"
    data = bytearray(rows.read_bytes())
    data[-1] ^= 0x01
    rows.write_bytes(bytes(data))
    with pytest.raises(IndexError_):
        store.open_index(fresh_index).rows("image-phash")


def test_signed_manifest(refs_dir: Path, tmp_path: Path) -> None:
    key = b"secret-key"
    index = tmp_path / "signed"
    build_index([refs_dir], index, options=FeatureOptions(names=["image-phash"]), hmac_key=key)
    store.verify_index(index, hmac_key=key)
    manifest = json.loads((index / "manifest.json").read_text())
    manifest["policy"]["flag_at"] = 1.0  # a swapped threshold
    (index / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(IndexError_, match="does not match its signature"):
        store.open_index(index, hmac_key=key)
    with pytest.raises(IndexError_, match="not signed"):
        shutil.copytree(index, tmp_path / "copy")
        (tmp_path / "copy" / "manifest.sig").unlink()
        store.open_index(tmp_path / "copy", hmac_key=key)


def test_featurizer_version_mismatch_is_refused(fresh_index: Path) -> None:
    with store.open_index(fresh_index) as idx:
        ident = dict(idx.features["image-phash"], version="phash-other")
        with pytest.raises(IndexMismatchError, match="phash-other"):
            idx.check_featurizer(ident)


def test_not_an_index(tmp_path: Path) -> None:
    with pytest.raises(IndexError_, match="no index at"):
        store.open_index(tmp_path / "nothing")
    (tmp_path / "dir").mkdir()
    with pytest.raises(IndexError_, match="manifest.json is missing"):
        store.open_index(tmp_path / "dir")


def test_metadata_sidecar_json_and_csv(tmp_path: Path) -> None:
    (tmp_path / "m.json").write_text(json.dumps({"a.png": {"title": "A", "rights_holder": "R",
                                                           "license": "CC", "licensed": True}}))
    meta = metadata.read_metadata(tmp_path / "m.json")
    assert meta["a.png"] == {"title": "A", "rights_holder": "R", "notes": None, "licence": "CC",
                             "licensed": True}
    (tmp_path / "m.csv").write_text("file,title\na.png,A\n")
    with pytest.raises(Exception, match="no 'path' column"):
        metadata.read_metadata(tmp_path / "m.csv")


def _dense_identity(dim: int) -> dict:
    return {"name": "synthetic-dense", "version": "1", "modality": "image", "kind": "dense", "metric": "ip",
            "dim": dim, "codes_per_item": 0, "model": None}


def test_streamed_compressed_ivf_is_written_opened_mapped_and_extended_without_decoding(tmp_path: Path, monkeypatch) -> None:
    """A dense feature from a vector stream past the size threshold: compressed IVF, recall in the manifest,
    memory-mapped on open; adding and removing works keeps the codes (no rebuild from decoded rows)."""
    import faiss
    from typer.testing import CliRunner

    from scanner.bench import GaussianMixture
    from scanner.cli import app
    from scanner import search

    monkeypatch.setattr(search, "COMPRESSED_MIN_BYTES", 1 << 16)
    monkeypatch.setattr(search, "COMPRESSED_MAX_LISTS", 16)
    monkeypatch.setattr(store, "CHUNK_SIZE", 1 << 16)
    mix = GaussianMixture(32, n_clusters=16, seed=4)
    vecs = mix.sample(4000, seed=1)
    blocks_read = []

    def blocks():
        for s in range(0, len(vecs), 1000):
            blocks_read.append(s)
            yield vecs[s:s + 1000]

    stream = search.VectorStream(len(vecs), 32, blocks, lambda size, seed: mix.sample(size, seed=seed + 100))
    path = tmp_path / "big"
    with writer.IndexWriter(path, create=True) as w:
        ids = [w.add_work(path=f"w{i}.png", sha256=f"{i:064x}", modality="image") for i in range(40)]
        w.add_vector_stream(_dense_identity(32), stream, np.repeat(ids, 100), np.tile(np.arange(100), 40))
        with pytest.raises(Exception):
            w.vectors("synthetic-dense")                   # a stream's rows are not held
    assert blocks_read == [0, 1000, 2000, 3000]             # one pass
    with store.open_index(path) as idx:
        spec = idx.features["synthetic-dense"]
        assert spec["count"] == 4000 and spec["index"]["type"] == "ivfsq8"
        assert 0 < spec["index"]["recall_at_10"] <= 1 and spec["index"]["probe_queries"] == search.PROBE_QUERIES
        index = idx.faiss_index("synthetic-dense")
        assert isinstance(index, faiss.IndexIVFScalarQuantizer) and index.nprobe == spec["index"]["nprobe"]
        _, I = search.knn(index, vecs[:50], 5, device="auto")
        assert (I[:, 0] == np.arange(50)).mean() > 0.9      # a stored row finds itself
    res = CliRunner().invoke(app, ["index", "info", "--index", str(path)])
    assert res.exit_code == 0 and "IVF-SQ8" in res.stdout and "recall@10" in res.stdout
    store.verify_index(path)
    # memory-mapped when large: the codes stay in the file
    monkeypatch.setattr(store, "MMAP_FROM", 0)
    with store.open_index(path) as idx:
        idx.faiss_index("synthetic-dense")
        assert any(str(path / "synthetic-dense.faiss") in line for line in open("/proc/self/maps"))

    extra = mix.sample(300, seed=7)
    with writer.IndexWriter(path) as w:
        new = w.add_work(path="new.png", sha256="f" * 64, modality="image")
        w.add_vectors(_dense_identity(32), extra, np.full(300, new))
        assert w.remove_works([ids[0], ids[5]]) == [ids[0], ids[5]]
    with store.open_index(path) as idx:
        rows = idx.rows("synthetic-dense")
        index = idx.faiss_index("synthetic-dense")
        assert len(rows) == index.ntotal == 4000 - 200 + 300 == idx.features["synthetic-dense"]["count"]
        assert idx.features["synthetic-dense"]["index"]["rows_since_recall"] == 300
        assert not set(rows[:, 0]) & {ids[0], ids[5]}
        # rows renumbered in order: a kept row and a new row each find their own row number
        _, I = search.knn(index, np.concatenate([vecs[150:200], extra[:50]]), 1)
        want = np.concatenate([np.arange(50, 100), np.arange(3800, 3850)])
        assert (I[:, 0] == want).mean() > 0.9
        assert (rows[want[(I[:, 0] == want)]][:, 0] != ids[0]).all()
    store.verify_index(path)

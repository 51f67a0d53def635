"""Security: tampered indexes are refused before deserialisation, no code-running loaders, no network.

Index tampering: each kind of file an attacker could swap (vector file, row
map, catalog, manifest) is refused with a message naming it, and the refusal
happens before faiss, numpy or sqlite read a byte of it. A source guard keeps
pickle, eval and unguarded ``torch.load`` out of the library. Scans are run
under socket guards that fail on any connection. (Checkpoints in ``models/``
are verified by sha256 before loading: tests/test_clip.py
``test_import_register_and_verify``.)
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from scanner.cli import app
from scanner.demo import synthetic_picture
from scanner.errors import IndexError_
from scanner.index import store
from scanner.pipeline import FeatureOptions, Scanner, build_index

SCANNER = Path(__file__).resolve().parent.parent / "scanner"
runner = CliRunner()


# --- tampering --------------------------------------------------------------------------------------


def _flip(path: Path, at: float = 0.5) -> None:
    data = bytearray(path.read_bytes())
    data[int(len(data) * at)] ^= 0xFF
    path.write_bytes(bytes(data))


def _forbid_reading(monkeypatch: pytest.MonkeyPatch, victim: str) -> list[str]:
    """Make every deserialiser fail loudly when given ``victim``; returns the calls seen."""
    import faiss
    import sqlite3

    calls: list[str] = []

    def forbid(module: object, name: str) -> None:
        real = getattr(module, name)

        def fn(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
            if args and victim in str(args[0]):
                calls.append(name)
                raise AssertionError(f"{name} was called on the tampered {victim}")
            return real(*args, **kwargs)

        monkeypatch.setattr(module, name, fn)

    forbid(faiss, "read_index")
    forbid(faiss, "read_index_binary")
    forbid(np, "load")
    forbid(sqlite3, "connect")
    return calls


@pytest.mark.parametrize("victim", ["image-phash.faiss", "image-phash.rows.npy", "catalog.sqlite"])
@pytest.mark.parametrize("where", [0.0, 0.5, 0.999])
def test_modified_data_file_is_refused_before_deserialising(fresh_index: Path, monkeypatch: pytest.MonkeyPatch,
                                                            victim: str, where: float) -> None:
    calls = _forbid_reading(monkeypatch, victim)
    _flip(fresh_index / victim, where)
    with pytest.raises(IndexError_) as err:
        Scanner(fresh_index)
    assert victim in str(err.value) and "does not match the manifest" in str(err.value)
    assert calls == []


def test_stamp_does_not_cover_an_edit_that_restores_size_and_mtime(fresh_index: Path) -> None:
    Scanner(fresh_index).close()  # verified and stamped
    assert (fresh_index / store.STAMP).exists()
    path = fresh_index / "image-phash.faiss"
    before = path.stat()
    _flip(path)  # same inode, same size
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))  # and the old mtime back
    with pytest.raises(IndexError_, match="does not match the manifest"):
        Scanner(fresh_index)  # the change time (which no user can set) gives it away
    with pytest.raises(IndexError_, match="does not match the manifest"):
        store.verify_index(fresh_index)


def test_modified_manifest_is_refused(fresh_index: Path, tmp_path: Path) -> None:
    manifest = fresh_index / "manifest.json"
    data = json.loads(manifest.read_text())
    data["files"]["image-phash.rows.npy"]["sha256"][0] = "0" * 64  # a hash that no longer matches
    manifest.write_text(json.dumps(data))
    with pytest.raises(IndexError_, match=r"image-phash\.rows\.npy does not match the manifest"):
        Scanner(fresh_index)
    manifest.write_text("{ not json")
    with pytest.raises(IndexError_, match="manifest.json is not valid JSON"):
        store.open_index(fresh_index)
    manifest.write_text(json.dumps({"format": "likeness-index", "format_version": 99}))
    with pytest.raises(IndexError_, match="index format 99"):
        store.open_index(fresh_index)


def _swap_rows_consistently(index: Path) -> None:
    """What an attacker with write access does: change a file and re-hash it into the manifest."""
    rows_path = index / "image-phash.rows.npy"
    rows = np.load(rows_path, allow_pickle=False).copy()
    rows[:, 0] = rows[::-1, 0]  # every vector now points at another work
    with open(rows_path, "wb") as fh:
        np.save(fh, rows, allow_pickle=False)
    manifest = json.loads((index / "manifest.json").read_text())
    manifest["files"]["image-phash.rows.npy"] = store.file_hashes(rows_path)
    (index / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True))
    (index / store.STAMP).unlink(missing_ok=True)


def test_hmac_key_catches_a_consistent_forgery(refs_dir: Path, tmp_path: Path) -> None:
    key_file = tmp_path / "key"
    key_file.write_bytes(b"kept-outside-the-index\n")
    index = tmp_path / "signed"
    build_index([refs_dir], index, options=FeatureOptions(names=["image-phash"]),
                hmac_key=store.load_hmac_key(key_file))
    r = runner.invoke(app, ["index", "verify", "--index", str(index), "--hmac-key-file", str(key_file)])
    assert r.exit_code == 0, r.output
    _swap_rows_consistently(index)
    # without the key the forgery is self-consistent: only the signature can catch it
    assert store.verify_index(index)["files"] >= 3
    r = runner.invoke(app, ["index", "verify", "--index", str(index), "--hmac-key-file", str(key_file)])
    assert r.exit_code == 2 and "does not match its signature" in r.output and "Traceback" not in r.output
    synthetic_picture(5).save(tmp_path / "x.png")
    r = runner.invoke(app, ["scan", str(tmp_path / "x.png"), "--index", str(index), "-q"],
                      env={"LIKENESS_HMAC_KEY_FILE": str(key_file)})
    assert r.exit_code == 2 and "does not match its signature" in r.output
    wrong = tmp_path / "wrong-key"
    wrong.write_bytes(b"another key")
    r = runner.invoke(app, ["index", "info", "--index", str(index), "--hmac-key-file", str(wrong)])
    assert r.exit_code == 2 and "signed with another key" in r.output


def test_tampered_index_through_the_cli_is_one_clear_line(fresh_index: Path, tmp_path: Path) -> None:
    _flip(fresh_index / "image-phash.faiss")
    synthetic_picture(5).save(tmp_path / "x.png")
    r = runner.invoke(app, ["scan", str(tmp_path / "x.png"), "--index", str(fresh_index), "-q"])
    assert r.exit_code == 2, r.output
    assert "image-phash.faiss does not match the manifest" in r.output and "Traceback" not in r.output
    r = runner.invoke(app, ["index", "verify", "--index", str(fresh_index)])
    assert r.exit_code == 2 and "chunk 0 differs" in r.output


# --- no code-running loaders ------------------------------------------------------------------------

_FORBIDDEN = [
    (re.compile(r"\bpickle\.(loads?|Unpickler)\b"), "pickle loading"),
    (re.compile(r"^\s*(import|from)\s+(cPickle|dill|cloudpickle|shelve|marshal)\b"), "a pickle-like module"),
    (re.compile(r"(?<![.\w])eval\("), "eval("),
    (re.compile(r"(?<![.\w])exec\("), "exec("),
    (re.compile(r"allow_pickle\s*=\s*True"), "allow_pickle=True"),
    (re.compile(r"\byaml\.load\("), "yaml.load"),
    (re.compile(r"\bjoblib\.load\("), "joblib.load"),
    (re.compile(r"\bread_pickle\("), "read_pickle"),
]


def test_no_pickle_eval_or_unguarded_torch_load_in_the_library() -> None:
    sources = sorted(SCANNER.rglob("*.py"))
    assert len(sources) > 10
    found = []
    for path in sources:
        text = path.read_text()
        for lineno, line in enumerate(text.splitlines(), 1):
            code = line.split("#", 1)[0]
            for pattern, what in _FORBIDDEN:
                if pattern.search(code):
                    found.append(f"{path.relative_to(SCANNER.parent)}:{lineno}: {what}")
        # every torch.load call passes weights_only=True within its own parentheses
        for m in re.finditer(r"torch\.load\(", text):
            depth, end = 1, m.end()
            while depth and end < len(text):
                depth += {"(": 1, ")": -1}.get(text[end], 0)
                end += 1
            if not re.search(r"weights_only\s*=\s*True", text[m.end():end]):
                found.append(f"{path.relative_to(SCANNER.parent)}: torch.load without weights_only=True")
        for m in re.finditer(r"\bnp\.load\(", text):  # numpy's default is safe; being explicit keeps it so
            call = text[m.end(): text.find(")", m.end()) + 1]
            if "allow_pickle=False" not in call:
                found.append(f"{path.relative_to(SCANNER.parent)}: np.load without allow_pickle=False")
    assert not found, "\n".join(found)


# --- no network -------------------------------------------------------------------------------------


@pytest.fixture
def socket_guard(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every way to open a connection raises (forked decode workers inherit the patch)."""
    attempts: list[str] = []

    def refuse(name: str):  # noqa: ANN202
        def fn(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
            attempts.append(f"{name}{args[1:2] if name.startswith('socket.') else args[:1]}")
            raise OSError(f"network access attempted: {name}")
        return fn

    monkeypatch.setattr(socket.socket, "connect", refuse("socket.connect"))
    monkeypatch.setattr(socket.socket, "connect_ex", refuse("socket.connect_ex"))
    monkeypatch.setattr(socket.socket, "sendto", refuse("socket.sendto"))
    monkeypatch.setattr(socket, "create_connection", refuse("create_connection"))
    monkeypatch.setattr(socket, "getaddrinfo", refuse("getaddrinfo"))
    return attempts


def test_build_and_scan_open_no_network_connection(refs_dir: Path, tmp_path: Path, socket_guard: list[str],
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LIKENESS_MODELS_DIR", str(tmp_path / "no-models"))  # CLIP absent: never fetched
    index = tmp_path / "index"
    r = runner.invoke(app, ["index", "build", str(refs_dir), "--index", str(index), "-q"])
    assert r.exit_code == 0, r.output
    outs = tmp_path / "outs"
    outs.mkdir()
    for s in range(4):
        synthetic_picture(7000 + s).save(outs / f"o{s}.png")
    (outs / "copy.png").write_bytes((refs_dir / "ref2.png").read_bytes())
    r = runner.invoke(app, ["scan", str(outs), "--index", str(index), "--out", str(tmp_path / "res"), "-q"])
    assert r.exit_code == 1, r.output  # the copy is flagged: the scan really ran
    r = runner.invoke(app, ["check", str(outs / "o0.png"), "--index", str(index), "--html",
                            str(tmp_path / "one.html")])
    assert r.exit_code == 0, r.output
    assert socket_guard == []


_AUDITED = """
import os, sys
def hook(event, args):
    if event in ("socket.connect", "socket.getaddrinfo", "socket.bind", "socket.sendto", "urllib.Request"):
        sys.stderr.write(f"NETWORK {event} {args!r}\\n")
        sys.stderr.flush()
        os._exit(97)
sys.addaudithook(hook)
from scanner.cli import app
sys.argv = ["likeness", *sys.argv[1:]]
app()
"""


def test_real_scan_process_makes_no_socket_call(phash_index: Path, tmp_path: Path) -> None:
    """An audit hook sees every socket call made through Python, in the process and its forked workers."""
    for s in range(3):
        synthetic_picture(7100 + s).save(tmp_path / f"o{s}.png")
    env = dict(os.environ, LIKENESS_MODELS_DIR=str(tmp_path / "no-models"))
    proc = subprocess.run([sys.executable, "-c", _AUDITED, "scan", str(tmp_path), "--index", str(phash_index),
                           "--out", str(tmp_path / "res"), "-q"], capture_output=True, text=True, env=env,
                          timeout=300)
    assert "NETWORK" not in proc.stderr, proc.stderr
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert len((tmp_path / "res" / "results.jsonl").read_text().splitlines()) == 3
    digest = hashlib.sha256((tmp_path / "o0.png").read_bytes()).hexdigest()
    assert digest in (tmp_path / "res" / "results.jsonl").read_text()

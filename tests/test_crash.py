"""Crash safety and concurrency: kill -9 at every step of a write, kill a scan and resume.

Writers are killed deterministically through the store's test hook
(``LIKENESS_CRASH_AT=<step>`` makes the writer SIGKILL itself right after that
step of its commit; ``<step>:stop`` pauses it with SIGSTOP so a test can read
the index mid-commit). Each kill must leave either the old or the new index,
whole, with ``index verify`` passing.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from scanner.demo import synthetic_picture
from scanner.errors import IndexLockedError
from scanner.index import store
from scanner.index.writer import IndexWriter
from scanner.pipeline import build_index, check, read_results


def _cli(*args: str, env: dict[str, str] | None = None, **kwargs) -> subprocess.Popen:
    full_env = {k: v for k, v in os.environ.items() if k != "LIKENESS_CRASH_AT"}
    full_env.update(env or {})
    return subprocess.Popen([sys.executable, "-m", "scanner.cli", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=full_env, **kwargs)


def _run(*args: str, env: dict[str, str] | None = None, timeout: float = 120) -> tuple[int, str, str]:
    proc = _cli(*args, env=env)
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err


def _state(index: Path) -> tuple[str, int]:
    store.verify_index(index)  # every file against the manifest, counts consistent
    with store.open_index(index) as idx:
        return idx.index_id, idx.n_works


@pytest.fixture
def more_refs(tmp_path: Path) -> Path:
    more = tmp_path / "more"
    more.mkdir()
    for s in (60, 61, 62):
        synthetic_picture(s).save(more / f"m{s}.png")
    return more


# --- kill -9 during index build and index add ------------------------------------------------

STEPS = ["staged", "manifest", "swapped"]


@pytest.mark.parametrize("command", ["build", "add"])
def test_kill_during_write_leaves_old_or_new_index(fresh_index: Path, more_refs: Path, command: str) -> None:
    old_id, old_n = _state(fresh_index)
    for step in STEPS:
        before_id, before_n = _state(fresh_index)
        args = ["index", command, str(more_refs), "--index", str(fresh_index), "-q"]
        if command == "build":
            args += ["--features", "image-phash"]
        rc, out, err = _run(*args, env={"LIKENESS_CRASH_AT": step})
        assert rc == -signal.SIGKILL, (step, rc, out, err)
        after_id, after_n = _state(fresh_index)
        if step == "swapped":  # the new index was in place when it died
            assert after_n == (3 if command == "build" else before_n + 3), step
            assert (after_id != before_id) if command == "build" else (after_id == old_id), step
        else:  # died before the swap: the old one, untouched
            assert (after_id, after_n) == (before_id, before_n), step
        rc, out, err = _run("index", "verify", "--index", str(fresh_index))
        assert rc == 0 and "OK" in out, (step, out, err)
    # the next writer takes the lock the dead one held and sweeps its leftovers
    summary = build_index([more_refs], fresh_index, create=False)
    assert summary.added == 0 and len(summary.duplicates) == 3
    assert not [p for p in fresh_index.parent.iterdir() if p.name.startswith(f".{fresh_index.name}.")
                and not p.name.endswith(".lock")]
    assert _state(fresh_index)[0] != old_id or command == "add"


_ADD_WITHOUT_EXCHANGE = """
import sys
from scanner.index import writer
from scanner.pipeline import build_index
writer._exchange = lambda a, b: False  # as on a file system without RENAME_EXCHANGE
build_index([sys.argv[2]], sys.argv[1], create=False)
"""


def test_kill_between_the_two_renames_is_recovered(fresh_index: Path, more_refs: Path) -> None:
    """Where paths cannot be exchanged atomically, a kill between the renames is undone by the next open."""
    before = _state(fresh_index)
    env = dict(os.environ, LIKENESS_CRASH_AT="first-rename")
    proc = subprocess.run([sys.executable, "-c", _ADD_WITHOUT_EXCHANGE, str(fresh_index), str(more_refs)],
                          env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert not fresh_index.exists()  # killed with the old index moved aside
    assert _state(fresh_index) == before  # the reader puts it back
    rc, out, _ = _run("index", "verify", "--index", str(fresh_index))
    assert rc == 0


# --- concurrency: a paused writer ------------------------------------------------------------------


def _wait_stopped(proc: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()
        with open(f"/proc/{proc.pid}/stat") as fh:
            if fh.read().rsplit(")", 1)[1].split()[0] == "T":
                return
        time.sleep(0.05)
    raise AssertionError("the writer never reached its pause point")


@pytest.mark.parametrize("step", ["staged", "manifest", "swapped"])
def test_readers_and_writers_while_a_writer_is_mid_commit(fresh_index: Path, more_refs: Path, refs_dir: Path,
                                                         tmp_path: Path, step: str) -> None:
    old_id, old_n = _state(fresh_index)
    writer = _cli("index", "add", str(more_refs), "--index", str(fresh_index), "-q",
                  env={"LIKENESS_CRASH_AT": f"{step}:stop"})
    try:
        _wait_stopped(writer)
        # a second writer is refused, naming the one that holds the lock
        with pytest.raises(IndexLockedError, match=f"index {fresh_index} is locked by pid {writer.pid}"):
            with IndexWriter(fresh_index):
                pass
        rc, out, err = _run("index", "remove", "1", "--index", str(fresh_index))
        assert rc == 2 and f"is locked by pid {writer.pid}" in err and "Traceback" not in err, err
        # readers see one whole version: the old one until the swap, the new one after
        expected_n = old_n + 3 if step == "swapped" else old_n
        assert _state(fresh_index) == (old_id, expected_n)
        Image.open(more_refs / "m61.png").save(tmp_path / "copy.png")
        result, run = check(tmp_path / "copy.png", fresh_index)
        assert run["n_works"] == expected_n
        assert result.verdict == ("flagged" if step == "swapped" else "clear"), result.reason
    finally:
        writer.send_signal(signal.SIGCONT)
        out, err = writer.communicate(timeout=60)
    assert writer.returncode == 0, err
    assert _state(fresh_index) == (old_id, old_n + 3)


# --- kill -9 during a scan, then --resume --------------------------------------------------------------


def test_killed_scan_resumes_with_every_input_exactly_once(phash_index: Path, tmp_path: Path) -> None:
    outs = tmp_path / "outs"
    outs.mkdir()
    rng = np.random.default_rng(0)
    n = 400
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (48, 48, 3), dtype=np.uint8)).save(outs / f"o{i:04d}.png")
    (outs / "o0007.png").write_bytes(b"")  # an error line too
    res = tmp_path / "res"
    scan_args = ("scan", str(outs), "--index", str(phash_index), "--out", str(res), "-q")
    proc = _cli(*scan_args, start_new_session=True)
    results = res / "results.jsonl"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if results.exists() and results.read_bytes().count(b"\n") >= 70:
            break
        time.sleep(0.01)
    assert proc.poll() is None, "the scan ended before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)  # the scan process only, as `kill -9 PID` would
    proc.wait(timeout=60)
    # its decode workers do not outlive it (they would hold memory and the output pipes)
    deadline = time.monotonic() + 5
    while (survivors := subprocess.run(["pgrep", "-s", str(proc.pid)], capture_output=True,
                                       text=True).stdout.split()) and time.monotonic() < deadline:
        time.sleep(0.1)
    for pid in survivors:  # clean up before failing, so nothing lingers after the test
        os.kill(int(pid), signal.SIGKILL)
    proc.communicate(timeout=60)
    assert not survivors, f"decode workers outlived the killed scan: {survivors}"
    done = read_results(results)
    assert 70 <= len(done) < n
    # and a line torn in the middle, as a kill inside write() leaves it
    with open(results, "ab") as fh:
        fh.write(b'{"path": "' + str(outs / "o0399.png").encode() + b'", "sha256": "ab')
    rc, out, err = _run(*scan_args, "--resume")
    assert rc == 3, out + err  # the zero-byte file is an error; nothing flagged
    lines = read_results(results)
    paths = [r["path"] for r in lines]
    assert len(paths) == len(set(paths)) == n
    assert set(paths) == {str(p) for p in outs.iterdir()}
    assert results.read_bytes().endswith(b"\n")
    for raw in results.read_bytes().splitlines():
        json.loads(raw)  # no torn fragment left in the file
    run = json.loads((res / "run.json").read_text())
    assert run["resumed"] == len(done)
    assert sum(run["counts"].values()) == n and run["counts"]["error"] == 1


def test_torn_last_line_is_never_a_result(tmp_path: Path) -> None:
    path = tmp_path / "results.jsonl"
    whole = json.dumps({"path": "a.png", "verdict": "clear"}) + "\n"
    # a complete JSON object without its newline is still a torn line: the writer died mid-write
    path.write_text(whole + json.dumps({"path": "b.png", "verdict": "flagged"}))
    assert [r["path"] for r in read_results(path)] == ["a.png"]
    from scanner.results import truncate_torn_tail as _truncate_torn_tail

    _truncate_torn_tail(path, block=7)  # small blocks: the search crosses block edges
    assert path.read_text() == whole
    path.write_text('{"path": "only-a-fragm')
    _truncate_torn_tail(path)
    assert path.read_text() == ""

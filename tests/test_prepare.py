"""Where inputs are prepared: threads, or worker processes started fresh for a featurizer with a model.

A scan with ``image-clip`` prepares a long input list in spawned worker
processes that get the featurizers without their model
(:meth:`scanner.features.base.Featurizer.for_preparation`); these tests hold
that path to the thread path's output, its error lines and its clean-up.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))  # for tiny_clip, whatever the rootdir

from tiny_clip import make_tiny_checkpoint  # noqa: E402

from scanner import media, pipeline  # noqa: E402
from scanner.demo import synthetic_picture  # noqa: E402
from scanner.errors import ParameterError  # noqa: E402
from scanner.features import make  # noqa: E402
from scanner.features.base import Featurizer  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


class Crashing(Featurizer):
    """A featurizer whose preparation kills its process on 77 x 77 pictures, as a segfaulting decoder would.

    Not weight-free by name, so the pipeline spawns workers for it (which import it from this module).
    """

    name = "image-crash-probe"
    kind = "dense"
    metric = "ip"
    version = "1"
    dim = 1

    def prepare(self, image, content=None):
        if image.size == (77, 77) and multiprocessing.parent_process() is not None:
            os._exit(139)
        return np.zeros(1, np.float32)

    def embed(self, prepared):
        return np.ones((len(prepared), 1), np.float32)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_tiny_checkpoint(tmp_path_factory.mktemp("tiny"), seed=0)


@pytest.fixture(scope="module")
def pictures(tmp_path_factory) -> list[media.Input]:
    """Pictures of several sizes and modes, a corrupt file and an empty one."""
    d = tmp_path_factory.mktemp("pictures")
    for i in range(14):
        pic = synthetic_picture(i, (320, 240) if i % 3 else (90, 300))
        pic = pic.convert(("RGB", "RGBA", "L", "P")[i % 4])
        pic.save(d / f"p{i:02d}.png")
    (d / "p03.png").write_bytes(b"\x89PNG\r\n\x1a\n not a picture after all")
    (d / "p09.png").write_bytes(b"")
    return [media.Input(p, "image") for p in sorted(d.iterdir())]


def _workers() -> list[multiprocessing.Process]:
    return [p for p in multiprocessing.active_children() if p.is_alive()]


def test_processes_prepare_and_embed_exactly_what_threads_do(tiny, pictures) -> None:
    config, ckpt = tiny
    clip = make("image-clip", model=str(config), pretrained=str(ckpt))
    feats = [make("image-phash"), clip]
    clip.embed([clip.prepare(Image.new("RGB", (40, 40)))])  # the model is loaded here: never shipped
    threads = list(pipeline.prepare_stream(pictures, feats, mode="threads"))
    stream = pipeline.prepare_stream(pictures, feats, mode="processes")
    procs = [next(stream)]
    assert _workers(), "no worker process prepared the inputs"
    procs += list(stream)
    assert [p.item for p in procs] == pictures
    for t, p in zip(threads, procs):
        assert (t.error, t.sha256, t.featureless) == (p.error, p.sha256, p.featureless)
        assert t.prepared.keys() == p.prepared.keys()
        for name in t.prepared:
            np.testing.assert_array_equal(t.prepared[name], p.prepared[name])
    errors = {p.item.path.name: p.error for p in procs if p.error}
    assert set(errors) == {"p03.png", "p09.png"}, errors
    ok = [i for i, p in enumerate(procs) if p.error is None]
    np.testing.assert_array_equal(clip.embed([threads[i].prepared["image-clip"] for i in ok]),
                                  clip.embed([procs[i].prepared["image-clip"] for i in ok]))


def test_few_inputs_stay_in_threads_and_long_ones_go_to_processes(tiny, pictures, monkeypatch) -> None:
    config, ckpt = tiny
    feats = [make("image-clip", model=str(config), pretrained=str(ckpt))]
    expected = [p.prepared["image-clip"] for p in pipeline.prepare_stream(pictures[:1], feats, mode="threads")]
    monkeypatch.setattr(pipeline, "PROCESS_AFTER", 8)
    monkeypatch.setattr(pipeline, "PROCESS_MIN_CPUS", 1)
    # a list of 8: threads only, no worker start-up (a `likeness check`)
    for p in pipeline.prepare_stream(pictures[:8], feats):
        assert not _workers()
    # an iterable: processes once it has yielded more than PROCESS_AFTER inputs (one worker
    # reads 4 ahead: the first result comes before)
    many = [pictures[0]] * 40
    seen, started = [], False
    for p in pipeline.prepare_stream(iter(many), feats, workers=1):
        seen.append(p)
        if len(seen) == 1:
            assert not _workers()
        started = started or bool(_workers())
    assert started, "no worker processes for a long input"
    assert len(seen) == 40 and all(p.item == pictures[0] for p in seen)
    for p in seen:
        np.testing.assert_array_equal(p.prepared["image-clip"], expected[0])
    # where threads are as fast (few cores), or when told so, threads only
    monkeypatch.setattr(pipeline, "PROCESS_MIN_CPUS", len(os.sched_getaffinity(0)) + 1)
    for p in pipeline.prepare_stream(many, feats):
        assert not _workers()
    monkeypatch.setattr(pipeline, "PROCESS_MIN_CPUS", 1)
    monkeypatch.setenv(pipeline.PREPARE_ENV, "threads")
    for p in pipeline.prepare_stream(many, feats):
        assert not _workers()
    monkeypatch.setenv(pipeline.PREPARE_ENV, "fibers")
    with pytest.raises(ParameterError, match="threads"):
        next(pipeline.prepare_stream(many, feats))


def test_a_crash_in_a_spawned_worker_costs_one_error_line(tmp_path: Path) -> None:
    for i in range(20):
        synthetic_picture(900 + i, (77, 77) if i == 7 else (80, 60)).save(tmp_path / f"o{i:02d}.png")
    items = [media.Input(p, "image") for p in sorted(tmp_path.iterdir())]
    out = list(pipeline.prepare_stream(items, [Crashing()], mode="processes"))
    assert [p.item for p in out] == items
    errors = {p.item.path.name: p.error for p in out if p.error}
    assert errors == {"o07.png": "the decoder crashed on this file"}


def test_a_script_without_a_main_guard_is_prepared_in_threads(tiny, pictures, tmp_path: Path) -> None:
    """Spawned workers import the script again: there it must not run its work a second time."""
    config, ckpt = tiny
    script = tmp_path / "unguarded.py"
    script.write_text(
        "from pathlib import Path\n"
        "from scanner import media, pipeline\n"
        "from scanner.features import make\n"
        f"feats = [make('image-clip', model={str(config)!r}, pretrained={str(ckpt)!r})]\n"
        f"items = [media.Input(Path({str(pictures[0].path)!r}), 'image')] * 20\n"
        "out = list(pipeline.prepare_stream(items, feats, mode='processes'))\n"
        "print('prepared', len(out), sum(p.error is None for p in out), flush=True)\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == ["prepared 20 20"]  # once: never in a worker
    assert "could not start" in out.stderr and "__name__ == '__main__'" in out.stderr


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="workers die with their parent on Linux")
def test_spawned_workers_die_with_a_killed_scan(tiny, pictures, tmp_path: Path) -> None:
    config, ckpt = tiny
    script = tmp_path / "hold.py"
    script.write_text(
        "import time\n"
        "from pathlib import Path\n"
        "from scanner import media, pipeline\n"
        "from scanner.features import make\n"
        "if __name__ == '__main__':\n"
        f"    feats = [make('image-clip', model={str(config)!r}, pretrained={str(ckpt)!r})]\n"
        f"    items = [media.Input(Path({str(pictures[0].path)!r}), 'image')] * 5000\n"
        "    stream = pipeline.prepare_stream(items, feats, mode='processes')\n"
        "    next(stream)\n"
        "    print('ready', flush=True)\n"
        "    time.sleep(600)\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True, env=env,
                            start_new_session=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
        children = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True).stdout.split()
        assert children, "no worker processes"
        os.kill(proc.pid, signal.SIGKILL)  # the scan process only, as `kill -9 PID` would
        proc.wait(timeout=60)
        deadline = time.monotonic() + 10
        while (survivors := [c for c in children if _alive(int(c))]) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not survivors, f"decode workers outlived the killed scan: {survivors}"
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # nothing lingers after the test, whatever happened
        except ProcessLookupError:
            pass
        proc.wait(timeout=60)

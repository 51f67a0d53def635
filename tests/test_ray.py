"""``--engine ray``: the same verdicts as the local engine, on a Ray cluster started by the test.

The cluster is a real one (``ray start --head``, 2 CPUs) joined through the
command line's ``--address``, as a studio's would be; the build test starts
its own private cluster (no ``--address``). Workers are killed with SIGKILL
(``LIKENESS_RAY_KILL_ONCE``) to show that Ray's retries lose and duplicate
nothing.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

pytest.importorskip("ray", reason="Ray is an optional extra: pip install 'likeness-scanner[ray]'")

from scanner.demo import MILD_TRANSFORMS, synthetic_picture  # noqa: E402
from scanner.index.store import open_index  # noqa: E402
from test_audio import SR, excerpt, melody  # noqa: E402

BIN = Path(sys.executable).parent
FEATURES = "image-phash,image-local,audio-fingerprint"


def likeness(*args: str, env: dict[str, str] | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "likeness"), *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A 2-CPU Ray cluster on this machine; yields its address."""
    tmp = tmp_path_factory.mktemp("raytmp")
    with socket.socket() as s:
        s.bind(("", 0))
        port = s.getsockname()[1]
    # Ray runs its workers at nice 15: on a machine shared with other work (CI, a test run beside a
    # build) they starve and the tests time out. Like a private cluster of the Ray engine, this
    # cluster's workers are the tests' own work.
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_worker_niceness": "0"}
    started = subprocess.run([str(BIN / "ray"), "start", "--head", f"--port={port}", "--num-cpus=2",
                              "--include-dashboard=false", "--disable-usage-stats", f"--temp-dir={tmp}"],
                             capture_output=True, text=True, env=env, timeout=120)
    assert started.returncode == 0, started.stdout + started.stderr
    address = re.search(r"ray start --address='([^']+)'", started.stdout + started.stderr).group(1)
    yield address
    stop_cluster(str(tmp))


def stop_cluster(temp_dir: str) -> None:
    """Kill the processes of the cluster whose temporary folder is ``temp_dir``, and their children.

    ``ray stop`` would stop every Ray cluster on the machine, not only the test's.
    """
    procs: dict[int, tuple[int, str]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            procs[int(entry.name)] = (ppid, cmdline)
    doomed = {pid for pid, (_, cmd) in procs.items() if temp_dir in cmd}
    grew = True
    while grew:
        children = {pid for pid, (ppid, _) in procs.items() if ppid in doomed} - doomed
        doomed |= children
        grew = bool(children)
    for pid in doomed:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Reference pictures and songs, and outputs: copies, unrelated files, a corrupt file."""
    root = tmp_path_factory.mktemp("raymedia")
    refs, outs = root / "refs", root / "outputs"
    refs.mkdir()
    outs.mkdir()
    names = list(MILD_TRANSFORMS)
    for i in range(8):
        pic = synthetic_picture(100 + i)
        pic.save(refs / f"work{i}.png")
        MILD_TRANSFORMS[names[i % len(names)]](pic).save(outs / f"copy{i}.png")
        synthetic_picture(900 + i).save(outs / f"new{i}.png")
    songs = [melody(s, 20.0) for s in (1, 2)]
    for s, y in enumerate(songs):
        sf.write(refs / f"song{s}.flac", y, SR)
    sf.write(outs / "song-copy.wav", excerpt(songs[1], 6.0, 8.0), SR)
    sf.write(outs / "song-new.wav", melody(50, 8.0), SR)
    (outs / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)
    index = root / "index"
    built = likeness("index", "build", str(refs), "--index", str(index), "--features", FEATURES, "-q")
    assert built.returncode == 0, built.stdout + built.stderr
    local = likeness("scan", str(outs), "--index", str(index), "--out", str(root / "local"), "-q")
    assert local.returncode == 1, local.stdout + local.stderr  # copies are flagged
    return {"root": root, "refs": refs, "outputs": outs, "index": index, "local": root / "local"}


def by_path(out: Path) -> dict[str, dict]:
    lines = (out / "results.jsonl").read_text().splitlines()
    results = [json.loads(line) for line in lines]
    paths = [r["path"] for r in results]
    assert len(paths) == len(set(paths)), "an input was written twice"
    return {r["path"]: r for r in results}


def assert_same(ray_out: Path, local_out: Path) -> None:
    ray, local = by_path(ray_out), by_path(local_out)
    assert ray.keys() == local.keys()
    for path, want in local.items():
        got = ray[path]
        assert got["verdict"] == want["verdict"], path
        assert [(m["feature"], m["work_id"]) for m in got["matches"]] == \
               [(m["feature"], m["work_id"]) for m in want["matches"]], path
        np.testing.assert_allclose([m["score"] for m in got["matches"]], [m["score"] for m in want["matches"]],
                                   rtol=1e-5, err_msg=path)
        assert got.get("error") == want.get("error"), path


def test_local_results_are_the_reference(media: dict[str, Path]) -> None:
    """What the Ray runs are compared with: every copy flagged with its work, the rest clear, one error."""
    local = by_path(media["local"])
    for path, r in local.items():
        name = Path(path).name
        if name.startswith("copy") or name == "song-copy.wav":
            assert r["verdict"] == "flagged", (name, r["reason"])
        elif name == "broken.png":
            assert r["verdict"] == "error", (name, r["reason"])
        else:
            assert r["verdict"] == "clear", (name, r["reason"])
    assert len(local) == 19


def test_ray_scan_gives_the_local_verdicts(media: dict[str, Path], cluster: str) -> None:
    out = media["root"] / "ray"
    run = likeness("scan", str(media["outputs"]), "--index", str(media["index"]), "--out", str(out),
                   "--engine", "ray", "--address", cluster, "-q")
    assert run.returncode == 1, run.stdout + run.stderr
    assert run.stderr == "", run.stderr  # Ray's own log lines stay out of the terminal
    assert_same(out, media["local"])
    provenance = json.loads((out / "run.json").read_text())
    assert provenance["engine"]["name"] == "ray" and provenance["engine"]["cpus"] == 2
    local = json.loads((media["local"] / "run.json").read_text())
    assert provenance["features"] == local["features"] and provenance["index_id"] == local["index_id"]
    for name in ("results.csv", "report.html", "timeline.csv"):
        assert (out / name).stat().st_size > 0


@pytest.mark.parametrize("stage", ["decode", "judge"])
def test_killed_worker_is_retried_and_nothing_is_lost_or_duplicated(media: dict[str, Path], cluster: str,
                                                                    stage: str) -> None:
    out = media["root"] / f"killed-{stage}"
    marker = media["root"] / f"killed-{stage}.marker"
    run = likeness("scan", str(media["outputs"]), "--index", str(media["index"]), "--out", str(out),
                   "--engine", "ray", "--address", cluster, "-q",
                   env={"LIKENESS_RAY_KILL_ONCE": f"{stage}:{marker}"})
    assert marker.exists(), "the worker was not killed"
    assert run.returncode == 1, run.stdout + run.stderr
    assert_same(out, media["local"])


def test_ray_scan_resumes(media: dict[str, Path], cluster: str) -> None:
    out = media["root"] / "resumed"
    out.mkdir()
    lines = (media["local"] / "results.jsonl").read_text().splitlines(keepends=True)
    (out / "results.jsonl").write_text("".join(lines[:7]) + lines[7][:25])  # a scan killed mid-line
    run = likeness("scan", str(media["outputs"]), "--index", str(media["index"]), "--out", str(out),
                   "--engine", "ray", "--address", cluster, "--resume", "-q")
    assert run.returncode == 1, run.stdout + run.stderr
    assert "resumed" in run.stdout
    assert_same(out, media["local"])


def test_ray_build_on_a_private_cluster_writes_the_local_index(media: dict[str, Path], tmp_path: Path) -> None:
    """No --address: a private cluster for the run, its temporary and spill folders gone afterwards."""
    scratch = Path(tempfile.mkdtemp(prefix="lk-"))  # short: Ray's socket paths sit ~70 characters below it
    index = tmp_path / "index"
    run = likeness("index", "build", str(media["refs"]), "--index", str(index), "--features", FEATURES,
                   "--engine", "ray", "--workers", "1", "-q", env={"TMPDIR": str(scratch)})
    assert run.returncode == 0, run.stdout + run.stderr
    assert "indexed 10 work(s)" in run.stdout
    assert list(scratch.iterdir()) == [], "Ray left files behind"
    scratch.rmdir()
    with open_index(index) as ray_index, open_index(media["index"]) as local_index:
        assert [(w.path, w.sha256) for w in ray_index.works().values()] == \
               [(w.path, w.sha256) for w in local_index.works().values()]
        for feature in FEATURES.split(","):
            np.testing.assert_array_equal(np.asarray(ray_index.rows(feature)), np.asarray(local_index.rows(feature)))
        np.testing.assert_array_equal(ray_index.codes("image-phash"), local_index.codes("image-phash"))
        assert ray_index.null.keys() == local_index.null.keys()
    verify = likeness("index", "verify", "--index", str(index))
    assert verify.returncode == 0, verify.stdout + verify.stderr


def test_clip_features_are_embedded_on_their_own_workers(media: dict[str, Path], cluster: str,
                                                         tmp_path: Path) -> None:
    """With a model feature the Ray scan has an embed stage (GPU workers where there are GPUs): same verdicts."""
    from tiny_clip import make_tiny_checkpoint

    config, ckpt = make_tiny_checkpoint(tmp_path / "m", seed=0)
    clip = ["--clip-model", str(config), "--clip-pretrained", str(ckpt), "--models-dir", str(tmp_path / "models")]
    index = tmp_path / "index"
    built = likeness("index", "build", str(media["refs"]), "--index", str(index), "--features",
                     "image-phash,image-clip", *clip, "-q")
    assert built.returncode == 0, built.stdout + built.stderr
    runs = {}
    for engine in ("local", "ray"):
        where = ["--address", cluster] if engine == "ray" else []
        runs[engine] = likeness("scan", str(media["outputs"]), "--index", str(index), "--out",
                                str(tmp_path / engine), "--engine", engine, *where, *clip, "--candidates", "3", "-q")
        assert runs[engine].returncode == 1, runs[engine].stdout + runs[engine].stderr
    assert_same(tmp_path / "ray", tmp_path / "local")
    ray, local = by_path(tmp_path / "ray"), by_path(tmp_path / "local")
    clip_candidates = 0
    for path, want in local.items():
        got = ray[path].get("candidates", [])
        assert [(c["feature"], c["work_id"]) for c in got] == \
               [(c["feature"], c["work_id"]) for c in want.get("candidates", [])], path
        clip_candidates += sum(c["feature"] == "image-clip" for c in got)
    assert clip_candidates > 0
    assert json.loads((tmp_path / "ray" / "run.json").read_text())["engine"]["embeds"] == 1


def test_videos_travel_in_small_batches_with_the_local_verdicts(cluster: str, tmp_path: Path) -> None:
    from scanner import video

    refs, outs = tmp_path / "refs", tmp_path / "outputs"
    refs.mkdir()
    outs.mkdir()
    for i in range(3):
        synthetic_picture(200 + i).save(refs / f"work{i}.png")
    video.write_clip(refs / "trailer.mp4", [(synthetic_picture(240), 2.0), (synthetic_picture(241), 2.0)], fps=10)
    video.write_clip(outs / "recut.mp4", [(synthetic_picture(300), 1.0), (synthetic_picture(241), 2.0)], fps=10)
    video.write_clip(outs / "still.mp4", [(synthetic_picture(301), 1.0), (synthetic_picture(201), 2.0)], fps=10)
    video.write_clip(outs / "other.mp4", [(synthetic_picture(302), 1.5), (synthetic_picture(303), 1.5)], fps=10)
    synthetic_picture(202).save(outs / "copy.png")
    index = tmp_path / "index"
    built = likeness("index", "build", str(refs), "--index", str(index), "--features", "image-phash,image-local", "-q")
    assert built.returncode == 0, built.stdout + built.stderr
    for engine in ("local", "ray"):
        where = ["--address", cluster] if engine == "ray" else []
        run = likeness("scan", str(outs), "--index", str(index), "--out", str(tmp_path / engine),
                       "--engine", engine, *where, "-q")
        assert run.returncode == 1, run.stdout + run.stderr
    assert_same(tmp_path / "ray", tmp_path / "local")
    ray, local = by_path(tmp_path / "ray"), by_path(tmp_path / "local")
    verdicts = {Path(p).name: r["verdict"] for p, r in ray.items()}
    assert verdicts == {"recut.mp4": "flagged", "still.mp4": "flagged", "other.mp4": "clear", "copy.png": "flagged"}
    for path, r in local.items():
        assert ray[path].get("video") == r.get("video"), path  # keyframes, timeline with timecodes


def test_ray_index_add_extends_the_index(media: dict[str, Path], cluster: str, tmp_path: Path) -> None:
    index = tmp_path / "index"
    shutil.copytree(media["index"], index)
    new = tmp_path / "new"
    new.mkdir()
    for i in range(2):
        synthetic_picture(700 + i).save(new / f"late{i}.png")
    run = likeness("index", "add", str(new), "--index", str(index), "--engine", "ray", "--address", cluster, "-q")
    assert run.returncode == 0, run.stdout + run.stderr
    said = " ".join(run.stdout.split())  # the console wraps long lines
    assert "added 2 work(s)" in said and "now holds 12 work(s)" in said
    assert likeness("index", "verify", "--index", str(index)).returncode == 0
    synthetic_picture(701).save(tmp_path / "copy.png")
    found = likeness("check", str(tmp_path / "copy.png"), "--index", str(index))
    assert found.returncode == 1 and "late1.png" in " ".join(found.stdout.split()), found.stdout


def test_engine_options_are_checked(media: dict[str, Path]) -> None:
    run = likeness("scan", str(media["outputs"]), "--index", str(media["index"]), "--workers", "2")
    assert run.returncode == 2 and "--engine ray" in run.stderr
    run = likeness("scan", str(media["outputs"]), "--index", str(media["index"]), "--engine", "spark")
    assert run.returncode == 2 and "local or ray" in run.stderr


def test_no_ray_installed_says_how_to_get_it(monkeypatch: pytest.MonkeyPatch) -> None:
    from scanner.engine_ray import RayEngine
    from scanner.errors import ParameterError

    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(ParameterError, match=r"likeness-scanner\[ray\]"):
        RayEngine()


def test_unreachable_cluster_is_a_clear_error(media: dict[str, Path]) -> None:
    with socket.socket() as s:
        s.bind(("", 0))
        port = s.getsockname()[1]
    scratch = Path(tempfile.mkdtemp(prefix="lk-"))
    run = likeness("scan", str(media["outputs"]), "--index", str(media["index"]), "--engine", "ray",
                   "--address", f"127.0.0.1:{port}", "-q", timeout=120, env={"TMPDIR": str(scratch)})
    assert run.returncode == 2 and "cannot join the Ray cluster" in run.stderr
    assert "Traceback" not in run.stderr
    assert list(scratch.iterdir()) == [], "a failed start left files behind"
    scratch.rmdir()

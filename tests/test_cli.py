"""The command line, through typer's runner and once as a real subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from PIL import Image
from typer.testing import CliRunner

from scanner.cli import app
from scanner.demo import MILD_TRANSFORMS, flatten, synthetic_picture

runner = CliRunner()


def _outputs(refs_dir: Path, root: Path) -> Path:
    outs = root / "outs"
    outs.mkdir()
    MILD_TRANSFORMS["jpeg-q40"](flatten(Image.open(refs_dir / "ref1.png"))).save(outs / "copy.png")
    synthetic_picture(333).save(outs / "new.png")
    (outs / "prompt.json").write_text("{}")
    return outs


def test_build_scan_info_verify(refs_dir: Path, tmp_path: Path) -> None:
    index = tmp_path / "index"
    r = runner.invoke(app, ["index", "build", str(refs_dir), "--index", str(index), "--features",
                            "image-phash", "--metadata", str(refs_dir.parent / "meta.csv"), "-q"])
    assert r.exit_code == 0, r.output
    assert "indexed 10 work(s)" in r.output
    r = runner.invoke(app, ["index", "info", "--index", str(index), "--json"])
    info = json.loads(r.output)
    assert info["works"]["count"] == 10 and info["features"]["image-phash"]["dim"] == 256
    r = runner.invoke(app, ["index", "verify", "--index", str(index)])
    assert r.exit_code == 0 and "OK" in r.output
    outs = _outputs(refs_dir, tmp_path)
    r = runner.invoke(app, ["scan", str(outs), "--index", str(index), "--out", str(tmp_path / "res"), "-q"])
    assert r.exit_code == 1, r.output  # something flagged
    lines = [json.loads(x) for x in (tmp_path / "res" / "results.jsonl").read_text().splitlines()]
    by_name = {Path(x["path"]).name: x for x in lines}
    assert by_name["copy.png"]["verdict"] == "flagged"
    assert by_name["copy.png"]["matches"][0]["title"] == "Work 1"
    assert by_name["new.png"]["verdict"] == "clear"
    assert "skipped (not media)" in r.output and "flagged" in r.output
    r = runner.invoke(app, ["check", str(outs / "copy.png"), "--index", str(index)])
    assert r.exit_code == 1
    assert "Too close to a protected work" in r.output and "Holder 1" in r.output
    r = runner.invoke(app, ["check", str(outs / "new.png"), "--index", str(index)])
    assert r.exit_code == 0 and "No near-copy found among the 10 works" in r.output


def test_errors_are_one_clear_line_with_exit_2(tmp_path: Path) -> None:
    r = runner.invoke(app, ["scan", str(tmp_path), "--index", str(tmp_path / "missing")])
    assert r.exit_code == 2
    assert "no index at" in r.output and "Traceback" not in r.output
    r = runner.invoke(app, ["index", "build", str(tmp_path), "--index", str(tmp_path / "i"),
                            "--features", "image-nope"])
    assert r.exit_code == 2 and "unknown feature 'image-nope'" in r.output


def test_unreadable_only_input_exits_3(phash_index: Path, tmp_path: Path) -> None:
    (tmp_path / "bad.jpg").write_bytes(b"not a jpeg at all")
    r = runner.invoke(app, ["scan", str(tmp_path / "bad.jpg"), "--index", str(phash_index), "-q"])
    assert r.exit_code == 3, r.output


def test_real_subprocess_demo_exits_0(tmp_path: Path) -> None:
    env = dict(os.environ, LIKENESS_MODELS_DIR=str(tmp_path / "no-models"))
    proc = subprocess.run([sys.executable, "-m", "scanner.cli", "demo", "--out", str(tmp_path / "demo"), "-q"],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "demo worked" in proc.stdout
    assert "Traceback" not in proc.stderr
    results = (tmp_path / "demo" / "results" / "results.jsonl").read_text().splitlines()
    assert len(results) == 20

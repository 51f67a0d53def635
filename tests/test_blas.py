"""BLAS dispatch: faiss's bundled OpenBLAS runs the kernel this CPU can, or a clear warning says it does not."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from scanner import blas

AVX2 = {"sse4_2", "avx", "avx2", "fma"}
AVX512 = AVX2 | {"avx512f", "avx512cd", "avx512bw", "avx512dq", "avx512vl", "avx512_vnni"}


@pytest.mark.parametrize("vendor,flags,want", [
    ("GenuineIntel", AVX512, "SKYLAKEX"),                        # e.g. Xeon family 6 model 207: 0.3.15 says Prescott
    ("GenuineIntel", AVX512 | {"avx512_bf16"}, "COOPERLAKE"),
    ("AuthenticAMD", AVX512, "SKYLAKEX"),                        # Zen 4
    ("GenuineIntel", AVX2, "HASWELL"),
    ("AuthenticAMD", AVX2, "ZEN"),
    ("GenuineIntel", {"sse4_2", "avx"}, "SANDYBRIDGE"),
    ("GenuineIntel", {"sse4_2"}, None),                          # no AVX: left to the library
    ("GenuineIntel", AVX2 - {"fma"}, "SANDYBRIDGE"),             # never a kernel the CPU cannot execute
    ("GenuineIntel", {"avx512f", "avx2", "fma", "avx"}, "HASWELL"),  # AVX-512 without BW/VL: not SkylakeX
])
def test_the_core_type_is_the_newest_the_flags_allow(vendor: str, flags: set[str], want: str | None) -> None:
    assert blas.core_type(vendor, flags) == want


def test_nothing_is_chosen_off_x86(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(blas.platform, "machine", lambda: "aarch64")
    assert blas.cpu() is None


def _python(code: str, **env: str) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.endswith(blas.ENV)}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={**clean, **env})


def test_importing_the_scanner_sets_the_core_type_before_faiss_loads() -> None:
    found = blas.cpu()
    want = blas.core_type(*found) if found else None
    r = _python("import os, scanner, faiss\nfrom scanner import blas\n"
                "print(os.environ.get('OPENBLAS_CORETYPE'))\nprint(blas.warnings())")
    assert r.returncode == 0, r.stderr
    chosen, warnings = r.stdout.splitlines()
    assert chosen == str(want) and warnings == "[]"  # faiss's OpenBLAS runs a kernel this CPU is made for


def test_a_core_type_the_user_set_is_kept_and_a_stale_kernel_is_warned_about() -> None:
    found = blas.cpu()
    if found is None or blas.level(found[1]) < 1:
        pytest.skip("a CPU without AVX runs the oldest kernels anyway: nothing to warn about")
    r = subprocess.run([sys.executable, "-m", "scanner.cli", "bench", "search", "--refs", "2000", "--dim", "16",
                        "--queries", "20", "--k", "3", "--recall-queries", "0", "--json"],
                       capture_output=True, text=True, timeout=300,
                       env={**{k: v for k, v in os.environ.items() if not k.endswith(blas.ENV)},
                            blas.ENV: "Prescott"})
    assert r.returncode == 0, r.stderr
    faiss_blas = [b for b in json.loads(r.stdout.strip().splitlines()[-1])["blas"] if b["library"] == "faiss"]
    if not faiss_blas or faiss_blas[0]["api"] != "openblas":
        pytest.skip("this faiss does not bundle an OpenBLAS")
    assert faiss_blas[0]["kernel"] == "Prescott"                   # the user's choice stands...
    err = " ".join(r.stderr.split())
    assert "faiss's OpenBLAS" in err and "runs its Prescott kernel, older than this CPU can run" in err
    assert "OPENBLAS_CORETYPE=Prescott is set in the environment" in err  # ...and they are told what it costs


def test_run_json_and_index_info_name_the_blas_in_use(phash_index, tmp_path) -> None:
    from typer.testing import CliRunner

    from scanner.cli import app
    from scanner.demo import synthetic_picture
    from scanner.pipeline import scan

    synthetic_picture(90).save(tmp_path / "o.png")
    summary = scan([tmp_path / "o.png"], phash_index, out_dir=tmp_path / "res")
    libs = json.loads((tmp_path / "res" / "run.json").read_text())["blas"]
    assert libs == summary.run["blas"] and {"library", "api", "version", "kernel", "threads"} <= set(libs[0])
    assert any(b["library"] == "numpy" for b in libs)
    info = CliRunner().invoke(app, ["index", "info", "--index", str(phash_index), "--json"])
    assert info.exit_code == 0 and any(b["library"] == "faiss" for b in json.loads(info.stdout)["blas"])


def test_only_kernels_known_to_be_older_are_warned_about(monkeypatch: pytest.MonkeyPatch) -> None:
    lib = {"library": "faiss", "api": "openblas", "version": "0.3.15", "threads": 2}
    monkeypatch.setattr(blas, "cpu", lambda: ("GenuineIntel", AVX512))
    assert len(blas.warnings([{**lib, "kernel": "Prescott"}])) == 1
    assert len(blas.warnings([{**lib, "kernel": "Haswell"}])) == 1             # AVX2 kernels on an AVX-512 CPU
    assert blas.warnings([{**lib, "kernel": "SkylakeX"}]) == []
    assert blas.warnings([{**lib, "kernel": "GraniteRapids"}]) == []            # a name newer than this list
    monkeypatch.setattr(blas, "cpu", lambda: ("AuthenticAMD", AVX512))
    assert blas.warnings([{**lib, "kernel": "Zen"}]) == []                      # OpenBLAS's name for every Zen

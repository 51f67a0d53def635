"""BLAS dispatch: every BLAS library this process loads runs the newest kernel the CPU can.

faiss-cpu's wheels bundle an OpenBLAS (0.3.15 in faiss-cpu 1.15) that does not
know CPUs released after it: on an Intel Xeon of family 6, model 207 (AVX-512,
VNNI) it falls back to its oldest kernel, ``Prescott``, and exact search runs
at a fifth of the machine's GEMM peak. OpenBLAS reads ``OPENBLAS_CORETYPE``
once, when the library loads; so, unless the user set it, :func:`dispatch`
(run when :mod:`scanner` is imported, after numpy's own BLAS has loaded and
before faiss can) sets it to the newest core type the CPU's own flags allow
(:func:`core_type`): never one it cannot execute, nothing at all on CPUs
without AVX or off x86.

:func:`libraries` names each loaded BLAS, its version, kernel and threads (for
``index info``, ``bench`` JSON and ``run.json``); :func:`warnings` says where a
library still runs a kernel older than the CPU can (a core type forced by
hand, or a library this cannot steer).
"""

from __future__ import annotations

import os
import platform
import sys
from pathlib import Path
from typing import Any

from scanner.errors import ParameterError

ENV = "OPENBLAS_CORETYPE"

#: Instruction-set level of OpenBLAS x86 core types (lower case): 0 SSE, 1 AVX, 2 AVX2+FMA, 3 AVX-512.
#: A name not listed is never called old (a newer OpenBLAS may know more).
_LEVEL = {**dict.fromkeys(("katmai", "coppermine", "northwood", "prescott", "banias", "core2", "penryn",
                           "dunnington", "nehalem", "atom", "athlon", "opteron", "opteron_sse3", "barcelona",
                           "bobcat", "bulldozer", "piledriver", "steamroller", "excavator"), 0),
          "sandybridge": 1, "haswell": 2, "zen": 2, "skylakex": 3, "cooperlake": 3, "sapphirerapids": 3}
#: AVX-512 subsets OpenBLAS's SkylakeX kernels use.
_AVX512 = {"avx512f", "avx512cd", "avx512bw", "avx512dq", "avx512vl"}
#: Where a BLAS library came from, by a folder in its path: which package's it is.
_OWNERS = (("numpy", "numpy"), ("scipy", "scipy"), ("faiss", "faiss"), ("torch", "torch"))


def _cpuinfo() -> dict[str, str]:
    """The first processor's fields of ``/proc/cpuinfo`` (empty off Linux x86-64)."""
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return {}
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return {}
    fields: dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip():
            break
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    return fields


def cpu() -> tuple[str, set[str]] | None:
    """The CPU's vendor and feature flags (``/proc/cpuinfo``), or ``None`` off Linux x86-64."""
    fields = _cpuinfo()
    if not fields:
        return None
    return fields.get("vendor_id", ""), set(fields.get("flags", "").split())


def cpu_name() -> str:
    """The CPU's model name with its family and model numbers, e.g. ``AMD EPYC (family 25 model 1)``;
    the machine type off Linux x86-64."""
    fields = _cpuinfo()
    if not fields:
        return platform.machine() or "unknown"
    return f"{fields.get('model name', '?')} (family {fields.get('cpu family', '?')} model {fields.get('model', '?')})"


def level(flags: set[str]) -> int:
    """The instruction-set level the flags allow: 3 AVX-512, 2 AVX2 with FMA, 1 AVX, 0 older."""
    if _AVX512 <= flags:
        return 3
    if {"avx2", "fma"} <= flags:
        return 2
    return 1 if "avx" in flags else 0


def core_type(vendor: str, flags: set[str]) -> str | None:
    """The OpenBLAS core type to run on this CPU: the newest its flags allow, known to OpenBLAS 0.3.10 on.

    Returns
    -------
    ``"COOPERLAKE"`` (AVX-512 with BF16), ``"SKYLAKEX"`` (AVX-512), ``"ZEN"`` or
    ``"HASWELL"`` (AVX2 and FMA, AMD or other), ``"SANDYBRIDGE"`` (AVX), or ``None``
    (older: left to the library).
    """
    lvl = level(flags)
    if lvl == 3:
        return "COOPERLAKE" if "avx512_bf16" in flags else "SKYLAKEX"
    if lvl == 2:
        return "ZEN" if vendor == "AuthenticAMD" else "HASWELL"
    return "SANDYBRIDGE" if lvl == 1 else None


def dispatch() -> str | None:
    """Set ``OPENBLAS_CORETYPE`` for the BLAS libraries still to load (faiss's); returns what was set.

    Nothing is set when the user set it, when faiss's library has loaded already
    (too late: it read the environment then), or when the CPU is not known to
    run a newer kernel than the oldest (:func:`core_type`). numpy is imported
    first, so its own BLAS keeps its own choice.
    """
    if ENV in os.environ or "faiss" in sys.modules:
        return None
    import numpy  # noqa: F401  (its OpenBLAS loads now, choosing for itself)

    found = cpu()
    choice = core_type(*found) if found else None
    if choice is not None:
        os.environ[ENV] = choice
    return choice


def libraries() -> list[dict[str, Any]]:
    """Each BLAS library loaded in this process: whose it is, its version, kernel and threads.

    Returns
    -------
    list of ``{"library", "api", "version", "kernel", "threads"}`` (``kernel``:
    the core type an OpenBLAS runs, e.g. ``Haswell``; ``None`` where the library
    does not say)
    """
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return []
    out = []
    for lib in threadpool_info():
        if lib.get("user_api") != "blas":
            continue
        parts = Path(lib.get("filepath") or "").parts
        owner = next((name for name, folder in _OWNERS if any(p.startswith(folder) for p in parts)), "other")
        out.append({"library": owner, "api": lib.get("internal_api"), "version": lib.get("version"),
                    "kernel": lib.get("architecture"), "threads": lib.get("num_threads")})
    return out


def limit_threads(threads: int = 1) -> None:
    """Run every BLAS library loaded in this process on at most ``threads`` threads.

    For processes and threads that each work on one picture at a time (decode
    workers, the server's checks), where the parallelism is theirs: numpy's and
    OpenCV's OpenBLAS otherwise wake all their threads for the small products of
    one picture, and those threads spin after each one, waiting for more: about
    half the CPU time of a picture checked alone (measured: 122 -> 56 ms of CPU
    a picture, the same wall time, 10k-work index, default features). A library
    loaded after this call keeps its own threads.

    Parameters
    ----------
    threads : int >= 1
    """
    if threads < 1:
        raise ParameterError(f"threads must be >= 1, given threads={threads}")
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return
    threadpool_limits(limits=threads, user_api="blas")


def in_use() -> list[dict[str, Any]]:
    """:func:`libraries`, with faiss's loaded first: the BLAS the searches run on."""
    try:
        import faiss  # noqa: F401
    except ImportError:
        pass
    return libraries()


def warnings(libs: list[dict[str, Any]] | None = None) -> list[str]:
    """One line per loaded OpenBLAS whose kernel is older than this CPU can run."""
    found = cpu()
    if found is None:
        return []
    want = level(found[1])
    best = core_type(*found)
    lines = []
    for lib in libraries() if libs is None else libs:
        kernel = str(lib.get("kernel") or "").lower()
        if lib.get("api") != "openblas" or kernel not in _LEVEL:
            continue
        # OpenBLAS names every AMD Zen generation "Zen", AVX-512 ones included
        if _LEVEL[kernel] >= want or (kernel == "zen" and found[0] == "AuthenticAMD"):
            continue
        # dispatch() only ever sets the best core type: any other value is the user's own
        user = bool(os.environ.get(ENV)) and os.environ[ENV].upper() != best
        why = (f"{ENV}={os.environ[ENV]} is set in the environment" if user
               else "this OpenBLAS does not know this CPU")
        lines.append(f"{lib['library']}'s OpenBLAS {lib.get('version')} runs its {lib['kernel']} kernel, older than this "
                     f"CPU can run ({best}): {why}; searches run far below the machine's peak. "
                     + (f"Unset {ENV} or set it to {best}." if user else f"Set {ENV}={best} before starting."))
    return lines

"""likeness: an offline similarity scanner for generated images and audio.

The library is usable from Python; the ``likeness`` command is a thin layer over
:mod:`scanner.pipeline`.
"""

__version__ = "0.1.0"

# Before any faiss can load: its bundled BLAS runs the kernel this CPU can (scanner.blas).
from scanner import blas as _blas  # noqa: E402

_blas.dispatch()

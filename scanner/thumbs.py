"""Small pictures for people: thumbnails of images, spectrogram strips of audio.

Reference thumbnails are made once per work at build time and kept in the
index's ``thumbs/`` folder; output thumbnails are made at scan time, only for
outputs a person must look at (flagged, review, licensed), in the scan's own
``thumbs/`` folder (``--no-thumbnails`` leaves them out). Reports embed them as
``data:`` URIs, so a report needs neither the reference files nor a rescan.

A thumbnail is a WebP file named by its key (a work id or an output's
sha256); an audio strip may carry a JSON sidecar with its duration in seconds,
so a report can place a matched span on it.
"""

from __future__ import annotations

import base64
import io
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

#: Longest side of a thumbnail, in pixels.
SIDE = 160
#: WebP quality: small files (about 1-3 kB at 160 px, measured on clip art and painted
#: portraits) that still show what matched; 10k of them fit a report under 50 MB.
QUALITY = 50
EXT = ".webp"
#: Spectrogram strip height in pixels and width per second (capped).
STRIP_HEIGHT = 64
STRIP_MAX_WIDTH = 480


def encode(image: Image.Image, *, side: int = SIDE) -> bytes:
    """A thumbnail of an image, as WebP bytes.

    Parameters
    ----------
    image : PIL.Image.Image, any mode (RGB, L, RGBA composited by the caller)
    side : int > 0, longest side in pixels (smaller images are not enlarged)

    Returns
    -------
    data : bytes (WebP)
    """
    im = image.convert("RGB") if image.mode not in ("RGB", "L") else image.copy()
    im.thumbnail((side, side), Image.Resampling.BILINEAR, reducing_gap=2.0)
    buf = io.BytesIO()
    im.save(buf, "WEBP", quality=QUALITY, method=4)
    return buf.getvalue()


def from_file(path: str | Path, *, side: int = SIDE) -> bytes | None:
    """A thumbnail of an image file, or ``None`` when it does not decode.

    Decoding goes through :func:`scanner.media.load_image` (size caps, EXIF
    turn, transparency over white), reduced to about twice ``side`` first.
    """
    from scanner.errors import LikenessError
    from scanner.media import load_image

    try:
        return encode(load_image(path, max_side=2 * side), side=side)
    except LikenessError:
        return None


def spectrogram_strip(y: np.ndarray, sr: float, *, height: int = STRIP_HEIGHT,
                      max_width: int = STRIP_MAX_WIDTH) -> bytes:
    """A log-magnitude spectrogram of a mono signal as a small WebP strip.

    Time runs left to right over the whole signal (the strip's width stands
    for its full duration), frequency bottom to top on a log-like scale.

    Parameters
    ----------
    y : np.ndarray [shape=(n,)], float, mono samples
    sr : number > 0 [scalar], sampling rate in Hz
    height : int > 0, pixels
    max_width : int > 0, pixels (one column per 1/20 s up to this width)

    Returns
    -------
    data : bytes (WebP)
    """
    y = np.asarray(y, dtype=np.float32).reshape(-1)
    n_fft = 1024
    width = int(np.clip(len(y) / sr * 20, 16, max_width))
    if len(y) < n_fft:
        y = np.pad(y, (0, n_fft - len(y)))
    starts = np.linspace(0, len(y) - n_fft, width).astype(np.int64)
    frames = y[starts[:, None] + np.arange(n_fft)[None, :]] * np.hanning(n_fft).astype(np.float32)
    mag = np.abs(np.fft.rfft(frames, axis=1))  # [width, n_fft // 2 + 1]
    # rows spaced geometrically in frequency, so low notes get room
    bins = np.unique(np.geomspace(1, mag.shape[1] - 1, height * 2).astype(int))
    db = 20 * np.log10(mag[:, bins] + 1e-6)
    db = np.clip((db - (db.max() - 80)) / 80, 0, 1)
    pixels = (255 * db.T[::-1]).astype(np.uint8)
    im = Image.fromarray(pixels, "L").resize((width, height), Image.Resampling.BILINEAR)
    # a warm palette reads as "energy" at a glance
    lut = np.stack([np.clip(np.arange(256) * 1.6, 0, 255), np.clip((np.arange(256) - 70) * 1.3, 0, 255),
                    np.clip((np.arange(256) - 170) * 2.8, 0, 255)], axis=1).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(lut[np.asarray(im)], "RGB").save(buf, "WEBP", quality=QUALITY)
    return buf.getvalue()


def save(folder: str | Path, key: str | int, data: bytes, meta: dict[str, Any] | None = None) -> Path:
    """Write one thumbnail (and its sidecar) into ``folder`` atomically.

    Parameters
    ----------
    folder : a ``thumbs/`` folder (created when missing)
    key : work id or sha256; must be a plain name (no separators)
    data : WebP bytes from :func:`encode` or :func:`spectrogram_strip`
    meta : e.g. ``{"duration": 93.2}`` (seconds) for an audio strip

    Returns
    -------
    path of the thumbnail
    """
    key = _key(key)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{key}{EXT}"
    tmp = folder / f".{key}{EXT}.tmp"
    tmp.write_bytes(data)
    os.replace(tmp, path)
    if meta:
        (folder / f"{key}.json").write_text(json.dumps(meta))
    return path


def load(folder: str | Path | None, key: str | int | None) -> tuple[bytes, dict[str, Any]] | None:
    """A stored thumbnail and its sidecar (``{}`` when none), or ``None``."""
    if folder is None or key is None:
        return None
    try:
        key = _key(key)
        data = (Path(folder) / f"{key}{EXT}").read_bytes()
    except (OSError, ValueError):
        return None
    meta: dict[str, Any] = {}
    try:
        meta = json.loads((Path(folder) / f"{key}.json").read_text())
    except (OSError, ValueError):
        pass
    return data, meta if isinstance(meta, dict) else {}


def data_uri(data: bytes) -> str:
    """``data:image/webp;base64,...`` for embedding in a self-contained page."""
    return "data:image/webp;base64," + base64.b64encode(data).decode("ascii")


def _key(key: str | int) -> str:
    key = str(key)
    # keys come from results files a user may have edited: never a path
    if not key or not all(c.isalnum() or c in "-_" for c in key):
        raise ValueError(f"not a thumbnail key: {key!r}")
    return key

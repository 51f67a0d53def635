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
#: WebP quality: small files (about 1-2 kB at 160 px, measured on clip art and painted
#: portraits) that still show what matched. At 50, 10k flagged painted portraits made a
#: 53 MB report; at 35, 46.5 MB (benchmarks/report_scale.py --mix worst).
QUALITY = 35
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


class StripBuilder:
    """A spectrogram strip built from a signal fed in chunks (bounded memory).

    Frames of ``n_fft`` samples are taken :data:`FRAMES_PER_SECOND` times a
    second wherever they fall, across chunk boundaries; only their pooled
    log magnitudes are kept (a few hundred bytes a second), and the strip is
    drawn from them at :meth:`finish`.

    Parameters
    ----------
    sr : number > 0 [scalar], sampling rate of the chunks in Hz
    """

    n_fft = 1024
    FRAMES_PER_SECOND = 8

    def __init__(self, sr: float):
        self.sr = float(sr)
        self.hop = max(1, int(self.sr / self.FRAMES_PER_SECOND))
        self.window = np.hanning(self.n_fft).astype(np.float32)
        n_bins = self.n_fft // 2 + 1
        # rows spaced geometrically in frequency, so low notes get room
        self.bins = np.unique(np.geomspace(1, n_bins - 1, 2 * STRIP_HEIGHT).astype(int))
        self.frames: list[np.ndarray] = []
        self.buf = np.zeros(0, np.float32)
        self.buf_start = 0  # sample index of buf[0]
        self.next = 0  # sample index of the next frame's start
        self.samples = 0

    def update(self, y: np.ndarray) -> None:
        """Feed the next contiguous samples (mono, float)."""
        y = np.asarray(y, dtype=np.float32).reshape(-1)
        self.buf = np.concatenate([self.buf, y])
        self.samples += len(y)
        end = self.buf_start + len(self.buf)
        starts = np.arange(self.next, end - self.n_fft + 1, self.hop)
        if len(starts):
            idx = (starts - self.buf_start)[:, None] + np.arange(self.n_fft)[None, :]
            mag = np.abs(np.fft.rfft(self.buf[idx] * self.window, axis=1))[:, self.bins]
            self.frames.append((20 * np.log10(mag + 1e-6)).astype(np.float32))
            self.next = int(starts[-1]) + self.hop
        keep = max(0, self.next - self.buf_start)
        self.buf, self.buf_start = self.buf[keep:], self.buf_start + keep

    @property
    def duration(self) -> float:
        """Seconds fed so far."""
        return self.samples / self.sr

    def finish(self, *, height: int = STRIP_HEIGHT, max_width: int = STRIP_MAX_WIDTH) -> bytes:
        """The strip as WebP bytes: time left to right over the whole signal, frequency upwards."""
        if not self.frames:  # shorter than one frame
            self.update(np.zeros(self.n_fft, np.float32))
            self.samples -= self.n_fft
        db = np.concatenate(self.frames)  # [frames, bins]
        db = np.clip((db - (db.max() - 80)) / 80, 0, 1)
        width = int(np.clip(self.duration * 20, 16, max_width))
        pixels = (255 * db.T[::-1]).astype(np.uint8)
        im = Image.fromarray(pixels, "L").resize((width, height), Image.Resampling.BILINEAR)
        # a warm palette reads as "energy" at a glance
        ramp = np.arange(256)
        lut = np.stack([np.clip(ramp * 1.6, 0, 255), np.clip((ramp - 70) * 1.3, 0, 255),
                        np.clip((ramp - 170) * 2.8, 0, 255)], axis=1).astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(lut[np.asarray(im)], "RGB").save(buf, "WEBP", quality=QUALITY)
        return buf.getvalue()


def spectrogram_strip(y: np.ndarray, sr: float, *, height: int = STRIP_HEIGHT,
                      max_width: int = STRIP_MAX_WIDTH) -> bytes:
    """A log-magnitude spectrogram of a whole mono signal as a small WebP strip.

    Parameters
    ----------
    y : np.ndarray [shape=(n,)], float, mono samples
    sr : number > 0 [scalar], sampling rate in Hz
    height : int > 0, pixels
    max_width : int > 0, pixels (20 columns a second up to this width)

    Returns
    -------
    data : bytes (WebP)

    See Also
    --------
    StripBuilder : the same from chunks
    """
    builder = StripBuilder(sr)
    builder.update(y)
    return builder.finish(height=height, max_width=max_width)


def audio_strip(path: str | Path) -> tuple[bytes, dict[str, Any]] | None:
    """A spectrogram strip of an audio file and ``{"duration": seconds}``, or ``None`` if it does not decode."""
    from scanner.errors import LikenessError
    from scanner.media import open_audio

    try:
        audio = open_audio(path)
        builder = StripBuilder(audio.sr)
        for chunk in audio.chunks():
            builder.update(chunk.y)
    except LikenessError:
        return None
    return builder.finish(), {"duration": round(builder.duration, 3)}


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

"""Find scan inputs by content and decode images safely.

This is the first stage of the pipeline: :func:`discover` turns the paths a user
gave into :class:`Input` (gets a result line) and :class:`Skipped` (counted, not
scanned) records, and :func:`load_image` turns one input into a plain RGB image
or raises :class:`~scanner.errors.DecodeError` with a reason a person can read.
Nothing here knows about features, indexes or reports.
"""

from __future__ import annotations

import errno
import hashlib
import json
import math
import os
import re
import shutil
import stat
import struct
import subprocess
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from scanner.errors import DecodeError, ParameterError

__all__ = [
    "ANALYSIS_SR",
    "AUDIO_EXTENSIONS",
    "Audio",
    "AudioChunk",
    "DEFAULT_MAX_PIXELS",
    "IMAGE_EXTENSIONS",
    "Input",
    "Skipped",
    "VIDEO_EXTENSIONS",
    "discover",
    "load_image",
    "open_audio",
    "sha256_file",
    "sniff",
]

IMAGE_EXTENSIONS: frozenset[str] = frozenset(
    {
        ".png", ".apng", ".jpg", ".jpeg", ".jpe", ".jfif", ".gif", ".webp",
        ".bmp", ".dib", ".tif", ".tiff", ".ico", ".avif", ".heic", ".heif",
        ".qoi", ".jp2", ".j2k", ".jxl", ".psd", ".tga", ".pbm", ".pgm",
        ".ppm", ".pnm",
    }
)  # fmt: skip

AUDIO_EXTENSIONS: frozenset[str] = frozenset(
    {".wav", ".flac", ".ogg", ".oga", ".mp3", ".m4a", ".aac", ".opus", ".aif", ".aiff"}
)

#: Names of video files (decoded by :mod:`scanner.video`).
VIDEO_EXTENSIONS: frozenset[str] = frozenset(
    {".mp4", ".m4v", ".mov", ".qt", ".mkv", ".webm", ".avi", ".mpg", ".mpeg", ".ts", ".mts",
     ".m2ts", ".wmv", ".flv", ".ogv", ".3gp", ".mxf"}
)  # fmt: skip

#: Pillow's own hard limit (twice ``Image.MAX_IMAGE_PIXELS``). Pillow refuses
#: anything larger while reading the header, whatever ``max_pixels`` says.
DEFAULT_MAX_PIXELS: int = 178_956_970

_NOT_MEDIA = "not an image or audio file"

# ISO base media ('ftyp') major brands; anything else in an ftyp box (mp4, mov,
# 3gp ...) is video (an audio-only one is checked by its soundtrack).
_IMAGE_BRANDS = frozenset(
    {b"avif", b"avis", b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx",
     b"mif1", b"msf1", b"jpx ", b"jp2 "}
)  # fmt: skip
_AUDIO_BRANDS = frozenset({b"M4A ", b"M4B ", b"M4P ", b"F4A ", b"F4B "})

# Bytes sniff() reads: enough for every signature below (BMP's DIB size sits at 14).
_HEAD = 32

# load_image's own header check (max_pixels) is the decompression-bomb guard.
# Pillow's warning for 89-179 Mpx images would only print noise on stderr (from
# every worker, even under -q); its hard limit still raises and is reported.
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)
_ORIENTATION = 0x0112  # EXIF tag


@dataclass(frozen=True)
class Input:
    """A file that gets a result line (clear, review, flagged or error).

    Parameters
    ----------
    path : Path
        The file, as discovered (not resolved).
    modality : str
        ``"image"``, ``"audio"`` or ``"video"``.
    """

    path: Path
    modality: str


@dataclass(frozen=True)
class Skipped:
    """A file that is not media: counted in the summary, not scanned.

    Parameters
    ----------
    path : Path
        The file or folder, as discovered.
    reason : str
        Why it was not scanned, in plain words.
    """

    path: Path
    reason: str


def _sniff_bytes(head: bytes) -> str | None:
    """Modality from a file's first bytes, or None if no signature matches."""
    if head.startswith(
        (
            b"\x89PNG\r\n\x1a\n",
            b"\xff\xd8\xff",  # JPEG
            b"GIF87a",
            b"GIF89a",
            b"II*\x00",  # TIFF, little- and big-endian, classic and BigTIFF
            b"MM\x00*",
            b"II+\x00",
            b"MM\x00+",
            b"qoif",
            b"8BPS",  # Photoshop
            b"\x00\x00\x00\x0cjP  \r\n\x87\n",  # JPEG 2000
            b"\xff\x4f\xff\x51",  # JPEG 2000 codestream
            b"\xff\x0a",  # JPEG XL codestream
            b"\x00\x00\x00\x0cJXL \r\n\x87\n",  # JPEG XL container
        )
    ):
        return "image"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "image"
    # "BM" alone is too weak (a text file may start with it): also ask for a
    # known DIB header size.
    if (
        head[:2] == b"BM"
        and len(head) >= 18
        and struct.unpack_from("<I", head, 14)[0] in (12, 40, 52, 56, 64, 108, 124)
    ):
        return "image"
    # ICO/CUR: reserved 0, type 1 or 2, at least one entry whose reserved byte is 0.
    if (
        head[:2] == b"\x00\x00"
        and head[2:4] in (b"\x01\x00", b"\x02\x00")
        and head[4:6] != b"\x00\x00"
        and len(head) > 9
        and head[9] == 0
    ):
        return "image"
    if head[4:8] == b"ftyp":
        brand = head[8:12]
        if brand in _IMAGE_BRANDS:
            return "image"
        if brand in _AUDIO_BRANDS:
            return "audio"
        return "video"
    if head[4:8] in (b"moov", b"wide", b"mdat"):
        return "video"  # QuickTime without an ftyp box
    if head.startswith((b"\x1a\x45\xdf\xa3", b"FLV\x01", b"\x00\x00\x01\xba",
                        b"\x30\x26\xb2\x75\x8e\x66\xcf\x11")):
        return "video"  # Matroska/WebM (EBML), FLV, MPEG program stream, ASF/WMV
    if head[:4] == b"RIFF" and head[8:12] == b"AVI ":
        return "video"
    if head[:4] in (b"RIFF", b"RF64") and head[8:12] == b"WAVE":
        return "audio"
    if head[:4] == b"FORM" and head[8:12] in (b"AIFF", b"AIFC"):
        return "audio"
    if head.startswith((b"fLaC", b"OggS", b"ID3")):
        return "audio"
    # MPEG audio / ADTS frame: 11 sync bits, and a version field that is not
    # the reserved value 01 (JPEG's FF D8 fails the sync test already).
    if len(head) >= 2 and head[0] == 0xFF and head[1] & 0xE0 == 0xE0 and (head[1] >> 3) & 3 != 1:
        return "audio"
    return None


def _sniff_name(path: Path) -> str | None:
    suffix = path.suffix.lower()
    if suffix in IMAGE_EXTENSIONS:
        return "image"
    if suffix in AUDIO_EXTENSIONS:
        return "audio"
    if suffix in VIDEO_EXTENSIONS:
        return "video"
    return None


def sniff(path: str | Path) -> str | None:
    """Say whether a file is an image, audio or video, by content first, then by name.

    Parameters
    ----------
    path : str or Path
        The file. Only its first 32 bytes are read, and only if it is a regular
        file (a FIFO or device is never opened, so this cannot block).

    Returns
    -------
    modality : str or None
        ``"image"``, ``"audio"`` or ``"video"`` when the magic bytes match a
        known media signature (an Ogg stream named like video, ``.ogv``, is
        video); otherwise the guess from the extension (see
        :data:`IMAGE_EXTENSIONS`, :data:`AUDIO_EXTENSIONS`,
        :data:`VIDEO_EXTENSIONS`); ``None`` when
        neither says media. Unreadable or missing files get the extension's
        guess; this function never raises for them.
    """
    path = Path(path)
    try:
        if stat.S_ISREG(os.stat(path).st_mode):
            with open(path, "rb") as f:
                found = _sniff_bytes(f.read(_HEAD))
            if found == "audio" and _sniff_name(path) == "video":
                found = "video"  # Ogg (Theora) and other containers that also carry audio alone
            if found is not None:
                return found
    except (OSError, ValueError):
        pass  # missing, unreadable, or a name the OS rejects: the name decides
    return _sniff_name(path)


def discover(inputs: Iterable[str | Path]) -> Iterator[Input | Skipped]:
    """Turn paths given by a user into scan inputs and skipped files.

    Parameters
    ----------
    inputs : iterable of str or Path
        Files and folders, in the order given. Folders are walked recursively,
        entries in sorted name order, without following symbolic links to
        folders (so link loops cannot hang the walk). A file named here is
        always an :class:`Input`, even when missing or not media, so that it
        gets an ``error`` result rather than vanishing.

    Yields
    ------
    item : Input or Skipped
        In a deterministic order. Inside folders, a file whose content or name
        says image/audio is an :class:`Input` (a broken link named like media
        too: it will fail to decode, which is reported); anything else is
        ``Skipped(path, "not an image or audio file")``. Links to folders,
        special files and folders that cannot be listed are also
        :class:`Skipped`, with their own reason. Folders named like images
        (``x.png/``) are walked, never inputs.
    """
    for given in inputs:
        path = Path(given)
        if path.is_dir():
            yield from _walk(path)
        else:
            yield Input(path, sniff(path) or "image")


def _walk(folder: Path) -> Iterator[Input | Skipped]:
    try:
        with os.scandir(folder) as it:
            entries = sorted(it, key=lambda e: e.name)
    except OSError as exc:
        yield Skipped(folder, f"folder could not be read ({exc.strerror or exc})")
        return
    for entry in entries:
        path = folder / entry.name
        try:
            if entry.is_dir(follow_symlinks=False):
                yield from _walk(path)
                continue
            if entry.is_symlink():
                if entry.is_dir():  # follows the link
                    yield Skipped(path, "link to a folder (not followed)")
                    continue
                if not entry.is_file():  # broken or pointing at something odd
                    modality = _sniff_name(path)
                    yield Input(path, modality) if modality else Skipped(path, _NOT_MEDIA)
                    continue
            elif not entry.is_file(follow_symlinks=False):
                yield Skipped(path, "not a regular file")
                continue
        except OSError as exc:
            # a link loop or an unreadable entry named like media still gets a
            # result line (decoding names the problem), as a broken link does
            modality = _sniff_name(path)
            yield Input(path, modality) if modality else Skipped(path, f"could not be read ({exc.strerror or exc})")
            continue
        modality = sniff(path)
        yield Input(path, modality) if modality else Skipped(path, _NOT_MEDIA)


def load_image(
    path: str | Path,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_side: int | None = None,
) -> Image.Image:
    """Decode an image file to a fully loaded RGB image, safely.

    Parameters
    ----------
    path : str or Path
        The image file.
    max_pixels : int > 0
        Refuse images whose header declares more than this many pixels
        (width * height), before any pixel is decoded (decompression-bomb
        guard). Pillow's own limit, :data:`DEFAULT_MAX_PIXELS`, applies too.
    max_side : int > 0 or None
        If given, downscale so that the longer side is this many pixels,
        keeping the aspect ratio, with a box filter; JPEGs are decoded at a
        reduced DCT scale first (never below the target). Smaller images are
        not enlarged.

    Returns
    -------
    image : PIL.Image.Image [mode="RGB", size=(width, height)]
        The first frame, turned upright from its EXIF orientation, with any
        transparency composited over white using the alpha alone (whatever
        colour lies under fully transparent pixels never shows). 16- and
        32-bit greyscale is stretched to 0..255 from its actual minimum and
        maximum (a constant image becomes black). The file is closed.

    Raises
    ------
    DecodeError
        For every failure, with a short reason: "no such file", "permission
        denied", "is a directory", "zero-byte file", "not a recognised image
        format", "truncated or corrupt image (...)", "image too large: W x H
        pixels exceeds the limit of N (decompression-bomb guard)", ...
        No other exception escapes for a bad file.
    ParameterError
        If ``max_pixels`` or ``max_side`` is not a positive integer.
    """
    if not isinstance(max_pixels, int) or max_pixels < 1:
        raise ParameterError(
            f"max_pixels must be a positive integer, given max_pixels={max_pixels!r}"
        )
    if max_side is not None and (not isinstance(max_side, int) or max_side < 1):
        raise ParameterError(
            f"max_side must be a positive integer or None, given max_side={max_side!r}"
        )
    path = Path(path)
    try:
        return _load_image(path, max_pixels, max_side)
    except DecodeError:
        raise
    except FileNotFoundError:
        reason = "no such file"
    except PermissionError:
        reason = "permission denied"
    except IsADirectoryError:
        reason = "is a directory"
    except UnidentifiedImageError:
        reason = _unidentified_reason(path)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        # Pillow's own guard fired before ours could read the size; it names
        # the pixel count only.
        text = str(exc)
        pixels = re.search(r"\((\d+) pixels\)", text)
        limit = re.search(r"limit of (\d+)", text)
        reason = (
            f"image too large: {int(pixels.group(1)):,} pixels exceeds the limit of "
            f"{int(limit.group(1)):,} (decompression-bomb guard)"
            if pixels and limit
            else "image too large (decompression-bomb guard)"
        )
    except MemoryError:
        reason = "not enough memory to decode the image"
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            reason = "symbolic link loop"
        elif exc.errno is not None:  # the OS failed to read, not a bad stream
            reason = f"read error ({exc.strerror})"
        else:
            reason = f"truncated or corrupt image ({_detail(exc)})"
    except (ValueError, SyntaxError, struct.error, EOFError, IndexError, KeyError, TypeError) as exc:
        reason = f"truncated or corrupt image ({_detail(exc)})"
    except Exception as exc:  # noqa: BLE001 - plugins raise odd things on fuzzed input
        reason = f"could not decode ({type(exc).__name__}: {_detail(exc)})"
    raise DecodeError(path, reason) from None


def regular_file(path: Path) -> os.stat_result:
    """Check that ``path`` is a non-empty regular file this process can read.

    Returns
    -------
    os.stat_result

    Raises
    ------
    DecodeError
        "no such file", "permission denied", "symbolic link loop", "read error (...)", "is a directory",
        "not a regular file" (opening a FIFO would block forever), "zero-byte file".
    """
    try:
        info = os.stat(path)
    except FileNotFoundError:
        raise DecodeError(path, "no such file") from None
    except PermissionError:
        raise DecodeError(path, "permission denied") from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise DecodeError(path, "symbolic link loop") from None
        raise DecodeError(path, f"read error ({exc.strerror})") from None
    if stat.S_ISDIR(info.st_mode):
        raise DecodeError(path, "is a directory")
    if not stat.S_ISREG(info.st_mode):
        raise DecodeError(path, "not a regular file")
    if info.st_size == 0:
        raise DecodeError(path, "zero-byte file")
    if not os.access(path, os.R_OK):
        raise DecodeError(path, "permission denied")
    return info


def _load_image(path: Path, max_pixels: int, max_side: int | None) -> Image.Image:
    regular_file(path)
    with open(path, "rb") as f, Image.open(f) as im:
        width, height = im.size
        if width * height > max_pixels:
            raise DecodeError(
                path,
                f"image too large: {width} x {height} pixels exceeds the limit of "
                f"{max_pixels:,} (decompression-bomb guard)",
            )
        if max_side is not None and im.format == "JPEG":
            # Let libjpeg skip DCT coefficients: decodes at 1/2, 1/4 or 1/8
            # scale, never below the target (its scaled inverse DCT is itself
            # a low-pass filter); the box resample does the rest.
            scale = max_side / max(width, height)
            if scale < 1:
                im.draft(None, (max(1, math.ceil(width * scale)), max(1, math.ceil(height * scale))))
        im.load()
        # exif_transpose copies the whole picture; most files need no turn
        upright = ImageOps.exif_transpose(im) if im.getexif().get(_ORIENTATION, 1) != 1 else im
        return to_rgb(upright, max_side)


def _shrink(im: Image.Image, max_side: int | None) -> Image.Image:
    """Downscale so the longer side is ``max_side``, averaging every pixel (a box filter).

    Pillow first reduces by whole factors while at least twice the target
    remains (cheap, no aliasing), then box-resamples the rest. A whole factor
    alone would land anywhere above half the target: a 530-pixel picture
    would be halved, losing detail every featurizer needs (keeping a whole
    factor when it leaves 80% of the target changed 49 of 1,000 verdicts of
    the 10k-work scan and was not measurably faster).
    """
    if max_side is None or max(im.size) <= max_side:
        return im
    scale = max_side / max(im.size)
    size = (max(1, round(im.width * scale)), max(1, round(im.height * scale)))
    return im.resize(size, Image.Resampling.BOX, reducing_gap=2.0)


def opencv() -> Any:
    """OpenCV, its thread pool set to one thread: one picture per worker process or thread, and
    a team of threads for each small call costs more than it gives (they spin when the cores
    are busy). Every module that uses OpenCV takes it from here."""
    import cv2

    cv2.setNumThreads(1)
    return cv2


def to_rgb(im: Image.Image, max_side: int | None = None) -> Image.Image:
    """Flatten any Pillow mode to a new RGB image (never the input object), shrunk to ``max_side``.

    What a person sees: transparency of any kind (an alpha channel, a
    palette's alpha, a ``tRNS`` colour key) composited over white, whatever
    colour lies under fully transparent pixels; 16- and 32-bit greyscale
    stretched to its own range.
    """
    if im.mode in ("I", "I;16", "I;16L", "I;16B", "I;16N", "F"):
        return _shrink(_deep_to_rgb(im), max_side)
    has_alpha = (
        im.mode in ("RGBA", "RGBa", "LA", "La", "PA")
        or "transparency" in im.info
        or (im.mode == "P" and im.palette is not None and im.palette.mode == "RGBA")
    )
    if not has_alpha:
        # shrink before converting where the mode allows it: a full-size RGB copy
        # of a 179 Mpx picture would cost 716 MB more (the result is the same)
        if im.mode == "1":
            im = im.convert("L")
        if im.mode in ("L", "RGB"):
            return _shrink(im, max_side).convert("RGB")
        return _shrink(im.convert("RGB"), max_side)
    rgba = im if im.mode == "RGBA" else im.convert("RGBA")  # RGBA applies palette alpha, tRNS
    if max_side is None or max(rgba.size) <= max_side:
        # nothing to resample: one blend a pixel, round(rgb * a / 255) + 255 - a (Pillow's
        # masked paste), the same bytes as the premultiplied path below at under half its cost
        flat = Image.new("RGB", rgba.size, (255, 255, 255))
        flat.paste(rgba, (0, 0), rgba)
        return flat
    # premultiplied alpha: the colour stored under alpha 0 becomes zero, so
    # resampling cannot bleed it into the picture, and flattening over white is
    # one addition (rgb * a + white * (1 - a)), done after shrinking
    cv2 = opencv()  # saturating uint8 arithmetic in one pass: numpy's broadcast over channel-last pixels costs 8x

    premultiplied = _shrink(rgba.convert("RGBa"), max_side)
    arr = np.asarray(premultiplied)
    under = 255 - arr[..., 3]  # premultiplied colour is at most alpha: the sum stays in range
    return Image.fromarray(cv2.add(cv2.cvtColor(arr, cv2.COLOR_RGBA2RGB), cv2.merge([under, under, under])),
                           mode="RGB")


def _deep_to_rgb(im: Image.Image) -> Image.Image:
    """Stretch 16/32-bit greyscale to 8 bits by its actual range, not by clipping."""
    values = np.asarray(im).astype(np.float64)
    key = im.info.get("transparency")
    opaque = np.isfinite(values)
    if isinstance(key, int):
        opaque &= values != key
    lo, hi = (values[opaque].min(), values[opaque].max()) if opaque.any() else (0.0, 0.0)
    if hi > lo:
        grey = (values - lo) * (255.0 / (hi - lo))
    else:
        grey = np.zeros_like(values)
    grey = np.where(opaque, grey, 255.0)  # colour-keyed pixels show the white background
    grey = np.clip(np.rint(grey), 0, 255).astype(np.uint8)
    return Image.fromarray(grey, mode="L").convert("RGB")


def _unidentified_reason(path: Path) -> str:
    try:
        with open(path, "rb") as f:
            head = f.read(_HEAD)
    except OSError:
        head = b""
    if head[4:8] == b"ftyp" and head[8:12] in _IMAGE_BRANDS:
        return "not a recognised image format (AVIF/HEIF: no decoder installed for it)"
    if head.startswith((b"\xff\x0a", b"\x00\x00\x00\x0cJXL ")):
        return "not a recognised image format (JPEG XL: no decoder installed for it)"
    kind = _sniff_bytes(head)
    if kind == "image":
        # The signature is there but Pillow could not parse the header.
        return "truncated or corrupt image (unreadable header)"
    if kind == "audio":
        return "not a recognised image format (the file holds audio)"
    return "not a recognised image format"


def _detail(exc: BaseException, limit: int = 120) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def sha256_file(path: str | Path, *, chunk_size: int = 1 << 20) -> str:
    """Hash a file's bytes, streamed in fixed-size chunks.

    Parameters
    ----------
    path : str or Path
        The file.
    chunk_size : int > 0
        Bytes read at a time; memory use is one chunk.

    Returns
    -------
    digest : str [length=64]
        Lowercase hex SHA-256 of the file's content.

    Raises
    ------
    OSError
        If the file cannot be opened or read.
    ParameterError
        If ``chunk_size`` is not a positive integer.
    """
    if not isinstance(chunk_size, int) or chunk_size < 1:
        raise ParameterError(
            f"chunk_size must be a positive integer, given chunk_size={chunk_size!r}"
        )
    digest = hashlib.sha256()
    with open(path, "rb", buffering=0) as f:
        # no larger than the file: a chunk's buffer is zeroed when made, and most files are far
        # smaller than a chunk (a 1 MiB buffer cost more than hashing a 60 kB picture)
        buffer = bytearray(max(1, min(chunk_size, os.fstat(f.fileno()).st_size + 1)))
        view = memoryview(buffer)
        while n := f.readinto(buffer):
            digest.update(view[:n])
    return digest.hexdigest()


# --- audio ---------------------------------------------------------------------------------

#: Sample rate (Hz) every audio featurizer works at: files are decoded to mono
#: float32 at this rate (resampled with soxr). 11025 Hz keeps everything below
#: 5.5 kHz, where melody and the spectral peaks that survive a telephone band
#: (300-3400 Hz) live, at a quarter of the cost of 44.1 kHz.
ANALYSIS_SR: int = 11025
#: Seconds of decoded audio handed to featurizers at a time: a 3-hour file never
#: sits in memory as one array.
CHUNK_SECONDS: float = 60.0
#: Longest audio decoded (seconds); the rest of a longer file is not read.
DEFAULT_MAX_SECONDS: float = 6 * 3600.0
#: Shorter audio carries too little to be evidence (featureless).
MIN_AUDIO_SECONDS: float = 2.0
#: Audio whose loudest half second stays below this level (dB full scale) is silence.
SILENCE_DBFS: float = -60.0
#: Blocks (seconds) whose loudness decides silence.
_LEVEL_BLOCK = 0.5
#: Extensions libsndfile is not asked to read (it has no AAC/ALAC/Opus-in-MP4 decoder).
_FFMPEG_ONLY = frozenset({".m4a", ".aac", ".mp4", ".m4b", ".opus"})


@dataclass(frozen=True)
class AudioChunk:
    """A run of decoded samples: mono float32 at :data:`ANALYSIS_SR`.

    Chunks of one file are contiguous and do not overlap: chunk ``k + 1`` starts
    at ``start + len(y)`` of chunk ``k``. A featurizer that frames the signal
    keeps the samples of its last incomplete frame for the next chunk.

    Attributes
    ----------
    y : np.ndarray [shape=(n,), dtype=float32]
        Samples, finite (NaN and infinities in the file are decoded as 0).
    start : int >= 0
        Index of ``y[0]`` in the whole file, in samples at ``sr``.
    sr : int > 0
        Sample rate in Hz.
    last : bool
        True for the final chunk of the file.
    """

    y: np.ndarray
    start: int
    sr: int
    last: bool = False

    @property
    def start_seconds(self) -> float:
        """Time of ``y[0]`` in seconds."""
        return self.start / self.sr


class Audio:
    """An opened audio file: what its header says, and its samples as bounded chunks.

    Use :func:`open_audio`. Every call of :meth:`chunks` decodes the file anew
    from its start; decode it once and feed each chunk to every featurizer.

    Attributes
    ----------
    path : Path
    sr : int, analysis rate in Hz (samples are delivered at this rate)
    source_sr : int, the file's own rate in Hz
    channels : int, the file's channels (mixed down to mono)
    duration : float or None, seconds per the header (None when unknown)
    backend : {"soundfile", "ffmpeg"}
    samples : int, samples delivered by the last complete :meth:`chunks` pass
    peak_level : float, loudest :data:`_LEVEL_BLOCK`-second RMS of that pass (linear, 1.0 = full scale)
    """

    def __init__(self, path: Path, *, sr: int, source_sr: int, channels: int, duration: float | None,
                 backend: str, max_seconds: float):
        self.path = path
        self.sr = sr
        self.source_sr = source_sr
        self.channels = channels
        self.duration = duration
        self.backend = backend
        self.max_seconds = max_seconds
        self.samples = 0
        self.peak_level = 0.0

    def __repr__(self) -> str:
        return (f"Audio({str(self.path)!r}, source_sr={self.source_sr}, channels={self.channels}, "
                f"duration={self.duration}, backend={self.backend!r})")

    def chunks(self, *, seconds: float = CHUNK_SECONDS) -> Iterator[AudioChunk]:
        """Decode the file, yielding contiguous mono chunks at :attr:`sr`.

        Parameters
        ----------
        seconds : float > 0
            Length of each chunk (the last may be shorter). Memory use is a few
            chunks, whatever the file's length.

        Yields
        ------
        AudioChunk
            At least one (possibly empty, with ``last=True``).

        Raises
        ------
        DecodeError
            When the stream turns out corrupt part way, naming the file.
        """
        if not seconds > 0:
            raise ParameterError(f"seconds must be positive, given seconds={seconds!r}")
        import soxr

        block = max(1, int(round(seconds * self.source_sr)))
        limit = int(self.max_seconds * self.source_sr)
        resampler = (soxr.ResampleStream(self.source_sr, self.sr, 1, dtype="float32", quality="HQ")
                     if self.source_sr != self.sr else None)
        level_block = max(1, int(_LEVEL_BLOCK * self.sr))
        self.samples, self.peak_level = 0, 0.0
        carry = np.zeros(0, np.float32)  # samples short of a whole level block
        peak_sq = 0.0
        start = 0
        read = 0
        raw = self._blocks(block)
        try:
            pending: np.ndarray | None = None
            for data in raw:
                if read >= limit:
                    break
                data = data[: limit - read]
                read += len(data)
                y = np.nan_to_num(data, nan=0.0, posinf=0.0, neginf=0.0).astype(np.float32, copy=False)
                if resampler is not None:
                    y = resampler.resample_chunk(y, last=False)
                if pending is not None and len(pending):
                    yield AudioChunk(pending, start, self.sr)
                    start += len(pending)
                pending = y
                # loudness of whole blocks, for the silence test
                level = np.concatenate([carry, y])
                whole = len(level) // level_block * level_block
                if whole:
                    ms = np.square(level[:whole], dtype=np.float64).reshape(-1, level_block).mean(axis=1)
                    peak_sq = max(peak_sq, float(ms.max()))
                carry = level[whole:]
            tail = resampler.resample_chunk(np.zeros(0, np.float32), last=True) if resampler is not None else None
            if tail is not None and len(tail):
                pending = tail if pending is None else np.concatenate([pending, tail])
                level = np.concatenate([carry, tail])
            else:
                level = carry
            if len(level):
                peak_sq = max(peak_sq, float(np.square(level, dtype=np.float64).mean()))
            if pending is None:
                pending = np.zeros(0, np.float32)
            self.samples = start + len(pending)
            self.peak_level = float(np.sqrt(peak_sq))
            yield AudioChunk(np.ascontiguousarray(pending, dtype=np.float32), start, self.sr, last=True)
        finally:
            raw.close()

    def read(self) -> np.ndarray:
        """The whole file as one mono float32 array at :attr:`sr` (for short files and tests)."""
        parts = [c.y for c in self.chunks()]
        return np.concatenate(parts) if parts else np.zeros(0, np.float32)

    def featureless(self) -> str | None:
        """Why the audio carries no identifiable expression, after a full :meth:`chunks` pass.

        Returns
        -------
        reason : str or None
            ``"too short (0.4 s)"``, ``"silence (loudest -72 dBFS)"``, or ``None``.
        """
        seconds = self.samples / self.sr
        if seconds < MIN_AUDIO_SECONDS:
            return f"too short ({seconds:.1f} s)"
        if self.peak_level <= 10 ** (SILENCE_DBFS / 20):
            db = 20 * np.log10(max(self.peak_level, 1e-12))
            return f"silence (loudest {db:.0f} dBFS)" if db > -240 else "silence (digital zero)"
        return None

    def _blocks(self, block: int) -> Iterator[np.ndarray]:
        """Mono float32 blocks at the source rate, ``block`` frames each."""
        if self.backend == "soundfile":
            return self._sf_blocks(block)
        return self._ffmpeg_blocks(block)

    def _sf_blocks(self, block: int) -> Iterator[np.ndarray]:
        import soundfile as sf

        try:
            with sf.SoundFile(self.path) as f:
                while True:
                    data = f.read(block, dtype="float32", always_2d=True)
                    if not len(data):
                        return
                    yield data.mean(axis=1) if data.shape[1] > 1 else data[:, 0]
                    if len(data) < block:
                        return
        except (sf.LibsndfileError, RuntimeError, ValueError) as exc:
            raise DecodeError(self.path, f"truncated or corrupt audio ({_detail(exc)})") from None
        except MemoryError:
            raise DecodeError(self.path, "not enough memory to decode the audio") from None

    def _ffmpeg_blocks(self, block: int) -> Iterator[np.ndarray]:
        cmd = ["ffmpeg", "-nostdin", "-v", "error", "-i", str(self.path), "-map", "0:a:0", "-vn",
               "-ac", "1", "-f", "f32le", "-c:a", "pcm_f32le", "pipe:1"]
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        assert proc.stdout is not None and proc.stderr is not None
        nbytes = block * 4
        try:
            while True:
                data = proc.stdout.read(nbytes)
                if not data:
                    break
                yield np.frombuffer(data[: len(data) // 4 * 4], dtype="<f4")
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.stdout.close()
            err = proc.stderr.read().decode("utf-8", "replace")
            proc.stderr.close()
            code = proc.wait()
        if code != 0:
            lines = [line for line in err.strip().splitlines() if line.strip()]
            detail = lines[-1] if lines else f"ffmpeg exit status {code}"
            raise DecodeError(self.path, f"truncated or corrupt audio ({_detail(Exception(detail))})")


def _ffprobe(path: Path) -> tuple[int, int, float | None] | None:
    """(sample rate, channels, duration) of the first audio stream per ffprobe, or None."""
    if shutil.which("ffprobe") is None:
        return None
    cmd = ["ffprobe", "-v", "error", "-select_streams", "a:0", "-show_entries",
           "stream=sample_rate,channels,duration:format=duration", "-of", "json", str(path)]
    try:
        done = subprocess.run(cmd, capture_output=True, timeout=60, check=False)
        info = json.loads(done.stdout or b"{}")
        stream = (info.get("streams") or [None])[0]
        if done.returncode != 0 or not stream or not int(stream.get("sample_rate", 0)):
            return None
        duration = stream.get("duration") or (info.get("format") or {}).get("duration")
        return int(stream["sample_rate"]), int(stream.get("channels", 1)), (float(duration) if duration else None)
    except (OSError, ValueError, TypeError, subprocess.SubprocessError):
        return None


def open_audio(path: str | Path, *, sr: int = ANALYSIS_SR,
               max_seconds: float = DEFAULT_MAX_SECONDS) -> Audio:
    """Open an audio file for chunked decoding, checking that it holds audio.

    wav, flac, ogg/vorbis, mp3, aiff... are read by libsndfile (soundfile);
    m4a/aac/opus and anything libsndfile refuses go through ffmpeg when it is
    installed. Only the header is read here; :meth:`Audio.chunks` decodes.

    Parameters
    ----------
    path : str or Path
        The audio file.
    sr : int > 0
        Rate (Hz) samples are delivered at (resampled with soxr).
    max_seconds : float > 0
        Decode at most this many seconds (duration cap).

    Returns
    -------
    audio : Audio

    Raises
    ------
    DecodeError
        "no such file", "permission denied", "is a directory", "zero-byte
        file", "no audio samples (header only)", "not a recognised audio
        format", ... naming the file. No other exception escapes for a bad file.
    ParameterError
        If ``sr`` or ``max_seconds`` is not positive.
    """
    if not isinstance(sr, int) or sr < 1:
        raise ParameterError(f"sr must be a positive integer, given sr={sr!r}")
    if not max_seconds > 0:
        raise ParameterError(f"max_seconds must be positive, given max_seconds={max_seconds!r}")
    path = Path(path)
    regular_file(path)
    kwargs = dict(sr=sr, max_seconds=max_seconds)
    if path.suffix.lower() not in _FFMPEG_ONLY:
        import soundfile as sf

        try:
            meta = sf.info(str(path))
            if meta.frames == 0 and meta.format in ("WAV", "WAVEX", "AIFF", "FLAC", "RF64", "W64", "CAF"):
                raise DecodeError(path, "no audio samples (header only)")
            if meta.samplerate > 0 and meta.channels > 0:
                duration = meta.frames / meta.samplerate if meta.frames > 0 else None
                return Audio(path, source_sr=int(meta.samplerate), channels=int(meta.channels),
                             duration=duration, backend="soundfile", **kwargs)
        except (sf.LibsndfileError, RuntimeError):
            pass  # not a format libsndfile knows: ffmpeg may
        except MemoryError:
            raise DecodeError(path, "not enough memory to read the audio header") from None
    probed = _ffprobe(path)
    if probed is not None:
        source_sr, channels, duration = probed
        return Audio(path, source_sr=source_sr, channels=channels, duration=duration, backend="ffmpeg", **kwargs)
    try:
        with open(path, "rb") as f:
            head = f.read(_HEAD)
    except OSError:
        head = b""
    if _sniff_bytes(head) == "image":
        raise DecodeError(path, "not a recognised audio format (the file holds an image)")
    if _sniff_bytes(head) == "audio":
        raise DecodeError(path, "truncated or corrupt audio (unreadable header)")
    if path.suffix.lower() in _FFMPEG_ONLY and shutil.which("ffmpeg") is None:
        raise DecodeError(path, f"not a recognised audio format ({path.suffix} needs ffmpeg, which is not installed)")
    raise DecodeError(path, "not a recognised audio format")

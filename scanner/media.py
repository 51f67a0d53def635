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
import os
import re
import stat
import struct
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from scanner.errors import DecodeError, ParameterError

__all__ = [
    "AUDIO_EXTENSIONS",
    "DEFAULT_MAX_PIXELS",
    "IMAGE_EXTENSIONS",
    "Input",
    "Skipped",
    "discover",
    "load_image",
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

#: Pillow's own hard limit (twice ``Image.MAX_IMAGE_PIXELS``). Pillow refuses
#: anything larger while reading the header, whatever ``max_pixels`` says.
DEFAULT_MAX_PIXELS: int = 178_956_970

_NOT_MEDIA = "not an image or audio file"

# ISO base media ('ftyp') major brands; anything else in an ftyp box (mp4 video,
# 3gp ...) is left to the extension.
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
        ``"image"`` or ``"audio"``.
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
        return None
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
    return None


def sniff(path: str | Path) -> str | None:
    """Say whether a file is an image or audio, by content first, then by name.

    Parameters
    ----------
    path : str or Path
        The file. Only its first 32 bytes are read, and only if it is a regular
        file (a FIFO or device is never opened, so this cannot block).

    Returns
    -------
    modality : str or None
        ``"image"`` or ``"audio"`` when the magic bytes match a known media
        signature; otherwise the guess from the extension (see
        :data:`IMAGE_EXTENSIONS`, :data:`AUDIO_EXTENSIONS`); ``None`` when
        neither says media. Unreadable or missing files get the extension's
        guess; this function never raises for them.
    """
    path = Path(path)
    try:
        if stat.S_ISREG(os.stat(path).st_mode):
            with open(path, "rb") as f:
                found = _sniff_bytes(f.read(_HEAD))
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
        If given, downscale so that the longer side is at most this many
        pixels (and more than half of it), by the smallest whole factor, with
        a box filter; JPEGs are decoded at a reduced DCT scale first. Smaller
        images are not enlarged.

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


def _load_image(path: Path, max_pixels: int, max_side: int | None) -> Image.Image:
    info = os.stat(path)
    if stat.S_ISDIR(info.st_mode):
        raise DecodeError(path, "is a directory")
    if not stat.S_ISREG(info.st_mode):
        # Opening a FIFO would block forever.
        raise DecodeError(path, "not a regular file")
    if info.st_size == 0:
        raise DecodeError(path, "zero-byte file")
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
            # scale, never below twice the target, so the resample still has
            # detail to filter.
            scale = max_side / max(width, height)
            if scale < 0.5:
                im.draft(None, (max(1, int(width * scale * 2)), max(1, int(height * scale * 2))))
        im.load()
        # exif_transpose copies the whole picture; most files need no turn
        upright = ImageOps.exif_transpose(im) if im.getexif().get(_ORIENTATION, 1) != 1 else im
        return _to_rgb(upright, max_side)


def _shrink(im: Image.Image, max_side: int | None) -> Image.Image:
    """Reduce by the smallest whole factor that brings the longer side to ``max_side`` or less.

    A whole-factor box reduction averages every pixel (no aliasing) at a
    fraction of a Lanczos resample's cost; the featurizers resample further.
    """
    if max_side is None or max(im.size) <= max_side:
        return im
    return im.reduce(-(-max(im.size) // max_side))


def _to_rgb(im: Image.Image, max_side: int | None = None) -> Image.Image:
    """Flatten any Pillow mode to a new RGB image (never the input object), shrunk to ``max_side``."""
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
    # premultiplied alpha: the colour stored under alpha 0 becomes zero, so
    # resampling cannot bleed it into the picture, and flattening over white is
    # one addition (rgb * a + white * (1 - a)), done after shrinking
    rgba = im if im.mode == "RGBA" else im.convert("RGBA")  # RGBA applies palette alpha, tRNS
    premultiplied = _shrink(rgba.convert("RGBa"), max_side)
    arr = np.asarray(premultiplied)
    return Image.fromarray(arr[..., :3] + (255 - arr[..., 3:]), mode="RGB")


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
    buffer = bytearray(chunk_size)
    view = memoryview(buffer)
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(buffer):
            digest.update(view[:n])
    return digest.hexdigest()

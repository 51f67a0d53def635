"""Tests for scanner.media: discovery by content, safe image decoding, hashing.

Every file is made at test time in ``tmp_path``; there are no binary fixtures.
"""

from __future__ import annotations

import hashlib
import io
import itertools
import os
import struct
import wave
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from scanner.errors import DecodeError, ParameterError
from scanner.media import (
    AUDIO_EXTENSIONS,
    DEFAULT_MAX_PIXELS,
    IMAGE_EXTENSIONS,
    Input,
    Skipped,
    discover,
    load_image,
    sha256_file,
    sniff,
    to_rgb,
)

RED, GREEN, BLUE, WHITE = (255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255)


# --- helpers -----------------------------------------------------------------


def _save(image: Image.Image, path: Path, **kwargs) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, **kwargs)
    return path


def _png_bytes(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def _write_wav(path: Path, seconds: float = 0.05, sr: int = 8000) -> Path:
    t = np.arange(int(seconds * sr)) / sr
    samples = (np.sin(2 * np.pi * 440 * t) * 12000).astype("<i2")
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(sr)
        w.writeframes(samples.tobytes())
    return path


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _png_bomb(path: Path, width: int, height: int) -> Path:
    """A 1-bit PNG whose header declares width x height; the pixel data is tiny.

    Only the header matters: the decoder must refuse before reading pixels.
    """
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    rows = zlib.compress(b"\x00" * ((width + 7) // 8 + 1) * 4)  # a few rows, then truncated
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", rows) + _png_chunk(b"IEND", b"")
    )
    return path


def _rgb(image: Image.Image) -> np.ndarray:
    assert image.mode == "RGB"
    return np.asarray(image).astype(int)


# --- constants and sniff --------------------------------------------------------


def test_extension_sets_and_default_limit():
    for ext in (".png", ".jpg", ".jpeg", ".gif", ".webp", ".bmp", ".tif", ".tiff", ".avif", ".heic"):
        assert ext in IMAGE_EXTENSIONS
    assert AUDIO_EXTENSIONS >= {".wav", ".flac", ".ogg", ".oga", ".mp3", ".m4a", ".aac", ".opus", ".aif", ".aiff"}
    assert not IMAGE_EXTENSIONS & AUDIO_EXTENSIONS
    assert DEFAULT_MAX_PIXELS == 178_956_970


@pytest.mark.parametrize(
    ("head", "expected"),
    [
        (b"\x89PNG\r\n\x1a\n" + b"\0" * 24, "image"),
        (b"\xff\xd8\xff\xe0\x00\x10JFIF\x00", "image"),
        (b"GIF89a\x01\x00\x01\x00", "image"),
        (b"RIFF\x10\x00\x00\x00WEBPVP8 ", "image"),
        (b"BM" + b"\0" * 12 + struct.pack("<I", 40) + b"\0" * 8, "image"),
        (b"II*\x00\x08\x00\x00\x00", "image"),
        (b"MM\x00*\x00\x00\x00\x08", "image"),
        (b"\x00\x00\x01\x00\x01\x00\x10\x10\x00\x00", "image"),  # ICO
        (b"\x00\x00\x00\x1cftypavif\x00\x00\x00\x00", "image"),
        (b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00", "image"),
        (b"qoif\x00\x00\x00\x10\x00\x00\x00\x10\x03\x00", "image"),
        (b"RIFF\x24\x00\x00\x00WAVEfmt ", "audio"),
        (b"fLaC\x00\x00\x00\x22", "audio"),
        (b"OggS\x00\x02\x00\x00", "audio"),
        (b"ID3\x04\x00\x00\x00\x00", "audio"),
        (b"\xff\xfb\x90\x64\x00\x00", "audio"),  # MPEG-1 layer III frame
        (b"\xff\xf1\x50\x80\x00\x1f", "audio"),  # ADTS AAC
        (b"\x00\x00\x00\x20ftypM4A \x00\x00\x00\x00", "audio"),
        (b"FORM\x00\x00\x10\x00AIFFCOMM", "audio"),
        (b"BMW owners club minutes\n", None),  # "BM" alone is not a bitmap
        (b"\x00\x00\x00\x20ftypisom\x00\x00\x02\x00", "video"),  # mp4 video
        (b"\x1a\x45\xdf\xa3\x9f\x42\x86\x81\x01", "video"),  # Matroska / WebM
        (b"RIFF\x24\x00\x00\x00AVI LIST", "video"),
        (b'{"prompt": "a cat"}', None),
    ],
)
def test_sniff_by_content_ignores_extension(tmp_path, head, expected):
    path = tmp_path / "blob.dat"
    path.write_bytes(head)
    assert sniff(path) == expected


def test_sniff_content_wins_over_name_and_name_is_the_fallback(tmp_path):
    wav = _write_wav(tmp_path / "really_audio.png")
    assert sniff(wav) == "audio"
    text = tmp_path / "fake.PNG"
    text.write_text("hello")
    assert sniff(text) == "image"
    (tmp_path / "notes.txt").write_text("hello")
    assert sniff(tmp_path / "notes.txt") is None
    # missing files never raise: the name decides
    assert sniff(tmp_path / "gone.flac") == "audio"
    assert sniff(tmp_path / "gone.json") is None


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_sniff_does_not_open_a_fifo(tmp_path):
    fifo = tmp_path / "pipe.mp3"
    os.mkfifo(fifo)
    assert sniff(fifo) == "audio"  # opening it would block the test forever


# --- discover ---------------------------------------------------------------


@pytest.fixture
def media_tree(tmp_path: Path) -> Path:
    root = tmp_path / "outputs"
    _save(Image.new("RGB", (8, 8), RED), root / "a.png")
    _save(Image.new("RGB", (8, 8), GREEN), root / "b.jpg")
    _write_wav(root / "sound.wav")
    (root / "prompt.json").write_text('{"prompt": "a red square"}')
    (root / "notes.txt").write_text("seed 42\n")
    (root / "mystery.dat").write_bytes(_png_bytes(Image.new("RGB", (4, 4), BLUE)))
    _save(Image.new("L", (4, 4), 128), root / "x.png" / "inner.png")
    (root / "links").mkdir()
    os.symlink(root / "links" / "nowhere.png", root / "links" / "a.png")  # broken
    os.symlink(root / "links" / "nowhere.bin", root / "links" / "b.bin")  # broken, not media by name
    os.symlink("..", root / "links" / "loop")  # a folder link back up: a loop if followed
    return root


def test_discover_walks_folders_by_content_in_sorted_order(media_tree):
    root = media_tree
    # islice: a walk that followed the loop would produce endless items, not hang
    found = list(itertools.islice(discover([root]), 100))
    assert found == [
        Input(root / "a.png", "image"),
        Input(root / "b.jpg", "image"),
        Input(root / "links" / "a.png", "image"),
        Skipped(root / "links" / "b.bin", "not an image or audio file"),
        Skipped(root / "links" / "loop", "link to a folder (not followed)"),
        Input(root / "mystery.dat", "image"),
        Skipped(root / "notes.txt", "not an image or audio file"),
        Skipped(root / "prompt.json", "not an image or audio file"),
        Input(root / "sound.wav", "audio"),
        Input(root / "x.png" / "inner.png", "image"),
    ]
    assert list(discover([root])) == found  # deterministic


def test_discover_explicit_files_are_always_inputs(media_tree, tmp_path):
    root = media_tree
    missing = tmp_path / "missing.webp"
    found = list(discover([root / "notes.txt", str(root / "sound.wav"), missing, root / "x.png"]))
    assert found == [
        Input(root / "notes.txt", "image"),
        Input(root / "sound.wav", "audio"),
        Input(missing, "image"),
        Input(root / "x.png" / "inner.png", "image"),  # a folder named like an image is walked
    ]
    with pytest.raises(DecodeError, match="no such file"):
        load_image(missing)


def test_discover_special_files_are_skipped(tmp_path):
    if not hasattr(os, "mkfifo"):
        pytest.skip("needs FIFOs")
    os.mkfifo(tmp_path / "pipe.png")
    assert list(discover([tmp_path])) == [Skipped(tmp_path / "pipe.png", "not a regular file")]


# --- load_image: colour modes and transparency ---------------------------------


def test_rgba_garbage_under_transparent_pixels_does_not_show(tmp_path):
    rng = np.random.default_rng(0)
    h, w = 32, 48
    picture = np.zeros((h, w, 3), np.uint8)
    picture[:, : w // 2] = RED
    picture[:, w // 2 :] = BLUE
    alpha = np.zeros((h, w), np.uint8)
    alpha[8:24, 8:40] = 255  # opaque window
    alpha[8:24, 40:44] = 128  # half-transparent strip
    rgb = np.where(alpha[..., None] > 0, picture, rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
    path = _save(Image.fromarray(np.dstack([rgb, alpha]), "RGBA"), tmp_path / "rgba.png")

    a = alpha[..., None].astype(float) / 255
    expected = picture * a + 255 * (1 - a)
    got = _rgb(load_image(path))
    assert got.shape == (h, w, 3)
    assert np.abs(got - expected).max() <= 1
    assert (got[0, 0] == WHITE).all()
    assert (got[12, 12] == RED).all()


def test_transparency_blends_exactly_and_alike_at_any_size() -> None:
    """Every colour over every alpha flattens to round(c * a / 255) + 255 - a, the premultiplied
    value; a picture shrunk while it is flattened matches the flat picture box-averaged."""
    c, a = np.meshgrid(np.arange(256), np.arange(256))
    rgba = np.dstack([c, 255 - c, c // 2, a]).astype(np.uint8)
    got = np.asarray(to_rgb(Image.fromarray(rgba, "RGBA")), np.int64)
    want = (rgba[..., :3].astype(np.int64) * a[..., None] + 127) // 255 + 255 - a[..., None]
    assert np.array_equal(got, want)

    block = np.repeat(np.repeat(rgba[::16, ::16], 4, axis=0), 4, axis=1)  # 64 x 64, alpha constant per 4 x 4
    flat = np.asarray(to_rgb(Image.fromarray(block, "RGBA")), np.int64)
    small = np.asarray(to_rgb(Image.fromarray(block, "RGBA"), 16), np.int64)
    assert small.shape == (16, 16, 3)
    assert np.abs(small - flat[::4, ::4]).max() <= 1


def test_palette_with_transparency_is_composited_over_white(tmp_path):
    im = Image.new("P", (10, 10), 0)
    im.putpalette([0, 255, 0] + [255, 0, 0] + [0, 0, 0] * 254)  # index 0 green garbage, 1 red
    im.paste(1, (0, 0, 5, 10))
    png = _save(im, tmp_path / "p.png", transparency=0)
    gif = _save(im, tmp_path / "p.gif", transparency=0)
    for path in (png, gif):
        got = _rgb(load_image(path))
        assert (got[:, :5] == RED).all(), path
        assert (got[:, 5:] == WHITE).all(), path


def test_la_and_colour_key_transparency(tmp_path):
    la = np.zeros((4, 6, 2), np.uint8)  # black everywhere
    la[:, 2:4, 1] = 255
    la[:, 4:, 1] = 128
    got = _rgb(load_image(_save(Image.fromarray(la, "LA"), tmp_path / "la.png")))
    assert (got[:, :2] == 255).all()  # fully transparent black -> white
    assert (got[:, 2:4] == 0).all()  # opaque black stays black
    assert np.abs(got[:, 4:] - 127).max() <= 1

    # RGB with a tRNS colour key: the key colour becomes white
    rgb = Image.new("RGB", (4, 4), (10, 20, 30))
    rgb.paste(RED, (0, 0, 2, 4))
    got = _rgb(load_image(_save(rgb, tmp_path / "key.png", transparency=(10, 20, 30))))
    assert (got[:, :2] == RED).all()
    assert (got[:, 2:] == WHITE).all()


def test_cmyk_jpeg_gives_the_right_colours(tmp_path):
    im = Image.new("CMYK", (32, 16), (0, 255, 255, 0))  # red
    im.paste((255, 0, 255, 0), (16, 0, 32, 16))  # green
    got = _rgb(load_image(_save(im, tmp_path / "cmyk.jpg", quality=95)))
    assert np.abs(got[4:12, 2:12] - RED).max() <= 12
    assert np.abs(got[4:12, 20:30] - GREEN).max() <= 12


def test_16bit_greyscale_is_stretched_by_its_range(tmp_path):
    values = np.linspace(0, 4095, 64 * 16).round().astype(np.uint16).reshape(16, 64)
    path = _save(Image.fromarray(values), tmp_path / "deep.png")
    with Image.open(path) as probe:
        assert probe.mode == "I;16"  # the case under test
    got = _rgb(load_image(path))
    assert got.min() == 0 and got.max() == 255  # not 0..15 (clipped) nor all 255
    assert (got[..., 0] == got[..., 1]).all() and (got[..., 1] == got[..., 2]).all()
    assert np.abs(got[..., 0] - values.astype(float) * 255 / 4095).max() <= 1


def test_32bit_float_and_one_bit_images(tmp_path):
    f = np.full((4, 4), -3.0, np.float32)
    f[:, 2:] = 5.0
    got = _rgb(load_image(_save(Image.fromarray(f, "F"), tmp_path / "f.tif")))
    assert (got[:, :2] == 0).all() and (got[:, 2:] == 255).all()

    one = Image.new("1", (8, 8), 0)
    one.paste(1, (0, 0, 4, 8))
    got = _rgb(load_image(_save(one, tmp_path / "one.png")))
    assert (got[:, :4] == 255).all() and (got[:, 4:] == 0).all()


def test_exif_orientation_is_applied(tmp_path):
    im = Image.new("RGB", (40, 20), RED)
    im.paste(BLUE, (20, 0, 40, 20))  # left red, right blue as stored
    exif = Image.Exif()
    exif[0x0112] = 6  # display rotated 90 degrees clockwise
    path = _save(im, tmp_path / "rotated.jpg", exif=exif, quality=95)
    out = load_image(path)
    assert out.size == (20, 40)
    got = _rgb(out)
    assert np.abs(got[2:18, 2:18] - RED).max() <= 10  # the stored left is now on top
    assert np.abs(got[22:38, 2:18] - BLUE).max() <= 10


def test_animated_gif_gives_first_frame(tmp_path):
    frames = [Image.new("RGB", (8, 8), c) for c in (RED, GREEN, BLUE)]
    path = tmp_path / "anim.gif"
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=50, loop=0)
    with Image.open(path) as probe:
        assert probe.n_frames == 3
    got = _rgb(load_image(path))
    assert (got == RED).all()


def test_result_is_rgb_loaded_and_file_closed(tmp_path):
    path = _save(Image.new("L", (6, 3), 77), tmp_path / "grey.bmp")
    out = load_image(path)
    assert out.mode == "RGB" and out.size == (6, 3)
    os.remove(path)  # fully loaded: pixels stay readable without the file
    assert out.getpixel((5, 2)) == (77, 77, 77)


# --- load_image: size limits ----------------------------------------------------


def test_max_side_downscales_keeping_aspect(tmp_path):
    im = Image.new("RGB", (400, 200), RED)
    im.paste(BLUE, (200, 0, 400, 200))
    for name in ("big.png", "big.jpg"):
        out = load_image(_save(im, tmp_path / name), max_side=100)
        assert out.size == (100, 50), name
        got = _rgb(out)
        assert np.abs(got[10:40, 5:40] - RED).max() <= 12, name
        assert np.abs(got[10:40, 60:95] - BLUE).max() <= 12, name
    small = load_image(tmp_path / "big.png", max_side=1000)
    assert small.size == (400, 200)  # never enlarged
    tall = load_image(_save(Image.new("RGB", (30, 300)), tmp_path / "tall.jpg"), max_side=64)
    # JPEG draft quarters it (to whole DCT blocks: 8 x 75), then the resample:
    # the longer side exactly 64, the aspect within the draft's rounding
    assert tall.height == 64 and abs(tall.width - 6.4) <= 1
    # just over the target: resampled to it, not halved by a whole factor
    near = load_image(_save(Image.new("RGB", (530, 265)), tmp_path / "near.png"), max_side=512)
    assert near.size == (512, 256)


def test_png_bomb_is_refused_from_the_header(tmp_path):
    path = _png_bomb(tmp_path / "bomb.png", 30_000, 30_000)
    assert path.stat().st_size < 10_000
    with pytest.raises(DecodeError) as err:
        load_image(path)
    assert err.value.reason.startswith("image too large")
    assert "900,000,000 pixels" in err.value.reason
    assert "decompression-bomb guard" in err.value.reason
    assert err.value.path == str(path)


def test_max_pixels_limit_is_per_call_and_names_the_size(tmp_path):
    path = _save(Image.new("RGB", (300, 200), GREEN), tmp_path / "ok.png")
    with pytest.raises(DecodeError) as err:
        load_image(path, max_pixels=50_000)
    assert err.value.reason == (
        "image too large: 300 x 200 pixels exceeds the limit of 50,000 (decompression-bomb guard)"
    )
    assert load_image(path, max_pixels=60_000).size == (300, 200)
    # a mid-size bomb (under Pillow's own limit) is caught by ours, before decoding
    bomb = _png_bomb(tmp_path / "mid.png", 9_000, 8_000)
    with pytest.raises(DecodeError, match=r"9000 x 8000 pixels exceeds the limit of 50,000,000"):
        load_image(bomb, max_pixels=50_000_000)


@pytest.mark.parametrize("kwargs", [{"max_pixels": 0}, {"max_side": 0}, {"max_side": 2.5}])
def test_bad_limits_are_parameter_errors(tmp_path, kwargs):
    path = _save(Image.new("RGB", (2, 2)), tmp_path / "x.png")
    with pytest.raises(ParameterError, match=next(iter(kwargs))):
        load_image(path, **kwargs)


# --- load_image: bad files ------------------------------------------------------


def _corrupt_cases(tmp: Path) -> dict[str, tuple[Path, str]]:
    png = _png_bytes(Image.fromarray(np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8)))
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(2).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(buf, "JPEG")
    jpg = buf.getvalue()
    cases = {
        "zero-byte jpg": ("empty.jpg", b"", "zero-byte file"),
        "truncated png": ("cut.png", png[: len(png) // 2], "truncated or corrupt image ("),
        "truncated jpeg": ("cut.jpg", jpg[: len(jpg) // 2], "truncated or corrupt image ("),
        "text named png": ("text.png", b"this is not a picture\n", "not a recognised image format"),
        "header only png": ("head.png", png[:33], "truncated or corrupt image (unreadable header)"),
        "audio named png": ("tone.png", None, "not a recognised image format (the file holds audio)"),
        "heic without decoder": (
            "photo.heic",
            b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + b"\0" * 64,
            "not a recognised image format (AVIF/HEIF",
        ),
    }
    out = {}
    for label, (name, data, reason) in cases.items():
        path = tmp / name
        if data is None:
            _write_wav(path)
        else:
            path.write_bytes(data)
        out[label] = (path, reason)
    return out


def test_bad_files_raise_decode_error_with_plain_reason(tmp_path):
    for label, (path, reason) in _corrupt_cases(tmp_path).items():
        with pytest.raises(DecodeError) as err:
            load_image(path)
        assert err.value.reason.startswith(reason), (label, err.value.reason)
        assert err.value.path == str(path)
        assert str(err.value) == f"{path}: {err.value.reason}"


def test_missing_and_directory(tmp_path):
    with pytest.raises(DecodeError) as err:
        load_image(tmp_path / "nope.png")
    assert err.value.reason == "no such file"
    folder = tmp_path / "dir.png"
    folder.mkdir()
    with pytest.raises(DecodeError) as err:
        load_image(folder)
    assert err.value.reason == "is a directory"
    os.symlink(tmp_path / "nowhere.png", tmp_path / "broken.png")
    with pytest.raises(DecodeError, match="no such file"):
        load_image(tmp_path / "broken.png")


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root reads anything")
def test_permission_denied(tmp_path):
    path = _save(Image.new("RGB", (2, 2)), tmp_path / "locked.png")
    path.chmod(0)
    try:
        with pytest.raises(DecodeError) as err:
            load_image(path)
        assert err.value.reason == "permission denied"
    finally:
        path.chmod(0o644)


def test_every_truncation_of_a_png_raises_only_decode_error(tmp_path):
    """Wherever a file is cut before its pixel data ends, the only exception is DecodeError."""
    noise = np.random.default_rng(4).integers(0, 256, (16, 16, 4), dtype=np.uint8)
    data = _png_bytes(Image.fromarray(noise, "RGBA"))
    path = tmp_path / "cut.png"
    # the last 20 bytes are the zlib checksum, the IDAT CRC and IEND: not needed for pixels
    for end in range(0, len(data) - 20, 3):
        path.write_bytes(data[:end])
        with pytest.raises(DecodeError) as err:
            load_image(path)
        assert err.value.reason.startswith(("zero-byte", "not a recognised", "truncated or corrupt")), end
    path.write_bytes(data)  # and the whole file decodes, flattened on white
    a = noise[..., 3:].astype(float) / 255
    assert np.abs(_rgb(load_image(path)) - (noise[..., :3] * a + 255 * (1 - a))).max() <= 1


# --- sha256_file ----------------------------------------------------------------


def test_sha256_file_matches_hashlib(tmp_path):
    data = np.random.default_rng(3).integers(0, 256, 3 * 4096 + 17, dtype=np.uint8).tobytes()
    path = tmp_path / "blob.bin"
    path.write_bytes(data)
    expected = hashlib.sha256(data).hexdigest()
    assert sha256_file(path) == expected
    assert sha256_file(str(path), chunk_size=4096) == expected  # several chunks, short last one
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    assert sha256_file(empty) == hashlib.sha256(b"").hexdigest()
    with pytest.raises(ParameterError):
        sha256_file(path, chunk_size=0)


def test_flatten_composites_every_kind_of_transparency_over_white() -> None:
    """Grey with alpha (LA) and palette pictures with a transparent index show
    white where they are transparent, as a scan decodes them, not the colour
    stored under the transparency."""
    from scanner.demo import flatten

    la = Image.new("LA", (8, 8), (0, 0))  # black, fully transparent
    la.putpixel((0, 0), (0, 255))  # one opaque black pixel
    p = Image.new("P", (8, 8), 0)
    p.putpalette([0, 0, 0, 200, 30, 30])
    p.info["transparency"] = 0
    p.putpixel((0, 0), 1)
    for im, opaque in ((la, (0, 0, 0)), (p, (200, 30, 30))):
        rgb = flatten(im)
        assert rgb.mode == "RGB" and rgb.getpixel((0, 0)) == opaque and rgb.getpixel((5, 5)) == (255, 255, 255)

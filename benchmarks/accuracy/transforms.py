"""Copy transforms for the accuracy harness, with parameters drawn from ranges.

Every transform takes a reference already flattened on white (RGB, what a
person sees) and a seeded :class:`numpy.random.Generator`, and returns the copy
and the parameters it drew, so a set is reproducible from its seed and each
query's parameters are recorded. A transform is a chain of one or more *steps*;
the named combos chain two.

Groups (the targets: recall >= 0.95 on each mild transform, >= 0.85 on each
hard one for the weight-free features; >= 0.98 and >= 0.92 with the learned copy
descriptor, :data:`benchmarks.accuracy.report.TARGETS_LEARNED`):

``mild``
    ``resize`` (30–80 % of each side), ``jpeg`` (quality 30–70), ``brightness``
    (x 0.65–0.85 or x 1.15–1.35), ``border`` (3–10 % of the longer side, random
    colour). ``scanner.demo.MILD_TRANSFORMS`` are fixed points inside these
    ranges (resize-50, jpeg-q40, brightness+25, border-5).
``hard``
    ``crop-70`` and ``crop-50`` (keep 70 % / 50 % of the *area*, each side
    scaled by the square root, at a random position), ``rotate`` (5–15 degrees
    either way, canvas expanded, corners filled with a random colour),
    ``mirror`` (left-right), ``collage`` (the work, its content box, pasted at
    35–60 % of the width into a larger picture from another folder), ``caption`` (a caption
    band of 8–12 % of the height plus 2–4 coloured stickers, about 20 % covered
    in all), ``grayscale``, ``hue`` (hue turned by 30–150 degrees either way),
    ``elastic`` (a smooth random displacement field, at most 2–5 % of the shorter
    side, ``cv2.remap``), ``stylised`` (``cv2.stylization``, an edge-preserving
    re-rendering, its ``sigma_s`` at most half the shorter side; where
    OpenCV lacks it, ``cv2.edgePreservingFilter`` plus a posterisation to 4–6
    levels, noted in the parameters), ``inpaint`` (random
    blobs covering 18–22 % of the content box, the bounding box of the non-white
    pixels, filled by ``cv2.inpaint``).
``combo``
    ``crop-70+jpeg``, ``mirror+hue``, ``collage+jpeg``.

A ``jpeg`` step that ends a chain is the file's own encoding (the query is
written as a JPEG file at that quality, decoded by the scanner as a real JPEG
output would be); elsewhere in a chain it is an in-memory round trip.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
from PIL import Image, ImageDraw, ImageEnhance, ImageFont, ImageOps

#: Bump when a transform's definition changes: cached sets are rebuilt.
VERSION = "acc-transforms-3"
#: Words for caption bands.
WORDS = ("sunset", "limited", "edition", "new", "collection", "by", "studio", "art", "summer",
         "festival", "official", "poster", "hello", "world", "free", "sample", "episode", "season",
         "launch", "day", "night", "legend", "story", "of", "the", "city")


@dataclass(frozen=True)
class Context:
    """What a step may need besides the picture.

    Attributes
    ----------
    background : a picture from another folder (for ``collage``), RGB
    max_side : longest side a composed picture (collage canvas) may have
    """

    background: Image.Image | None = None
    max_side: int = 1024


@dataclass
class Rendered:
    """A transformed copy and how it was made.

    Attributes
    ----------
    image : RGB picture
    params : one dict per step, with the step's name and what it drew
    jpeg_quality : if set, write the file as a JPEG at this quality
    """

    image: Image.Image
    params: list[dict[str, Any]] = field(default_factory=list)
    jpeg_quality: int | None = None

    def save(self, stem: Path) -> Path:
        """Write to ``stem`` + ``.jpg`` or ``.png``; returns the path written."""
        if self.jpeg_quality is not None:
            path = stem.with_suffix(".jpg")
            self.image.convert("RGB").save(path, "JPEG", quality=self.jpeg_quality)
        else:
            path = stem.with_suffix(".png")
            self.image.convert("RGB").save(path, "PNG", compress_level=1)
        return path


Step = Callable[[Image.Image, np.random.Generator, Context], tuple[Image.Image, dict[str, Any]]]


def _colour(rng: np.random.Generator) -> tuple[int, int, int]:
    r, g, b = rng.integers(0, 256, 3)
    return int(r), int(g), int(b)


def _sign(rng: np.random.Generator) -> int:
    return 1 if rng.random() < 0.5 else -1


def jpeg_round_trip(image: Image.Image, quality: int) -> Image.Image:
    """Encode as JPEG at ``quality`` and decode again (RGB)."""
    buf = io.BytesIO()
    image.convert("RGB").save(buf, "JPEG", quality=quality)
    buf.seek(0)
    with Image.open(buf) as im:
        return im.convert("RGB")


def _cv(image: Image.Image) -> np.ndarray:
    """PIL RGB -> OpenCV BGR uint8 (contiguous)."""
    return np.ascontiguousarray(np.asarray(image.convert("RGB"))[:, :, ::-1])


def _pil(array: np.ndarray) -> Image.Image:
    """OpenCV BGR uint8 -> PIL RGB."""
    return Image.fromarray(np.ascontiguousarray(array[:, :, ::-1]), "RGB")


def content_box(image: Image.Image, white: int = 250) -> tuple[int, int, int, int]:
    """Bounding box ``(left, top, right, bottom)`` of the pixels darker than ``white`` (whole picture if none)."""
    a = np.asarray(image.convert("RGB")).min(axis=2) < white
    rows, cols = np.flatnonzero(a.any(axis=1)), np.flatnonzero(a.any(axis=0))
    if not len(rows):
        return 0, 0, image.width, image.height
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1


# --- mild ----------------------------------------------------------------------------------


def resize(image: Image.Image, rng: np.random.Generator, ctx: Context) -> tuple[Image.Image, dict[str, Any]]:
    """Downscale each side to 30–80 % (Lanczos)."""
    s = float(rng.uniform(0.3, 0.8))
    size = (max(1, round(image.width * s)), max(1, round(image.height * s)))
    return image.resize(size, Image.Resampling.LANCZOS), {"scale": round(s, 3)}


def jpeg(image: Image.Image, rng: np.random.Generator, ctx: Context) -> tuple[Image.Image, dict[str, Any]]:
    """Choose a JPEG quality in 30–70 (the encoding itself happens in :func:`apply`)."""
    return image, {"quality": int(rng.integers(30, 71))}


def brightness(image: Image.Image, rng: np.random.Generator, ctx: Context) -> tuple[Image.Image, dict[str, Any]]:
    """Scale brightness by 0.65–0.85 or 1.15–1.35."""
    f = 1.0 + _sign(rng) * float(rng.uniform(0.15, 0.35))
    return ImageEnhance.Brightness(image).enhance(f), {"factor": round(f, 3)}


def border(image: Image.Image, rng: np.random.Generator, ctx: Context) -> tuple[Image.Image, dict[str, Any]]:
    """Add a uniform border of 3–10 % of the longer side, in a random colour."""
    share = float(rng.uniform(0.03, 0.10))
    colour = _colour(rng)
    pad = max(1, round(max(image.size) * share))
    return ImageOps.expand(image, border=pad, fill=colour), {"share": round(share, 3), "colour": colour}


# --- hard ----------------------------------------------------------------------------------


def _crop(area: float) -> Step:
    def crop(image: Image.Image, rng: np.random.Generator, ctx: Context) -> tuple[Image.Image, dict[str, Any]]:
        side = math.sqrt(area)
        cw, ch = max(1, round(image.width * side)), max(1, round(image.height * side))
        x0 = int(rng.integers(0, image.width - cw + 1))
        y0 = int(rng.integers(0, image.height - ch + 1))
        box = (x0, y0, x0 + cw, y0 + ch)
        return image.crop(box), {"area": area, "box": box}

    crop.__doc__ = f"Keep {area:.0%} of the area (each side x {math.sqrt(area):.3f}) at a random position."
    return crop


def rotate(image: Image.Image, rng: np.random.Generator, ctx: Context) -> tuple[Image.Image, dict[str, Any]]:
    """Rotate by 5–15 degrees either way, expanding the canvas; corners in a random colour."""
    angle = _sign(rng) * float(rng.uniform(5, 15))
    fill = _colour(rng)
    out = image.rotate(angle, resample=Image.Resampling.BICUBIC, expand=True, fillcolor=fill)
    return out, {"degrees": round(angle, 2), "fill": fill}


def mirror(image: Image.Image, rng: np.random.Generator, ctx: Context) -> tuple[Image.Image, dict[str, Any]]:
    """Flip left-right."""
    return ImageOps.mirror(image), {}


def _cover(picture: Image.Image, size: tuple[int, int]) -> Image.Image:
    """Resize to cover ``size`` keeping the aspect ratio, then centre-crop to it."""
    w, h = size
    s = max(w / picture.width, h / picture.height)
    big = picture.resize((max(w, round(picture.width * s)), max(h, round(picture.height * s))),
                         Image.Resampling.LANCZOS)
    x0, y0 = (big.width - w) // 2, (big.height - h) // 2
    return big.crop((x0, y0, x0 + w, y0 + h))


def collage(image: Image.Image, rng: np.random.Generator, ctx: Context) -> tuple[Image.Image, dict[str, Any]]:
    """Paste the work at 35–60 % of the canvas width into an unrelated picture (``ctx.background``).

    The work is the picture's content box (:func:`content_box`, plus a margin of
    3 % of its longer side): a drawing on a mostly empty page is pasted as the
    drawing, so "35–60 % of the width" is the drawing's share, not the page's
    (pasting the page put a drawing that fills 13 % of its page at 5–8 % of the
    collage). The canvas takes the background's aspect ratio (taller if the copy
    would not fit) and at most ``ctx.max_side`` pixels on its longer side (the
    copy is downscaled with it when needed).
    """
    if ctx.background is None:
        raise ValueError("collage needs a background picture")
    share = float(rng.uniform(0.35, 0.60))
    bg = ctx.background.convert("RGB")
    left, top, right, bottom = content_box(image)
    pad = max(2, round(0.03 * max(right - left, bottom - top)))
    trim = (max(0, left - pad), max(0, top - pad), min(image.width, right + pad), min(image.height, bottom + pad))
    image = image.crop(trim)
    w_canvas = image.width / share
    h_canvas = max(w_canvas * bg.height / bg.width, image.height * 1.15)
    scale = min(1.0, ctx.max_side / max(w_canvas, h_canvas))
    copy = image
    if scale < 1.0:
        copy = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))),
                            Image.Resampling.LANCZOS)
    size = (max(copy.width, round(w_canvas * scale)), max(copy.height, round(h_canvas * scale)))
    canvas = _cover(bg, size)
    x0 = int(rng.integers(0, size[0] - copy.width + 1))
    y0 = int(rng.integers(0, size[1] - copy.height + 1))
    canvas.paste(copy, (x0, y0))
    return canvas, {"share": round(share, 3), "content": trim, "canvas": size,
                    "box": (x0, y0, x0 + copy.width, y0 + copy.height)}


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=max(8, size))
    except TypeError:  # Pillow without FreeType: the fixed bitmap font
        return ImageFont.load_default()


def caption(image: Image.Image, rng: np.random.Generator, ctx: Context) -> tuple[Image.Image, dict[str, Any]]:
    """A caption band (8–12 % of the height, top or bottom) plus 2–4 stickers; about 20 % covered.

    Stickers are ellipses, rectangles or triangles in random colours at random
    places, sized so that band and stickers together cover 18–22 % of the
    picture (overlaps make the measured ``coverage`` a little lower).
    """
    out = image.convert("RGB").copy()
    w, h = out.size
    draw = ImageDraw.Draw(out)
    mask = Image.new("L", out.size, 0)
    mdraw = ImageDraw.Draw(mask)
    target = float(rng.uniform(0.18, 0.22))
    band_share = float(rng.uniform(0.08, 0.12))
    bh = max(1, round(h * band_share))
    top = bool(rng.random() < 0.5)
    band = (0, 0, w, bh) if top else (0, h - bh, w, h)
    band_colour = _colour(rng)
    draw.rectangle((band[0], band[1], band[2] - 1, band[3] - 1), fill=band_colour)
    mdraw.rectangle((band[0], band[1], band[2] - 1, band[3] - 1), fill=255)
    words = " ".join(str(rng.choice(WORDS)) for _ in range(int(rng.integers(2, 6)))).upper()
    ink = (0, 0, 0) if sum(band_colour) > 384 else (255, 255, 255)
    draw.text((max(2, w // 40), band[1] + bh * 0.2), words, fill=ink, font=_font(round(bh * 0.6)))
    n = int(rng.integers(2, 5))
    each = max(0.0, target - band_share) * w * h / n
    stickers = []
    for _ in range(n):
        kind = str(rng.choice(["ellipse", "rectangle", "triangle"]))
        aspect = float(rng.uniform(0.6, 1.6))
        fill_ratio = {"ellipse": math.pi / 4, "rectangle": 1.0, "triangle": 0.5}[kind]
        box_area = each / fill_ratio
        sw = max(2, min(w, round(math.sqrt(box_area * aspect))))
        sh = max(2, min(h, round(box_area / sw)))
        x0, y0 = int(rng.integers(0, w - sw + 1)), int(rng.integers(0, h - sh + 1))
        box = (x0, y0, x0 + sw - 1, y0 + sh - 1)
        colour = _colour(rng)
        for d, c in ((draw, colour), (mdraw, 255)):
            if kind == "ellipse":
                d.ellipse(box, fill=c)
            elif kind == "rectangle":
                d.rectangle(box, fill=c)
            else:
                d.polygon([(x0, y0 + sh - 1), (x0 + sw - 1, y0 + sh - 1), (x0 + sw // 2, y0)], fill=c)
        stickers.append({"kind": kind, "box": box, "colour": colour})
    coverage = float((np.asarray(mask) > 0).mean())
    return out, {"band": "top" if top else "bottom", "band_share": round(band_share, 3), "text": words,
                 "stickers": stickers, "target": round(target, 3), "coverage": round(coverage, 3)}


def grayscale(image: Image.Image, rng: np.random.Generator, ctx: Context) -> tuple[Image.Image, dict[str, Any]]:
    """Grey levels (ITU-R 601 luma), stored as RGB."""
    return image.convert("L").convert("RGB"), {}


def hue(image: Image.Image, rng: np.random.Generator, ctx: Context) -> tuple[Image.Image, dict[str, Any]]:
    """Turn the hue by 30–150 degrees either way (HSV; saturation and value kept)."""
    degrees = _sign(rng) * float(rng.uniform(30, 150))
    hsv = np.asarray(image.convert("RGB").convert("HSV")).copy()
    hsv[..., 0] = ((hsv[..., 0].astype(np.int32) + round(degrees / 360 * 256)) % 256).astype(np.uint8)
    return Image.fromarray(hsv, "HSV").convert("RGB"), {"degrees": round(degrees, 1)}


def elastic(image: Image.Image, rng: np.random.Generator, ctx: Context) -> tuple[Image.Image, dict[str, Any]]:
    """Warp by a smooth random displacement field (``cv2.remap``).

    A coarse grid of 3–6 cells on each side holds normal random displacements;
    bicubic upsampling makes them smooth; they are scaled so the largest
    displacement is 2–5 % of the shorter side. Edges are replicated.
    """
    import cv2

    w, h = image.size
    cells = int(rng.integers(3, 7))
    amplitude = float(rng.uniform(0.02, 0.05)) * min(w, h)
    coarse = rng.standard_normal((2, cells + 1, cells + 1)).astype(np.float32)
    fields = []
    for c in coarse:
        f = cv2.resize(c, (w, h), interpolation=cv2.INTER_CUBIC)
        fields.append(f)
    peak = max(float(np.abs(fields[0]).max()), float(np.abs(fields[1]).max()), 1e-6)
    dx, dy = (f * (amplitude / peak) for f in fields)
    xs, ys = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
    out = cv2.remap(_cv(image), xs + dx, ys + dy, interpolation=cv2.INTER_LINEAR,
                    borderMode=cv2.BORDER_REPLICATE)
    return _pil(out), {"cells": cells, "max_displacement_px": round(amplitude, 1)}


def stylised(image: Image.Image, rng: np.random.Generator, ctx: Context) -> tuple[Image.Image, dict[str, Any]]:
    """Edge-preserving re-rendering: ``cv2.stylization`` (weight-free stand-in for regeneration).

    ``sigma_s`` is drawn in 30–90 and capped at half the shorter side;
    ``sigma_r`` in 0.3–0.6.
    """
    import cv2

    # OpenCV's domain-transform filters return a black picture when sigma_s
    # exceeds about 0.75 of the shorter side: small pictures get a smaller one
    sigma_s = min(float(rng.uniform(30, 90)), 0.5 * min(image.size))
    sigma_r = float(rng.uniform(0.3, 0.6))
    src = _cv(image)
    if hasattr(cv2, "stylization"):
        out = cv2.stylization(src, sigma_s=sigma_s, sigma_r=sigma_r)
        return _pil(out), {"method": "cv2.stylization", "sigma_s": round(sigma_s, 1), "sigma_r": round(sigma_r, 3)}
    levels = int(rng.integers(4, 7))
    smooth = cv2.edgePreservingFilter(src, flags=cv2.RECURS_FILTER, sigma_s=sigma_s, sigma_r=sigma_r)
    step = 256 / levels
    out = (np.floor(smooth / step) * step + step / 2).clip(0, 255).astype(np.uint8)
    return _pil(out), {"method": "edgePreservingFilter+posterise", "sigma_s": round(sigma_s, 1),
                       "sigma_r": round(sigma_r, 3), "levels": levels}


def inpaint(image: Image.Image, rng: np.random.Generator, ctx: Context) -> tuple[Image.Image, dict[str, Any]]:
    """Cover 18–22 % of the content box with random blobs and fill them with ``cv2.inpaint`` (Telea).

    The content box is the bounding box of the non-white pixels, so clip art's
    empty margins do not absorb the damage.
    """
    import cv2

    left, top, right, bottom = content_box(image)
    bw, bh = right - left, bottom - top
    target = float(rng.uniform(0.18, 0.22))
    mask = np.zeros((image.height, image.width), np.uint8)
    inside = mask[top:bottom, left:right]
    blobs = 0
    short = max(2, min(bw, bh))
    while blobs < 400 and (inside > 0).mean() < target:
        cx, cy = int(rng.integers(left, right)), int(rng.integers(top, bottom))
        ax = max(1, round(short * float(rng.uniform(0.05, 0.15))))
        ay = max(1, round(short * float(rng.uniform(0.05, 0.15))))
        cv2.ellipse(mask, (cx, cy), (ax, ay), float(rng.uniform(0, 180)), 0, 360, 255, -1)
        inside = mask[top:bottom, left:right]
        blobs += 1
    out = cv2.inpaint(_cv(image), mask, 5, cv2.INPAINT_TELEA)
    return _pil(out), {"target": round(target, 3), "coverage_of_content_box": round(float((inside > 0).mean()), 3),
                       "content_box": (left, top, right, bottom), "blobs": blobs}


STEPS: dict[str, Step] = {
    "resize": resize, "jpeg": jpeg, "brightness": brightness, "border": border,
    "crop-70": _crop(0.70), "crop-50": _crop(0.50), "rotate": rotate, "mirror": mirror, "collage": collage,
    "caption": caption, "grayscale": grayscale, "hue": hue, "elastic": elastic, "stylised": stylised,
    "inpaint": inpaint,
}

MILD = ("resize", "jpeg", "brightness", "border")
HARD = ("crop-70", "crop-50", "rotate", "mirror", "collage", "caption", "grayscale", "hue", "elastic",
        "stylised", "inpaint")
COMBOS = ("crop-70+jpeg", "mirror+hue", "collage+jpeg")
#: Every transform, in report order, with its group.
TRANSFORMS: dict[str, str] = {**{t: "mild" for t in MILD}, **{t: "hard" for t in HARD},
                              **{t: "combo" for t in COMBOS}}


def needs_background(name: str) -> bool:
    """Whether transform ``name`` pastes into another picture."""
    return "collage" in name.split("+")


def apply(name: str, image: Image.Image, rng: np.random.Generator, ctx: Context) -> Rendered:
    """Apply transform ``name`` (a step or steps joined by ``+``) to ``image``.

    Parameters
    ----------
    name : a key of :data:`TRANSFORMS` (or any chain of :data:`STEPS`)
    image : the reference flattened on white, RGB
    rng : seeded generator, one per (reference, transform)
    ctx : background picture and size limit

    Returns
    -------
    Rendered
    """
    out = image.convert("RGB")
    params: list[dict[str, Any]] = []
    pending: int | None = None
    for step in name.split("+"):
        if pending is not None:
            out = jpeg_round_trip(out, pending)
            pending = None
        out, p = STEPS[step](out, rng, ctx)
        params.append({"step": step, **p})
        if step == "jpeg":
            pending = p["quality"]
    return Rendered(out.convert("RGB"), params, pending)

"""The built-in demo: pictures made by code, an index, a scan, a summary.

Runs offline with the weight-free featurizers (``image-clip`` joins when its
checkpoint is present in ``models/``). The same picture generator and
transforms serve the tests.
"""

from __future__ import annotations

import csv
import io
import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
from PIL import Image, ImageDraw, ImageEnhance, ImageOps

from scanner import media
from scanner.pipeline import FeatureOptions, Progress, ScanSummary, build_index, read_results, scan


def random_melody(rng: np.random.Generator, n: int = 48) -> list[tuple[int, float]]:
    """A melody made by code: a random walk on the C-major scale from middle C.

    Parameters
    ----------
    rng : random generator (the melody is a function of its state)
    n : number of notes

    Returns
    -------
    list of (MIDI pitch, length in beats)
    """
    scale = np.array([0, 2, 4, 5, 7, 9, 11])
    degree, out = 7, []
    for _ in range(n):
        degree = int(np.clip(degree + rng.choice([-2, -1, -1, 0, 1, 1, 2, 3, -3]), 0, 14))
        out.append((60 + 12 * (degree // 7) + int(scale[degree % 7]), float(rng.choice([0.5, 1, 1, 1, 2]))))
    return out


def synthetic_picture(seed: int, size: tuple[int, int] = (320, 240)) -> Image.Image:
    """A distinctive RGB picture: a gradient ground with random shapes.

    Parameters
    ----------
    seed : different seeds give unrelated pictures
    size : (width, height) in pixels
    """
    rng = np.random.default_rng(seed)
    w, h = size
    c0, c1 = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
    t = np.linspace(0, 1, w)[None, :, None] * rng.uniform(0.3, 1) + np.linspace(0, 1, h)[:, None, None] * 0.3
    ground = (c0 * (1 - t.clip(0, 1)) + c1 * t.clip(0, 1)).astype(np.uint8)
    img = Image.fromarray(np.broadcast_to(ground, (h, w, 3)).copy())
    draw = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(6, 12))):
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        x0, y0 = rng.integers(0, w), rng.integers(0, h)
        x1, y1 = x0 + rng.integers(w // 10, w // 2), y0 + rng.integers(h // 10, h // 2)
        shape = rng.integers(0, 4)
        if shape == 0:
            draw.ellipse([x0, y0, x1, y1], fill=colour)
        elif shape == 1:
            draw.rectangle([x0, y0, x1, y1], fill=colour)
        elif shape == 2:
            pts = [(int(rng.integers(0, w)), int(rng.integers(0, h))) for _ in range(int(rng.integers(3, 6)))]
            draw.polygon(pts, fill=colour)
        else:
            draw.line([x0, y0, x1, y1], fill=colour, width=int(rng.integers(3, 12)))
    return img


def clip_art(seed: int, size: int = 256) -> Image.Image:
    """RGBA clip art: shapes on a transparent ground whose hidden colour is noise."""
    rng = np.random.default_rng(seed)
    art = synthetic_picture(seed, (size, size))
    alpha = Image.new("L", (size, size), 0)
    d = ImageDraw.Draw(alpha)
    for _ in range(4):
        x, y = rng.integers(size // 8, size * 3 // 4, 2)
        r = int(rng.integers(size // 8, size // 3))
        d.ellipse([x - r, y - r, x + r, y + r], fill=255)
    noise = Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8))
    # the colour under transparent pixels is noise, as in real clip art
    return Image.merge("RGBA", (*Image.composite(art, noise, alpha).split(), alpha))


def flatten(image: Image.Image) -> Image.Image:
    """A picture as a person sees it, RGB: any transparency (RGBA, LA, a
    palette's) composited over white, as a scan decodes it (:func:`scanner.media.to_rgb`)."""
    return media.to_rgb(image)


def _jpeg(image: Image.Image, quality: int) -> Image.Image:
    buf = io.BytesIO()
    image.convert("RGB").save(buf, "JPEG", quality=quality)
    buf.seek(0)
    return Image.open(buf).convert("RGB")


def _border(image: Image.Image, share: float = 0.05, colour: str = "black") -> Image.Image:
    pad = max(1, int(round(max(image.size) * share)))
    return ImageOps.expand(image.convert("RGB"), border=pad, fill=colour)


#: The mild transforms of a copied output, by name (issue targets: recall >= 0.95 on each).
MILD_TRANSFORMS: dict[str, Callable[[Image.Image], Image.Image]] = {
    "resize-50": lambda im: im.resize((max(1, im.width // 2), max(1, im.height // 2)), Image.Resampling.LANCZOS),
    "jpeg-q40": lambda im: _jpeg(im, 40),
    "brightness+25": lambda im: ImageEnhance.Brightness(im.convert("RGB")).enhance(1.25),
    "border-5": _border,
}


@dataclass
class DemoOutcome:
    """What the demo did and whether it behaved as designed."""

    summary: ScanSummary
    lines: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def make_demo_media(root: Path, *, n_refs: int = 12, n_unrelated: int = 8) -> dict[str, Any]:
    """Write reference works, transformed copies, unrelated outputs and a metadata CSV.

    Returns
    -------
    dict
        ``refs``/``outputs`` folders, the ``metadata`` CSV path and
        ``expected``: output file name -> reference file name (or None).
    """
    refs, outputs = root / "refs", root / "outputs"
    for d in (refs, outputs):
        shutil.rmtree(d, ignore_errors=True)
        d.mkdir(parents=True)
    expected: dict[str, str | None] = {}
    rows = []
    for i in range(n_refs):
        name = f"work-{i:02d}.png"
        pic = clip_art(1000 + i) if i % 3 == 0 else synthetic_picture(1000 + i)
        pic.save(refs / name)
        rows.append({"path": name, "title": f"Demo work {i}", "rights_holder": f"Studio {chr(65 + i % 5)}",
                     "licence": "all rights reserved", "notes": "generated by likeness demo"})
        tname, transform = list(MILD_TRANSFORMS.items())[i % len(MILD_TRANSFORMS)]
        out_name = f"gen-{i:02d}-{tname}.png"
        transform(flatten(pic)).save(outputs / out_name)
        expected[out_name] = name
    for j in range(n_unrelated):
        out_name = f"gen-new-{j:02d}.png"
        synthetic_picture(5000 + j).save(outputs / out_name)
        expected[out_name] = None
    (outputs / "prompt.json").write_text(json.dumps({"prompt": "a demo picture", "seed": 1}))
    meta = root / "metadata.csv"
    with open(meta, "w", newline="") as fh:
        writer = csv.DictWriter(fh, ["path", "title", "rights_holder", "licence", "notes"])
        writer.writeheader()
        writer.writerows(rows)
    return {"refs": refs, "outputs": outputs, "metadata": meta, "expected": expected}


def run_demo(out_dir: str | Path, *, progress: Progress | None = None,
             options: FeatureOptions | None = None) -> DemoOutcome:
    """Make media, build ``out_dir/index``, scan ``out_dir/outputs`` into ``out_dir/results``.

    The demo worked when every copy is flagged (or sent to review) with its own
    work and every unrelated picture is clear.
    """
    root = Path(out_dir)
    media = make_demo_media(root)
    build = build_index([media["refs"]], root / "index", options=options, metadata=media["metadata"],
                        progress=progress)
    summary = scan([media["outputs"]], root / "index", out_dir=root / "results", progress=progress)
    outcome = DemoOutcome(summary)
    outcome.lines.append(f"index: {build.n_works} works, features {', '.join(build.features)}"
                         + "".join(f"; {n}" for n in build.notes))
    for r in read_results(root / "results" / "results.jsonl"):
        name = Path(r["path"]).name
        want = media["expected"].get(name)
        got = Path(r["matches"][0]["ref_path"]).name if r["matches"] else None
        outcome.lines.append(f"{r['verdict']:>8}  {name}" + (f"  ->  {got}" if got else ""))
        if want is None and r["verdict"] != "clear":
            outcome.problems.append(f"{name} is unrelated but came out {r['verdict']}")
        if want is not None and (r["verdict"] not in ("flagged", "review") or got != want):
            outcome.problems.append(f"{name} copies {want} but came out {r['verdict']} ({got})")
    return outcome

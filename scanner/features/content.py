"""Pure image-content helpers shared by the image featurizers.

:func:`analyse` finds the content inside uniform frames (a border added around
a copy, the empty margin of clip art), so a bordered copy can hash like its
original, and says when an image carries no identifiable expression
(near-uniform, almost empty): such inputs are never flagged.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from scanner.media import opencv

#: Channel difference (0–255) within which every pixel of a line must lie for
#: the line to be frame: loose enough for compression noise along a frame, tight
#: enough that a gradient, or a thin line crossing the row, is content.
LINE_TOLERANCE = 24
#: Frames peeled at most (a border, the blended ring a resampled edge leaves,
#: the margin inside it).
MAX_PASSES = 12
#: Pixels at each end of a line left out of frame tests.
CORNER = 2
#: Work size for frame detection (longer side, pixels).
WORK_SIDE = 128
#: Content smaller than this share of the picture's area is "almost empty".
MIN_CONTENT_AREA = 0.002
#: Standard deviation (0–255) of every channel under which content is "near-uniform".
MIN_CONTENT_STD = 3.0
#: A picture turned on a plain ground (a copy rotated, its corners filled) is
#: turned back when it leans at least this much (degrees); less is a frame the
#: peeling handles.
MIN_TURN_DEGREES = 1.5
#: ... and at most this much: a square on its corner (a road sign, a diamond)
#: is drawn that way, not turned.
MAX_TURN_DEGREES = 30.0
#: Share of its leaning rectangle the turned picture must fill: a drawing on a
#: plain ground (a disc, a figure) does not, a rectangular picture does (a
#: JPEG-compressed one 0.93-0.96, its edges ragged by ringing).
MIN_TURN_FILL = 0.92
#: Share of the whole picture the turned picture must cover.
MIN_TURN_AREA = 0.2


def _work_planes(image: Image.Image) -> tuple[np.ndarray, int]:
    """Block-wise channel extremes of ``image`` at about :data:`WORK_SIDE` pixels.

    Returns
    -------
    planes : float32 ``[shape=(6, h, w)]``: per block, the minimum of R, G, B
        then their maximum (one contiguous plane each: channel-last reductions
        are several times slower)
    factor : block side in pixels of ``image``

    Extremes rather than a resampled thumbnail: averaging would fade a thin
    line into its white ground, and how much it fades depends on the scale, so
    a copy at another size would peel differently.
    """
    arr = np.asarray(image)
    h, w = arr.shape[:2]
    f = max(1, -(-max(h, w) // WORK_SIDE))
    if h < f or w < f:
        f = 1
    arr = np.ascontiguousarray(arr[: h // f * f, : w // f * f])
    lo = hi = arr
    if f > 1:
        # each pixel's minimum (maximum) over the f x f square right and below it, read at every
        # f-th pixel: the blocks' extremes (OpenCV's separable filters: about half the time of
        # strided numpy minima, and an order of magnitude less than a reshaped reduction)
        cv2 = opencv()
        square = np.ones((f, f), np.uint8)
        lo = cv2.erode(arr, square, anchor=(0, 0), borderType=cv2.BORDER_REPLICATE)[::f, ::f]
        hi = cv2.dilate(arr, square, anchor=(0, 0), borderType=cv2.BORDER_REPLICATE)[::f, ::f]
    planes = np.concatenate([lo, hi], axis=2).transpose(2, 0, 1)
    return np.ascontiguousarray(planes, dtype=np.float32), f


def _edges(planes: np.ndarray) -> list[tuple[int, np.ndarray | None]]:
    """The frames along the leading and the trailing edge of ``planes`` (``[shape=(6, h, w)]``),
    each read from its first row and, a row of blocks straddling two frames, from the row behind it.

    Returns
    -------
    ``[leading, leading behind its first row, trailing, trailing behind its first row]``, each
    ``(depth in rows, colour)``, or ``(0, None)`` where that row is not one colour. A frame is
    the run of rows from that row on whose every pixel lies within :data:`LINE_TOLERANCE` of its
    colour; another colour behind it (a margin inside a border) is the next pass's frame.
    """
    h = planes.shape[1]
    # the pixels at each end of a line belong to the perpendicular frames
    # (corners blend both), so they neither set the colour nor break the run
    inner = planes[:, :, CORNER:-CORNER] if planes.shape[2] > 4 * CORNER else planes
    # every pixel of a row lies within a tolerance of a colour when its extremes do
    # (max(hi - c) == max(hi) - c exactly: rounding is monotone), so each colour is tried
    # on 3 x h numbers; ufuncs' own reductions here and below: the array methods' Python
    # wrappers cost more than the arithmetic on these small arrays
    low, high = np.minimum.reduce(inner[:3], axis=2)[:, None], np.maximum.reduce(inner[3:], axis=2)[:, None]
    edge = inner[:, [0, min(1, h - 1), h - 1, max(h - 2, 0)]]
    # the mean, not the median: cheaper, and a line with outliers fails the test anyway
    colours = np.add.reduce((edge[:3] + edge[3:]) / 2, axis=2) / np.float32(edge.shape[2])
    c = colours[:, :, None]
    off = np.logical_or.reduce((high - c > LINE_TOLERANCE) | (c - low > LINE_TOLERANCE), axis=0)
    off = np.concatenate([off[:2], off[2:, ::-1]])  # rows from each frame's own edge inwards
    off[1::2, 0] = False  # the row passed over
    first = np.where(np.logical_or.reduce(off, axis=1), off.argmax(axis=1), h)
    return [(int(d), colours[:, i]) if d > i % 2 else (0, None) for i, d in enumerate(first)]


def _middle(colours: list[np.ndarray]) -> np.ndarray:
    """The median of three or four colours, channel by channel (``np.median``'s value, a tenth of its cost)."""
    ranked = np.sort(np.stack(colours), axis=0)
    n = len(colours)
    return ranked[n // 2] if n % 2 else (ranked[n // 2 - 1] + ranked[n // 2]) / 2


def _trim(planes: np.ndarray) -> tuple[tuple[int, int, int, int], np.ndarray, bool]:
    """Peel frames off; ``(box, content planes, whole picture was one colour)``.

    ``box`` is (top, bottom, left, right) in blocks.

    A frame must run along at least three sides in one colour: a border or a
    margin does, while the bands of a striped flag or a horizon (two opposite
    sides) are content and stay.
    """
    y0, x0 = 0, 0
    for step in range(MAX_PASSES):
        _, h, w = planes.shape
        edges = _edges(planes) + _edges(planes.transpose(0, 2, 1))
        sides = edges[::2]  # top, bottom, left, right
        if step:
            # behind a peeled frame, a row of blocks may straddle it and the next one
            sides = [s if s[1] is not None else behind for s, behind in zip(sides, edges[1::2])]
        if step == 0 and sides[0][0] == h:
            return (0, h, 0, w), planes, True
        framed = [c for _, c in sides if c is not None]
        if len(framed) < 3:
            break
        ref = _middle(framed)
        depth = [d if c is not None and np.abs(c - ref).max() <= LINE_TOLERANCE else 0 for d, c in sides]
        top, bottom, left, right = depth
        if sum(d > 0 for d in depth) < 3 or top + bottom >= h or left + right >= w:
            break
        planes = planes[:, top:h - bottom, left:w - right]
        y0, x0 = y0 + top, x0 + left
    return (y0, y0 + planes.shape[1], x0, x0 + planes.shape[2]), np.ascontiguousarray(planes), False


@dataclass(frozen=True)
class Turn:
    """A rectangular picture leaning on a plain ground, and how to set it upright.

    Attributes
    ----------
    degrees : its lean, in (-45, 45], clockwise on screen
    size : (width, height) of the upright picture, pixels
    matrix : 2 x 3 affine map from upright pixels to pixels of the analysed image
    """

    degrees: float
    size: tuple[int, int]
    matrix: tuple[tuple[float, float, float], tuple[float, float, float]]


def _turned(planes: np.ndarray, f: int, origin: tuple[int, int] = (0, 0)) -> Turn | None:
    """A rectangle leaning on a plain ground in ``planes`` (``[shape=(6, h, w)]``
    blocks of ``f`` pixels, the first at ``origin`` (x, y) pixels), or ``None``.

    The ground is the plain colour of all four corners and every block of it
    joined to them; the picture is the largest piece left. It is a turned
    rectangle when it fills :data:`MIN_TURN_FILL` of its smallest enclosing
    rectangle and that rectangle leans by :data:`MIN_TURN_DEGREES` to
    :data:`MAX_TURN_DEGREES`.
    The upright size leaves out a block along each edge (blocks there mix
    ground and picture).
    """
    cv2 = opencv()
    from scipy import ndimage

    _, h, w = planes.shape
    if min(h, w) < 8:
        return None
    lo, hi = planes[:3], planes[3:]
    mid = (lo + hi) / 2
    spread = (hi - lo).max(axis=0)
    cy, cx = [0, 0, h - 1, h - 1], [0, w - 1, 0, w - 1]
    corners = mid[:, cy, cx]
    if spread[cy, cx].max() > LINE_TOLERANCE:
        return None
    ground = np.median(corners, axis=1)
    if np.abs(corners - ground[:, None]).max() > LINE_TOLERANCE:
        return None
    plain = (spread <= LINE_TOLERANCE) & (np.abs(mid - ground[:, None, None]).max(axis=0) <= LINE_TOLERANCE)
    labels, _ = ndimage.label(plain)
    pieces, n = ndimage.label(~np.isin(labels, labels[cy, cx]))
    if not n:
        return None
    sizes = np.bincount(pieces.ravel())[1:]
    if sizes.max() < MIN_TURN_AREA * h * w:
        return None
    # JPEG ringing along the edges leaves one-block spurs that would widen the rectangle
    piece = ndimage.binary_opening(pieces == 1 + int(sizes.argmax()), np.ones((3, 3), bool))
    area = int(piece.sum())
    ys, xs = np.nonzero(piece)
    if len(xs) < 3:
        return None
    pts = np.stack([xs, ys], axis=1).astype(np.float32) + 0.5
    rect = cv2.minAreaRect(pts)
    (rw, rh) = rect[1]
    if area < MIN_TURN_FILL * (rw + 1) * (rh + 1):
        return None
    corner = cv2.boxPoints(rect)
    edge = corner[1] - corner[0]
    degrees = float(np.degrees(np.arctan2(edge[1], edge[0])))
    degrees = (degrees + 45.0) % 90.0 - 45.0
    if not MIN_TURN_DEGREES <= abs(degrees) <= MAX_TURN_DEGREES:
        return None
    t = np.radians(degrees)
    axes = np.array([[np.cos(t), np.sin(t)], [-np.sin(t), np.cos(t)]])
    centre = np.asarray(rect[0], np.float64)
    along = (corner - centre) @ axes.T  # corners in the upright frame, blocks
    width, height = (int(round((along[:, i].max() - along[:, i].min() - 2) * f)) for i in (0, 1))
    if min(width, height) < 8:
        return None
    # upright pixel (u, v) -> image pixel: about the centre, turned by ``degrees``
    rot = axes.T
    offset = centre * f + np.asarray(origin) - rot @ np.array([width / 2, height / 2])
    matrix = tuple(tuple(float(x) for x in row) for row in np.hstack([rot, offset[:, None]]))
    return Turn(round(degrees, 2), (width, height), matrix)  # type: ignore[arg-type]


def upright(image: Image.Image, turn: Turn) -> Image.Image:
    """The turned picture of ``image`` set upright: RGB, :attr:`Turn.size`."""
    cv2 = opencv()

    arr = np.asarray(image.convert("RGB"))
    flat = cv2.warpAffine(arr, np.asarray(turn.matrix, np.float64), turn.size,
                          flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP, borderMode=cv2.BORDER_REPLICATE)
    return Image.fromarray(flat)


def set_upright(image: Image.Image, content: Content) -> tuple[Image.Image, Content] | None:
    """The turned picture of ``image`` set upright, with its own content analysis.

    Parameters
    ----------
    image : RGB picture
    content : :func:`analyse` of ``image``

    Returns
    -------
    (upright picture, its :class:`Content`: its own margins peeled), or
    ``None`` when ``image`` is not turned or the upright picture is featureless
    """
    if content.turn is None:
        return None
    flat = upright(image, content.turn)
    inner = analyse(flat)
    if inner.box is None or inner.featureless:
        return None
    return flat, inner


@dataclass(frozen=True)
class Content:
    """Where an image's content sits and whether it carries any expression.

    Attributes
    ----------
    box : (left, top, right, bottom) in pixels of the analysed image, inside
        every uniform frame; ``None`` if the whole picture is one colour
    featureless : ``"near-uniform picture"``, ``"almost empty picture"`` or ``None``
    turn : a rectangular picture leaning on a plain ground (a copy turned, its
        corners filled), or ``None`` (none found, or none looked for:
        ``analyse(..., turn=False)``)
    """

    box: tuple[int, int, int, int] | None
    featureless: str | None
    turn: Turn | None = None


def analyse(image: Image.Image, *, turn: bool = True) -> Content:
    """Find an image's content inside uniform frames, and judge whether it is featureless.

    Peels an added border, the empty margin of clip art and the blended ring
    between them, each side on its own; a one-colour band inside the picture is
    content and stays. Inside the frames, a rectangular picture leaning on a
    plain ground (a copy turned by a few degrees, its corners filled) is
    found and described (:class:`Turn`) so it can be set :func:`upright`.

    Parameters
    ----------
    image : PIL.Image.Image, RGB
    turn : look for a turned picture (the costlier half of the analysis; a
        caller whose featurizers never read :attr:`Content.turn` skips it)

    Returns
    -------
    Content
    """
    planes, f = _work_planes(image)
    (top, bottom, left, right), content, uniform = _trim(planes)
    if uniform:
        return Content(None, "near-uniform picture")
    box = (left * f, top * f, right * f, bottom * f)
    if (top, bottom, left, right) == (0, planes.shape[1], 0, planes.shape[2]):
        box = (0, 0, image.width, image.height)
    if content.shape[1] * content.shape[2] < MIN_CONTENT_AREA * planes.shape[1] * planes.shape[2]:
        return Content(box, "almost empty picture")
    mid = (content[:3] + content[3:]) / 2
    # per channel: two colours of equal grey (a blue and a red band) are not uniform
    if mid.reshape(3, -1).std(axis=1).max() < MIN_CONTENT_STD:
        return Content(box, "near-uniform picture")
    return Content(box, None, _turned(content, f, (left * f, top * f)) if turn else None)

"""Pure image-content helpers shared by the image featurizers.

* :func:`trim_borders` removes uniform frames (a border added around a copy,
  the empty margin of clip art), so a bordered copy hashes like its original.
* :func:`featureless_reason` says when an image carries no identifiable
  expression (near-uniform, almost empty): such inputs are never flagged.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

#: Channel difference (0–255) within which every pixel of a line must lie for
#: the line to be frame: loose enough for compression noise along a frame, tight
#: enough that a gradient, or a thin line crossing the row, is content.
LINE_TOLERANCE = 24
#: Frames peeled at most (a border, the blended ring a resampled edge leaves,
#: the margin inside it).
MAX_PASSES = 4
#: Pixels at each end of a line left out of frame tests.
CORNER = 2
#: Work size for frame detection (longer side, pixels).
WORK_SIDE = 128
#: Content smaller than this share of the picture's area is "almost empty".
MIN_CONTENT_AREA = 0.002
#: Grey-level standard deviation (0–255) under which content is "near-uniform".
MIN_CONTENT_STD = 3.0


def _work_planes(image: Image.Image) -> np.ndarray:
    small = image.copy()
    small.thumbnail((WORK_SIDE, WORK_SIDE), Image.Resampling.BILINEAR)
    # one contiguous plane per channel: channel-last reductions are several times slower
    return np.ascontiguousarray(np.asarray(small, dtype=np.float32).transpose(2, 0, 1))


def _side(planes: np.ndarray) -> tuple[int, np.ndarray | None]:
    """The frame along the leading edge of ``planes`` (``[shape=(3, h, w)]``).

    Returns its depth in rows and its colour, or ``(0, None)`` when the first
    row is not one colour. The frame is the run of rows whose every pixel lies
    within :data:`LINE_TOLERANCE` of the first row's colour; another colour
    behind it (a margin inside a border) is the next pass's frame.
    """
    # the pixels at each end of a line belong to the perpendicular frames
    # (corners blend both), so they neither set the colour nor break the run
    inner = planes[:, :, CORNER:-CORNER] if planes.shape[2] > 4 * CORNER else planes
    colour = np.median(inner[:, 0], axis=1)
    dev = np.abs(inner - colour[:, None, None]).max(axis=0).max(axis=1)
    off = np.flatnonzero(dev > LINE_TOLERANCE)
    depth = int(off[0]) if off.size else planes.shape[1]
    return depth, (colour if depth else None)


def _trim(planes: np.ndarray) -> tuple[np.ndarray, bool]:
    """Peel frames off; ``(content planes, whole picture was one colour)``.

    A frame must run along at least three sides in one colour: a border or a
    margin does, while the bands of a striped flag or a horizon (two opposite
    sides) are content and stay.
    """
    for step in range(MAX_PASSES):
        _, h, w = planes.shape
        cols = np.ascontiguousarray(planes.transpose(0, 2, 1))
        sides = [_side(planes), _side(planes[:, ::-1]), _side(cols), _side(cols[:, ::-1])]
        if step == 0 and sides[0][0] == h:
            return planes, True
        framed = [c for _, c in sides if c is not None]
        if len(framed) < 3:
            break
        ref = np.median(np.stack(framed), axis=0)
        depth = [d if c is not None and np.abs(c - ref).max() <= LINE_TOLERANCE else 0 for d, c in sides]
        top, bottom, left, right = depth
        if sum(d > 0 for d in depth) < 3 or top + bottom >= h or left + right >= w:
            break
        planes = np.ascontiguousarray(planes[:, top:h - bottom, left:w - right])
    return planes, False


def trim_borders(image: Image.Image) -> Image.Image | None:
    """Peel uniform frames off every side of an image, each side on its own.

    Removes an added border, the empty margin of clip art and the blended ring
    between them; a one-colour band inside the picture is content and stays.

    Parameters
    ----------
    image : PIL.Image.Image, RGB

    Returns
    -------
    PIL.Image.Image or None
        The content (at most :data:`WORK_SIDE` pixels on its longer side), or
        ``None`` if the whole picture is one colour.
    """
    planes, uniform = _trim(_work_planes(image))
    if uniform:
        return None
    return Image.fromarray(planes.transpose(1, 2, 0).astype(np.uint8))


def featureless_reason(image: Image.Image) -> str | None:
    """Why an image carries no identifiable expression, or ``None`` if it does.

    Parameters
    ----------
    image : PIL.Image.Image, RGB

    Returns
    -------
    str or None
        ``"near-uniform picture"`` or ``"almost empty picture"``; ``None`` for
        an image with content.
    """
    planes = _work_planes(image)
    content, uniform = _trim(planes)
    if uniform:
        return "near-uniform picture"
    if content.shape[1] * content.shape[2] < MIN_CONTENT_AREA * planes.shape[1] * planes.shape[2]:
        return "almost empty picture"
    if content.mean(axis=0).std() < MIN_CONTENT_STD:
        return "near-uniform picture"
    return None

"""Pure image-content helpers shared by the image featurizers.

* :func:`trim_borders` removes uniform frames (a border added around a copy,
  the empty margin of clip art), so a bordered copy hashes like its original.
* :func:`featureless_reason` says when an image carries no identifiable
  expression (near-uniform, almost empty): such inputs are never flagged.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

#: Channel difference (0–255) under which a pixel counts as the border colour;
#: wide enough for JPEG ringing along a frame edge.
BORDER_TOLERANCE = 40
#: Share of a row/column that must differ from the border colour to count as content.
CONTENT_SHARE = 0.01
#: Work size for border detection (longer side, pixels).
WORK_SIDE = 256
#: Content smaller than this share of the picture's area is "almost empty".
MIN_CONTENT_AREA = 0.002
#: Grey-level standard deviation (0–255) under which content is "near-uniform".
MIN_CONTENT_STD = 3.0


def _content_box(arr: np.ndarray) -> tuple[int, int, int, int] | None:
    """Box (top, bottom, left, right) of what differs from the frame colour.

    ``arr`` is ``[shape=(h, w, 3)]`` int16. Returns ``None`` when everything is
    the frame colour.
    """
    frame = np.concatenate([arr[0], arr[-1], arr[:, 0], arr[:, -1]])
    colour = np.median(frame, axis=0)
    differs = np.abs(arr - colour).max(axis=2) > BORDER_TOLERANCE
    h, w = differs.shape
    rows = np.flatnonzero(differs.sum(axis=1) > max(1, CONTENT_SHARE * w))
    cols = np.flatnonzero(differs.sum(axis=0) > max(1, CONTENT_SHARE * h))
    if rows.size == 0 or cols.size == 0:
        return None
    return int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1


def trim_borders(image: Image.Image, *, max_passes: int = 3) -> Image.Image | None:
    """Crop uniform frames from an image, repeatedly (a border around a margin).

    Parameters
    ----------
    image : PIL.Image.Image, RGB
    max_passes : int > 0
        How many nested frames to peel off.

    Returns
    -------
    PIL.Image.Image or None
        The cropped image (at most :data:`WORK_SIDE` pixels on its longer side),
        or ``None`` if the whole picture is one colour.
    """
    small = image.copy()
    small.thumbnail((WORK_SIDE, WORK_SIDE), Image.Resampling.BILINEAR)
    arr = np.asarray(small, dtype=np.int16)
    for _ in range(max_passes):
        if min(arr.shape[:2]) < 2:
            return None
        box = _content_box(arr)
        if box is None:
            return None
        top, bottom, left, right = box
        if (top, bottom, left, right) == (0, arr.shape[0], 0, arr.shape[1]):
            break
        arr = arr[top:bottom, left:right]
    return Image.fromarray(arr.astype(np.uint8))


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
    small = image.copy()
    small.thumbnail((WORK_SIDE, WORK_SIDE), Image.Resampling.BILINEAR)
    arr = np.asarray(small, dtype=np.int16)
    box = _content_box(arr)
    if box is None:
        return "near-uniform picture"
    top, bottom, left, right = box
    if (bottom - top) * (right - left) < MIN_CONTENT_AREA * arr.shape[0] * arr.shape[1]:
        return "almost empty picture"
    grey = arr[top:bottom, left:right].mean(axis=2)
    if grey.std() < MIN_CONTENT_STD:
        return "near-uniform picture"
    return None

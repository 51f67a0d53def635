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
#: Channel spread (0–255) within which a line counts as one colour when peeling
#: frames: tight, so gradients and skies are not mistaken for a frame, loose
#: enough for JPEG noise along a frame.
LINE_TOLERANCE = 16
#: Share of a line's pixels that must agree for it to count as frame (the rest
#: is compression noise or a speck).
FRAME_SHARE = 0.97
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


def _peel(planes: np.ndarray) -> int:
    """How many leading rows of ``planes`` are frame.

    ``planes`` is ``[shape=(3, h, w)]`` float32, one contiguous plane per
    channel (channel-last reductions are several times slower). Frame rows are,
    first, a run of one-colour rows (within :data:`LINE_TOLERANCE`: borders,
    margins, the blended ring a resampled frame edge leaves), then rows still
    nearly all within :data:`BORDER_TOLERANCE` of the last such colour
    (compression ringing next to the content).
    """
    colour = planes.mean(axis=2)  # (3, h); a frame line is one colour, so its mean is that colour
    dev = np.abs(planes - colour[:, :, None]).max(axis=0)
    n = _run((dev <= LINE_TOLERANCE).mean(axis=1) >= FRAME_SHARE)
    if n == 0 or n == planes.shape[1]:
        return n
    ring = np.abs(planes[:, n:] - colour[:, n - 1, None, None]).max(axis=0)
    return n + _run((ring <= BORDER_TOLERANCE).mean(axis=1) >= FRAME_SHARE)


def _run(flags: np.ndarray) -> int:
    """Length of the leading run of True."""
    off = np.flatnonzero(~flags)
    return int(off[0]) if off.size else len(flags)


def trim_borders(image: Image.Image, *, max_passes: int = 8) -> Image.Image | None:
    """Peel frames off every side of an image until none is left.

    Removes an added border, the empty margin of clip art, and the one-pixel
    ring of blended colour a resampled frame edge leaves, each side on its own.

    Parameters
    ----------
    image : PIL.Image.Image, RGB
    max_passes : int > 0
        Nested frames to peel (a border around a margin takes two passes).

    Returns
    -------
    PIL.Image.Image or None
        The cropped image (at most :data:`WORK_SIDE` pixels on its longer side),
        or ``None`` if the whole picture is one colour.
    """
    small = image.copy()
    small.thumbnail((WORK_SIDE, WORK_SIDE), Image.Resampling.BILINEAR)
    planes = np.ascontiguousarray(np.asarray(small, dtype=np.float32).transpose(2, 0, 1))
    for _ in range(max_passes):
        _, h, w = planes.shape
        cols = np.ascontiguousarray(planes.transpose(0, 2, 1))
        top, bottom = _peel(planes), _peel(planes[:, ::-1])
        left, right = _peel(cols), _peel(cols[:, ::-1])
        if top + bottom >= h or left + right >= w:
            return None
        if top == bottom == left == right == 0:
            break
        planes = np.ascontiguousarray(planes[:, top:h - bottom, left:w - right])
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

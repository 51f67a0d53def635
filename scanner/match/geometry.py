"""Geometry of a verified keypoint match: where it sits in both pictures, and RANSAC for repeated elements.

Pure functions of keypoint positions (working pixels) and a 2x3 similarity
transform ``m`` (query -> work): the matched region's box in each picture
with its share of the picture, a coarse heat map of where the inliers lie,
one-to-one pairing of keypoints, and the RANSAC over several hypotheses per
keypoint that the ``repeated`` statistic of :mod:`scanner.match.landmarks` uses.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def box(points: np.ndarray) -> np.ndarray:
    """Axis-aligned bounding box ``[x0, y0, x1, y1]`` of normalised points, clipped to [0, 1]."""
    p = np.clip(points, 0.0, 1.0)
    return np.concatenate([p.min(axis=0), p.max(axis=0)])


def corners(size: np.ndarray) -> np.ndarray:
    w, h = float(size[0]), float(size[1])
    return np.array([[0, 0], [w, 0], [0, h], [w, h]], np.float64)


def apply(m: np.ndarray, pts: np.ndarray) -> np.ndarray:
    return pts @ m[:, :2].T + m[:, 2]


def landmark_boxes(m: np.ndarray, q_px: np.ndarray, r_px: np.ndarray, q_size: np.ndarray,
                   r_size: np.ndarray, *, mirrored: bool) -> dict[str, Any]:
    """Where a verified match sits in the query and in the work.

    Each box is the other picture's frame carried over by the fitted transform,
    clipped to this picture and widened to hold every inlier: a crop's query box
    is the whole output and its work box the cropped part; a pasted work's
    query box is the pasted area.

    Parameters
    ----------
    m : float64 ``[shape=(2, 3)]`` query view pixels -> work pixels
    q_px, r_px : inlier positions in working pixels, ``[shape=(n, 2)]``
    q_size, r_size : (width, height) in working pixels of the query view and the work
    mirrored : the query view is mirrored (its boxes are turned back)

    Returns
    -------
    dict with ``query_box``, ``ref_box`` (normalised ``[x0, y0, x1, y1]``),
    ``query_share``, ``ref_share`` (area shares in [0, 1]) and ``mirrored``
    """
    q_size = np.asarray(q_size, np.float64)
    r_size = np.asarray(r_size, np.float64)
    ref_box = box(np.vstack([apply(m, corners(q_size)) / r_size, r_px / r_size]))
    q_pts = q_px / q_size
    a = m[:, :2]
    if abs(np.linalg.det(a)) > 1e-9:
        inv = np.linalg.inv(a)
        q_pts = np.vstack([(corners(r_size) - m[:, 2]) @ inv.T / q_size, q_pts])
    query_box = box(q_pts)
    if mirrored:
        query_box = np.array([1 - query_box[2], query_box[1], 1 - query_box[0], query_box[3]])

    def share(b: np.ndarray) -> float:
        return round(float(max(b[2] - b[0], 0) * max(b[3] - b[1], 0)), 4)

    return {"query_box": [round(float(v), 4) for v in query_box],
            "ref_box": [round(float(v), 4) for v in ref_box],
            "query_share": share(query_box), "ref_share": share(ref_box), "mirrored": bool(mirrored)}


#: Cells per side of a match's heat map (where the verified keypoints lie).
HEAT_GRID = 8


def heat_grid(points: np.ndarray, *, n: int = HEAT_GRID) -> str:
    """Where matched keypoints lie, as an ``n`` x ``n`` heat map in one short string.

    Parameters
    ----------
    points : float ``[shape=(m, 2)]`` positions normalised to the picture, ``(x, y)`` in [0, 1]

    Returns
    -------
    str of ``n * n`` digits, row by row from the top left: 0 for a cell
    without matched keypoints, 1-9 for its share of the densest cell
    """
    p = np.clip(np.asarray(points, np.float64).reshape(-1, 2), 0.0, 1.0 - 1e-9)
    if not len(p):
        return "0" * (n * n)
    cells = (p[:, 1] * n).astype(int) * n + (p[:, 0] * n).astype(int)
    counts = np.bincount(cells, minlength=n * n)
    return "".join(str(int(d)) for d in np.ceil(9 * counts / counts.max()).astype(int))


def one_to_one(qk: np.ndarray, rk: np.ndarray, err: np.ndarray) -> np.ndarray:
    """Pairs with each query and each work keypoint used once, the least error first.

    Parameters
    ----------
    qk, rk : int ``[shape=(m,)]`` query and work keypoints of each pair
    err : float ``[shape=(m,)]`` reprojection error of each pair

    Returns
    -------
    bool ``[shape=(m,)]`` the pairs kept
    """
    keep = np.zeros(len(qk), bool)
    o = np.argsort(err, kind="stable")
    _, first_q = np.unique(qk[o], return_index=True)
    sel = np.sort(first_q)  # positions in ``o``: least error first again
    _, first_r = np.unique(rk[o[sel]], return_index=True)
    keep[o[sel[first_r]]] = True
    return keep


def ransac_repeated(q_px: np.ndarray, r_px: np.ndarray, qk: np.ndarray, rk: np.ndarray, *,
                     tolerance: float, sample: int) -> tuple[np.ndarray, np.ndarray | None]:
    """The ``repeated`` statistic's consensus: the transform found on at most
    ``sample`` of the pairs (an even, fixed subset: a two-point draw hits right
    pairs as often in it as in all), its inliers counted over every pair, each
    query and work keypoint once (:func:`_one_to_one`).

    Returns
    -------
    inliers : bool ``[shape=(m,)]``; transform : float64 ``[shape=(2, 3)]`` or ``None``
    """
    from scanner.features.local import ransac_similarity

    picked = np.arange(len(q_px))
    if len(picked) > sample:
        picked = picked[np.linspace(0, len(picked) - 1, sample).astype(np.int64)]
    _, m = ransac_similarity(q_px[picked], r_px[picked], tolerance=tolerance)
    if m is None:
        return np.zeros(len(q_px), bool), None
    err = np.hypot(*(apply(m, q_px) - r_px).T)
    inl = err <= tolerance
    at = np.flatnonzero(inl)
    inl[at[~one_to_one(qk[at], rk[at], err[at])]] = False
    return inl, m

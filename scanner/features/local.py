"""``image-local``: ORB keypoints with binary descriptors, for partial copies.

A crop, a collage or a mirrored copy keeps pieces of a work but not its whole
picture, so whole-picture codes (pHash, one CLIP vector) miss it. Local
features survive: each picture yields up to :data:`N_FEATURES` ORB keypoints
(FAST corners over an 8-level pyramid, oriented BRIEF descriptors of 256 bits)
found on its grey content at :data:`WORK_SIDE` pixels. The index holds every
reference descriptor with its work and its position; a query's descriptors
vote for works, and the best-voted works are verified geometrically
(:func:`ransac_similarity`, used by :mod:`scanner.match`): the number of
matched keypoints that one similarity transform explains is the score.

ORB descriptors are not mirror-invariant, so a query also yields the
descriptors of its mirror image (view 1); references are indexed as they are.
A work pasted small into a larger picture (a collage) gets few of the
query's keypoints and sits at a scale the pyramid barely reaches, so a large
query also yields four overlapping tiles (views 2 to 5), each described at
the working size on its own: a zoom into each part of the picture (a row of
four along a tall or wide one), with extra keypoints spread over the tile so
that a work with flatter colours than the picture around it still gets
some (:func:`spread_keypoints`). A query turned on a plain ground
(:attr:`Content.turn`) is described set upright, so the edges between the
turned picture and its ground, strong corners that belong to no work, do
not take its keypoints.

Positions are stored normalised to the whole picture (``x / width``,
``y / height``), with the picture's size at the working scale so geometry
runs in working pixels, where the RANSAC tolerance has a fixed meaning.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from PIL import Image

from scanner.errors import ParameterError
from scanner.features.base import Featurizer
from scanner.features.content import Content, Turn, analyse, set_upright
from scanner.media import opencv

#: Longer side (pixels) of the grey content the keypoints are found on.
WORK_SIDE = 512
#: Keypoints kept per query picture and view (the strongest by FAST/Harris score).
N_FEATURES = 500
#: Keypoints kept per reference: twice a query's, so a crop (a part of the
#: work, magnified) still finds enough of the work's keypoints in its part.
REF_FEATURES = 1000
#: Bytes per descriptor (ORB: 256 bits).
DESC_BYTES = 32
#: A reference with fewer keypoints than this is indexed without any (too
#: few to verify a match on).
MIN_KEYPOINTS = 8
#: Tiles of a query (views 2 to 5): four overlapping parts of the content box,
#: laid out 2 x 2, or in a row of 4 along a box :data:`TILE_ELONGATION` times
#: longer than it is wide, so that each tile is near square and a work pasted
#: into a tall or wide picture is enlarged like one in a square picture. The
#: share of the side each tile covers, by tiles along that side.
TILE_SHARE = {1: 1.0, 2: 0.65, 4: 0.4}
TILE_ELONGATION = 2.0
#: Queries whose content is smaller than this (longer side, decoded pixels)
#: get no tiles: a tile of it would be a few dozen pixels. Small pictures
#: above it get tiles too: in a 240-pixel collage a work pasted at 40% is 100
#: pixels wide, and a tile enlarged to the working side shows it half as large
#: again as the whole view, with the keypoints of the rest left out.
TILE_MIN_SIDE = 100
#: A tile keeps its strongest keypoints and this share of its budget again,
#: spread over the tile (:func:`spread_keypoints`, from :data:`SPREAD_OVERSAMPLE`
#: times the budget found, over a :data:`SPREAD_GRID` square grid): a work
#: pasted into a busy picture has flatter colours than the picture's texture,
#: whose corners are nearly all of a tile's strongest.
SPREAD_EXTRA = 0.5
SPREAD_OVERSAMPLE = 4
SPREAD_GRID = 4

#: One keypoint as :meth:`LocalORB.prepare` returns it: its descriptor, its
#: position normalised to the whole picture of its view, the view's size in
#: working pixels, and the view (0 as given, 1 mirrored).
KEYPOINT_DTYPE = np.dtype([("desc", np.uint8, (DESC_BYTES,)), ("xy", np.float32, (2,)),
                           ("size", np.float32, (2,)), ("view", np.uint8)])


def spread_keypoints(xy: np.ndarray, response: np.ndarray, shape: tuple[int, int], n: int, extra: int, *,
                     grid: int = SPREAD_GRID) -> np.ndarray:
    """The ``n`` strongest keypoints and ``extra`` more, so that every part of a picture has some.

    The extra ones go round the cells of a ``grid`` x ``grid`` partition of
    the picture, each cell's strongest keypoint not yet kept in turn (a cell
    that runs out drops out of the round).

    Parameters
    ----------
    xy : float ``[shape=(m, 2)]`` keypoint positions (x, y) in pixels
    response : float ``[shape=(m,)]`` keypoint strength (larger is stronger)
    shape : (height, width) of the picture, pixels
    n, extra : int >= 0, keypoints kept by strength, and dealt out by cell
    grid : cells per side

    Returns
    -------
    int64 ``[shape=(min(n + extra, m),)]`` rows of the kept keypoints, strongest first
    """
    xy = np.asarray(xy, np.float64).reshape(-1, 2)
    response = np.asarray(response, np.float64)
    strongest = np.argsort(-response, kind="stable")
    if len(response) <= n + extra:
        return strongest
    h, w = shape
    col = np.minimum((xy[:, 0] * grid // max(w, 1)).astype(np.int64), grid - 1)
    row = np.minimum((xy[:, 1] * grid // max(h, 1)).astype(np.int64), grid - 1)
    cell = row * grid + col
    # each keypoint's rank by strength within its cell: the round it is dealt in
    by_cell = np.lexsort((-response, cell))
    sorted_cells = cell[by_cell]
    starts = np.flatnonzero(np.r_[True, sorted_cells[1:] != sorted_cells[:-1]])
    rank = np.empty(len(cell), np.float64)
    rank[by_cell] = np.arange(len(cell)) - np.repeat(starts, np.diff(np.r_[starts, len(cell)]))
    rank[strongest[:n]] = -1.0
    kept = np.lexsort((-response, rank))[:n + extra]
    return kept[np.argsort(-response[kept], kind="stable")]


def orb_keypoints(grey: np.ndarray, *, n_features: int = N_FEATURES, mirror: bool = False,
                  extra: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """ORB keypoints of a grey picture (and of its mirror image).

    Parameters
    ----------
    grey : uint8 ``[shape=(h, w)]``
    n_features : int > 0, keypoints kept by strength
    mirror : also describe the same spots in the picture mirrored left to right
        (the keypoints reflected, their orientation turned back: the
        descriptors are those a detection on the mirror image finds, without
        detecting again)
    extra : int >= 0, keypoints kept beyond ``n_features``, spread over the
        picture (:func:`spread_keypoints` of :data:`SPREAD_OVERSAMPLE` times
        ``n_features`` found)

    Returns
    -------
    list of (xy, desc), one per view (as given, then mirrored):
    xy : float32 ``[shape=(n, 2)]`` keypoint centres in pixels of ``grey`` (of
        the mirrored picture for the mirrored view), strongest (Harris response) first
    desc : uint8 ``[shape=(n, 32)]`` packed 256-bit descriptors
    """
    cv2 = opencv()
    if n_features < 1 or extra < 0:
        raise ParameterError(f"n_features must be positive and extra not negative, given {n_features}, {extra}")
    grey = np.ascontiguousarray(grey, dtype=np.uint8)
    if grey.ndim != 2:
        raise ParameterError(f"expected a grey picture of shape (h, w), given shape={grey.shape}")
    orb = cv2.ORB_create(nfeatures=n_features * (SPREAD_OVERSAMPLE if extra else 1), scaleFactor=1.2,
                         nlevels=8, edgeThreshold=19, patchSize=19, fastThreshold=6)
    if extra:
        kps = orb.detect(grey, None)
        if len(kps) > n_features + extra:
            kept = spread_keypoints(cv2.KeyPoint_convert(kps), np.array([k.response for k in kps]),
                                    grey.shape, n_features, extra)
            kps = [kps[i] for i in kept]
        kps, desc = orb.compute(grey, kps) if kps else ((), None)
    else:
        kps, desc = orb.detectAndCompute(grey, None)
    views = [(kps, desc)]
    if mirror:
        w = grey.shape[1]
        flipped = [cv2.KeyPoint(w - 1 - k.pt[0], k.pt[1], k.size, (180.0 - k.angle) % 360.0, k.response,
                                k.octave, k.class_id) for k in kps]
        views.append(orb.compute(np.ascontiguousarray(grey[:, ::-1]), flipped) if flipped else ((), None))
    out = []
    for kps, desc in views:
        if desc is None or not kps:
            out.append((np.zeros((0, 2), np.float32), np.zeros((0, DESC_BYTES), np.uint8)))
            continue
        # strongest first (stable: ties keep OpenCV's order), so a prefix is the best subset
        order = np.argsort([-kp.response for kp in kps], kind="stable")
        xy = cv2.KeyPoint_convert(kps).astype(np.float32).reshape(-1, 2)[order]
        out.append((xy, np.ascontiguousarray(desc[order], dtype=np.uint8)))
    return out


def working_grey(image: Image.Image, box: tuple[int, int, int, int] | None = None,
                 *, side: int = WORK_SIDE) -> tuple[np.ndarray, float]:
    """The grey content of ``image`` inside ``box``, scaled so its longer side is ``side``.

    Returns
    -------
    grey : uint8 ``[shape=(h, w)]``
    scale : float, working pixels per pixel of ``image``
    """
    cv2 = opencv()
    box = box or (0, 0, image.width, image.height)
    grey = np.asarray(image.crop(box).convert("L"))  # the box alone turned grey: tiles are a fraction of it
    h, w = grey.shape
    scale = side / max(h, w, 1)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    return cv2.resize(grey, size, interpolation=interp), scale


def tile_boxes(box: tuple[int, int, int, int]) -> list[tuple[int, int, int, int]]:
    """The four overlapping tiles of a content box: 2 x 2, or a row of 4 along
    a box :data:`TILE_ELONGATION` times longer than wide, each covering
    :data:`TILE_SHARE` of the sides it is cut along, evenly spaced.

    Returns
    -------
    list of four (left, top, right, bottom) boxes in pixels, row by row
    """
    x0, y0, x1, y1 = box
    w, h = x1 - x0, y1 - y0
    nx, ny = (4, 1) if w >= TILE_ELONGATION * h else (1, 4) if h >= TILE_ELONGATION * w else (2, 2)
    sx, sy = TILE_SHARE[nx], TILE_SHARE[ny]
    return [(round(x0 + fx * w), round(y0 + fy * h), round(x0 + (fx + sx) * w), round(y0 + (fy + sy) * h))
            for fy in np.linspace(0.0, 1.0 - sy, ny) for fx in np.linspace(0.0, 1.0 - sx, nx)]


def _describe(image: Image.Image, box: tuple[int, int, int, int], *, n_features: int, mirror: bool,
              first_view: int, extra: int = 0, turn: Turn | None = None,
              frame: tuple[int, int] | None = None) -> list[np.ndarray]:
    """Keypoints of ``image`` inside ``box`` (and of its mirror image), positions
    normalised to the whole picture of their view.

    ``image`` may be the upright picture of a turned one
    (:func:`scanner.features.content.set_upright`):
    positions then go back through ``turn`` to the turned picture, of size
    ``frame`` (width, height).
    """
    x0, y0 = box[0], box[1]
    grey, scale = working_grey(image, box)
    frame_size = np.array(frame or (image.width, image.height), np.float32)
    to_frame = None if turn is None else np.asarray(turn.matrix, np.float32)
    parts = []
    for view, (xy, desc) in enumerate(orb_keypoints(grey, n_features=n_features, mirror=mirror, extra=extra)):
        if view:  # back to the box's pixels, then to the mirrored whole picture
            xy[:, 0] = (grey.shape[1] - 1) - xy[:, 0]
        px = xy / scale + np.array([x0, y0], np.float32)
        if to_frame is not None:
            px = px @ to_frame[:, :2].T + to_frame[:, 2]
        norm = px / frame_size
        if view:
            norm[:, 0] = 1.0 - norm[:, 0]
        out = np.zeros(len(xy), KEYPOINT_DTYPE)
        out["desc"], out["xy"], out["size"], out["view"] = desc, norm, frame_size * scale, first_view + view
        parts.append(out)
    return parts


def extract(image: Image.Image, content: Content | None = None, *, mirror: bool = True,
            n_features: int = N_FEATURES, tiles: bool = False, turned_back: bool = False) -> np.ndarray:
    """Keypoints of a picture's content (and of its mirror image, and of its tiles).

    Parameters
    ----------
    image : RGB picture
    content : :func:`scanner.features.content.analyse` of ``image`` (computed if missing)
    mirror : also extract from the picture mirrored left to right (view 1)
    n_features : keypoints kept per view
    tiles : also extract from each of the content's :func:`tile_boxes` on its
        own (views 2 to 5), when the content is at least :data:`TILE_MIN_SIDE`
        pixels on its longer side; a tile keeps :data:`SPREAD_EXTRA` more
        keypoints, spread over it (:func:`spread_keypoints`)
    turned_back : describe a picture leaning on a plain ground
        (:attr:`Content.turn`) set upright, its own margins peeled: the
        edges between the turned picture and its ground are corners ORB
        would spend its keypoints on, and they belong to no work

    Returns
    -------
    np.ndarray [shape=(n,)] of :data:`KEYPOINT_DTYPE`, positions in ``image``;
    empty for a featureless picture
    """
    content = content or analyse(image)
    if content.box is None or content.featureless:
        return np.zeros(0, KEYPOINT_DTYPE)
    turn, frame = None, None
    flat = set_upright(image, content) if turned_back else None
    if flat is not None:
        turn, frame = content.turn, (image.width, image.height)
        image, content = flat
    box = content.box
    parts = _describe(image, box, n_features=n_features, mirror=mirror, first_view=0, turn=turn, frame=frame)
    if tiles and max(box[2] - box[0], box[3] - box[1]) >= TILE_MIN_SIDE:
        for i, tile in enumerate(tile_boxes(box)):
            parts += _describe(image, tile, n_features=n_features, mirror=False, first_view=2 + i,
                               extra=round(SPREAD_EXTRA * n_features), turn=turn, frame=frame)
    return np.concatenate(parts)


def hamming_knn(queries: np.ndarray, refs: np.ndarray, *, k: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """Exact ``k`` nearest descriptors of ``refs`` for each of ``queries`` (a small brute-force search).

    Parameters
    ----------
    queries, refs : uint8 ``[shape=(n, 32)]``, ``[shape=(m, 32)]`` packed descriptors
    k : int > 0

    Returns
    -------
    D : int32 ``[shape=(n, min(k, m))]`` Hamming distances, nearest first
    I : int64 ``[shape=(n, min(k, m))]`` rows of ``refs``
    """
    import faiss

    k = min(k, len(refs))
    if k < 1 or not len(queries):
        return np.zeros((len(queries), max(k, 0)), np.int32), np.zeros((len(queries), max(k, 0)), np.int64)
    index = faiss.IndexBinaryFlat(refs.shape[1] * 8)
    index.add(np.ascontiguousarray(refs, dtype=np.uint8))
    # far too small to share: an OpenMP team only waits on itself (and spins
    # for a long time when another process holds the cores)
    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    try:
        return index.search(np.ascontiguousarray(queries, dtype=np.uint8), k)
    finally:
        faiss.omp_set_num_threads(threads)


def ransac_similarity(src: np.ndarray, dst: np.ndarray, *, tolerance: float,
                      iterations: int = 500, seed: int = 0) -> tuple[np.ndarray, np.ndarray | None]:
    """Largest set of point pairs that one similarity transform maps onto each other.

    Parameters
    ----------
    src, dst : float32 ``[shape=(n, 2)]`` matched positions (working pixels)
    tolerance : float, largest reprojection error of an inlier (working pixels)
    iterations : RANSAC draws
    seed : OpenCV's random state, so results are deterministic

    Returns
    -------
    inliers : bool ``[shape=(n,)]``
    transform : float64 ``[shape=(2, 3)]`` mapping ``src`` to ``dst``, or ``None``
    """
    cv2 = opencv()
    n = len(src)
    if n < 3:
        return np.zeros(n, bool), None
    cv2.setRNGSeed(seed)
    m, mask = cv2.estimateAffinePartial2D(np.asarray(src, np.float32), np.asarray(dst, np.float32),
                                          method=cv2.RANSAC, ransacReprojThreshold=tolerance,
                                          maxIters=iterations, confidence=0.995, refineIters=5)
    if m is None or mask is None:
        return np.zeros(n, bool), None
    return mask.ravel().astype(bool), m


class LocalORB(Featurizer):
    """Local keypoint featurizer (weight-free, kind ``landmark``).

    Parameters
    ----------
    n_features : int > 0
        Keypoints kept per query picture and view (half as many again in a
        tile, :data:`SPREAD_EXTRA`).
    ref_features : int > 0
        Keypoints kept per reference (as given; references are not mirrored).
    """

    name = "image-local"
    # keypoints are found at WORK_SIDE on the content box and on each tile: a
    # part of the picture has that detail only when the decode keeps twice it
    decode_side = 2 * WORK_SIDE
    modality = "image"
    kind = "landmark"
    metric = "hamming"
    codes_per_item = 0  # variable: one row per keypoint
    reads_turn = True

    def __init__(self, n_features: int = N_FEATURES, ref_features: int = REF_FEATURES):
        self.n_features = n_features
        self.ref_features = ref_features
        opencv()  # imported before decode workers fork, not once per worker

    @property
    def version(self) -> str:
        return f"orb-{self.ref_features}/{self.n_features}-{WORK_SIDE}-mirror-v1"

    @property
    def dim(self) -> int:
        return DESC_BYTES * 8

    def prepare(self, image: Image.Image, content: Content | None = None) -> np.ndarray:
        """A query's keypoints in every view (as given, mirrored, tiles): ``[shape=(n,)]``
        of :data:`KEYPOINT_DTYPE`. A picture leaning on a plain ground (a copy
        turned, its corners filled) is described set upright; references are
        described as drawn."""
        return extract(image, content, mirror=True, n_features=self.n_features, tiles=True, turned_back=True)

    def prepare_reference(self, image: Image.Image, content: Content | None = None) -> np.ndarray:
        """A reference's keypoints, as given only: ``[shape=(n,)]`` of :data:`KEYPOINT_DTYPE`."""
        return extract(image, content, mirror=False, n_features=self.ref_features)

    def embed(self, prepared: Sequence[np.ndarray]) -> np.ndarray:
        """Descriptors of a batch, concatenated item after item: uint8 ``[shape=(n, 32)]``."""
        if not prepared:
            return np.zeros((0, DESC_BYTES), np.uint8)
        return np.ascontiguousarray(np.concatenate([p["desc"] for p in prepared]), dtype=np.uint8)

    def index_rows(self, prepared: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """What the index keeps of one reference: its descriptors as given, and their positions.

        Returns
        -------
        desc : uint8 ``[shape=(n, 32)]``
        extra : ``{"xy": float32 [shape=(n, 2)], "size": float32 [shape=(n, 2)]}``
        """
        own = prepared[prepared["view"] == 0]
        if len(own) < MIN_KEYPOINTS:
            own = own[:0]
        return (np.ascontiguousarray(own["desc"]),
                {"xy": np.ascontiguousarray(own["xy"]), "size": np.ascontiguousarray(own["size"])})

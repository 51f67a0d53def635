"""``image-phash``: perceptual hashes (imagehash's DCT pHash) as packed bits.

Each picture gives two codes: one of the whole picture, one of its content
inside any uniform frames (:func:`scanner.features.content.analyse`). Trimming lets a bordered copy,
or clip art on another margin, hash like its original; the whole-picture code
keeps resized, recompressed or brightened copies exact, since a trim box that
moves by a pixel shifts the content the hash sees. Codes are 256 bits
(``hash_size=16``), searched by Hamming distance in a faiss binary index.
"""

from __future__ import annotations

from typing import Any, Sequence

import imagehash
import numpy as np
from PIL import Image

from scanner.errors import ParameterError
from scanner.features.base import Featurizer
from scanner.features.content import Content, analyse, set_upright


#: Largest share of bits a code may be off balance (|ones - dim/2| / dim) and
#: count as evidence. Symmetric pictures tie many DCT coefficients at zero and
#: set well under half their bits while still being distinctive, so only codes
#: with almost no bits (or almost all) set are left out.
MAX_IMBALANCE = 0.4375


class PHash(Featurizer):
    """Perceptual hash featurizer.

    Parameters
    ----------
    hash_size : int >= 8
        Side of the DCT block kept; the code has ``hash_size ** 2`` bits.
    """

    name = "image-phash"
    modality = "image"
    kind = "binary"
    metric = "hamming"
    codes_per_item = 2  # locator 0: whole picture, 1: content inside frames
    reads_turn = True

    def __init__(self, hash_size: int = 16):
        self.hash_size = hash_size

    @property
    def version(self) -> str:
        return f"phash-whole+trim-{self.hash_size}-v3"

    @property
    def dim(self) -> int:
        if self.hash_size < 8 or self.hash_size % 2:
            raise ParameterError(f"hash_size must be an even number >= 8, given {self.hash_size}")
        return self.hash_size * self.hash_size

    def informative(self, vectors: np.ndarray) -> np.ndarray:
        """Codes whose bits are balanced, bool ``[shape=(n,)]``.

        pHash sets a bit where a DCT coefficient exceeds their median, so a
        picture with detail sets about half of them; a flat picture (a plain
        rectangle) ties nearly all coefficients and sets almost none. Such
        codes collide across unrelated works and are no evidence.
        """
        ones = np.bitwise_count(np.asarray(vectors, dtype=np.uint8)).sum(axis=1)
        return np.abs(ones - self.dim / 2) <= self.dim * MAX_IMBALANCE

    def locator(self, query_row: int, ref_row: int) -> dict[str, Any]:
        views = ("whole picture", "content inside frames")
        return {"query_view": views[query_row], "ref_view": views[ref_row]}

    def _code(self, image: Image.Image, box: tuple[int, int, int, int]) -> np.ndarray:
        # imagehash resamples to 4 x hash_size with Lanczos, which is slow from
        # a large picture: a box reduction to twice that size first keeps the
        # hash and costs a fraction
        grey = image.crop(box).convert("L")
        factor = min(grey.width, grey.height) // (8 * self.hash_size)
        if factor > 1:
            grey = grey.reduce(factor)
        return np.packbits(imagehash.phash(grey, hash_size=self.hash_size).hash.reshape(-1))

    def prepare(self, image: Image.Image, content: Content | None = None) -> np.ndarray:
        """Packed codes of one RGB image: uint8 ``[shape=(2, dim // 8)]``.

        Row 0 hashes the whole picture, row 1 its content inside frames: for a
        picture leaning on a plain ground (a copy turned, its corners filled,
        :attr:`Content.turn`), the content set upright. An all-one-colour
        picture gets all-zero codes; it is judged featureless upstream and
        never flagged.
        """
        content = content or analyse(image)
        if content.box is None:
            return np.zeros((2, self.dim // 8), dtype=np.uint8)
        whole = self._code(image, (0, 0, image.width, image.height))
        flat = set_upright(image, content)
        inner = self._code(flat[0], flat[1].box) if flat else self._code(image, content.box)  # type: ignore[arg-type]
        return np.stack([whole, inner])

    def embed(self, prepared: Sequence[np.ndarray]) -> np.ndarray:
        """Stack prepared codes: uint8 ``[shape=(2 * n, dim // 8)]``, item-major."""
        if not prepared:
            return np.zeros((0, self.dim // 8), dtype=np.uint8)
        return np.ascontiguousarray(np.concatenate(prepared), dtype=np.uint8)

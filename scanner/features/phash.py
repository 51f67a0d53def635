"""``image-phash``: perceptual hashes (imagehash's DCT pHash) as packed bits.

The picture is first trimmed of uniform frames (:func:`trim_borders`), so a copy
with a border, or clip art on a different margin, hashes like the original.
Codes are 256 bits (``hash_size=16``), searched by Hamming distance in a faiss
binary index.
"""

from __future__ import annotations

from typing import Sequence

import imagehash
import numpy as np
from PIL import Image

from scanner.errors import ParameterError
from scanner.features.base import Featurizer
from scanner.features.content import trim_borders


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

    def __init__(self, hash_size: int = 16):
        self.hash_size = hash_size

    @property
    def version(self) -> str:
        return f"phash-trim-{self.hash_size}-v1"

    @property
    def dim(self) -> int:
        if self.hash_size < 8 or self.hash_size % 2:
            raise ParameterError(f"hash_size must be an even number >= 8, given {self.hash_size}")
        return self.hash_size * self.hash_size

    def prepare(self, image: Image.Image) -> np.ndarray:
        """Packed hash of one RGB image: uint8 ``[shape=(dim // 8,)]``.

        An all-one-colour picture gets the all-zero code; it is judged
        featureless upstream and never flagged.
        """
        trimmed = trim_borders(image)
        if trimmed is None:
            return np.zeros(self.dim // 8, dtype=np.uint8)
        bits = imagehash.phash(trimmed, hash_size=self.hash_size).hash
        return np.packbits(bits.reshape(-1))

    def embed(self, prepared: Sequence[np.ndarray]) -> np.ndarray:
        """Stack prepared codes: uint8 ``[shape=(n, dim // 8)]``."""
        if not prepared:
            return np.zeros((0, self.dim // 8), dtype=np.uint8)
        return np.ascontiguousarray(np.stack(prepared), dtype=np.uint8)

"""dlib's ResNet face descriptor, read from dlib's own model file and run with numpy.

The network is the one in ``dlib_face_recognition_resnet_model_v1.dat`` (dlib's
``dnn_face_recognition_ex.cpp``: a 29-layer ResNet on a 150-pixel aligned face chip,
average-pooled to 256 values and projected to 128). The prebuilt dlib wheel is built
without BLAS, and its own convolutions take about 90 ms a face on one core of a
2-core AVX2 machine; the same network as im2col and numpy's BLAS GEMM takes about
11 ms, with the same descriptors (to 1e-6; tested against dlib's
``compute_face_descriptor``). The weights are read from the installed file, never
copied; the file's sha256 stays the feature's model id.

The file is dlib's serialisation of the network: each layer writes its version
string (``con_4``, ``affine_``, ...) and then its fields, in order from the input to
the loss; tensors are 4 sizes and little-endian float32s (dlib ``tensor.h``),
integers a length byte and that many little-endian bytes (dlib ``serialize.h``).
Only the layers this network uses are read; anything else is refused.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.lib.stride_tricks import as_strided

from scanner.errors import ModelError

#: The chip the network takes: side in pixels, and dlib's padding around the aligned face
#: (``dlib.get_face_chips``' defaults, which ``compute_face_descriptor`` uses).
CHIP_SIDE = 150
CHIP_PADDING = 0.25

# a layer's version string as dlib writes it: one length byte, then the name
_LAYER = re.compile(rb"\x01([\x03-\x20])(input_rgb_image_sized|con_4|affine_|relu_|max_pool_2|avg_pool_2|"
                    rb"add_prev_|fc_2)")


class _Reader:
    """dlib's serialised fields, read in order from ``pos``."""

    def __init__(self, data: bytes, pos: int) -> None:
        self.data, self.pos = data, pos

    def int(self) -> int:
        head = self.data[self.pos]
        n = head & 0x0F
        value = int.from_bytes(self.data[self.pos + 1:self.pos + 1 + n], "little")
        self.pos += 1 + n
        return -value if head & 0x80 else value

    def float(self) -> float:
        # dlib's portable float: an integer mantissa and a power-of-two exponent
        mantissa, exponent = self.int(), self.int()
        return float(np.ldexp(float(mantissa), exponent))

    def tensor(self) -> np.ndarray:
        if self.int() != 2:
            raise ValueError("a tensor of an unknown version")
        shape = [self.int() for _ in range(4)]
        values = np.frombuffer(self.data, "<f4", int(np.prod(shape)), self.pos)
        self.pos += values.nbytes
        return values.astype(np.float32)

    def alias(self) -> list[int]:
        if self.int() != 1:
            raise ValueError("an alias tensor of an unknown version")
        return [self.int() for _ in range(4)]


@dataclass(frozen=True)
class _Conv:
    """A convolution with the affine layer after it folded in: ``weights`` ``(k*k*C, F)``
    ordered (row, column, channel) as :func:`_windows` lays a window out."""

    weights: np.ndarray
    bias: np.ndarray
    size: int
    stride: int
    padding: int


def _layers(data: bytes) -> list[tuple[str, dict]]:
    """The layers of a serialised dlib network, input first, with their parameters."""
    out: list[tuple[str, dict]] = []
    end = 0
    for m in _LAYER.finditer(data):
        if m.group(1)[0] != len(m.group(2)) or m.start() < end:
            continue
        name, r = m.group(2).decode(), _Reader(data, m.end())
        if name == "input_rgb_image_sized":
            mean = [r.float() for _ in range(3)]
            out.append(("input", {"mean": np.float32(mean), "side": (r.int(), r.int())}))
        elif name == "con_4":
            params = r.tensor()
            n_filters, rows, cols, stride, _, padding, _ = (r.int() for _ in range(7))
            channels = r.alias()[1]
            r.alias()
            size = n_filters * channels * rows * cols
            if rows != cols or len(params) != size + n_filters:
                raise ValueError(f"a convolution of {len(params)} values for {n_filters}x{channels}x{rows}x{cols}")
            w = params[:size].reshape(n_filters, channels, rows, cols)
            out.append(("con", {"w": w, "b": params[size:], "stride": stride, "padding": padding}))
        elif name == "affine_":
            params = r.tensor()
            r.alias(), r.alias()
            k = len(params) // 2
            out.append(("affine", {"gamma": params[:k], "beta": params[k:], "mode": r.int()}))
        elif name in ("max_pool_2", "avg_pool_2"):
            rows, _, stride, _, padding, _ = (r.int() for _ in range(6))
            out.append((name[:3], {"size": rows, "stride": stride, "padding": padding}))
        elif name == "fc_2":
            n_out, n_in = r.int(), r.int()
            out.append(("fc", {"w": r.tensor().reshape(n_in, n_out)}))
        else:
            out.append(({"relu_": "relu", "add_prev_": "add"}[name], {}))
        end = r.pos
    return out


class Network:
    """dlib's face descriptor network, numpy arrays read from its model file.

    Parameters
    ----------
    path : the ``dlib_face_recognition_resnet_model_v1.dat`` file

    Raises
    ------
    ModelError : the file is not that network (naming the file and what was found)
    """

    def __init__(self, path: Path) -> None:
        try:
            layers = _layers(path.read_bytes())
            self._program, self._mean, self._side = _compile(layers)
        except (OSError, ValueError, IndexError, KeyError) as e:
            raise ModelError(f"{path}: not dlib's ResNet face descriptor as this version reads it ({e})") from e

    def __call__(self, chips: np.ndarray) -> np.ndarray:
        """128-d descriptors of aligned face chips.

        Parameters
        ----------
        chips : uint8 ``[shape=(n, 150, 150, 3)]``, RGB, as ``dlib.get_face_chips`` cuts them

        Returns
        -------
        float32 ``[shape=(n, 128)]``, the same vectors as dlib's ``compute_face_descriptor``
        (Euclidean distance 0.6 separates people at dlib's operating point)
        """
        if chips.shape[1:] != (*self._side, 3):
            raise ValueError(f"face chips must be {self._side[0]}x{self._side[1]} RGB, got {chips.shape[1:]}")
        if not len(chips):
            return np.zeros((0, 128), np.float32)
        # dlib's input layer: each channel less its mean, over 256
        x = (chips.astype(np.float32) - self._mean) * np.float32(1 / 256)
        block_in = x
        shortcut = None
        for op, arg in self._program:
            if op == "con":
                x = _convolve(x, arg)
            elif op == "relu":
                np.maximum(x, 0, out=x)
            elif op == "max":
                x = block_in = _pooled(x, arg, np.max)
            elif op == "shortcut":   # a block that halves: its input average-pooled (dlib's skip1 + avg_pool)
                shortcut = _pooled(block_in, arg, np.mean)
            elif op == "add":
                x = _added(x, block_in if shortcut is None else shortcut)
                shortcut = None
            elif op == "block":      # the relu after an add: the next block's input
                np.maximum(x, 0, out=x)
                block_in = x
            elif op == "mean":
                x = x.mean(axis=(1, 2))
            elif op == "fc":
                x = x @ arg
        return np.ascontiguousarray(x, np.float32)


def _compile(layers: list[tuple[str, dict]]) -> tuple[list[tuple[str, object]], np.ndarray, tuple[int, int]]:
    """The layers as a program for :meth:`Network.__call__`: each convolution with its affine
    layer folded in, the residual blocks' shortcuts named. Raises ValueError where the layers
    are not that network's pattern."""
    if not layers or layers[0][0] != "input" or layers[-1][0] != "fc":
        raise ValueError("no input layer first or no fully connected layer last")
    kinds = [k for k, _ in layers]
    if kinds.count("con") != 29 or layers[-1][1]["w"].shape != (256, 128):
        raise ValueError(f"{kinds.count('con')} convolutions and a {layers[-1][1]['w'].shape} projection")
    program: list[tuple[str, object]] = []
    i = 1
    while i < len(layers) - 1:
        kind, p = layers[i]
        if kind == "con":
            nxt, a = layers[i + 1]
            if nxt != "affine" or a["mode"] != 0:
                raise ValueError(f"layer {i + 1}: a convolution not followed by a per-channel affine layer")
            w, gamma = p["w"], a["gamma"]
            n_filters, channels, k, _ = w.shape
            folded = (w * gamma[:, None, None, None]).transpose(2, 3, 1, 0).reshape(k * k * channels, n_filters)
            program.append(("con", _Conv(np.ascontiguousarray(folded, np.float32),
                                         (p["b"] * gamma + a["beta"]).astype(np.float32), k, p["stride"], p["padding"])))
            i += 2
            continue
        if kind == "relu":
            program.append(("block" if program and program[-1][0] == "add" else "relu", None))
        elif kind in ("max", "avg"):
            if p["padding"]:
                raise ValueError(f"layer {i}: a padded pooling")
            if kind == "avg" and p["size"] == 0:
                program.append(("mean", None))
            else:
                program.append(("max" if kind == "max" else "shortcut", (p["size"], p["stride"])))
        elif kind == "add":
            program.append(("add", None))
        else:
            raise ValueError(f"layer {i}: an unexpected {kind} layer")
        i += 1
    program.append(("fc", np.ascontiguousarray(layers[-1][1]["w"])))
    return program, layers[0][1]["mean"], tuple(layers[0][1]["side"])


def _windows(x: np.ndarray, size: int, stride: int) -> np.ndarray:
    """Every ``size`` x ``size`` window of NHWC ``x`` at ``stride``, a view
    ``[shape=(n, Ho, Wo, size, size, C)]`` (dlib's output side: ``(H - size) // stride + 1``)."""
    n, h, w, c = x.shape
    sn, sh, sw, sc = x.strides
    return as_strided(x, (n, (h - size) // stride + 1, (w - size) // stride + 1, size, size, c),
                      (sn, sh * stride, sw * stride, sh, sw, sc), writeable=False)


def _convolve(x: np.ndarray, conv: _Conv) -> np.ndarray:
    """A convolution (dlib's cross-correlation) of NHWC ``x`` as one GEMM over its windows."""
    if conv.padding:
        p = conv.padding
        x = np.pad(x, ((0, 0), (p, p), (p, p), (0, 0)))
    win = _windows(x, conv.size, conv.stride)
    n, ho, wo = win.shape[:3]
    y = win.reshape(n * ho * wo, -1) @ conv.weights
    y += conv.bias
    return y.reshape(n, ho, wo, -1)


def _pooled(x: np.ndarray, arg: tuple[int, int], reduce: object) -> np.ndarray:
    size, stride = arg
    return reduce(_windows(x, size, stride), axis=(3, 4))  # type: ignore[operator]


def _added(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """dlib's add_prev: where the two differ in size, the smaller is zero beyond its edge
    (top-left aligned), so a block that halves a 4-pixel side to 3 adds onto 4."""
    if a.shape == b.shape:
        return a + b
    out = np.zeros(np.maximum(a.shape, b.shape), np.float32)
    out[tuple(slice(0, s) for s in a.shape)] += a
    out[tuple(slice(0, s) for s in b.shape)] += b
    return out

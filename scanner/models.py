"""Model checkpoints on disk: the ``models/`` registry, verification and the one download.

Scanning never touches the network. Weights reach ``models/`` in one of two ways:

* ``likeness models fetch`` (:func:`fetch`) downloads an open_clip pretrained tag on a
  connected machine; the folder can then be copied to the closed one;
* ``likeness models import PATH`` (:func:`import_checkpoint`) registers a checkpoint
  brought in by hand.

Either way the file is recorded in ``<models_dir>/registry.json`` with its sha256,
and :func:`resolve_checkpoint` checks that hash before anything is deserialised, so
a truncated copy or a swapped file is caught before it reaches ``torch.load``.

This module imports neither torch nor open_clip at import time (only :func:`fetch`
does, when called), so the CLI starts fast.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator

from scanner.errors import ModelError, ParameterError
from scanner.media import sha256_file

LOG = logging.getLogger(__name__)

#: Environment variable that moves the models folder (default ``./models``).
MODELS_DIR_ENV = "LIKENESS_MODELS_DIR"
#: Name of the registry file inside the models folder.
REGISTRY_NAME = "registry.json"
#: Format version of ``registry.json``; a newer one is refused rather than misread.
REGISTRY_FORMAT = 1
#: Suffixes a checkpoint file may have; ``.safetensors`` is read without pickle at all,
#: the others with ``torch.load(weights_only=True)``.
CHECKPOINT_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin", ".ckpt")

_CHUNK = 1 << 20  # 1 MiB reads: large enough for throughput, small enough for memory


_FILE_SHA: dict[str, str] = {}


def package_folder(module: str) -> Path | None:
    """Where an installed package that ships model files lives, found without importing it (some
    import helpers that are gone from new environments, ``pkg_resources``); None when absent."""
    import importlib.util

    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def file_sha256(path: Path) -> str:
    """sha256 of a model file (hex), computed once per process (an index records it; a scan checks it)."""
    key = str(path)
    if key not in _FILE_SHA:
        _FILE_SHA[key] = sha256_file(path)
    return _FILE_SHA[key]


def default_models_dir() -> Path:
    """Folder holding checkpoints and ``registry.json``.

    Returns
    -------
    Path
        ``$LIKENESS_MODELS_DIR`` when set and non-empty, else ``models`` (relative to
        the working directory, the project's top-level ``models/``).
    """
    env = os.environ.get(MODELS_DIR_ENV, "").strip()
    return Path(env) if env else Path("models")


def set_offline() -> None:
    """Tell the hub libraries never to reach the network.

    Sets ``HF_HUB_OFFLINE``, ``TRANSFORMERS_OFFLINE`` and ``HF_DATASETS_OFFLINE`` to
    ``1``. huggingface_hub reads these when it is first imported, so scanning paths
    call this before importing open_clip (which imports huggingface_hub). Only
    :func:`fetch` is meant to run without it.
    """
    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
        os.environ[name] = "1"


# --------------------------------------------------------------------------- registry


def _registry_path(models_dir: Path) -> Path:
    return Path(models_dir) / REGISTRY_NAME


def _read_registry(models_dir: Path) -> list[dict[str, Any]]:
    path = _registry_path(models_dir)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return []
    except OSError as e:
        raise ModelError(f"{path}: cannot read the model registry ({e.strerror or e})") from e
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise ModelError(f"{path}: model registry is not valid JSON ({e})") from e
    if not isinstance(data, dict) or not isinstance(data.get("models"), list):
        raise ModelError(f"{path}: model registry has no 'models' list")
    fmt = data.get("format")
    if not isinstance(fmt, int) or fmt > REGISTRY_FORMAT:
        raise ModelError(
            f"{path}: model registry format {fmt!r} is newer than this likeness "
            f"understands ({REGISTRY_FORMAT}); upgrade likeness"
        )
    return [dict(e) for e in data["models"] if isinstance(e, dict)]


def _write_registry(models_dir: Path, entries: list[dict[str, Any]]) -> None:
    # tmp + os.replace so a reader never sees half a file and a crash keeps the old one
    path = _registry_path(models_dir)
    payload = json.dumps({"format": REGISTRY_FORMAT, "models": entries}, indent=2, sort_keys=True)
    fd, tmp = tempfile.mkstemp(prefix=".registry-", suffix=".tmp", dir=models_dir)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(payload + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def _registry_lock(models_dir: Path) -> Iterator[None]:
    """Serialise read-modify-write of the registry between processes (POSIX flock)."""
    lock_path = Path(models_dir) / ".registry.lock"
    with open(lock_path, "a+b") as f:
        try:
            import fcntl
        except ImportError:  # Windows: no flock; concurrent imports there are the user's risk
            yield
            return
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def list_models(models_dir: str | Path | None = None) -> list[dict[str, Any]]:
    """Checkpoints registered in ``<models_dir>/registry.json``.

    Parameters
    ----------
    models_dir : str or Path, optional
        Defaults to :func:`default_models_dir`.

    Returns
    -------
    list of dict
        One dict per checkpoint with keys ``model`` (open_clip architecture name),
        ``pretrained`` (tag or ``None``), ``file`` (name inside ``models_dir``),
        ``sha256``, ``size`` (bytes), ``added_at`` (ISO 8601, UTC) and ``source``
        (URL, hub id or the path it was imported from). Empty if there is no registry.

    Raises
    ------
    ModelError
        If the registry exists but is damaged or of a newer format.
    """
    models_dir = Path(models_dir) if models_dir is not None else default_models_dir()
    return _read_registry(models_dir)


def _safe_name(text: str) -> str:
    """File-name-safe rendering of a model name or tag (no separators, no dots first)."""
    return re.sub(r"[^A-Za-z0-9_.+-]+", "_", text).lstrip(".") or "x"


def import_checkpoint(
    path: str | Path,
    *,
    model: str,
    tag: str | None = None,
    models_dir: str | Path | None = None,
    source: str | None = None,
) -> dict[str, Any]:
    """Copy a checkpoint into ``models_dir`` and register it with its sha256.

    The copy is hashed while it is written and moved into place with
    ``os.replace``, so a killed import leaves no half-written checkpoint behind.
    Importing the same bytes for the same model and tag again is a no-op; importing
    different bytes under an existing (model, tag) replaces that entry.

    Parameters
    ----------
    path : str or Path
        Checkpoint file (``.safetensors``, ``.pt``, ``.pth``, ``.bin`` or ``.ckpt``).
    model : str
        open_clip architecture name the weights belong to (``ViT-B-32``).
    tag : str, optional
        Pretrained tag to file it under (``laion2b_s34b_b79k``), so scans can name it
        with ``--clip-pretrained TAG``; without one it is found by path or sha256.
    models_dir : str or Path, optional
        Defaults to :func:`default_models_dir`; created if missing.
    source : str, optional
        Where it came from, recorded as is; defaults to the absolute source path.

    Returns
    -------
    dict
        The registry entry (see :func:`list_models`).

    Raises
    ------
    ParameterError
        If ``path`` is not a file, has an unknown suffix, or ``model`` is empty.
    ModelError
        If the copy cannot be written or the registry is damaged.
    """
    src = Path(path)
    if not src.is_file():
        raise ParameterError(f"{src}: no such checkpoint file")
    suffix = src.suffix.lower()
    if suffix not in CHECKPOINT_SUFFIXES:
        raise ParameterError(
            f"{src}: unknown checkpoint suffix {suffix!r}; expected one of "
            f"{', '.join(CHECKPOINT_SUFFIXES)}"
        )
    if not model or not model.strip():
        raise ParameterError(f"model name must not be empty, given model={model!r}")
    models_dir = Path(models_dir) if models_dir is not None else default_models_dir()
    try:
        models_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ModelError(f"{models_dir}: cannot create the models folder ({e.strerror or e})") from e

    fd, tmp = tempfile.mkstemp(prefix=".import-", suffix=suffix, dir=models_dir)
    try:
        h = hashlib.sha256()
        size = 0
        with open(src, "rb") as fin, os.fdopen(fd, "wb") as fout:
            while chunk := fin.read(_CHUNK):
                h.update(chunk)
                size += len(chunk)
                fout.write(chunk)
            fout.flush()
            os.fsync(fout.fileno())
        sha = h.hexdigest()

        with _registry_lock(models_dir):
            entries = _read_registry(models_dir)
            for e in entries:
                if e.get("model") == model and e.get("pretrained") == tag and e.get("sha256") == sha:
                    if (models_dir / e["file"]).is_file():
                        os.unlink(tmp)
                        return dict(e)
            stem = _safe_name(model) + "." + (_safe_name(tag) if tag else f"sha256-{sha[:16]}")
            name = stem + suffix
            taken = {e.get("file") for e in entries if not (e.get("model") == model and e.get("pretrained") == tag)}
            if name in taken:  # another entry owns that file name: keep both apart
                name = f"{stem}.{sha[:16]}{suffix}"
            os.replace(tmp, models_dir / name)
            entry = {
                "model": model,
                "pretrained": tag,
                "file": name,
                "sha256": sha,
                "size": size,
                "added_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                "source": source if source is not None else str(src.resolve()),
            }
            old = [e for e in entries if e.get("model") == model and e.get("pretrained") == tag]
            kept = [e for e in entries if e not in old]
            _write_registry(models_dir, kept + [entry])
            for e in old:  # a replaced checkpoint's file goes too, unless still referenced
                if e.get("file") != name and e.get("file") not in {k.get("file") for k in kept}:
                    with contextlib.suppress(OSError):
                        (models_dir / e["file"]).unlink()
        LOG.info("registered %s (%s) as %s, sha256 %s", model, tag, name, sha)
        return entry
    except OSError as e:
        raise ModelError(f"{src}: cannot import into {models_dir} ({e.strerror or e})") from e
    finally:
        with contextlib.suppress(OSError):
            os.unlink(tmp)


def fetch(model: str, tag: str, *, models_dir: str | Path | None = None) -> dict[str, Any]:
    """Download an open_clip pretrained tag into ``models_dir`` and register it.

    This is the only function in likeness that uses the network. It uses open_clip's
    own download helpers (Hugging Face hub or the tag's URL), downloading into a
    temporary folder inside ``models_dir`` which is removed afterwards.

    Parameters
    ----------
    model : str
        open_clip architecture name (``ViT-B-32``).
    tag : str
        open_clip pretrained tag for that architecture (``laion2b_s34b_b79k``).
    models_dir : str or Path, optional
        Defaults to :func:`default_models_dir`.

    Returns
    -------
    dict
        The registry entry (see :func:`list_models`).

    Raises
    ------
    ParameterError
        If open_clip knows no such model or tag.
    ModelError
        If the download fails (no network, hub set offline, disk full, ...).
    """
    models_dir = Path(models_dir) if models_dir is not None else default_models_dir()
    import open_clip  # heavy; only this command needs it here

    cfg = open_clip.get_pretrained_cfg(model, tag)
    if not cfg:
        known = open_clip.list_pretrained_tags_by_model(model)
        if not known:
            raise ParameterError(f"open_clip has no pretrained weights for model {model!r}")
        raise ParameterError(
            f"open_clip has no pretrained tag {tag!r} for model {model!r}; known: {', '.join(known)}"
        )
    source = cfg.get("hf_hub") or cfg.get("url") or ""
    try:
        models_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix=".fetch-", dir=models_dir) as tmp:
            try:
                downloaded = open_clip.download_pretrained(cfg, cache_dir=tmp)
            except Exception as e:  # hub, HTTP and offline errors come in many classes
                offline = os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0")
                hint = " (HF_HUB_OFFLINE is set in this environment; unset it for this command)" if offline else ""
                raise ModelError(
                    f"could not download {model} weights {tag!r} from {source or 'open_clip'}: {e}. "
                    f"`likeness models fetch` needs network access{hint}; run it on a connected "
                    f"machine and copy its models/ folder here, or import a checkpoint file with "
                    f"`likeness models import PATH --model {model}`."
                ) from e
            if not downloaded or not Path(downloaded).is_file():
                raise ModelError(f"open_clip returned no file for {model} {tag!r} from {source}")
            # hub downloads are symlinks into a blob store; copy the real bytes
            real = Path(downloaded).resolve()
            suffix = Path(downloaded).suffix or real.suffix or ".bin"
            staged = Path(tmp) / f"download{suffix}"
            if real != staged:
                shutil.copyfile(real, staged)
            return import_checkpoint(staged, model=model, tag=tag, models_dir=models_dir, source=source)
    except OSError as e:
        raise ModelError(f"{models_dir}: cannot store downloaded weights ({e.strerror or e})") from e


# --------------------------------------------------------------------------- resolving


def _looks_like_path(text: str) -> bool:
    return (
        os.sep in text
        or (os.altsep is not None and os.altsep in text)
        or text.startswith(("~", "."))
        or text.lower().endswith(CHECKPOINT_SUFFIXES)
    )


def missing_weights_message(model: str, pretrained: str | None, models_dir: Path, detail: str) -> str:
    """The one paragraph shown when CLIP weights are not available.

    Parameters
    ----------
    model : str
        Architecture name.
    pretrained : str or None
        Tag that was asked for (``None`` to show a placeholder).
    models_dir : Path
        Folder that was searched.
    detail : str
        What exactly is missing, without a trailing full stop.

    Returns
    -------
    str
        One paragraph naming every remedy.
    """
    tag = pretrained or "TAG"
    return (
        f"{detail}. likeness never downloads while scanning. Remedies: on a machine with "
        f"network access run `likeness models fetch --model {model} --pretrained {tag}` and "
        f"copy its {models_dir}/ folder here (or point {MODELS_DIR_ENV} at the copy); or pass "
        f"`--clip-pretrained PATH` with a local checkpoint file (optionally registered once "
        f"with `likeness models import PATH --model {model}`); or leave CLIP out and use the "
        f"weight-free features (`--features image-phash`)."
    )


def resolve_checkpoint(
    model: str,
    pretrained: str | os.PathLike[str],
    *,
    models_dir: str | Path | None = None,
) -> tuple[Path, str]:
    """Find the checkpoint file for ``(model, pretrained)`` and verify its sha256.

    Parameters
    ----------
    model : str
        open_clip architecture name (for a config file, its stem).
    pretrained : str or path-like
        Either a path to a checkpoint file, or a pretrained tag registered in
        ``models_dir``. A path's sha256 is computed; if the file is one of the
        registered copies in ``models_dir`` it must match the registry. A tag's
        file is hashed and compared with the registry before it is returned.
    models_dir : str or Path, optional
        Defaults to :func:`default_models_dir`.

    Returns
    -------
    file : Path
        The checkpoint file, verified.
    sha256 : str
        Its hex sha256.

    Raises
    ------
    ModelError
        If the weights are missing (one paragraph naming the remedies), or a file
        does not match its registered sha256 ("checksum mismatch").
    """
    models_dir = Path(models_dir) if models_dir is not None else default_models_dir()
    text = os.fspath(pretrained)
    candidate = Path(text).expanduser()

    if candidate.is_file():
        sha = sha256_file(candidate)
        # a copy living in models_dir is held to what the registry recorded for it
        try:
            in_models_dir = candidate.resolve().parent == models_dir.resolve()
        except OSError:
            in_models_dir = False
        if in_models_dir:
            for e in _read_registry(models_dir):
                if e.get("file") == candidate.name and e.get("sha256") != sha:
                    raise ModelError(
                        f"{candidate}: checksum mismatch: sha256 {sha} but {_registry_path(models_dir)} "
                        f"records {e.get('sha256')}; the file was changed or damaged after it was "
                        f"registered; fetch or import it again"
                    )
        return candidate, sha

    if _looks_like_path(text):
        raise ModelError(missing_weights_message(model, None, models_dir, f"checkpoint file {text} does not exist"))

    entries = _read_registry(models_dir)
    matches = [e for e in entries if e.get("model") == model and e.get("pretrained") == text]
    if not matches:
        have = sorted({str(e.get("pretrained")) for e in entries if e.get("model") == model and e.get("pretrained")})
        where = f"{_registry_path(models_dir)} has " + (
            f"only {', '.join(have)} for {model}" if have else f"no checkpoint for {model}"
        )
        raise ModelError(
            missing_weights_message(
                model, text, models_dir, f"no {model} weights with pretrained tag {text!r} are installed ({where})"
            )
        )
    entry = matches[-1]  # the latest import wins if an old registry holds duplicates
    file = models_dir / str(entry.get("file", ""))
    if not file.is_file():
        raise ModelError(
            missing_weights_message(
                model, text, models_dir, f"{file} is registered for {model} {text!r} but the file is missing"
            )
        )
    sha = sha256_file(file)
    if sha != entry.get("sha256"):
        raise ModelError(
            f"{file}: checksum mismatch: sha256 {sha} but {_registry_path(models_dir)} records "
            f"{entry.get('sha256')} for {model} {text!r}; the file was changed or damaged after it was "
            f"registered; run `likeness models fetch --model {model} --pretrained {text}` again or "
            f"re-import the original file"
        )
    return file, sha


def find_by_sha256(sha256: str, *, models_dir: str | Path | None = None) -> dict[str, Any] | None:
    """Registry entry whose file has this sha256, if any (latest import first).

    Parameters
    ----------
    sha256 : str
        Hex digest.
    models_dir : str or Path, optional
        Defaults to :func:`default_models_dir`.

    Returns
    -------
    dict or None
    """
    models_dir = Path(models_dir) if models_dir is not None else default_models_dir()
    for e in reversed(_read_registry(models_dir)):
        if e.get("sha256") == sha256:
            return dict(e)
    return None

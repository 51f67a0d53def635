"""Builds and scans on a Ray cluster (``--engine ray``), through the same pipeline.

Ray Data streams the inputs through pools of actors, each calling the same
:mod:`scanner.pipeline` functions as the local engine::

    inputs ─▶ decode actors (CPU): pipeline.prepare_one: decoding, per-item features
           ─▶ embed actors (GPU where the cluster has GPUs; only for features with a model,
              image-clip): pipeline.embed_ahead
           ─▶ judge actors: a pipeline.Scanner, the index opened once per actor
              (large vector files memory-mapped: the page cache is shared by a node's actors)
           ─▶ this process: results.jsonl, CSV, run.json and the report, written by pipeline.scan

An index build runs the decode and embed stages on the cluster and writes one
index here, through the same atomic store (:func:`scanner.pipeline.build_index`).

Faults: Ray Data restarts a dead actor and retries its batches; every input
carries its position, and this process writes each position once, so a
worker killed mid-scan loses and duplicates nothing. A killed scan resumes
with ``--resume`` as a local one does.

Privacy (README: "Scanning on a Ray cluster"): usage statistics are off for a
cluster this engine starts; its temporary folder (logs, sockets) and its
object spilling live in a private folder removed when the run ends. A cluster
started elsewhere (``--address``) must be started the same way (``ray start
... --system-config`` / ``RAY_USAGE_STATS_ENABLED=0``); the engine refuses one
that reports usage statistics.

Inputs, the index and model checkpoints must be readable at the same paths
on every node (a shared file system), and every node runs the same likeness.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from scanner import __version__, media, pipeline
from scanner.errors import LikenessError, ParameterError
from scanner.features import Featurizer, make
from scanner.index import store

#: Items decoded per task (as the local engine's decode chunks).
DECODE_BATCH = 16
#: Items per embed and judge batch when the inputs include videos.
VIDEO_BATCH = 4
#: Test hook: ``stage:marker`` kills (SIGKILL) the worker of that stage
#: (``decode``, ``embed`` or ``judge``) on its first batch, once: the marker
#: file, created then, stops it from firing again after the restart.
KILL_ENV = "LIKENESS_RAY_KILL_ONCE"


def _kill_once(stage: str) -> None:
    spec = os.environ.get(KILL_ENV, "")
    want, _, marker = spec.partition(":")
    if want != stage or not marker:
        return
    try:
        os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        return
    os.kill(os.getpid(), signal.SIGKILL)


def _same_version(version: str) -> None:
    if version != __version__:
        raise LikenessError(f"this Ray worker runs likeness {__version__}, the driver {version}: "
                            f"install the same likeness on every node")


#: How a worker makes featurizers again: an index's own (a scan), or
#: ``(name, constructor arguments)`` pairs (a build: the driver's featurizers).
Recipe = tuple[str, pipeline.FeatureOptions] | list[tuple[str, dict[str, Any]]]


def recipe(featurizers: Sequence[Featurizer]) -> list[tuple[str, dict[str, Any]]]:
    """Featurizers as names and constructor arguments (a model is loaded again where it runs, never shipped)."""
    return [(f.name, getattr(f, "get_params", dict)()) for f in featurizers]


def _featurizers(how: Recipe) -> list[Featurizer]:
    if isinstance(how, tuple):
        index_dir, options = how
        return pipeline.features_for_index(store.open_index(index_dir, verify=False), options)
    return [make(name, **params) for name, params in how]


class _Decode:
    """Decode actor: one input at a time, as a local decode worker does."""

    def __init__(self, how: Recipe, reference: bool, version: str) -> None:
        _same_version(version)
        self.featurizers = _featurizers(how)
        self.reference = reference

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        _kill_once("decode")
        prepared = [pipeline.prepare_one(media.Input(Path(os.fsdecode(bytes(p))), str(m)),
                                          self.featurizers, self.reference)
                    for p, m in zip(batch["path"], batch["modality"])]
        return {"i": batch["i"], "prepared": _objects(prepared)}


class _Embed:
    """Embed actor: the model features of a batch (on its GPU when it has one)."""

    def __init__(self, how: Recipe, version: str) -> None:
        _same_version(version)
        self.featurizers = [f for f in _featurizers(how) if f.embeds_with_model]

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        _kill_once("embed")
        prepared = _unwrap(batch["prepared"])
        pipeline.embed_ahead(prepared, self.featurizers)
        return {"i": batch["i"], "prepared": _objects(prepared)}


class _Judge:
    """Judge actor: search, match and decide with a :class:`pipeline.Scanner` opened once."""

    def __init__(self, index_dir: str, scanner_kwargs: dict[str, Any], version: str) -> None:
        _same_version(version)
        self.scanner = pipeline.Scanner(index_dir, **scanner_kwargs)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        _kill_once("judge")
        results = self.scanner.judge(_unwrap(batch["prepared"]))
        return {"i": batch["i"], "result": _objects(results)}


class _Cargo:
    """One item between stages, with a constant repr.

    Ray Data formats a column of Python objects as text while converting it
    (``str`` of the whole array, every dataclass and array in it): ten times
    the decoding's own CPU time. The wrapper keeps that text short.
    """

    __slots__ = ("obj",)

    def __init__(self, obj: Any) -> None:
        self.obj = obj

    def __repr__(self) -> str:
        return "<likeness item>"


def _objects(items: Sequence[Any]) -> np.ndarray:
    out = np.empty(len(items), dtype=object)
    out[:] = [_Cargo(x) for x in items]
    return out


def _unwrap(column: np.ndarray) -> list[Any]:
    return [c.obj for c in column]


def _cause(exc: BaseException) -> BaseException:
    """The error raised inside a Ray worker, out of Ray's wrappers."""
    seen = set()
    while id(exc) not in seen:
        seen.add(id(exc))
        inner = getattr(exc, "cause", None) or exc.__cause__
        if not isinstance(inner, BaseException):
            break
        exc = inner
    return exc


def _private_dir() -> Path:
    """A private folder for a cluster's temporary files, short enough for Ray's socket paths.

    Ray puts Unix sockets about 70 characters below its temporary folder, and a
    socket path may not exceed 107 bytes: a deep ``TMPDIR`` falls back to ``/tmp``.
    """
    parent = tempfile.gettempdir()
    if len(parent) > 24 and os.path.isdir("/tmp"):
        parent = "/tmp"
    return Path(tempfile.mkdtemp(prefix="likeness-ray-", dir=parent))


def _reachable(address: str) -> None:
    """Fail at once, clearly, when nothing listens at ``HOST:PORT`` (Ray itself retries for minutes)."""
    host, sep, port = address.rpartition(":")
    if address == "auto" or not sep or not port.isdigit() or "://" in address:
        return
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=10).close()
    except OSError as exc:
        raise ParameterError(f"cannot join the Ray cluster at {address}: {exc.strerror or exc}") from None


def _token_auth_if_available() -> None:
    """Join a token-protected cluster (Ray's default) with this machine's token, as ``ray start`` does."""
    if "RAY_AUTH_MODE" in os.environ:
        return
    path = os.environ.get("RAY_AUTH_TOKEN_PATH") or os.path.join(os.path.expanduser("~"), ".ray", "auth_token")
    if os.environ.get("RAY_AUTH_TOKEN") or os.path.isfile(path):
        os.environ["RAY_AUTH_MODE"] = "token"


class _CoreLog:
    """Ray's C++ core writes its log lines straight to file descriptor 2; send them to a file.

    Python's ``sys.stderr`` (likeness's progress bar and messages) is moved to
    a copy of the terminal's descriptor, so only Ray's own lines go to the
    file. The file is removed when the engine closes unless the run failed
    (:meth:`keep`).
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._saved: int | None = None
        self._keep = False
        try:
            sys.stderr.flush()
            self._saved = os.dup(2)
            fd = os.open(path, os.O_WRONLY | os.O_APPEND)
            os.dup2(fd, 2)
            os.close(fd)
            self._python = sys.stderr
            sys.stderr = os.fdopen(os.dup(self._saved), "w", buffering=1, errors="backslashreplace")
        except (OSError, ValueError, AttributeError):  # no descriptor 2 (embedded): leave it be
            self._saved = None

    def keep(self) -> Path:
        self._keep = True
        return self.path

    def close(self) -> None:
        if self._saved is not None:
            sys.stderr.flush()
            sys.stderr.close()
            sys.stderr = self._python
            os.dup2(self._saved, 2)
            os.close(self._saved)
            self._saved = None
        if not self._keep:
            self.path.unlink(missing_ok=True)


class RayEngine:
    """Run the pipeline's decode, embed and judge stages on a Ray cluster.

    Parameters
    ----------
    address : ``None`` starts a private single-machine cluster for this run;
        ``"auto"`` joins the cluster started on this machine (``ray start``);
        ``"HOST:PORT"`` joins that cluster
    workers : decode actors at most (default: the cluster's CPUs less those
        the other stages take)
    judges : judge actors, each holding the index (default: one per node)
    num_cpus : CPUs of a private cluster (default: this machine's)
    scratch : folder for a private cluster's object spilling (default: a
        private temporary folder); removed when the engine closes

    Use as a context manager, or call :meth:`close`.
    """

    name = "ray"

    def __init__(self, address: str | None = None, *, workers: int | None = None, judges: int | None = None,
                 num_cpus: int | None = None, scratch: str | Path | None = None) -> None:
        if workers is not None and workers < 1:
            raise ParameterError(f"--workers must be at least 1, given {workers}")
        os.environ["RAY_USAGE_STATS_ENABLED"] = "0"  # before ray is imported: no usage report, ever
        if address is not None:
            _token_auth_if_available()  # read when ray is imported, too
        try:
            import ray
        except ImportError:
            raise ParameterError("--engine ray needs Ray: pip install 'likeness-scanner[ray]'") from None
        self.ray = ray
        self.address = address
        self.workers, self.judges = workers, judges
        self._private: Path | None = _private_dir() if address is None else None
        self.plan: dict[str, Any] = {}
        self._stderr = _CoreLog(Path(tempfile.mkstemp(prefix="likeness-ray-", suffix=".log")[1]))
        self._owns = False
        env = {k: v for k, v in os.environ.items() if k.startswith("LIKENESS_")}
        runtime_env = {"env_vars": env} if env else None
        quiet = dict(log_to_driver=False, configure_logging=True, logging_level=logging.ERROR,
                     runtime_env=runtime_env)
        try:  # a failed start leaves nothing behind: its log, temporary folder, descriptor 2
            if not ray.is_initialized():
                if self._private is not None:
                    # Ray lowers its workers' priority (nice 15) below its own daemons; on a
                    # shared machine they would then wait behind every other job, while the
                    # local engine's workers do not: a private cluster's workers are this scan's
                    os.environ.setdefault("RAY_worker_niceness", "0")
                    spill = Path(scratch) if scratch is not None else self._private / "spill"
                    spill.mkdir(parents=True, exist_ok=True)
                    self._spill = spill
                    try:
                        ray.init(address="local", num_cpus=num_cpus or len(os.sched_getaffinity(0)),
                                 include_dashboard=False, _temp_dir=str(self._private / "tmp"),
                                 object_spilling_directory=str(spill), **quiet)
                    except (OSError, RuntimeError, ValueError) as exc:
                        first = str(exc).splitlines()[0]
                        raise ParameterError(f"cannot start a Ray cluster here: {first}") from None
                else:
                    _reachable(address)
                    try:
                        ray.init(address=address, **quiet)
                    except (ConnectionError, RuntimeError, ValueError) as exc:
                        raise ParameterError(f"cannot join the Ray cluster at {address}: "
                                             f"{str(exc).splitlines()[0]}") from None
                self._owns = True
            self._quiet()
            self._check_usage_stats()
        except BaseException:
            self.close()
            raise

    # -- cluster -----------------------------------------------------------------------
    def _quiet(self) -> None:
        """No Ray progress bars or log lines on the console: likeness draws its own."""
        ctx = self.ray.data.DataContext.get_current()
        ctx.enable_progress_bars = False
        ctx.print_on_execution_start = False
        for name in ("ray", "ray.data"):
            logging.getLogger(name).setLevel(logging.ERROR)
        warnings.filterwarnings("ignore", module="ray")

    def _check_usage_stats(self) -> None:
        """Refuse a cluster that sends usage statistics (one joined by ``--address``).

        The head node records what it collects in the cluster's metadata: the
        extra fields (a start timestamp, the OS) are there only when its usage
        statistics are on. Ray's internal API; if it moves, nothing is refused.
        """
        try:
            from ray._common.usage import usage_lib  # type: ignore[import-not-found]

            metadata = usage_lib.get_cluster_metadata(self.ray._private.worker.global_worker.gcs_client)
        except Exception:
            return
        if "session_start_timestamp_ms" in metadata:
            self.close()
            raise ParameterError("the Ray cluster collects usage statistics; start it with "
                                 "RAY_USAGE_STATS_ENABLED=0 ray start ... --disable-usage-stats")

    def _resources(self) -> tuple[float, float, int]:
        res = self.ray.cluster_resources()
        nodes = sum(1 for n in self.ray.nodes() if n.get("Alive"))
        return float(res.get("CPU", 1.0)), float(res.get("GPU", 0.0)), max(nodes, 1)

    def describe(self) -> dict[str, Any]:
        cpus, gpus, nodes = self._resources() if self.ray.is_initialized() else (0.0, 0.0, 0)
        return {"name": self.name, "ray_version": self.ray.__version__,
                "address": self.address or "private", "nodes": nodes, "cpus": cpus, "gpus": gpus,
                **{k: self.plan[k] for k in ("workers", "judges", "embeds") if k in self.plan}}

    def close(self) -> None:
        """Leave the cluster (and stop a private one, removing its temporary and spill folders)."""
        if self._owns and self.ray.is_initialized():
            self.ray.shutdown()
        self._owns = False
        if self._private is not None:
            shutil.rmtree(self._private, ignore_errors=True)
            shutil.rmtree(getattr(self, "_spill", self._private), ignore_errors=True)
            self._private = None
        self._stderr.close()

    def __enter__(self) -> "RayEngine":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- stages ------------------------------------------------------------------------
    def _plan(self, with_embed: bool, with_judge: bool) -> dict[str, Any]:
        """CPUs and GPUs per stage, so that every stage can hold an actor at once."""
        cpus, gpus, nodes = self._resources()
        judges = (self.judges or nodes) if with_judge else 0
        embeds = (max(1, int(gpus)) if gpus else 1) if with_embed else 0
        fixed = judges + (0 if gpus else embeds)  # GPU embed actors take a GPU, not a CPU
        # a small cluster shares its CPUs: every stage must hold its actors at once
        share = min(1.0, cpus / (fixed + (self.workers or 1)))
        workers = self.workers or max(1, int((cpus - fixed * share) // share))
        return {"share": share, "judges": judges, "embeds": embeds, "gpus": gpus, "workers": workers}

    def _stream(self, items: Sequence[media.Input], *, how: Recipe, reference: bool, with_embed: bool,
                judge: tuple[str, dict[str, Any]] | None, ordered: bool) -> Iterator[tuple[int, Any]]:
        """``(position, object)`` per item: its :class:`pipeline.Prepared`, or its
        :class:`pipeline.Result` when ``judge`` (index folder, :class:`pipeline.Scanner`
        arguments) is given: judged on the cluster."""
        ray = self.ray
        if not items:
            return
        plan = self.plan = self._plan(with_embed, judge is not None)
        ctx = ray.data.DataContext.get_current()
        ctx.execution_options.preserve_order = ordered
        rows = [{"i": i, "path": os.fsencode(str(it.path)), "modality": it.modality} for i, it in enumerate(items)]
        ds = ray.data.from_items(rows, override_num_blocks=max(1, min(len(rows) // DECODE_BATCH, 4096)))
        share = plan["share"]
        # a video carries up to 2,000 keyframes' features: few travel together
        videos = any(it.modality == "video" for it in items)
        decode_batch, batch = (1, VIDEO_BATCH) if videos else (DECODE_BATCH, pipeline.BATCH)
        ds = ds.map_batches(_Decode, fn_constructor_kwargs=dict(how=how, reference=reference, version=__version__),
                            batch_size=decode_batch, concurrency=(1, plan["workers"]), num_cpus=share,
                            batch_format="numpy", zero_copy_batch=True)
        if with_embed:
            gpu = {"num_gpus": 1} if plan["gpus"] else {"num_cpus": share}
            ds = ds.map_batches(_Embed, fn_constructor_kwargs=dict(how=how, version=__version__),
                                batch_size=batch, concurrency=plan["embeds"], batch_format="numpy",
                                zero_copy_batch=True, **gpu)
        column = "prepared"
        if judge is not None:
            # Ray Data spreads actors over the nodes: each node's page cache holds the index once
            ds = ds.map_batches(_Judge, fn_constructor_kwargs=dict(index_dir=judge[0], scanner_kwargs=judge[1],
                                                                  version=__version__),
                                batch_size=batch, concurrency=plan["judges"], num_cpus=share,
                                batch_format="numpy", zero_copy_batch=True)
            column = "result"
        done = np.zeros(len(items), bool)
        try:
            for batch in ds.iter_batches(batch_size=None, batch_format="numpy", prefetch_batches=2):
                for i, cargo in zip(batch["i"], batch[column]):
                    if done[i]:  # a retried batch whose first run was also delivered: once only
                        continue
                    done[i] = True
                    yield int(i), cargo.obj
        except ray.exceptions.RayError as exc:
            cause = _cause(exc)
            if isinstance(cause, LikenessError):
                raise type(cause)(str(cause)) from None
            first = str(cause).splitlines()[0] if str(cause) else repr(cause)
            raise LikenessError(f"the Ray run failed: {first} (Ray's log: {self._stderr.keep()})") from None
        if not done.all():
            missing = int((~done).sum())
            raise LikenessError(f"the Ray run returned no result for {missing} input(s); rerun with --resume")

    def prepare(self, items: Sequence[media.Input], featurizers: Sequence[Featurizer], *,
                reference: bool = False) -> Iterator[pipeline.Prepared]:
        """Decoded (and, for model features, embedded) items in order, for :func:`pipeline.build_index`."""
        for _, p in self._stream(items, how=recipe(featurizers), reference=reference,
                                 with_embed=any(f.embeds_with_model for f in featurizers), judge=None,
                                 ordered=True):
            yield p

    def scanner(self, index_dir: str | Path, **kwargs: Any) -> "RayScanner":
        return RayScanner(self, str(index_dir), kwargs)


class RayScanner:
    """The driver's side of a Ray scan: provenance here, judging on the cluster."""

    def __init__(self, engine: RayEngine, index_dir: str, kwargs: dict[str, Any]) -> None:
        self.engine = engine
        self.index_dir = index_dir
        self.kwargs = kwargs
        # verified here, before any worker starts: a bad index or key is refused at once
        self.index = store.open_index(index_dir, hmac_key=kwargs.get("hmac_key"))
        self.options = kwargs.get("options") or pipeline.FeatureOptions()
        self.featurizer_names = list(self.index.features)

    def describe(self) -> dict[str, Any]:
        return pipeline.provenance(self.index, self.kwargs.get("policy"))

    def check_paths(self, items: Sequence[media.Input]) -> Iterator[pipeline.Result]:
        items = list(items)
        with_embed = "image-clip" in self.featurizer_names
        for _, result in self.engine._stream(items, how=(self.index_dir, self.options), reference=False,
                                             with_embed=with_embed, judge=(self.index_dir, self.kwargs),
                                             ordered=False):
            yield result

    def close(self) -> None:
        self.index.close()

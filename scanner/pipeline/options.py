"""What a build or a scan runs with: which featurizers, their options, and where progress goes."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, Sequence

from scanner.errors import LikenessError
from scanner.features import WEIGHT_FREE, Featurizer, make
from scanner.index import store


class Progress(Protocol):
    """What the pipeline reports progress to (the CLI draws it with rich)."""

    def start(self, total: int, description: str) -> None: ...

    def advance(self, n: int = 1) -> None: ...


class NoProgress:
    def start(self, total: int, description: str) -> None:
        pass

    def advance(self, n: int = 1) -> None:
        pass


@dataclass
class FeatureOptions:
    """Which featurizers to run and how (``image-clip`` needs a checkpoint).

    Parameters
    ----------
    names : feature names, or ``None`` for every featurizer that can run here
    clip_model, clip_pretrained : open_clip model name (or JSON config path)
        and pretrained tag (or checkpoint path)
    models_dir : where fetched/imported checkpoints live
    device : ``auto``, ``cpu`` or ``cuda``
    sscd_model : ``full`` or ``distilled`` (``image-sscd``; None: the default,
        :data:`scanner.features.sscd.DEFAULT_MODEL`)
    backend, precision : dense search path (``auto``: the fastest measured on this
        machine, :mod:`scanner.search_choice`; or ``faiss``, ``torch``, ``numpy`` with
        ``fp32``, ``bf16``, ``fp16``, ``int8``)
    """

    names: Sequence[str] | None = None
    clip_model: str | None = None
    clip_pretrained: str | None = None
    models_dir: str | None = None
    device: str = "auto"
    sscd_model: str | None = None
    backend: str = "auto"
    precision: str | None = None

    def clip_options(self) -> dict[str, Any]:
        return {"model": self.clip_model, "pretrained": self.clip_pretrained,
                "models_dir": self.models_dir, "device": self.device}

    def model_options(self, name: str) -> dict[str, Any]:
        """Constructor options of featurizer ``name`` (none for weight-free ones)."""
        if name == "image-clip":
            return self.clip_options()
        if name == "image-sscd":
            return {"model": self.sscd_model, "device": self.device}
        return {}


def available_features(options: FeatureOptions, *, talents: bool = False) -> tuple[list[Featurizer], list[str]]:
    """Featurizers to build an index with, and notes on those left out.

    With ``options.names`` unset: the weight-free ones, plus ``image-sscd`` when its
    package is installed and ``image-clip`` when its checkpoint resolves locally
    (each joins when its model is present); with ``talents`` (the references name
    talents), ``image-face`` when its models are installed.
    """
    if options.names:
        return [make(n, **options.model_options(n)) for n in options.names], []
    feats: list[Featurizer] = []
    notes = []
    for n in WEIGHT_FREE:
        try:
            feats.append(make(n))
        except ModuleNotFoundError as exc:
            if not (exc.name or "").startswith("scanner."):
                raise
            notes.append(f"{n} not used: this likeness has no {exc.name} module")
    from scanner.features import sscd

    if sscd.available():
        feats.append(make("image-sscd", **options.model_options("image-sscd")))
    else:
        notes.append(f"image-sscd not used: its models are not installed ({sscd.INSTALL})")
    try:
        from scanner.features.clip import DEFAULT_MODEL, DEFAULT_PRETRAINED
        from scanner.models import default_models_dir, resolve_checkpoint

        # look for weights first (a registry read): torch is imported only when they exist
        model = options.clip_model or DEFAULT_MODEL
        resolve_checkpoint(Path(model).stem if model.endswith(".json") else model,
                           options.clip_pretrained or DEFAULT_PRETRAINED,
                           models_dir=options.models_dir or default_models_dir())
        clip = make("image-clip", **options.clip_options())
        clip.model_id  # loads and verifies the checkpoint (once), or raises
        feats.append(clip)
    except LikenessError as exc:
        notes.append(f"image-clip not used: {str(exc).split('. ')[0]} (see `likeness models --help`)")
    except ImportError as exc:
        notes.append(f"image-clip not used: {exc.name} is not installed (pip install likeness-scanner[clip])")
    if talents:
        from scanner.features import face, voice

        for module, name in ((face, "image-face"), (voice, "audio-voice")):
            if module.available():
                feats.append(make(name))
            else:
                notes.append(f"{name} not used: its models are not installed ({module.INSTALL})")
    return feats, notes


def features_for_index(index: store.Index, options: FeatureOptions) -> list[Featurizer]:
    """Featurizers matching an index's manifest; a different model is refused."""
    feats = []
    for name, spec in index.features.items():
        if name == "image-clip":
            opts = options.clip_options()
            model, _, tag = (spec.get("model") or ":").partition(":")
            opts["model"] = opts["model"] or spec.get("model_name") or model
            if not opts["pretrained"]:
                opts["pretrained"] = tag
                if tag.startswith("sha256:"):  # built from a file: find it by content in models/
                    from scanner.models import default_models_dir, find_by_sha256

                    models_dir = Path(options.models_dir or default_models_dir())
                    entry = find_by_sha256(spec.get("checkpoint_sha256", ""), models_dir=models_dir)
                    if entry is not None:
                        opts["pretrained"] = entry.get("pretrained") or str(models_dir / entry["file"])
            feat = make(name, **opts)
        elif name == "image-sscd":
            # the index's own model, whatever --sscd-model says; its file must be the same
            feat = make(name, **{**options.model_options(name), "model": spec.get("model_name"),
                                 "expect_sha256": spec.get("model_sha256"), "version": spec.get("version")})
        else:
            feat = make(name)
        index.check_featurizer(feat.identity())
        feats.append(feat)
    return feats

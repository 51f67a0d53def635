"""Building and maintaining an index: references prepared, their rows added by each feature's kind, nulls fitted.

Every feature kind (:mod:`scanner.match`) says what it keeps and how its null
is fitted; this module loops over the features and never asks which kind it holds.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from scanner import media, policy as pol
from scanner.features import Featurizer
from scanner.features.prepared import BATCH, Prepared
from scanner.index import store
from scanner.index.metadata import match_metadata, read_metadata
from scanner.index.writer import IndexWriter
from scanner.match import kind_of
from scanner.match.fusion import fit_fusion
from scanner.pipeline.options import FeatureOptions, NoProgress, Progress, available_features, features_for_index
from scanner.pipeline.prepare import batches
from scanner.pipeline.scan import Engine, LocalEngine


@dataclass
class BuildSummary:
    """What an index build or add did."""

    index_id: str
    added: int = 0
    duplicates: list[str] = field(default_factory=list)
    errors: list[tuple[str, str]] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    features: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    n_works: int = 0


def fit_nulls(writer: IndexWriter) -> dict[str, Any]:
    """Fit each feature's null from pairs of rows of different works (by its kind), then the fusion model.

    Featureless works are left out: they collide by construction, and are
    never evidence at scan time either.
    """
    nulls = {}
    chance_pairs: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
    featureless = writer.featureless_work_ids()
    for name in writer.feature_names():
        nulls[name] = kind_of(writer.spec(name)).fit_null(writer, name, featureless=featureless,
                                                          chance_pairs=chance_pairs)
    writer.set("fusion", fit_fusion(writer, nulls, chance_pairs))
    return nulls


def build_index(refs: Sequence[str | Path], index_dir: str | Path, *, options: FeatureOptions | None = None,
                metadata: str | Path | None = None, create: bool = True, policy: pol.Policy | None = None,
                hmac_key: bytes | None = None, progress: Progress | None = None,
                engine: Engine | None = None) -> BuildSummary:
    """Build (``create=True``) or extend an index of protected reference works.

    Parameters
    ----------
    refs : files and folders of reference works (walked like scan inputs)
    index_dir : the index directory (replaced atomically on success)
    options : which featurizers; when extending, the index's own are used
    metadata : CSV/JSON sidecar with title, rights_holder, licence, notes, licensed
    policy : thresholds to store in the manifest (defaults when building)
    engine : where references are decoded and featurized (:class:`LocalEngine`
        by default; ``scanner.engine_ray.RayEngine`` on a cluster); the index is
        written here, by this process, either way

    Returns
    -------
    BuildSummary

    Raises
    ------
    IndexError_, IndexLockedError, IndexMismatchError, ModelError, ParameterError
    """
    options = options or FeatureOptions()
    progress = progress or NoProgress()
    meta = read_metadata(metadata) if metadata else {}
    index_dir = Path(index_dir)
    with IndexWriter(index_dir, create=create, hmac_key=hmac_key) as writer:
        if create:
            featurizers, notes = available_features(options, talents=any(m.get("talent") for m in meta.values()))
        else:
            featurizers, notes = features_for_index(store.Index(index_dir, writer.manifest, verify=False),
                                                    options), []
        summary = BuildSummary(writer.manifest["index_id"], notes=notes,
                               features=[f.name for f in featurizers])
        for feat in featurizers:
            kind_of(feat).declare(writer, feat)
        roots = [Path(r) for r in refs]
        items = _inputs(roots, summary)
        progress.start(len(items), "indexing references")
        seen: dict[str, str] = {}
        talents: set[int] = set()  # work ids of talents' references
        for batch in batches((engine or LocalEngine()).prepare(items, featurizers, reference=True), BATCH):
            work_ids = []
            for p in batch:
                wid = None
                if p.error is not None:
                    summary.errors.append((str(p.item.path), p.error))
                elif p.sha256 in seen or writer.has_sha256(p.sha256 or ""):
                    summary.duplicates.append(str(p.item.path))
                else:
                    seen[p.sha256 or ""] = str(p.item.path)
                    root = next((r for r in roots if r.is_dir() and r in p.item.path.parents), None)
                    about = match_metadata(meta, p.item.path, root)
                    wid = writer.add_work(path=str(p.item.path), sha256=p.sha256 or "",
                                          modality=p.item.modality, featureless=p.featureless, **about)
                    if about.get("talent"):
                        _enrol(writer, about["talent"], about.get("consent"))
                        talents.add(wid)
                    if p.thumb is not None:
                        writer.add_thumbnail(wid, p.thumb, p.thumb_meta)
                    summary.added += 1
                work_ids.append(wid)
            for p, wid in zip(batch, work_ids):
                if wid is not None and p.parts is not None and wid not in talents:
                    _add_video_rows(writer, featurizers, p, wid)
            for feat in featurizers:
                # a talent's references are templates of the talent features only, and works of the others only
                kind_of(feat).add(writer, feat, batch, [w if (w in talents) == feat.for_talents else None
                                                        for w in work_ids])
            progress.advance(len(batch))
        if talents and not any(f.for_talents for f in featurizers):
            summary.notes.append(f"{len(talents)} talent reference(s) kept in the catalog without templates: "
                                 "the index has no talent feature (image-face, audio-voice)")
        _check_models(writer, featurizers)
        writer.set("null", fit_nulls(writer))
        if create or "policy" not in writer.manifest or not writer.manifest["policy"]:
            writer.set("policy", (policy or pol.Policy()).validate().get_params())
        elif policy is not None:
            writer.set("policy", policy.validate().get_params())
        writer.commit()
        summary.n_works = writer.manifest["works"]["count"]
    return summary


def _inputs(roots: Sequence[Path], summary: BuildSummary) -> list[media.Input]:
    """The media files under ``roots``; the others are noted in ``summary.skipped``."""
    items = []
    for found in media.discover(roots):
        if isinstance(found, media.Skipped):
            summary.skipped.append((str(found.path), found.reason))
        else:
            items.append(found)
    return items


def add_features(refs: Sequence[str | Path], index_dir: str | Path, *, options: FeatureOptions,
                 hmac_key: bytes | None = None, progress: Progress | None = None,
                 engine: Engine | None = None) -> BuildSummary:
    """Add features to an existing index, computed from its works' own files.

    The index keeps the features it was built with; this gives it more (say
    ``image-sscd`` once its models are installed) without a rebuild. Every file
    under ``refs`` is matched to the work holding the same content (sha256); its
    rows of the new features are added under that work, the nulls and the fusion
    refitted, and the index written in one atomic step. Files that are no work of
    the index are skipped (listed in ``skipped``); works whose file is not among
    ``refs`` get no rows of the new features (counted in ``notes``).

    Parameters
    ----------
    refs : the reference files and folders the index was built from
    index_dir : the index to extend
    options : ``options.names`` the features to add (each must be new to the index)

    Returns
    -------
    BuildSummary (``added``: works given rows of the new features)

    Raises
    ------
    ParameterError : no feature named, or one the index has already
    """
    from scanner.errors import ParameterError

    progress = progress or NoProgress()
    if not options.names:
        raise ParameterError("name the features to add with --features (e.g. image-sscd)")
    with IndexWriter(Path(index_dir), hmac_key=hmac_key) as writer:
        have = set(writer.feature_names())
        already = [n for n in options.names if n in have]
        if already:
            raise ParameterError(f"index {index_dir} already has {', '.join(already)}; "
                                 "features are added once (rebuild the index to change one)")
        featurizers, _ = available_features(options)
        summary = BuildSummary(writer.manifest["index_id"], features=[f.name for f in featurizers])
        for feat in featurizers:
            kind_of(feat).declare(writer, feat)
        items = _inputs([Path(r) for r in refs], summary)
        progress.start(len(items), "adding " + ", ".join(summary.features))
        done: set[int] = set()
        for batch in batches((engine or LocalEngine()).prepare(items, featurizers, reference=True), BATCH):
            work_ids: list[int | None] = []
            for p in batch:
                wid = None if p.error is not None else writer.has_sha256(p.sha256 or "")
                if p.error is not None:
                    summary.errors.append((str(p.item.path), p.error))
                elif wid is None:
                    summary.skipped.append((str(p.item.path), "not a work of this index"))
                elif wid in done:
                    wid = None                                   # the same content twice: once is enough
                else:
                    done.add(wid)
                    if p.parts is not None:
                        _add_video_rows(writer, featurizers, p, wid)
                work_ids.append(None if p.parts is not None else wid)
            talents = set(writer.talent_work_ids_of(w for w in work_ids if w is not None))
            for feat in featurizers:
                kind_of(feat).add(writer, feat, batch, [w if (w in talents) == feat.for_talents else None
                                                        for w in work_ids])
            progress.advance(len(batch))
        _check_models(writer, featurizers)
        writer.set("null", fit_nulls(writer))
        stored = dict(writer.manifest.get("policy") or {})
        if "copy_features" in stored:
            # a new copy feature is copy evidence in this index too, as in one built with it
            new_copy = [n for n in summary.features if n in pol.COPY_EVIDENCE and n not in stored["copy_features"]]
            if new_copy:
                writer.set("policy", {**stored, "copy_features": sorted([*stored["copy_features"], *new_copy])})
        writer.commit()
        summary.added = len(done)
        summary.n_works = writer.manifest["works"]["count"]
        missing = summary.n_works - len(done)
        if missing:
            summary.notes.append(f"{missing} work(s) of the index were not among the files given: "
                                 f"they have no {', '.join(summary.features)} rows")
    return summary


def _enrol(writer: IndexWriter, name: str, consent: bool | None) -> None:
    """A talent met in the metadata: new ones get its consent (``no`` when it says none) for
    every modality; a known one's consent changes only where the metadata states it."""
    from scanner.talents import MODALITIES

    if consent is None and name in writer.talent_names():
        return
    for modality in MODALITIES:
        writer.set_consent(name, modality, bool(consent))


def _add_video_rows(writer: IndexWriter, featurizers: Sequence[Featurizer], p: Prepared, wid: int) -> None:
    """Queue a video work's rows: its keyframes' and its soundtrack's, all under the one work.

    A keyframe's rows carry its timecode (ms) in their locator, so a match
    says where in the reference video it sits (each kind encodes it with its
    own row locators, :meth:`scanner.match.base.FeatureKind.add`). Featureless
    keyframes (black, flat) add nothing: they carry no identifiable
    expression. The soundtrack's rows are an audio work's.
    """
    frames = [q for q in p.parts or [] if q.item.modality == "image" and q.error is None and not q.featureless]
    sound = [q for q in p.parts or [] if q.item.modality == "audio" and q.error is None]
    for feat in featurizers:
        if feat.modality == "audio":
            kind_of(feat).add(writer, feat, sound, [wid] * len(sound))
            continue
        have = [q for q in frames if feat.name in q.prepared]
        ms = np.array([round((q.timecode or 0.0) * 1000) for q in have], np.int64)
        kind_of(feat).add(writer, feat, have, [wid] * len(have), timecodes=ms)


def _check_models(writer: IndexWriter, featurizers: Sequence[Featurizer]) -> None:
    """Refuse a checkpoint whose embeddings of the references are degenerate."""
    for feat in featurizers:
        if feat.name == "image-clip" and feat.name in writer.feature_names():
            from scanner.features.clip import check_informative

            vecs, _ = writer.vectors(feat.name)
            check_informative(vecs, model_id=feat.model_id or "?")


def remove_from_index(index_dir: str | Path, work_ids: Iterable[int], *,
                      hmac_key: bytes | None = None) -> list[int]:
    """Remove works by id; returns the ids that were found (and removed)."""
    with IndexWriter(index_dir, hmac_key=hmac_key) as writer:
        found = writer.remove_works(work_ids)
        writer.set("null", fit_nulls(writer))
        writer.commit()
    return found


def set_talent_consent(index_dir: str | Path, name: str, *, face: bool | None = None, voice: bool | None = None,
                       until: str | None = None, hmac_key: bytes | None = None) -> dict[str, Any]:
    """Record talent ``name``'s consent for face and/or voice, ending after ``until`` (ISO date);
    one atomic write, applied by the next scan. Returns the talent as :meth:`Talent.to_dict` gives it.

    Raises
    ------
    ParameterError : the index has no such talent, or no modality was given
    """
    from scanner.errors import ParameterError

    if face is None and voice is None:
        raise ParameterError("say which consent changes: --face yes|no and/or --voice yes|no")
    with IndexWriter(index_dir, hmac_key=hmac_key) as writer:
        if name not in writer.talent_names():
            raise ParameterError(f"{index_dir} has no talent called {name!r} (see `likeness index talent list`)")
        for modality, given in (("face", face), ("voice", voice)):
            if given is not None:
                writer.set_consent(name, modality, given, until if given else None)
        writer.commit()
    with store.open_index(index_dir, hmac_key=hmac_key) as idx:
        return idx.talents()[name].to_dict()


def remove_talent(index_dir: str | Path, name: str, *, hmac_key: bytes | None = None) -> list[int]:
    """Remove talent ``name`` from an index: their references and every template made from them
    (faces, voices) and their consent, in one atomic write, with the nulls refitted. Returns the
    work ids removed.

    Raises
    ------
    ParameterError : the index has no such talent
    """
    from scanner.errors import ParameterError

    with IndexWriter(index_dir, hmac_key=hmac_key) as writer:
        if name not in writer.talent_names():
            raise ParameterError(f"{index_dir} has no talent called {name!r} (see `likeness index talent list`)")
        found = writer.remove_talent(name)
        writer.set("null", fit_nulls(writer))
        writer.commit()
    return found

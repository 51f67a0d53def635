"""The feature-kind protocol: every kind lives in scanner/match/, and a new one fits through the registry alone."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pytest
from PIL import Image

from scanner.demo import synthetic_picture
from scanner.features import NAMES, Featurizer, make
from scanner.features.prepared import Prepared, embed_prepared
from scanner.index import store
from scanner.match import KINDS, kind_of
from scanner.match.base import Evidence, FeatureKind, IndexFiles, Judge, Staged, Writer
from scanner.search_choice import Plan
from scanner.pipeline import FeatureOptions, build_index, check, read_results, remove_from_index, scan

SCANNER = Path(__file__).resolve().parent.parent / "scanner"


def test_no_code_outside_the_matching_package_asks_which_kind_a_feature_is() -> None:
    """The store, the pipeline and the report call each feature's kind; only scanner/match/ names kinds."""
    asks = re.compile(r"""(\.kind\s*(==|!=|in\b|not in\b))|(\[["']kind["']\]\s*(==|!=|in\b|not in\b))"""
                      r"""|(\.get\(["']kind["']\)\s*(==|!=|in\b))|feature_kind\(""")
    found = []
    for path in SCANNER.rglob("*.py"):
        if path.parent.name == "match":
            continue
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if asks.search(line):
                found.append(f"{path.relative_to(SCANNER.parent)}:{n}: {line.strip()}")
    assert not found, "\n".join(found)


def test_every_featurizer_has_a_registered_kind() -> None:
    for name in NAMES:
        if name == "image-clip":
            from scanner.features.clip import Clip

            feat: Featurizer = Clip.__new__(Clip)  # its class attributes, no checkpoint
        else:
            feat = make(name)
        kind = kind_of(feat)
        assert kind in KINDS.values() and kind.raw_kind, name
    assert kind_of(make("audio-melody")).name == "segments"  # dense windows, any number per item
    assert kind_of({"kind": "dense", "codes_per_item": 1}).name == "dense"


# --- a kind of its own: exact mean colour, matched by equality ---------------------------------


class MeanColour(Featurizer):
    """A toy featurizer: a picture's mean colour, 3 bytes."""

    name = "image-mean"
    kind = "exact"  # type: ignore[assignment]
    metric = "hamming"
    codes_per_item = 1

    @property
    def version(self) -> str:
        return "1"

    @property
    def dim(self) -> int:
        return 24

    def prepare(self, image: Image.Image, content: Any = None) -> np.ndarray:
        return np.asarray(image.convert("RGB").resize((1, 1), Image.Resampling.BOX), np.uint8).reshape(3)

    def embed(self, prepared: Sequence[np.ndarray]) -> np.ndarray:
        return np.stack(prepared).astype(np.uint8)


class Exact(FeatureKind):
    """Rows kept in ``<feature>.codes.npy``; a work matches when its code is the query's."""

    name = "exact"
    raw_kind = "equal"

    def empty(self, spec: dict[str, Any]) -> np.ndarray:
        return np.zeros((0, 3), np.uint8)

    def read(self, staged: Staged) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]] | None:
        if not staged.path(".codes.npy").exists():
            return None
        return staged.load_npy(".codes.npy"), staged.load_npy(".rows.npy"), {}

    def write(self, staged: Staged) -> int:
        codes, rows = staged.final()
        staged.save_npy(".codes.npy", codes)
        staged.save_npy(".rows.npy", rows)
        return len(codes)

    def stored(self, index: IndexFiles, name: str) -> int:
        return len(index.codes(name))

    def add(self, writer: Writer, feat: Featurizer, items: Sequence[Prepared], work_ids: Sequence[int | None], *,
            timecodes: np.ndarray | None = None) -> None:
        pos, codes = embed_prepared(feat, items)
        keep = [j for j, i in enumerate(pos) if work_ids[i] is not None]
        if keep:
            writer.add_vectors(feat.identity(), codes[keep], np.array([work_ids[pos[j]] for j in keep], np.int32))

    def fit_null(self, writer: Writer, name: str, *, featureless: np.ndarray,
                 chance_pairs: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]) -> dict[str, Any]:
        codes, rows = writer.vectors(name)
        return {"distinct_codes": int(len(np.unique(codes, axis=0)))}

    def open(self, index: IndexFiles, feat: Featurizer, *, plan: Plan | None = None) -> Judge:
        return ExactJudge(index, feat)


class ExactJudge(Judge):
    def __init__(self, index: IndexFiles, feat: Featurizer):
        self.feat, self.codes, self.rows = feat, np.asarray(index.codes(feat.name)), np.asarray(index.rows(feat.name))

    def evidence(self, batch: Sequence[Prepared]) -> list[tuple[list[Evidence], np.ndarray] | None]:
        out: list[tuple[list[Evidence], np.ndarray] | None] = [None] * len(batch)
        pos, codes = embed_prepared(self.feat, batch)
        for i, code in zip(pos, codes):
            hits = np.flatnonzero((self.codes == code).all(axis=1))
            if len(hits):
                evs = [Evidence(int(self.rows[r, 0]), self.feat.name, 1.0, 0.0, 0, 0, int(r)) for r in hits[:1]]
                out[i] = (evs, np.array([1e-6]))
        return out


@pytest.fixture
def exact_kind(monkeypatch: pytest.MonkeyPatch) -> None:
    """The toy kind in the registry and its featurizer known by name: nothing else is touched."""
    import scanner.pipeline.options as options

    monkeypatch.setitem(KINDS, "exact", Exact())
    real = options.make
    monkeypatch.setattr(options, "make", lambda name, **kw: MeanColour() if name == "image-mean" else real(name, **kw))


def test_a_new_kind_fits_through_the_registry_alone(exact_kind: None, tmp_path: Path) -> None:
    refs = tmp_path / "refs"
    refs.mkdir()
    for i in range(4):
        synthetic_picture(60 + i).save(refs / f"work{i}.png")
    index = tmp_path / "index"
    summary = build_index([refs], index, options=FeatureOptions(names=["image-mean"]))
    assert summary.added == 4 and summary.features == ["image-mean"]
    with store.open_index(index) as ix:
        assert ix.features["image-mean"]["count"] == 4 and ix.null["image-mean"] == {"distinct_codes": 4}
    assert store.verify_index(index)["files"] >= 3  # codes, rows, catalog: hashed into the manifest

    outs = tmp_path / "outs"
    outs.mkdir()
    synthetic_picture(62).save(outs / "same-colour.png")  # work2's pixels under another name
    synthetic_picture(5).save(outs / "other.png")
    scan([outs], index, out_dir=tmp_path / "res")
    lines = {Path(r["path"]).name: r for r in read_results(tmp_path / "res" / "results.jsonl")}
    same = lines["same-colour.png"]
    # a feature outside the policy's copy evidence may send to review, never flag
    assert same["verdict"] == "review" and same["matches"][0]["raw_kind"] == "equal"
    assert Path(same["matches"][0]["ref_path"]).name == "work2.png"
    assert lines["other.png"]["verdict"] == "clear"

    wid = same["matches"][0]["work_id"]
    assert remove_from_index(index, [wid]) == [wid]  # read back from the staged copy, written again
    result, _ = check(outs / "same-colour.png", index)
    assert result.verdict == "clear"
    store.verify_index(index)

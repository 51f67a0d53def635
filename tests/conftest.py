"""Shared fixtures: small media made at test time, and a built phash index."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from scanner.demo import MILD_TRANSFORMS, clip_art, flatten, synthetic_picture
from scanner.pipeline import FeatureOptions, build_index

N_REFS = 10


@pytest.fixture(scope="session", autouse=True)
def private_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Search choices measured by tests go to a folder of the test session, never the user's cache
    (subprocesses inherit it through the environment)."""
    import os

    from scanner import search_choice

    path = tmp_path_factory.mktemp("cache")
    os.environ[search_choice.ENV] = str(path)
    return path


@pytest.fixture(scope="session")
def refs_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Ten reference works (two are RGBA clip art) and a metadata CSV beside them."""
    root = tmp_path_factory.mktemp("refs")
    refs = root / "refs"
    refs.mkdir()
    rows = []
    for i in range(N_REFS):
        pic = clip_art(i) if i in (3, 7) else synthetic_picture(i)
        pic.save(refs / f"ref{i}.png")
        rows.append({"path": f"ref{i}.png", "title": f"Work {i}", "rights_holder": f"Holder {i}",
                     "licence": "all rights reserved", "licensed": "yes" if i == 9 else ""})
    with open(root / "meta.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, ["path", "title", "rights_holder", "licence", "licensed"])
        w.writeheader()
        w.writerows(rows)
    return refs


@pytest.fixture(scope="session")
def phash_index(refs_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A phash-only index of :func:`refs_dir`, built once per session (do not modify)."""
    index = tmp_path_factory.mktemp("idx") / "index"
    build_index([refs_dir], index, options=FeatureOptions(names=["image-phash"]),
                metadata=refs_dir.parent / "meta.csv")
    return index


@pytest.fixture
def fresh_index(refs_dir: Path, tmp_path: Path) -> Path:
    """A phash-only index a test may modify."""
    index = tmp_path / "index"
    build_index([refs_dir], index, options=FeatureOptions(names=["image-phash"]),
                metadata=refs_dir.parent / "meta.csv")
    return index


__all__ = ["MILD_TRANSFORMS", "clip_art", "flatten", "synthetic_picture"]

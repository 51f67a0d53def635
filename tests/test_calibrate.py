"""Thresholds from labelled examples: the math, and `likeness calibrate` end to end."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from scanner import policy as pol
from scanner.cli import app
from scanner.demo import MILD_TRANSFORMS, flatten, synthetic_picture
from scanner.errors import ParameterError
from scanner.index.store import open_index, verify_index

runner = CliRunner()
INF = np.inf


def test_precision_threshold_stops_short_of_the_first_negative() -> None:
    pos = np.array([1e-12, 1e-9, 1e-6, 1e-2, INF])
    neg = np.array([1e-4, 0.5, INF])
    t = pol.threshold_for_precision(pos, neg, 0.99)
    # every positive up to 1e-6 is called, the negative at 1e-4 is not, with a margin
    assert 1e-6 <= t < 1e-4
    assert t == pytest.approx(1e-4 / pol.RATE_MARGIN)
    # a looser target admits the negative and the next positive: 4 of 5 called are copies
    t = pol.threshold_for_precision(pos, neg, 0.75)
    assert 1e-2 <= t < 0.5
    # no score reaches precision 1 when the strongest score is a negative
    assert pol.threshold_for_precision(np.array([1e-3]), np.array([1e-9]), 1.0) is None


def test_review_threshold_bounds_the_share_of_negatives() -> None:
    neg = np.array([1e-5, 1e-3, 1e-1, 0.5] + [INF] * 16)  # 20 negatives
    t = pol.threshold_for_rate(neg, 0.05)  # one of twenty may go to review
    assert 1e-5 <= t < 1e-3
    assert pol.threshold_for_rate(neg, 0.0) < 1e-5


def test_calibrate_with_enough_negatives_may_loosen() -> None:
    rng = np.random.default_rng(0)
    pos = 10.0 ** rng.uniform(-14, -2.5, 200)
    neg = np.r_[10.0 ** rng.uniform(-0.5, 1, 150), [INF] * 50]
    policy, report = pol.calibrate(pos, neg, pos, neg, target_precision=0.99)
    assert policy.flag_at > pol.Policy().flag_at  # the labelled set shows a looser flag is safe
    assert report["flag"]["negatives_called"] == 0 and report["flag"]["recall"] == 1.0
    assert policy.review_at >= policy.flag_at
    assert not report["warnings"]


def test_calibrate_with_few_negatives_only_tightens() -> None:
    pos = np.array([1e-12, 1e-10, 1e-9])
    neg = np.array([1e-5, INF])
    policy, report = pol.calibrate(pos, neg, pos, neg)
    assert policy.flag_at <= pol.Policy().flag_at and policy.review_at <= pol.Policy().review_at
    assert policy.flag_at < 1e-5
    assert any("only 2 negatives" in w for w in report["warnings"])
    with pytest.raises(ParameterError):
        pol.calibrate(pos, np.array([]), pos, np.array([]))
    with pytest.raises(ParameterError):
        pol.calibrate(pos, neg, pos, neg, target_precision=1.5)


def _labelled(refs_dir: Path, root: Path) -> tuple[Path, Path]:
    pos, neg = root / "pos", root / "neg"
    pos.mkdir()
    neg.mkdir()
    for i, (name, t) in enumerate(MILD_TRANSFORMS.items()):
        t(flatten(Image.open(refs_dir / f"ref{i}.png"))).save(pos / f"copy{i}-{name}.png")
    for i in range(6):
        synthetic_picture(500 + i).save(neg / f"new{i}.png")
    (neg / "broken.png").write_bytes(b"not a picture")
    return pos, neg


def test_calibrate_command_stores_thresholds_and_scans_use_them(fresh_index: Path, refs_dir: Path,
                                                                  tmp_path: Path) -> None:
    pos, neg = _labelled(refs_dir, tmp_path)
    before = open_index(fresh_index).policy
    dry = runner.invoke(app, ["calibrate", "--index", str(fresh_index), "--positives", str(pos),
                              "--negatives", str(neg), "--dry-run", "--json", "-q"])
    assert dry.exit_code == 0, dry.output
    report = json.loads(dry.stdout.strip().splitlines()[-1])
    assert report["written"] is False and open_index(fresh_index).policy == before
    assert report["positives"] == len(MILD_TRANSFORMS) and report["negatives"] == 6
    assert report["left_out"] == {"negatives unreadable": 1}
    assert report["flag"]["recall"] == 1.0 and report["flag"]["negatives_called"] == 0

    done = runner.invoke(app, ["calibrate", "--index", str(fresh_index), "--positives", str(pos),
                               "--negatives", str(neg), "-q"])
    assert done.exit_code == 0, done.output
    assert "stored in the index manifest" in done.stdout
    index = open_index(fresh_index)
    assert index.policy["flag_at"] == pytest.approx(report["policy"]["flag_at"])
    assert index.manifest["calibration"]["positives"] == len(MILD_TRANSFORMS)
    verify_index(fresh_index)  # an atomic, checksummed write like any other
    # the copies are still flagged under the calibrated thresholds, the new pictures clear
    scanned = runner.invoke(app, ["scan", str(pos), str(neg / "new0.png"), "--index", str(fresh_index),
                                  "--out", str(tmp_path / "out"), "-q"])
    assert scanned.exit_code == 1, scanned.output
    run = json.loads((tmp_path / "out" / "run.json").read_text())
    assert run["policy"]["flag_at"] == pytest.approx(report["policy"]["flag_at"])
    assert run["counts"]["flagged"] == len(MILD_TRANSFORMS) and run["counts"]["clear"] == 1


def test_calibrate_without_negatives_is_a_clear_error(fresh_index: Path, refs_dir: Path, tmp_path: Path) -> None:
    pos, _ = _labelled(refs_dir, tmp_path)
    empty = tmp_path / "empty"
    empty.mkdir()
    res = runner.invoke(app, ["calibrate", "--index", str(fresh_index), "--positives", str(pos),
                              "--negatives", str(empty), "-q"])
    assert res.exit_code == 2
    assert "0 negative(s)" in res.output and "Traceback" not in res.output


def test_flag_rate_bounds_what_precision_alone_allows() -> None:
    # nine copies to one negative: precision 0.99 would flag the three strongest negatives
    pos = np.r_[10.0 ** np.linspace(-14, -3, 1000), [INF] * 800]
    neg = np.r_[[1e-4, 2e-4, 3e-4], [INF] * 197]
    assert pol.threshold_for_precision(pos, neg, 0.99) > 3e-4
    policy, report = pol.calibrate(pos, neg, pos, neg, target_precision=0.99, max_flag_rate=0.01)
    assert policy.flag_at < 3e-4  # two of 200 negatives may be flagged, not three
    assert report["flag"]["negatives_called"] <= 2 and report["max_flag_rate"] == 0.01

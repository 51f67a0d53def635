"""audio-melody: a melody re-performed in another key, timbre and tempo is found, at most at review.

Melodies are synthesised here: notes of a scale rendered as harmonic series
with their own partial weights and envelopes (two timbres), so no fixture is
stored.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from typer.testing import CliRunner

from scanner import policy as pol
from scanner.cli import app
from scanner.demo import random_melody
from scanner.features.melody import (FRAME, REF_HOP, SEGMENT_DTYPE, Melody, melody_segments, normalise_frames,
                                     segments)
from scanner.match.segments import SPANS, line_score, span_for, work_frames
from scanner.media import AudioChunk

SR = 11025
#: Two timbres: a bright plucked one (decaying, all partials) and a hollow
#: sustained one (odd partials, slow attack).
PLUCK = {"partials": (1.0, 0.5, 0.3, 0.2), "attack": 0.01, "decay": 3.0}
HOLLOW = {"partials": (1.0, 0.0, 0.6, 0.0, 0.4, 0.0, 0.2), "attack": 0.06, "decay": 0.8}


def notes(seed: int, n: int = 40) -> list[tuple[int, float]]:
    """A random walk on a major scale: (MIDI pitch, beats)."""
    return random_melody(np.random.default_rng(seed), n)


def render(melody: list[tuple[int, float]], *, bpm: float = 100.0, transpose: int = 0,
           partials: tuple[float, ...], attack: float, decay: float, sr: int = SR) -> np.ndarray:
    """A melody as float32 samples: each note a harmonic series under an attack-decay envelope."""
    beat = 60.0 / bpm
    y = np.zeros(int((sum(d for _, d in melody) * beat + 1.0) * sr))
    t0 = 0.0
    for pitch, beats in melody:
        f = 440.0 * 2 ** ((pitch + transpose - 69) / 12)
        t = np.arange(int(beats * beat * sr)) / sr
        env = np.minimum(t / attack, 1.0) * np.exp(-decay * t)
        i = int(t0 * sr)
        y[i:i + len(t)] += env * sum(w * np.sin(2 * np.pi * f * (k + 1) * t) for k, w in enumerate(partials))
        t0 += beats * beat
    return (0.5 * y / np.abs(y).max()).astype(np.float32)


def test_rows_shapes_and_key_invariance() -> None:
    """The same melody 3 semitones up, another timbre, 4% faster: its best window is its own, 3 up."""
    ref = melody_segments(render(notes(1), **PLUCK), SR, reference=True)
    other = melody_segments(render(notes(2), **PLUCK), SR, reference=True)
    query = melody_segments(render(notes(1), bpm=104, transpose=3, **HOLLOW), SR)
    feat = Melody()
    assert ref.dtype == SEGMENT_DTYPE and feat.embed([ref]).shape == (len(ref), feat.dim)
    assert np.all(ref["shift"] == 0) and np.allclose(np.diff(ref["start"]), REF_HOP)
    assert len(query) % 12 == 0 and set(query["shift"]) == set(range(12))
    v = feat.embed([query])
    assert v.dtype == np.float32 and np.allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-4)
    own, unrelated = v @ feat.embed([ref]).T, v @ feat.embed([other]).T
    assert own.max() > 0.8 and own.max() > unrelated.max() + 0.1
    best = np.unravel_index(own.argmax(), own.shape)[0]
    assert (-int(query["shift"][best])) % 12 == 3  # rolled back down by 3 semitones


def test_chunked_equals_whole() -> None:
    """Fed in chunks (as the pipeline decodes), the rows match those of the whole signal."""
    y = render(notes(3), **PLUCK)
    whole = melody_segments(y, SR, reference=True)
    feat = Melody()
    state = feat.start(sr=SR, reference=True)
    step = 10 * SR
    for at in range(0, len(y), step):
        feat.update(state, AudioChunk(y[at:at + step], at, SR, last=at + step >= len(y)))
    chunked = feat.finish(state)
    assert len(chunked) == len(whole)
    cos = np.einsum("ij,ij->i", chunked["v"], whole["v"])
    assert cos.min() > 0.97


def test_silence_gives_no_usable_rows() -> None:
    feat = Melody()
    rows = melody_segments(np.zeros(20 * SR, np.float32), SR)
    assert not feat.informative(feat.embed([rows])).any()
    assert len(melody_segments(np.zeros(SR // 2, np.float32), SR)) == 0


def test_melody_alone_is_never_flagged() -> None:
    """Policy: audio-melody is semantic likeness; even a one-in-a-trillion match goes to review."""
    policy = pol.Policy()
    assert "audio-melody" not in policy.copy_features
    match = {"feature": "audio-melody", "expected": 1e-12, "licensed": False, "featureless_ref": None}
    assert pol.decide([match], policy)[0] == "review"


def _build_melody_index(root: Path) -> Path:
    """``likeness index build`` of ``root/refs`` into ``root/index`` with audio-melody; returns ``root``."""
    r = CliRunner().invoke(app, ["index", "build", str(root / "refs"), "--index", str(root / "index"),
                                 "--features", "audio-melody", "-q"])
    assert r.exit_code == 0, r.output
    return root


@pytest.fixture(scope="module")
def melody_index(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("melody")
    (root / "refs").mkdir()
    (root / "outs").mkdir()
    for seed in range(10, 15):
        sf.write(root / "refs" / f"song{seed}.wav", render(notes(seed), **PLUCK), SR)
    # re-generated: another key, another instrument, 4% faster, 2 s cut from the start
    again = render(notes(11), bpm=104, transpose=-2, **HOLLOW)[2 * SR:]
    sf.write(root / "outs" / "again.wav", again, SR)
    sf.write(root / "outs" / "unrelated.wav", render(notes(99), bpm=104, **HOLLOW), SR)
    noise = np.random.default_rng(0).standard_normal(20 * SR).astype(np.float32) * 0.1
    sf.write(root / "outs" / "noise.wav", noise, SR)
    return _build_melody_index(root)


def test_scan_finds_the_melody_at_review(melody_index: Path) -> None:
    root = melody_index
    r = CliRunner().invoke(app, ["scan", str(root / "outs"), "--index", str(root / "index"),
                                 "--out", str(root / "scan")])
    assert r.exit_code == 4, r.output  # review, nothing flagged
    lines = {Path(x["path"]).name: x for x in map(json.loads, (root / "scan" / "results.jsonl").open())}
    again = lines["again.wav"]
    assert again["verdict"] == "review"
    m = again["matches"][0]
    assert Path(m["ref_path"]).name == "song11.wav" and m["feature"] == "audio-melody"
    loc = m["locator"]
    assert {"query_start", "ref_start", "duration", "segment_score", "aligned_frames", "rate"} <= set(loc)
    assert loc["transpose"] == -2 and abs(loc["rate"] - 1.04) <= 0.03
    # the query starts 2 s into the song (2.08 s of the song, played 4% faster)
    assert abs((loc["ref_start"] - loc["query_start"] * 1.04) - 2.08) <= 0.5
    assert lines["unrelated.wav"]["verdict"] == "clear"
    assert lines["noise.wav"]["verdict"] == "clear"
    assert all(x["verdict"] != "flagged" for x in lines.values())


# --- melodies over a shared stock progression -------------------------------------------

#: I-V-vi-IV in C (root-position triads below middle C), one chord per two beats.
PROGRESSION = [(48, 52, 55), (43, 47, 50), (45, 48, 52), (41, 45, 48)]
#: Accompaniment timbres: a sustained pad for the references, a plucked one for re-performances.
PAD = {"partials": (1.0, 0.6, 0.4, 0.3, 0.2), "attack": 0.2, "decay": 0.3}
PLUCKED_CHORDS = {"partials": (1.0, 0.4, 0.2), "attack": 0.01, "decay": 2.5}


def render_song(melody: list[tuple[int, float]], *, bpm: float = 100.0, transpose: int = 0,
                voice: dict, chords: dict, accompaniment: float = 1.0) -> np.ndarray:
    """A melody over the stock progression: melody and chords rendered apart and mixed.

    ``accompaniment`` scales the chords (1.0: as loud as the melody).
    """
    lead = render(melody, bpm=bpm, transpose=transpose, **voice)
    beats = sum(d for _, d in melody)
    notes_ = [(p, 2.0) for k in range(int(np.ceil(beats / 2))) for p in PROGRESSION[k % 4][:1]]
    y = np.zeros_like(lead)
    for voice_ in range(3):  # each chord tone as its own line of two-beat notes
        line = [(PROGRESSION[k % 4][voice_], 2.0) for k in range(len(notes_))]
        part = render(line, bpm=bpm, transpose=transpose, **chords)
        n = min(len(part), len(y))
        y[:n] += part[:n]
    y = lead + accompaniment * 0.5 * y / max(np.abs(y).max(), 1e-9)
    return (0.5 * y / np.abs(y).max()).astype(np.float32)


@pytest.fixture(scope="module")
def progression_index(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Twelve melodies over one progression (enough works for a fitted null), queries over it too."""
    root = tmp_path_factory.mktemp("progression")
    (root / "refs").mkdir()
    (root / "outs").mkdir()
    for seed in range(20, 32):
        sf.write(root / "refs" / f"song{seed}.wav", render_song(notes(seed, 48), voice=PLUCK, chords=PAD), SR)
    # re-performed: 3 semitones up, another lead and accompaniment, 4% faster, 3 s cut from the start
    again = render_song(notes(23, 48), bpm=104, transpose=3, voice=HOLLOW, chords=PLUCKED_CHORDS)[3 * SR:]
    sf.write(root / "outs" / "again.wav", again, SR)
    # another melody over the same progression, rendered like the re-performance
    other = render_song(notes(77, 48), bpm=104, transpose=3, voice=HOLLOW, chords=PLUCKED_CHORDS)[3 * SR:]
    sf.write(root / "outs" / "other.wav", other, SR)
    return _build_melody_index(root)


def test_null_is_fitted_on_aligned_frames(progression_index: Path) -> None:
    """Twelve works: the null is the scored statistic's own, per span, not the prior."""
    null = json.loads((progression_index / "index" / "manifest.json").read_text())["null"]["audio-melody"]
    assert null["kind"] == "aligned-frames" and null["works"] == 12
    for span, model in null["spans"].items():
        assert not model.get("prior") and model["samples"] >= 50
        assert 0 < model["centre"] < float(span) / FRAME and model["spread"] > 0


def test_reperformed_melody_over_the_same_chords(progression_index: Path) -> None:
    """Transposed, another timbre and accompaniment, 4% faster: review with the right work and span;
    another melody over the same chords is clear."""
    root = progression_index
    r = CliRunner().invoke(app, ["scan", str(root / "outs"), "--index", str(root / "index"),
                                 "--out", str(root / "scan"), "--candidates", "1"])
    assert r.exit_code == 4, r.output
    lines = {Path(x["path"]).name: x for x in map(json.loads, (root / "scan" / "results.jsonl").open())}
    again = lines["again.wav"]
    assert again["verdict"] == "review", again
    m = again["matches"][0]
    assert Path(m["ref_path"]).name == "song23.wav" and m["expected"] <= 0.02
    loc = m["locator"]
    assert loc["transpose"] == 3 and abs(loc["rate"] - 1.04) <= 0.03
    # 3 s into the 104-bpm rendition is 3.12 s into the song
    assert abs(loc["ref_start"] - (3.12 + 1.04 * loc["query_start"])) <= 0.5
    assert loc["duration"] >= 20.0
    other = lines["other.wav"]
    assert other["verdict"] == "clear", other
    assert all(x["verdict"] != "flagged" for x in lines.values())


# --- the pieces: frames back from rows, lines, the null model --------------------------------

def test_frames_come_back_from_window_rows() -> None:
    """A work's frames, put back together from its reference rows, are the frames the rows were cut from."""
    rng = np.random.default_rng(0)
    frames = normalise_frames(rng.random((12, 90)).astype(np.float32))
    frames[:, 40:44] = 0.0  # a short silence stays silent
    rows = segments(frames, hop=REF_HOP)
    back = work_frames(rows["start"], rows["v"])
    n = min(back.shape[1], frames.shape[1])
    assert n >= 88 - 4  # all but the frames after the last window
    assert np.allclose(back[:, :n], frames[:, :n], atol=1e-5)


def test_line_score_finds_rate_offset_and_shift() -> None:
    """A sequence of notes played 6% faster and 5 semitones up lines up at its rate, offset and shift."""
    rng = np.random.default_rng(1)
    pcs = rng.integers(0, 12, 200)
    ref = np.zeros((12, 200 * 3), np.float32)
    ref[np.repeat(pcs, 3), np.arange(600)] = 1.0  # notes of 3 frames
    ref = normalise_frames(ref + 0.05)
    start, rate = 100, 1.06  # the query starts at reference frame 100 and runs 6% faster
    t = np.arange(120)
    query = np.roll(ref[:, np.rint(start + rate * t).astype(int)], 5, axis=0)  # 5 semitones up
    found = line_score(query, ref, shift=(-5) % 12, rate=1.04, offset=start * FRAME + 0.6, spans=(30.0,))[30.0]
    assert found["rate"] == pytest.approx(1.06) and abs(found["offset"] - start * FRAME) <= FRAME
    assert found["mean"] > 0.95 and found["frames"] == 120
    wrong = line_score(query, ref, shift=0, rate=1.04, offset=start * FRAME, spans=(30.0,))[30.0]
    assert wrong["score"] < 0.5 * found["score"]


def test_span_for_query_lengths() -> None:
    assert span_for(5.0) == min(SPANS) and span_for(25.0) == 20.0 and span_for(300.0) == max(SPANS)


def test_score_null_fit_and_rate() -> None:
    """The score null: a normal upper tail from the median, at least as wide as the sample's 99th percentile."""
    x = np.random.default_rng(2).normal(40.0, 5.0, 2000)
    null = pol.fit_score_null(x, prior=(0.0, 1.0))
    assert null["centre"] == pytest.approx(40.0, abs=0.5) and null["spread"] == pytest.approx(5.0, rel=0.15)
    assert pol.score_rate(40.0, null) == pytest.approx(0.5, abs=0.05)
    assert float(pol.score_rate(60.0, null)) < 1e-3 < float(pol.score_rate(52.0, null))
    heavy = np.concatenate([x, np.full(40, 80.0)])  # a related pair or two in the sample widen the tail
    assert pol.fit_score_null(heavy, prior=(0.0, 1.0))["spread"] > 1.5 * null["spread"]
    prior = pol.fit_score_null(x[:10], prior=(44.0, 8.0))
    assert prior["prior"] and prior["centre"] == 44.0 and prior["spread"] == 8.0


def test_reference_frames_read_back_from_an_inverted_file() -> None:
    """Reference vectors come back from an IVF index too (its id map built on first use)."""
    from scanner.search import build_faiss_index
    from scanner.match.segments import reconstruct as _reconstruct

    rng = np.random.default_rng(3)
    v = rng.standard_normal((3000, 32)).astype(np.float32)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    for kind in ("flat", "ivf"):
        index, _ = build_faiss_index(v, "ip", kind=kind, nlist=16)
        ids = np.array([0, 5, 2999])
        assert np.allclose(_reconstruct(index, ids), v[ids], atol=1e-6)

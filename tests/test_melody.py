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
from scanner.features.melody import REF_HOP, SEGMENT_DTYPE, Melody, melody_segments
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
    r = CliRunner().invoke(app, ["index", "build", str(root / "refs"), "--index", str(root / "index"),
                                 "--features", "audio-melody", "-q"])
    assert r.exit_code == 0, r.output
    return root


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
    assert {"query_start", "ref_start", "duration", "segment_score"} <= set(loc)
    assert loc["transpose"] == -2 and loc["segments"] >= 2
    # the query starts 2 s into the song (about 2.1 s of the song, played 4% faster)
    assert abs((loc["ref_start"] - loc["query_start"] * 1.04) - 2.1) <= REF_HOP
    assert lines["unrelated.wav"]["verdict"] == "clear"
    assert lines["noise.wav"]["verdict"] == "clear"
    assert all(x["verdict"] != "flagged" for x in lines.values())

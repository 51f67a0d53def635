"""Audio: chunked decoding, the audio-fingerprint featurizer, alignment, and scans of mixed folders.

Every signal is synthesised here: melodies of harmonic notes with onsets,
noise, silence; files are written with soundfile (and ffmpeg for MP3 when it
is installed).
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from PIL import Image

from scanner import media, pipeline
from scanner.errors import DecodeError
from scanner.features import make
from scanner.features.fingerprint import HASH_DTYPE, Fingerprint
from scanner.match.postings import PostingsTable, align

SR = 22050
#: Features of the indexes built here (audio-melody has its own tests).
FEATURES = pipeline.FeatureOptions(names=["image-phash", "image-local", "audio-fingerprint"])


def melody(seed: int, seconds: float = 24.0, *, sr: int = SR, time_scale: float = 1.0,
           pitch_scale: float = 1.0) -> np.ndarray:
    """Harmonic notes with decaying envelopes; notes and durations drawn from ``seed``.

    ``time_scale`` stretches the note times (a tempo change), ``pitch_scale``
    multiplies every frequency (a pitch shift): the same melody re-synthesised.
    """
    rng = np.random.default_rng(seed)
    n_notes = int(seconds / 0.15) + 1
    durs = rng.choice([0.15, 0.25, 0.4], n_notes)
    notes = rng.integers(0, 24, n_notes)
    chords = rng.random(n_notes) < 0.3
    out = np.zeros(int(sr * seconds * time_scale) + sr, np.float64)
    t = 0.0
    for d, k, chord in zip(durs, notes, chords):
        if t > seconds - 0.5:
            break
        n = int(d * time_scale * sr)
        tt = np.arange(n) / sr
        env = np.exp(-tt * 4 / time_scale)
        for step in ((0, 4, 7) if chord else (0,)):
            f = 196.0 * 2 ** ((k + step) / 12) * pitch_scale
            out[int(t * time_scale * sr):][:n] += 0.15 * env * sum(np.sin(2 * np.pi * f * h * tt) / h for h in (1, 2, 3))
        t += d
    return out[: int(sr * seconds * time_scale)].astype(np.float32)


def excerpt(y: np.ndarray, start: float, seconds: float, sr: int = SR) -> np.ndarray:
    return y[int(start * sr): int((start + seconds) * sr)]


def hashes_of(y: np.ndarray, sr: int = SR, *, reference: bool = False) -> np.ndarray:
    """Fingerprint of a signal through the same decode path as a file (resampled to the analysis rate)."""
    import soxr

    x = soxr.resample(y.astype(np.float32), sr, media.ANALYSIS_SR)
    feat = Fingerprint()
    state = feat.start(sr=media.ANALYSIS_SR, reference=reference)
    feat.update(state, media.AudioChunk(x, 0, media.ANALYSIS_SR, last=True))
    return feat.finish(state)


@pytest.fixture(scope="module")
def library() -> dict[int, np.ndarray]:
    return {w: melody(w) for w in (1, 2, 3, 4)}


@pytest.fixture(scope="module")
def table(library: dict[int, np.ndarray]) -> PostingsTable:
    feat = Fingerprint()
    keys, works, extras = [], [], []
    for w, y in library.items():
        k, e = feat.index_rows(hashes_of(y, reference=True))
        keys.append(k)
        works.append(np.full(len(k), w, np.int32))
        extras.append(e)
    extra = {k: np.concatenate([e[k] for e in extras]) for k in extras[0]}
    return PostingsTable.from_arrays(np.concatenate(keys), np.concatenate(works), extra)


def _reverb(y: np.ndarray, sr: int = SR) -> np.ndarray:
    rng = np.random.default_rng(5)
    n = int(0.4 * sr)
    ir = rng.standard_normal(n) * np.exp(-np.arange(n) / (0.08 * sr))
    ir[0] = 1.0
    wet = np.convolve(y, ir)[: len(y)]
    return (wet / np.abs(wet).max() * 0.5).astype(np.float32)


def _band(y: np.ndarray, lo: float = 300.0, hi: float = 3400.0, sr: int = SR) -> np.ndarray:
    spec = np.fft.rfft(y)
    f = np.fft.rfftfreq(len(y), 1 / sr)
    spec[(f < lo) | (f > hi)] = 0
    return np.fft.irfft(spec, len(y)).astype(np.float32)


def _noise(y: np.ndarray, snr_db: float = 10.0) -> np.ndarray:
    n = np.random.default_rng(7).standard_normal(len(y))
    n *= np.sqrt(np.mean(y.astype(np.float64) ** 2) / np.mean(n ** 2) / 10 ** (snr_db / 10))
    return (y + n).astype(np.float32)


def _speed(y: np.ndarray, factor: float, sr: int = SR) -> np.ndarray:
    import soxr

    return soxr.resample(y, sr * factor, sr).astype(np.float32)  # played faster: shorter and higher


START, LENGTH, WORK = 7.3, 10.0, 2


@pytest.mark.parametrize("transform, rate, shift", [
    ("clean", 1.0, 0.0),
    ("noise 10 dB", 1.0, 0.0),
    ("telephone band", 1.0, 0.0),
    ("reverb", 1.0, 0.0),
    ("speed +2%", 1.02, 12 * np.log2(1.02)),
    ("tempo +4%", 1.04, 0.0),
    ("pitch +50 cents", 1.0, 0.5),
])
def test_excerpt_found_at_its_offset(library, table, transform, rate, shift):
    y = library[WORK]
    if transform == "tempo +4%":  # the same melody re-synthesised with note times scaled
        q = excerpt(melody(WORK, time_scale=1 / 1.04), START / 1.04, LENGTH)
    elif transform == "pitch +50 cents":
        q = excerpt(melody(WORK, pitch_scale=2 ** (0.5 / 12)), START, LENGTH)
    else:
        q = excerpt(y, START, LENGTH)
        q = {"clean": lambda x: x, "noise 10 dB": _noise, "telephone band": _band, "reverb": _reverb,
             "speed +2%": lambda x: _speed(x, 1.02)}[transform](q)
    evs = align(hashes_of(q), table, feature="audio-fingerprint")
    assert evs and evs[0].work_id == WORK, transform
    best = evs[0]
    assert best.raw >= 20 and (len(evs) == 1 or evs[1].raw < best.raw / 3)
    loc = best.detail
    offset = loc["ref_start"] - loc["rate"] * loc["query_start"]  # reference time at query time 0
    assert abs(offset - START) <= 0.15, (transform, loc)
    assert abs(loc["rate"] - rate) <= 0.01, (transform, loc)
    assert abs(loc["pitch_shift"] - shift) <= 0.25, (transform, loc)


def test_unrelated_audio_aligns_little(table):
    for q in (melody(99)[: SR * 10], np.random.default_rng(3).standard_normal(SR * 10).astype(np.float32) * 0.1):
        evs = align(hashes_of(q), table, feature="audio-fingerprint")
        assert all(e.raw < 12 for e in evs), [(e.work_id, e.raw) for e in evs]


def test_chunked_equals_whole(library):
    y = library[1]
    import soxr

    x = soxr.resample(y, SR, media.ANALYSIS_SR)
    feat = make("audio-fingerprint")
    whole = hashes_of(y)
    state = feat.start(sr=media.ANALYSIS_SR)
    step = int(3.7 * media.ANALYSIS_SR)
    for s in range(0, len(x), step):
        feat.update(state, media.AudioChunk(x[s:s + step], s, media.ANALYSIS_SR, last=s + step >= len(x)))
    chunked = feat.finish(state)
    assert chunked.dtype == HASH_DTYPE and len(chunked) > 1000
    np.testing.assert_array_equal(chunked["key"], whole["key"])
    np.testing.assert_allclose(chunked["t"], whole["t"], atol=1e-4)


def test_decoding_formats_and_chunks(tmp_path):
    y = melody(1, 6.0)
    stereo = np.stack([y, y], axis=1)
    sf.write(tmp_path / "a.wav", stereo, SR)
    sf.write(tmp_path / "a.flac", y, SR)
    sf.write(tmp_path / "a.ogg", y, SR)
    for name in ("a.wav", "a.flac", "a.ogg"):
        audio = media.open_audio(tmp_path / name)
        assert audio.source_sr == SR and audio.sr == media.ANALYSIS_SR
        chunks = list(audio.chunks(seconds=1.0))
        assert len(chunks) >= 5 and chunks[-1].last and not chunks[0].last
        starts = np.cumsum([0] + [len(c.y) for c in chunks[:-1]])
        assert [c.start for c in chunks] == list(starts)  # contiguous, no overlap
        total = sum(len(c.y) for c in chunks)
        assert abs(total / media.ANALYSIS_SR - 6.0) < 0.05
        assert all(c.y.dtype == np.float32 for c in chunks)
        assert audio.featureless() is None


def test_nan_and_inf_samples_decode_as_zero(tmp_path):
    y = melody(1, 4.0)
    y[100:5000] = np.nan
    y[6000] = np.inf
    sf.write(tmp_path / "nan.wav", y, SR, subtype="FLOAT")
    x = media.open_audio(tmp_path / "nan.wav").read()
    assert np.isfinite(x).all()


def test_silence_and_short_are_featureless(tmp_path):
    sf.write(tmp_path / "silence.wav", np.zeros(SR * 5, np.float32), SR)
    sf.write(tmp_path / "short.wav", melody(1, 1.0), SR)
    for name, reason in (("silence.wav", "silence"), ("short.wav", "too short")):
        audio = media.open_audio(tmp_path / name)
        audio.read()
        assert audio.featureless().startswith(reason)


@pytest.mark.parametrize("name, content, reason", [
    ("empty.wav", b"", "zero-byte"),
    ("corrupt.ogg", b"OggS" + bytes(range(256)) * 8, "corrupt"),
    ("noise.mp3", bytes(np.random.default_rng(0).integers(0, 256, 4000, dtype=np.uint8)), "not a recognised"),
])
def test_bad_files_raise_decode_error(tmp_path, name, content, reason):
    (tmp_path / name).write_bytes(content)
    with pytest.raises(DecodeError, match=reason) as err:
        media.open_audio(tmp_path / name).read()
    assert name in str(err.value)


def test_header_only_wav(tmp_path):
    sf.write(tmp_path / "header.wav", np.zeros(0, np.float32), SR)
    with pytest.raises(DecodeError, match="header only"):
        media.open_audio(tmp_path / "header.wav")


@pytest.fixture(scope="module")
def mixed(tmp_path_factory, library):
    """A folder of three audio works and two pictures, its index, and queries."""
    root = tmp_path_factory.mktemp("audio-mixed")
    refs = root / "refs"
    refs.mkdir()
    for w in (1, 2, 3):
        sf.write(refs / f"song{w}.flac", library[w], SR)
    rng = np.random.default_rng(0)
    for k in range(2):
        Image.fromarray((rng.random((24, 24, 3)) * 255).astype(np.uint8)).resize((256, 256)).save(refs / f"pic{k}.png")
    index = root / "index"
    summary = pipeline.build_index([refs], index, options=FEATURES)
    assert "audio-fingerprint" in summary.features and summary.added == 5
    q = root / "queries"
    q.mkdir()
    sf.write(q / "copy.wav", _noise(excerpt(library[2], START, LENGTH)), SR)
    sf.write(q / "unrelated.ogg", melody(77, 10.0), SR)
    sf.write(q / "silence.wav", np.zeros(SR * 4, np.float32), SR)
    (q / "empty.wav").write_bytes(b"")
    (q / "broken.flac").write_bytes(b"fLaC" + bytes(100))
    sf.write(q / "header.wav", np.zeros(0, np.float32), SR)
    shutil.copy(refs / "pic1.png", q / "pic-copy.png")
    (q / "prompt.txt").write_text("a song")
    return root


def test_scan_mixed_folder_end_to_end(mixed):
    from typer.testing import CliRunner

    from scanner.cli import app

    out = mixed / "out"
    res = CliRunner().invoke(app, ["scan", str(mixed / "queries"), "--index", str(mixed / "index"),
                                   "--out", str(out)])
    assert res.exit_code == 1, res.output  # something flagged
    lines = {Path(r["path"]).name: r for r in map(json.loads, (out / "results.jsonl").read_text().splitlines())}
    assert set(lines) == {"copy.wav", "unrelated.ogg", "silence.wav", "empty.wav", "broken.flac", "header.wav",
                          "pic-copy.png"}
    copy = lines["copy.wav"]
    assert copy["verdict"] == "flagged" and copy["modality"] == "audio"
    m = copy["matches"][0]
    assert m["feature"] == "audio-fingerprint" and Path(m["ref_path"]).name == "song2.flac"
    loc = m["locator"]
    assert {"query_start", "ref_start", "duration", "rate"} <= set(loc) and m["raw"] >= 20
    assert abs(loc["ref_start"] - loc["rate"] * loc["query_start"] - START) <= 0.15
    assert lines["unrelated.ogg"]["verdict"] == "clear"
    assert lines["silence.wav"]["verdict"] == "clear" and "silence" in lines["silence.wav"]["reason"]
    for bad in ("empty.wav", "broken.flac", "header.wav"):
        assert lines[bad]["verdict"] == "error" and lines[bad]["error"], bad
    assert lines["pic-copy.png"]["verdict"] == "flagged"


def test_audio_against_an_image_only_index(tmp_path, library):
    refs = tmp_path / "refs"
    refs.mkdir()
    Image.fromarray((np.random.default_rng(1).random((24, 24, 3)) * 255).astype(np.uint8)).resize(
        (128, 128)).save(refs / "pic.png")
    pipeline.build_index([refs], tmp_path / "index", options=pipeline.FeatureOptions(names=["image-phash"]))
    sf.write(tmp_path / "q.wav", library[1][: SR * 5], SR)
    result, _ = pipeline.check(tmp_path / "q.wav", tmp_path / "index")
    assert result.verdict == "error" and "no audio features" in result.error


def test_index_without_audio_works_has_empty_postings(tmp_path, library):
    refs = tmp_path / "refs"
    refs.mkdir()
    Image.fromarray((np.random.default_rng(2).random((24, 24, 3)) * 255).astype(np.uint8)).resize(
        (128, 128)).save(refs / "pic.png")
    pipeline.build_index([refs], tmp_path / "index", options=FEATURES)
    sf.write(tmp_path / "q.wav", library[1][: SR * 5], SR)
    result, _ = pipeline.check(tmp_path / "q.wav", tmp_path / "index")
    assert result.verdict == "clear"
    from scanner.index import store

    assert store.verify_index(tmp_path / "index")["files"] >= 3


@pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="ffmpeg is not installed")
def test_mp3_and_m4a_reencodes_are_found(tmp_path, library, table):
    q = excerpt(library[3], 4.0, LENGTH)
    sf.write(tmp_path / "q.wav", q, SR)
    for ext, codec in ((".mp3", ["-b:a", "128k"]), (".m4a", ["-c:a", "aac", "-b:a", "96k"])):
        subprocess.run(["ffmpeg", "-y", "-v", "error", "-i", str(tmp_path / "q.wav"), *codec,
                        str(tmp_path / f"q{ext}")], check=True)
        y = media.open_audio(tmp_path / f"q{ext}").read()
        feat = Fingerprint()
        state = feat.start(sr=media.ANALYSIS_SR)
        feat.update(state, media.AudioChunk(y, 0, media.ANALYSIS_SR, last=True))
        evs = align(feat.finish(state), table, feature="audio-fingerprint")
        assert evs and evs[0].work_id == 3, ext
        loc = evs[0].detail
        assert abs(loc["ref_start"] - loc["rate"] * loc["query_start"] - 4.0) <= 0.15, (ext, loc)

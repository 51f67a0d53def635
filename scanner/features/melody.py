"""``audio-melody``: key-invariant chroma segments for re-performed or re-generated melodies.

A melody played again with another instrument, in another key or a little
faster keeps its sequence of pitch classes. The featurizer computes a
constant-Q chroma (:func:`librosa.feature.chroma_cqt`, 12 pitch classes),
pools it into frames of :data:`FRAME` seconds, normalises every frame (so
loudness and timbre weigh less), and cuts it into windows of :data:`WINDOW`
seconds. Each window, mean-removed and L2-normalised, is one dense float32
row ``[shape=(12 * WINDOW / FRAME,)]``: inner product = cosine.

Transposition invariance is bought at query time: a reference keeps each
window once (every :data:`REF_HOP` seconds), a query keeps all 12 circular
shifts of its windows (every :data:`QUERY_HOP` seconds, so that one of them
starts within a quarter of a reference hop of any reference window). On
synthesised melodies with a shared stock accompaniment, this separated
re-performed melodies from unrelated ones better than the 2-D Fourier
magnitude of the chroma patch or rotating each window to its strongest pitch
class (measurements in ``benchmarks/README.md``).

A single window rarely says much: unrelated music sharing a key and a chord
progression reaches high cosines too. Evidence therefore chains the windows
of one query that agree with one work on one shift and one time offset
(:func:`scanner.match.segment_chains`), and its significance is the product
of the windows' chance rates under the feature's dense null. A melody match is
semantic likeness, never copy evidence: alone it is at most ``review``
(:data:`scanner.policy.COPY_EVIDENCE` leaves it out).

Chroma is computed chunk by chunk (:class:`~scanner.features.base.AudioFeaturizer`),
with :data:`CONTEXT` seconds of the previous chunk in front of each so that
the long low-frequency filters see no edge; only the pooled frames are kept.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from scanner.features.base import AudioFeaturizer

#: Seconds per pooled chroma frame: a quarter second resolves the notes of a
#: melody and tolerates a few percent of tempo change over a window.
FRAME = 0.25
#: Seconds per window (one row); 8 s holds a phrase.
WINDOW = 8.0
#: Seconds between reference windows, and between query windows (each with 12 shifts).
REF_HOP = 2.0
QUERY_HOP = 0.5
#: A query keeps at most this many windows; a longer query spaces them further
#: apart (its rows stay bounded: 1200 windows x 12 shifts x 384 float32 is 22 MB).
MAX_QUERY_WINDOWS = 1200
#: Seconds of the previous chunk put in front of the next, for the chroma filters.
CONTEXT = 4.0
#: Constant-Q range: 6 octaves from C1 (32.7 Hz) to C7 (2.1 kHz), 3 bins per semitone.
N_OCTAVES = 6
BINS_PER_OCTAVE = 36
#: Chroma frames whose energy is below this share of the loudest frame are silence.
SILENT_FRAME = 1e-3
#: A window with fewer sounding frames than this share carries no melody (a zero row).
MIN_SOUNDING = 0.5
#: Shifts tried at query time (semitones up): all of them.
SHIFTS = 12

#: What :meth:`Melody.finish` returns per window: its start (s), the circular
#: pitch-class shift applied (semitones; references: 0), and the vector.
SEGMENT_DTYPE = np.dtype([("start", np.float32), ("shift", np.int8),
                          ("v", np.float32, (int(round(WINDOW / FRAME)) * 12,))])


def chroma_frames(y: np.ndarray, sr: int, *, offset: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Constant-Q chroma of a signal, with frame times.

    Parameters
    ----------
    y : np.ndarray [shape=(n,)], mono audio
    sr : int > 0, sample rate in Hz
    offset : float, time of ``y[0]`` in seconds (added to the frame times)

    Returns
    -------
    chroma : np.ndarray [shape=(12, t)] float32, non-negative
    times : np.ndarray [shape=(t,)] float64, seconds of each frame's centre
    """
    import librosa

    hop = chroma_hop(sr)
    y = np.asarray(y, dtype=np.float32)
    if len(y) < hop:
        return np.zeros((12, 0), np.float32), np.zeros(0)
    if not np.abs(y).max() > 1e-6:  # digital silence: no pitch to estimate, nothing to transform
        n = 1 + len(y) // hop
        return np.zeros((12, n), np.float32), offset + np.arange(n) * hop / sr
    c = librosa.feature.chroma_cqt(y=y, sr=sr, hop_length=hop, n_octaves=N_OCTAVES,
                                   bins_per_octave=BINS_PER_OCTAVE, norm=None, tuning=0.0)
    times = offset + np.arange(c.shape[1]) * hop / sr
    return c.astype(np.float32), times


def chroma_hop(sr: int) -> int:
    """Chroma hop in samples: about 93 ms, a multiple of ``2 ** (N_OCTAVES - 1)`` as the constant-Q transform needs."""
    step = 2 ** (N_OCTAVES - 1)
    return max(step, int(round(sr * 0.093 / step)) * step)


def pool_frames(chroma: np.ndarray, times: np.ndarray, *, frame: float = FRAME) -> tuple[np.ndarray, np.ndarray]:
    """Average chroma frames into bins of ``frame`` seconds on the absolute time axis.

    Returns
    -------
    sums : np.ndarray [shape=(12, b)] float64, summed chroma of bins ``first .. first + b - 1``
    counts : np.ndarray [shape=(b,)] int, frames summed per bin
    (``first = floor(times[0] / frame)`` is the caller's to keep)
    """
    if chroma.shape[1] == 0:
        return np.zeros((12, 0)), np.zeros(0, np.int64)
    bins = np.floor(times / frame).astype(np.int64)
    bins -= bins[0]
    sums = np.zeros((12, int(bins[-1]) + 1))
    np.add.at(sums.T, bins, chroma.T)
    return sums, np.bincount(bins, minlength=sums.shape[1])


def normalise_frames(pooled: np.ndarray) -> np.ndarray:
    """Per-frame L2 normalisation of pooled chroma; silent frames become zero.

    Parameters
    ----------
    pooled : np.ndarray [shape=(12, t)], non-negative

    Returns
    -------
    np.ndarray [shape=(12, t)] float32
    """
    energy = np.linalg.norm(pooled, axis=0)
    loud = energy > SILENT_FRAME * (energy.max() if energy.size else 0.0)
    out = np.where(loud, pooled / np.maximum(energy, 1e-12), 0.0)
    return out.astype(np.float32)


def segments(frames: np.ndarray, *, hop: float, shifts: int = 1) -> np.ndarray:
    """Cut normalised chroma frames into key-invariant window rows.

    Parameters
    ----------
    frames : np.ndarray [shape=(12, t)], from :func:`normalise_frames` (``FRAME`` seconds each)
    hop : float > 0, seconds between window starts
    shifts : int, 1 (references) or 12 (queries: every circular pitch-class shift)

    Returns
    -------
    np.ndarray of :data:`SEGMENT_DTYPE` [shape=(windows * shifts,)], window-major;
    a window with too few sounding frames gets a zero vector.
    """
    width = int(round(WINDOW / FRAME))
    step = max(1, int(round(hop / FRAME)))
    t = frames.shape[1]
    starts = np.arange(0, t - width + 1, step) if t >= width else np.zeros(0, np.int64)
    out = np.zeros(len(starts) * shifts, SEGMENT_DTYPE)
    if not len(starts):
        return out
    idx = starts[:, None] + np.arange(width)[None, :]
    patches = frames[:, idx].transpose(1, 0, 2)  # (windows, 12, width)
    sounding = (np.abs(patches).sum(axis=1) > 0).mean(axis=1) >= MIN_SOUNDING
    patches = patches - patches.mean(axis=(1, 2), keepdims=True)
    norm = np.linalg.norm(patches, axis=(1, 2), keepdims=True)
    patches = np.where(sounding[:, None, None] & (norm > 1e-6), patches / np.maximum(norm, 1e-12), 0.0)
    for s in range(shifts):
        rows = out[s::shifts]
        rows["start"] = starts * FRAME
        rows["shift"] = s
        rows["v"] = np.roll(patches, s, axis=1).reshape(len(starts), -1)
    return out


def melody_segments(y: np.ndarray, sr: int, *, reference: bool = False) -> np.ndarray:
    """Window rows of a whole signal (for tests and benchmarks; the pipeline feeds chunks).

    Parameters
    ----------
    y : np.ndarray [shape=(n,)], mono audio
    sr : int > 0, sample rate in Hz
    reference : bool, index rows (one per :data:`REF_HOP`) rather than query rows
        (12 shifts per :data:`QUERY_HOP`)

    Returns
    -------
    np.ndarray of :data:`SEGMENT_DTYPE`
    """
    feat = Melody()
    state = feat.start(sr=sr, reference=reference)
    from scanner.media import AudioChunk

    feat.update(state, AudioChunk(np.asarray(y, np.float32), 0, sr, last=True))
    return feat.finish(state)


class Melody(AudioFeaturizer):
    """Key-invariant chroma windows (``audio-melody``), dense rows of variable count per file.

    ``codes_per_item`` is 0: a file yields as many rows as it has windows
    (references one per :data:`REF_HOP`; queries 12 per :data:`QUERY_HOP`).
    A reference row's locator is its window number (start ``locator * REF_HOP``).
    """

    name = "audio-melody"
    kind = "dense"
    metric = "ip"
    codes_per_item = 0
    window, ref_hop, query_hop = WINDOW, REF_HOP, QUERY_HOP

    @property
    def version(self) -> str:
        return f"chroma-cqt-{BINS_PER_OCTAVE}x{N_OCTAVES}-f{FRAME}-w{WINDOW}-h{REF_HOP}-1"

    @property
    def dim(self) -> int:
        return SEGMENT_DTYPE["v"].shape[0]

    def start(self, *, sr: int, reference: bool = False) -> dict[str, Any]:
        return {"sr": sr, "reference": reference, "tail": np.zeros(0, np.float32), "tail_start": 0,
                "sums": [], "counts": [], "next_bin": 0}

    def update(self, state: dict[str, Any], chunk: Any) -> None:
        sr = state["sr"]
        y = np.concatenate([state["tail"], np.asarray(chunk.y, np.float32)])
        y_start = state["tail_start"]
        if not chunk.last and len(y) < 2 * CONTEXT * sr:
            state["tail"] = y  # too little to frame yet
            return
        chroma, times = chroma_frames(y, sr, offset=y_start / sr)
        # keep the bins after those already kept; leave the last CONTEXT seconds
        # (their filters reach past the chunk) to the next chunk unless this is the end
        end = np.inf if chunk.last else (y_start + len(y)) / sr - CONTEXT
        bins = np.floor(times / FRAME).astype(np.int64)
        keep = (bins >= state["next_bin"]) & ((times < end) if chunk.last else (bins < np.floor(end / FRAME)))
        if keep.any():
            first = int(bins[keep][0])
            sums, counts = pool_frames(chroma[:, keep], times[keep])
            if first > state["next_bin"]:  # the very start: bins before the first frame are empty
                gap = first - state["next_bin"]
                sums = np.concatenate([np.zeros((12, gap)), sums], axis=1)
                counts = np.concatenate([np.zeros(gap, np.int64), counts])
            state["sums"].append(sums.astype(np.float32))
            state["counts"].append(counts)
            state["next_bin"] += sums.shape[1]
        if not chunk.last:
            # cut on the hop grid, so every chunk frames the signal as a whole pass would
            hop = chroma_hop(sr)
            cut = max(0, len(y) - int(2 * CONTEXT * sr)) // hop * hop
            state["tail"], state["tail_start"] = y[cut:], y_start + cut

    def finish(self, state: dict[str, Any]) -> np.ndarray:
        if state["tail"].size and not state["sums"]:  # a file shorter than one chunk's context
            from scanner.media import AudioChunk

            tail, state["tail"] = state["tail"], np.zeros(0, np.float32)
            self.update(state, AudioChunk(tail, state["tail_start"], state["sr"], last=True))
        if not state["sums"]:
            return np.zeros(0, SEGMENT_DTYPE)
        sums = np.concatenate(state["sums"], axis=1)
        counts = np.concatenate(state["counts"])
        frames = normalise_frames(sums / np.maximum(counts, 1))
        if state["reference"]:
            return segments(frames, hop=REF_HOP)
        duration = frames.shape[1] * FRAME
        hop = max(QUERY_HOP, (duration - WINDOW) / MAX_QUERY_WINDOWS)
        return segments(frames, hop=hop, shifts=SHIFTS)

    def embed(self, prepared: Sequence[np.ndarray]) -> np.ndarray:
        """Rows of every item, concatenated in order: float32 ``[shape=(sum of windows, dim)]``."""
        if not len(prepared):
            return np.zeros((0, self.dim), np.float32)
        return np.ascontiguousarray(np.concatenate([p["v"] for p in prepared]), dtype=np.float32)

    def index_rows(self, prepared: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """A reference's rows (one per window; locator = window number), and no per-row arrays."""
        return self.embed([prepared]), {}

    def informative(self, vectors: np.ndarray) -> np.ndarray:
        """Windows that sound (silent ones are zero rows), bool ``[shape=(n,)]``."""
        return np.linalg.norm(np.asarray(vectors, np.float32), axis=1) > 0.5

"""``audio-melody``: key-invariant chroma segments for re-performed or re-generated melodies.

A melody played again with another instrument, in another key or a little
faster keeps its sequence of pitch classes; its accompaniment need not (and a
stock chord progression is shared by unrelated music). The featurizer
computes constant-Q magnitudes (:func:`cqt_frames`, 6 octaves from C1, 3 bins
a semitone), pools them into frames of :data:`FRAME` seconds, compresses them
(``log1p``, relative to the loudest frame nearby) and keeps what stands out
of the repeating background (:func:`foreground`: REPET, the median of the
frames whole repetition periods away, found from the beat spectrum by
:func:`repeating_period`), plus :data:`BACKGROUND_KEPT` of the whole. The
result, its harmonics summed onto each pitch (:func:`harmonic_salience`, so
that the instrument's partials weigh less) and folded into 12 pitch classes, centred and scaled to unit length per
frame (:func:`normalise_frames`), is cut into windows of :data:`WINDOW`
seconds: each window, scaled to unit length, is one dense float32 row
``[shape=(12 * WINDOW / FRAME,)]``; inner product = mean frame cosine.

Transposition invariance is bought at query time: a reference keeps each
window once (every :data:`REF_HOP` seconds), a query keeps all 12 circular
shifts of its windows (every :data:`QUERY_HOP` seconds). Windows only propose
alignments; evidence is scored frame by frame along a line in time
(:mod:`scanner.match.segments`: the reference's frames are read back from its
rows by :func:`window_frames`), with a null fitted on that same score. A
melody match is semantic likeness, never copy evidence: alone it is at most
``review`` (:data:`scanner.policy.COPY_EVIDENCE` leaves it out).

Magnitudes are computed chunk by chunk (:class:`~scanner.features.base.AudioFeaturizer`),
with :data:`CONTEXT` seconds of the previous chunk in front of each so that
the long low-frequency filters see no edge; pooled frames wait only until the
foreground of their neighbourhood can be settled (:meth:`Melody._settle`).
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
N_BINS = N_OCTAVES * BINS_PER_OCTAVE
FMIN = 32.703195662574764  # C1, Hz
#: Log compression of the pooled magnitudes: ``log1p(LOG_GAIN * x / level)``,
#: ``level`` the loudest pooled frame within :data:`REPEAT_SPAN` (about 40 dB of range).
LOG_GAIN = 100.0
#: Foreground (:func:`foreground`): a frame's background is the median of the
#: frames whole repetition periods away, within :data:`REPEAT_SPAN` seconds;
#: periods from :data:`SHORTEST_PERIOD` to :data:`LONGEST_PERIOD` seconds (a bar
#: to a few bars) are looked for, in blocks of :data:`PERIOD_BLOCK` seconds.
REPEAT_SPAN = 30.0
SHORTEST_PERIOD = 2.0
LONGEST_PERIOD = 12.0
PERIOD_BLOCK = 10.0
#: Share of the whole (compressed) spectrum added back to the foreground: a
#: melody that repeats with its accompaniment is not lost altogether.
BACKGROUND_KEPT = 0.1
#: Harmonic summation before folding (:func:`harmonic_salience`): partials summed,
#: and the weight of each further partial relative to the one before.
HARMONICS = 4
HARMONIC_WEIGHT = 0.8
#: Chroma frames whose energy is below this share of the loudest frame are silence.
SILENT_FRAME = 1e-3
#: A window with fewer sounding frames than this share carries no melody (a zero row).
MIN_SOUNDING = 0.5
#: Shifts tried at query time (semitones up): all of them.
SHIFTS = 12

#: Constant-Q bin -> pitch class (bin 3m is semitone m above C; 3m +- 1 are a third of a semitone off).
_FOLD = (np.rint(np.arange(N_BINS) / 3.0).astype(np.int64)[None, :] % 12
         == np.arange(12)[:, None]).astype(np.float32)

#: What :meth:`Melody.finish` returns per window: its start (s), the circular
#: pitch-class shift applied (semitones; references: 0), and the vector.
SEGMENT_DTYPE = np.dtype([("start", np.float32), ("shift", np.int8),
                          ("v", np.float32, (int(round(WINDOW / FRAME)) * 12,))])


def cqt_frames(y: np.ndarray, sr: int, *, offset: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Constant-Q magnitudes of a signal, with frame times.

    Parameters
    ----------
    y : np.ndarray [shape=(n,)], mono audio
    sr : int > 0, sample rate in Hz
    offset : float, time of ``y[0]`` in seconds (added to the frame times)

    Returns
    -------
    cqt : np.ndarray [shape=(N_BINS, t)] float32, non-negative; bin ``k`` is
        ``k / 3`` semitones above C1
    times : np.ndarray [shape=(t,)] float64, seconds of each frame's centre
    """
    import librosa

    hop = chroma_hop(sr)
    y = np.asarray(y, dtype=np.float32)
    if len(y) < hop:
        return np.zeros((N_BINS, 0), np.float32), np.zeros(0)
    if not np.abs(y).max() > 1e-6:  # digital silence: no pitch to estimate, nothing to transform
        n = 1 + len(y) // hop
        return np.zeros((N_BINS, n), np.float32), offset + np.arange(n) * hop / sr
    c = np.abs(librosa.cqt(y, sr=sr, hop_length=hop, fmin=FMIN, n_bins=N_BINS,
                           bins_per_octave=BINS_PER_OCTAVE, tuning=0.0))
    times = offset + np.arange(c.shape[1]) * hop / sr
    return c.astype(np.float32), times


def chroma_hop(sr: int) -> int:
    """Constant-Q hop in samples: about 93 ms, a multiple of ``2 ** (N_OCTAVES - 1)`` as the transform needs."""
    step = 2 ** (N_OCTAVES - 1)
    return max(step, int(round(sr * 0.093 / step)) * step)


def pool_frames(frames: np.ndarray, times: np.ndarray, *, frame: float = FRAME) -> tuple[np.ndarray, np.ndarray]:
    """Sum frames into bins of ``frame`` seconds on the absolute time axis.

    Parameters
    ----------
    frames : np.ndarray [shape=(d, t)]
    times : np.ndarray [shape=(t,)], seconds

    Returns
    -------
    sums : np.ndarray [shape=(d, b)] float64, summed frames of bins ``first .. first + b - 1``
    counts : np.ndarray [shape=(b,)] int, frames summed per bin
    (``first = floor(times[0] / frame)`` is the caller's to keep)
    """
    if frames.shape[1] == 0:
        return np.zeros((frames.shape[0], 0)), np.zeros(0, np.int64)
    bins = np.floor(times / frame).astype(np.int64)
    bins -= bins[0]
    sums = np.zeros((frames.shape[0], int(bins[-1]) + 1))
    np.add.at(sums.T, bins, frames.T)
    return sums, np.bincount(bins, minlength=sums.shape[1])


def fold_chroma(bins: np.ndarray) -> np.ndarray:
    """Constant-Q bins (3 per semitone from C1) summed into 12 pitch classes (C first).

    Parameters
    ----------
    bins : np.ndarray [shape=(N_BINS, t)]

    Returns
    -------
    np.ndarray [shape=(12, t)] float32
    """
    return (_FOLD @ np.asarray(bins, np.float32)).astype(np.float32)


def repeating_period(level_db: np.ndarray, *, shortest: int, longest: int) -> int:
    """The period (frames) at which a run of frames repeats most: its beat spectrum's best comb.

    The beat spectrum is the autocorrelation over time of the mean-removed
    log-magnitude frames (Foote & Uchihashi 2001); a period ``p`` scores the
    mean prominence, over its multiples ``p, 2p, ...``, of the spectrum's
    peak near the multiple above its surroundings (as REPET picks its
    period: Rafii & Pardo, "REpeating Pattern Extraction Technique", IEEE
    TASLP 2013).

    Parameters
    ----------
    level_db : np.ndarray [shape=(d, m)], log-compressed magnitudes
    shortest, longest : int > 0, range of periods looked for, in frames

    Returns
    -------
    int, the period in frames (``longest + 1`` when the run is too short to
    show one: no frame then has a neighbour within reach)
    """
    m = level_db.shape[1]
    if m < 2 * shortest:
        return longest + 1
    v = level_db - level_db.mean(axis=1, keepdims=True)
    max_lag = min(m - 1, 3 * longest)
    spec = np.fft.rfft(v, n=2 * m, axis=1)
    beat = np.fft.irfft((spec * spec.conj()).real.sum(axis=0), n=2 * m)[:max_lag + 1]
    beat = beat / (m - np.arange(max_lag + 1)) / max(float(beat[0]) / m, 1e-12)
    # a lag's prominence: the peak within one frame of it above the mean within three
    padded = np.pad(beat, 3, mode="edge")
    peak = np.lib.stride_tricks.sliding_window_view(padded[2:-2], 3).max(axis=1)
    around = np.lib.stride_tricks.sliding_window_view(padded, 7).mean(axis=1)
    prominence = peak - around
    periods = np.arange(shortest, min(longest, max_lag) + 1)
    if not len(periods):
        return longest + 1
    scores = [prominence[p::p].mean() for p in periods]
    period = int(periods[int(np.argmax(scores))])
    return period


def foreground(level_db: np.ndarray, *, targets: slice, period: int, span: int,
               kept: float = BACKGROUND_KEPT) -> np.ndarray:
    """What stands out of the repeating background, for some frames of a run (REPET).

    Accompaniment repeats (a chord progression, a riff, a pad) with the bar
    or the phrase; a melody over it does not, or not with the same
    accompaniment. A frame's background is the bin-wise median of the frames
    whole periods away (within ``span``); what is left above it is the
    foreground, plus ``kept`` of the whole (a melody that repeats with its
    accompaniment is not lost altogether).

    Parameters
    ----------
    level_db : np.ndarray [shape=(d, m)], log-compressed magnitudes of a run of frames
    targets : slice of frames of the run (within ``0 .. m``) to compute
    period : int > 0, frames between repetitions (:func:`repeating_period`)
    span : int, farthest neighbour, in frames
    kept : float >= 0, share of the whole added back

    Returns
    -------
    np.ndarray [shape=(d, len(targets))] float32, non-negative
    """
    m = level_db.shape[1]
    idx = np.arange(m)[targets]
    steps = np.array([k * period for k in range(-(span // period), span // period + 1) if k], np.int64)
    here = level_db[:, idx]
    if not len(idx) or not len(steps):
        return ((1.0 + kept) * here).astype(np.float32)
    near = idx[:, None] + steps[None, :]  # (targets, neighbours)
    valid = (near >= 0) & (near < m)
    back = np.zeros_like(here)
    full = valid.all(axis=1)
    if full.any():
        back[:, full] = np.median(level_db[:, near[full]], axis=2)
    for i in np.flatnonzero(~full):  # the run's edges: fewer neighbours, or none
        ok = near[i][valid[i]]
        back[:, i] = np.median(level_db[:, ok], axis=1) if len(ok) else 0.0
    return (np.maximum(here - back, 0.0) + kept * here).astype(np.float32)


def harmonic_salience(bins: np.ndarray, *, harmonics: int = HARMONICS, weight: float = HARMONIC_WEIGHT) -> np.ndarray:
    """Pitch salience by harmonic summation: each bin plus its harmonics' bins, ``weight`` less each.

    A note's partials (its octave, twelfth, double octave...) fold into other
    pitch classes than its own: a clarinet's strong odd partials put a fifth
    above every note, a flute's few partials do not. Summing each bin's
    harmonics onto it (``sum_h weight ** (h - 1) * bins[k + 36 log2 h]``) puts
    most of a note's weight on its fundamental whatever the instrument
    (Klapuri, "Multiple fundamental frequency estimation by summing harmonic
    amplitudes", ISMIR 2006).

    Parameters
    ----------
    bins : np.ndarray [shape=(N_BINS, t)], constant-Q bins (3 per semitone), non-negative
    harmonics : int > 0, partials summed
    weight : float in (0, 1], weight of each further partial relative to the one before

    Returns
    -------
    np.ndarray [shape=(N_BINS, t)] float32
    """
    out = np.zeros_like(bins, dtype=np.float32)
    for h in range(1, harmonics + 1):
        k = int(round(BINS_PER_OCTAVE * np.log2(h)))
        out[:N_BINS - k] += weight ** (h - 1) * bins[k:]
    return out


def normalise_frames(pooled: np.ndarray) -> np.ndarray:
    """Per-frame centring and L2 normalisation of pooled chroma; silent frames become zero.

    A frame's 12 values less their mean, scaled to unit length: the inner
    product of two frames is their cosine (Pearson correlation of pitch-class
    profiles), and a window of frames, scaled to unit length, compares with
    another as the mean cosine of their frames.

    Parameters
    ----------
    pooled : np.ndarray [shape=(12, t)], non-negative

    Returns
    -------
    np.ndarray [shape=(12, t)] float32, each column zero-mean with norm 1, or zero
    """
    energy = np.linalg.norm(pooled, axis=0)
    loud = energy > SILENT_FRAME * (energy.max() if energy.size else 0.0)
    centred = pooled - pooled.mean(axis=0, keepdims=True)
    norm = np.linalg.norm(centred, axis=0)
    loud &= norm > 1e-6 * np.maximum(energy, 1e-30)  # a flat frame has no pitch profile
    return np.where(loud, centred / np.maximum(norm, 1e-30), 0.0).astype(np.float32)


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
    a window's vector is its frames scaled to unit length (:func:`window_frames`
    gives them back); a window with too few sounding frames gets a zero vector.
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
    norm = np.linalg.norm(patches, axis=(1, 2), keepdims=True)
    patches = np.where(sounding[:, None, None] & (norm > 1e-6), patches / np.maximum(norm, 1e-12), 0.0)
    for s in range(shifts):
        rows = out[s::shifts]
        rows["start"] = starts * FRAME
        rows["shift"] = s
        rows["v"] = np.roll(patches, s, axis=1).reshape(len(starts), -1)
    return out


def window_frames(vectors: np.ndarray) -> np.ndarray:
    """The unit frames of window rows (:func:`segments`), undoing the window's scaling.

    Parameters
    ----------
    vectors : np.ndarray [shape=(n, dim)] window rows

    Returns
    -------
    np.ndarray [shape=(n, 12, WINDOW / FRAME)] float32; a frame is unit-length or zero
    """
    width = int(round(WINDOW / FRAME))
    patches = np.asarray(vectors, np.float32).reshape(len(vectors), 12, width)
    norm = np.linalg.norm(patches, axis=1, keepdims=True)
    return np.where(norm > 1e-6, patches / np.maximum(norm, 1e-12), 0.0).astype(np.float32)


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
        return (f"fg-chroma-cqt-{BINS_PER_OCTAVE}x{N_OCTAVES}-repet{REPEAT_SPAN:g}-harm{HARMONICS}-f{FRAME}"
                f"-w{WINDOW}-h{REF_HOP}-3")

    @property
    def dim(self) -> int:
        return SEGMENT_DTYPE["v"].shape[0]

    def start(self, *, sr: int, reference: bool = False) -> dict[str, Any]:
        return {"sr": sr, "reference": reference, "tail": np.zeros(0, np.float32), "tail_start": 0,
                "pooled": np.zeros((N_BINS, 0), np.float32), "pooled_first": 0, "next_bin": 0,
                "done": 0, "chroma": []}

    def update(self, state: dict[str, Any], chunk: Any) -> None:
        sr = state["sr"]
        y = np.concatenate([state["tail"], np.asarray(chunk.y, np.float32)])
        y_start = state["tail_start"]
        if not chunk.last and len(y) < 2 * CONTEXT * sr:
            state["tail"] = y  # too little to frame yet
            return
        mags, times = cqt_frames(y, sr, offset=y_start / sr)
        # keep the bins after those already kept; leave the last CONTEXT seconds
        # (their filters reach past the chunk) to the next chunk unless this is the end
        end = np.inf if chunk.last else (y_start + len(y)) / sr - CONTEXT
        bins = np.floor(times / FRAME).astype(np.int64)
        keep = (bins >= state["next_bin"]) & ((times < end) if chunk.last else (bins < np.floor(end / FRAME)))
        if keep.any():
            first = int(bins[keep][0])
            sums, counts = pool_frames(mags[:, keep], times[keep])
            means = sums / np.maximum(counts, 1)
            if first > state["next_bin"]:  # the very start: bins before the first frame are empty
                means = np.concatenate([np.zeros((N_BINS, first - state["next_bin"])), means], axis=1)
            state["pooled"] = np.concatenate([state["pooled"], means.astype(np.float32)], axis=1)
            state["next_bin"] += means.shape[1]
        self._settle(state, final=bool(chunk.last))
        if not chunk.last:
            # cut on the hop grid, so every chunk frames the signal as a whole pass would
            hop = chroma_hop(sr)
            cut = max(0, len(y) - int(2 * CONTEXT * sr)) // hop * hop
            state["tail"], state["tail_start"] = y[cut:], y_start + cut

    @staticmethod
    def _settle(state: dict[str, Any], *, final: bool) -> None:
        """Foreground chroma of the pooled frames whose neighbourhood is complete; older frames dropped.

        Frames are settled in blocks of :data:`PERIOD_BLOCK` seconds on the
        file's time axis, each with the repetition period of the frames within
        :data:`REPEAT_SPAN` of it (:func:`repeating_period`); the log
        compression's level is the loudest frame within :data:`REPEAT_SPAN`.
        A block is settled once the frames :data:`REPEAT_SPAN` twice past its
        end are pooled (or the file has ended), so the result does not depend
        on how the file was chunked, and fewer than ``4 * span + block``
        frames wait.
        """
        from scipy.ndimage import maximum_filter1d

        span, block = int(round(REPEAT_SPAN / FRAME)), int(round(PERIOD_BLOCK / FRAME))
        shortest, longest = int(round(SHORTEST_PERIOD / FRAME)), int(round(LONGEST_PERIOD / FRAME))
        pooled, p0 = state["pooled"], state["pooled_first"]
        known = p0 + pooled.shape[1]
        if state["done"] >= known or (not final and state["done"] + block + 2 * span > known):
            return
        level = maximum_filter1d(pooled.max(axis=0, initial=0.0), size=2 * span + 1, mode="constant", cval=0.0)
        compressed = np.log1p(LOG_GAIN * pooled / np.maximum(level, 1e-12))
        while state["done"] < known and (final or state["done"] + block + 2 * span <= known):
            b0, b1 = state["done"], min(state["done"] + block, known)
            lo, hi = max(p0, b0 - span), min(known, b1 + span)
            run = compressed[:, lo - p0:hi - p0]
            period = repeating_period(run, shortest=shortest, longest=longest)
            fg = foreground(run, targets=slice(b0 - lo, b1 - lo), period=period, span=span)
            state["chroma"].append(fold_chroma(harmonic_salience(fg)))
            state["done"] = b1
        drop = max(0, state["done"] - 2 * span - p0)
        state["pooled"], state["pooled_first"] = pooled[:, drop:], p0 + drop

    def finish(self, state: dict[str, Any]) -> np.ndarray:
        if state["tail"].size and not state["next_bin"]:  # a file shorter than one chunk's context
            from scanner.media import AudioChunk

            tail, state["tail"] = state["tail"], np.zeros(0, np.float32)
            self.update(state, AudioChunk(tail, state["tail_start"], state["sr"], last=True))
        self._settle(state, final=True)
        if not state["chroma"]:
            return np.zeros(0, SEGMENT_DTYPE)
        frames = normalise_frames(np.concatenate(state["chroma"], axis=1))
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

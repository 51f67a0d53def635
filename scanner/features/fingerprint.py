"""``audio-fingerprint``: spectral-peak triplet hashes that survive speed, tempo and pitch changes.

A recording that was sampled, re-encoded, sped up, pitched or buried under
noise keeps its strongest spectral peaks where they were, relative to each
other. The featurizer finds those peaks (local maxima of the log-magnitude
spectrogram, :func:`spectral_peaks`) and hashes triplets of them, as Panako
does (Six & Leman, ISMIR 2014), so that the hash does not change when time or
frequency is scaled a little:

* frequencies enter only as differences of log-frequency (semitones) between
  the peaks, which a pitch shift or a speed change leaves as they are;
* times enter as the ratio ``(t2 - t1) / (t3 - t1)``, which a tempo or speed
  change leaves as it is;
* two coarse fields add selectivity: the anchor's half-octave band and the
  triplet's time span on a logarithmic scale (a few percent of change rarely
  moves either; when it might, :func:`scanner.match.postings.expand_probes`
  looks up the neighbouring value too, using the ``near`` bits kept with
  every hash).

Each hash keeps the anchor's time, the triplet's span (seconds) and the
anchor's pitch (semitones): two matched hashes give the time-scale rate
(ratio of spans) and the pitch shift (difference of pitches), and
:mod:`scanner.match.postings` votes over (time offset, rate) to find the
alignment, so the aligned-hash count is the score.

Peaks are found chunk by chunk (:class:`~scanner.features.base.AudioFeaturizer`):
the spectrogram of a 3-hour file never exists as a whole.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from scanner.errors import ParameterError
from scanner.features.base import AudioFeaturizer

#: Analysis frame (samples at 11025 Hz: 93 ms) and hop (23 ms); peak times are
#: interpolated between frames.
N_FFT = 1024
HOP = 256
#: Frequency range peaks are taken from (Hz): a telephone band keeps 300-3400 Hz,
#: and a pitch shift moves peaks a little across the edges.
FMIN, FMAX = 250.0, 4000.0
#: Half-size of the local-maximum neighbourhood: frames (time) and bins (frequency).
PEAK_FRAMES = 4
PEAK_BINS = 6
#: A peak stands this many dB above the mean level of its frame.
PEAK_ABOVE_MEAN_DB = 6.0
#: Peaks kept per second (the strongest in each second), so noise and loud
#: passages do not flood the hashes and quiet passages still get some.
PEAKS_PER_SECOND = 24
#: Triplets: partners follow the anchor by this many seconds, within this
#: many semitones of it; each anchor pairs with its first FAN_OUT partners.
MIN_DT, MAX_DT = 0.03, 1.2
MAX_SEMITONES = 12.0
FAN_OUT = 6
#: Partners per anchor of a query: its triplets are a subset of the
#: reference's where the peaks agree, at 6 triplets per anchor instead of 15
#: (matching cost follows the number of query hashes; aligned counts, which
#: count anchors, barely drop).
QUERY_FAN_OUT = 4
#: A triplet spans at least this long (seconds): shorter spans give no usable rate.
MIN_SPAN = 0.15

# Hash fields (most significant first) and their sizes.
N_BAND = 8         # anchor band: half-octaves from FMIN
N_SPAN = 10        # log2(span / MIN_SPAN) in steps of SPAN_STEP
SPAN_STEP = 0.36   # log2 units (about 28% per step)
N_RATIO = 8        # (t2 - t1) / (t3 - t1) in [0, 1]
N_DIFF = 2 * int(MAX_SEMITONES) + 1  # semitone differences -12..12
#: Strides of each field in the key, and the field order of the ``near`` bits.
FIELDS = ("band", "span", "ratio", "d2", "d3")
SIZES = (N_BAND, N_SPAN, N_RATIO, N_DIFF, N_DIFF)
STRIDES = tuple(int(np.prod(SIZES[i + 1:])) for i in range(len(SIZES)))
#: A field value this close to a bin edge (share of a bin) sets its ``near``
#: bit: lookups try the neighbouring bin as well.
NEAR = (0.06, 0.08, 0.12, 0.15, 0.15)

#: One hash as the featurizer yields it: key, anchor time (s), span (s),
#: anchor pitch (semitones above 1 Hz... as 12 log2 f), and near bits (bit i: field i
#: lies near an edge; bit i + 5: the nearer neighbour is above).
HASH_DTYPE = np.dtype([("key", np.uint32), ("t", np.float32), ("span", np.float32),
                       ("pitch", np.float32), ("near", np.uint16)])

PEAK_DTYPE = np.dtype([("t", np.float32), ("pitch", np.float32), ("db", np.float32)])


def _frequencies(sr: int) -> tuple[int, int, np.ndarray]:
    lo = int(np.ceil(FMIN * N_FFT / sr))
    hi = min(int(np.floor(FMAX * N_FFT / sr)), N_FFT // 2)
    return lo, hi, np.arange(lo, hi + 1) * sr / N_FFT


def _window() -> np.ndarray:
    return np.hanning(N_FFT + 2)[1:-1].astype(np.float32)


def log_spectrogram(y: np.ndarray, *, sr: int) -> np.ndarray:
    """Log-magnitude spectrogram of the fingerprint's band.

    Parameters
    ----------
    y : np.ndarray [shape=(n,)] float32, mono
    sr : int > 0, Hz

    Returns
    -------
    S : np.ndarray [shape=(n_frames, n_bins)] float32, dB (full-scale sine ~ 0 dB),
        frames every :data:`HOP` samples (frame ``k`` covers samples
        ``k * HOP .. k * HOP + N_FFT``), bins from :data:`FMIN` to :data:`FMAX`.
    """
    y = np.asarray(y, np.float32)
    if len(y) < N_FFT:
        lo, hi, _ = _frequencies(sr)
        return np.zeros((0, hi - lo + 1), np.float32)
    import scipy.fft

    frames = np.lib.stride_tricks.sliding_window_view(y, N_FFT)[::HOP]
    lo, hi, _ = _frequencies(sr)
    win = _window()
    # scipy's FFT keeps float32 (numpy's computes in float64: ten times slower here)
    spec = scipy.fft.rfft(frames * win, axis=1)[:, lo:hi + 1]
    power = spec.real ** 2 + spec.imag ** 2
    return 10.0 * np.log10(np.maximum(power * (2.0 / win.sum()) ** 2, 1e-12, dtype=np.float32))


def _pick(S: np.ndarray, first: int, last: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Local maxima of ``S`` in frames ``first..last - 1`` (rows outside give context only).

    Returns fractional frame and fractional bin (parabolic interpolation) and
    level (dB) of each.
    """
    from scipy.ndimage import maximum_filter

    if last <= first or S.shape[1] < 3:
        return np.zeros(0), np.zeros(0), np.zeros(0)
    peak = maximum_filter(S, size=(2 * PEAK_FRAMES + 1, 2 * PEAK_BINS + 1), mode="nearest")
    mask = (S == peak) & (S > S.mean(axis=1, keepdims=True) + PEAK_ABOVE_MEAN_DB) & (S > -90.0)
    mask[:max(first, 1)] = False  # interpolation needs a neighbour on each side
    mask[min(last, len(S) - 1):] = False
    mask[:, 0] = mask[:, -1] = False
    f, b = np.nonzero(mask)
    mid = S[f, b]
    db = mid.copy()
    where = []
    for lo_, hi_ in ((S[f, b - 1], S[f, b + 1]), (S[f - 1, b], S[f + 1, b])):
        den = lo_ - 2 * mid + hi_
        delta = np.clip(np.where(den < 0, 0.5 * (lo_ - hi_) / np.where(den < 0, den, -1), 0.0), -0.5, 0.5)
        db -= 0.25 * (lo_ - hi_) * delta
        where.append(delta)
    return f + where[1], b + where[0], db


def _thin(peaks: np.ndarray, *, per_second: int = PEAKS_PER_SECOND) -> np.ndarray:
    """The strongest ``per_second`` peaks of each second, in time order."""
    if not len(peaks):
        return peaks
    sec = np.floor(peaks["t"]).astype(np.int64)
    order = np.lexsort((-peaks["db"], sec))
    s = sec[order]
    first = np.r_[0, np.flatnonzero(s[1:] != s[:-1]) + 1]
    rank = np.arange(len(s)) - np.repeat(first, np.diff(np.r_[first, len(s)]))
    kept = peaks[order[rank < per_second]]
    return kept[np.lexsort((kept["pitch"], kept["t"]))]


def spectral_peaks(y: np.ndarray | None = None, *, sr: int, S: np.ndarray | None = None) -> np.ndarray:
    """Spectral peaks of a whole signal (or of its precomputed :func:`log_spectrogram`).

    Parameters
    ----------
    y : np.ndarray [shape=(n,)] float32, optional
    sr : int > 0, Hz
    S : np.ndarray [shape=(n_frames, n_bins)], optional, :func:`log_spectrogram` of ``y``

    Returns
    -------
    peaks : np.ndarray [shape=(m,)] of :data:`PEAK_DTYPE`: time (s), pitch
        (semitones, ``12 log2(f)``) and level (dB), in time order, at most
        :data:`PEAKS_PER_SECOND` per second.
    """
    if S is None:
        if y is None:
            raise ParameterError("give y or S")
        S = log_spectrogram(y, sr=sr)
    f, b, db = _pick(S, 0, len(S))
    return _thin(_as_peaks(f, b, db, sr=sr))


def _as_peaks(frames: np.ndarray, bins: np.ndarray, db: np.ndarray, *, sr: int) -> np.ndarray:
    lo, _, _ = _frequencies(sr)
    out = np.zeros(len(frames), PEAK_DTYPE)
    # a frame's time is its centre
    out["t"] = (np.asarray(frames) * HOP + N_FFT / 2) / sr
    out["pitch"] = 12.0 * np.log2((np.asarray(bins) + lo) * sr / N_FFT)
    out["db"] = db
    return out


def _quantise(value: np.ndarray, n: int, near: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Bin of ``value`` (bins of width 1 from 0), and whether it is near an edge and which.

    Returns bin (clipped to 0..n-1), near flag (the neighbour exists), up flag.
    """
    b = np.floor(value)
    frac = value - b
    b = b.astype(np.int64)
    up = frac >= 0.5
    close = np.minimum(frac, 1 - frac) < near
    inside = (b >= 0) & (b < n)
    nb = np.where(up, b + 1, b - 1)
    close &= inside & (nb >= 0) & (nb < n)
    return np.clip(b, 0, n - 1), close, up


def triplet_hashes(peaks: np.ndarray, *, fan_out: int = FAN_OUT) -> np.ndarray:
    """Hash triplets of peaks, invariant to small time and frequency scaling.

    Each peak anchors triplets with pairs of its first ``fan_out``
    partners (peaks :data:`MIN_DT` to :data:`MAX_DT` seconds later, within
    :data:`MAX_SEMITONES` of it), spanning at least :data:`MIN_SPAN`.

    Parameters
    ----------
    peaks : np.ndarray [shape=(m,)] of :data:`PEAK_DTYPE`, in time order
    fan_out : int >= 2, partners per anchor (:data:`FAN_OUT` for references,
        :data:`QUERY_FAN_OUT` for queries)

    Returns
    -------
    hashes : np.ndarray [shape=(n,)] of :data:`HASH_DTYPE`, in anchor-time order
    """
    m = len(peaks)
    if m < 3:
        return np.zeros(0, HASH_DTYPE)
    t = peaks["t"].astype(np.float64)
    p = peaks["pitch"].astype(np.float64)
    # anchors in blocks: the (anchors, look) work tables of a two-hour file at
    # once would take most of a gigabyte
    return np.concatenate([_triplets(t, p, start, min(start + ANCHOR_BLOCK, m), fan_out)
                           for start in range(0, m, ANCHOR_BLOCK)])


#: Anchors hashed together by :func:`triplet_hashes` (bounds its work tables to tens of MB).
ANCHOR_BLOCK = 8192


def _triplets(t: np.ndarray, p: np.ndarray, start: int, stop: int, fan_out: int) -> np.ndarray:
    """:func:`triplet_hashes` of the anchors ``start:stop`` (partners from all peaks)."""
    m = len(t)
    look = 4 * PEAKS_PER_SECOND  # partners looked at: enough to find FAN_OUT within MAX_DT
    anchors = np.arange(start, stop)
    cand = anchors[:, None] + np.arange(1, look + 1)[None, :]
    ok = cand < m
    cand = np.minimum(cand, m - 1)
    dt = t[cand] - t[anchors, None]
    dp = p[cand] - p[anchors, None]
    ok &= (dt >= MIN_DT) & (dt <= MAX_DT) & (np.abs(dp) <= MAX_SEMITONES)
    rank = np.cumsum(ok, axis=1)
    ok &= rank <= fan_out
    # keep the fan_out partners of each anchor in a dense (m, fan_out) table
    slot = np.where(ok, rank - 1, fan_out)
    part = np.full((len(anchors), fan_out + 1), -1, np.int64)
    np.put_along_axis(part, slot, np.where(ok, cand, -1), axis=1)
    part = part[:, :fan_out]
    a_idx, b_idx = np.triu_indices(fan_out, k=1)
    anchor = np.repeat(anchors, len(a_idx))
    second = part[:, a_idx].ravel()
    third = part[:, b_idx].ravel()
    keep = (second >= 0) & (third >= 0)
    anchor, second, third = anchor[keep], second[keep], third[keep]
    span = t[third] - t[anchor]
    keep = span >= MIN_SPAN
    anchor, second, third, span = anchor[keep], second[keep], third[keep], span[keep]
    fields = [
        (p[anchor] - 12 * np.log2(FMIN)) / 6.0,                  # half-octave band
        np.log2(span / MIN_SPAN) / SPAN_STEP,                      # coarse span
        (t[second] - t[anchor]) / span * N_RATIO,                  # time ratio
        p[second] - p[anchor] + MAX_SEMITONES + 0.5,               # semitone differences,
        p[third] - p[anchor] + MAX_SEMITONES + 0.5,                # bins centred on whole semitones
    ]
    key = np.zeros(len(anchor), np.int64)
    near = np.zeros(len(anchor), np.int64)
    for i, (value, n, stride, margin) in enumerate(zip(fields, SIZES, STRIDES, NEAR)):
        b, close, up = _quantise(value, n, margin)
        key += b * stride
        near |= close.astype(np.int64) << i
        near |= (close & up).astype(np.int64) << (i + len(SIZES))
    out = np.zeros(len(anchor), HASH_DTYPE)
    out["key"] = key
    out["t"] = t[anchor]
    out["span"] = span
    out["pitch"] = p[anchor]
    out["near"] = near
    return out


class Fingerprint(AudioFeaturizer):
    """Spectral-peak triplet fingerprint (weight-free, kind ``postings``).

    Rows are hash keys (uint32); every hash keeps its anchor time, span and
    pitch (:data:`HASH_DTYPE`). The index stores them sorted by key
    (``audio-fingerprint.npz``) and :mod:`scanner.match.postings` aligns them.
    """

    name = "audio-fingerprint"
    modality = "audio"
    kind = "postings"
    metric = "hamming"  # unused: postings are matched by equal keys, not by distance
    codes_per_item = 0  # variable: one row per hash
    #: What :meth:`finish` returns rows of.
    hash_dtype = HASH_DTYPE

    @property
    def version(self) -> str:
        return (f"triplets-{N_FFT}/{HOP}-{int(FMIN)}-{int(FMAX)}-p{PEAKS_PER_SECOND}-f{FAN_OUT}/{QUERY_FAN_OUT}-"
                f"{'x'.join(map(str, SIZES))}-v2")

    @property
    def dim(self) -> int:
        return 32

    # -- chunked extraction ----------------------------------------------------------
    def start(self, *, sr: int, reference: bool = False) -> dict[str, Any]:
        if sr < 2 * FMAX:
            raise ParameterError(f"audio-fingerprint needs a rate of at least {2 * FMAX:.0f} Hz, given sr={sr}")
        lo, hi, _ = _frequencies(sr)
        return {"sr": sr, "buf": np.zeros(0, np.float32), "frame": 0, "spec": np.zeros((0, hi - lo + 1), np.float32),
                "spec_start": 0, "done": 0, "peaks": [],
                "fan_out": FAN_OUT if reference else QUERY_FAN_OUT}

    def update(self, state: dict[str, Any], chunk: Any) -> None:
        y = np.asarray(chunk.y, np.float32)
        if chunk.last:
            # the final frame: pad the tail so its last samples are analysed too
            y = np.concatenate([y, np.zeros(N_FFT - HOP, np.float32)])
        buf = np.concatenate([state["buf"], y])
        S = log_spectrogram(buf, sr=state["sr"])
        n = len(S)
        state["buf"] = buf[n * HOP:]
        spec = np.concatenate([state["spec"], S])
        start = state["spec_start"]
        # peaks are final where the neighbourhood is complete (all of it on the last chunk)
        last = len(spec) if chunk.last else len(spec) - PEAK_FRAMES
        first = state["done"] - start
        f, b, db = _pick(spec, first, last)
        if len(f):
            state["peaks"].append(_as_peaks(f + start, b, db, sr=state["sr"]))
        state["done"] = start + max(last, first)
        keep_from = max(0, last - PEAK_FRAMES)  # context for the next chunk's first peaks
        state["spec"] = spec[keep_from:]
        state["spec_start"] = start + keep_from

    def finish(self, state: dict[str, Any]) -> np.ndarray:
        peaks = np.concatenate(state["peaks"]) if state["peaks"] else np.zeros(0, PEAK_DTYPE)
        return triplet_hashes(_thin(peaks), fan_out=state["fan_out"])

    # -- index and search ------------------------------------------------------------
    def embed(self, prepared: Sequence[np.ndarray]) -> np.ndarray:
        """Keys of a batch, item after item: uint32 ``[shape=(n,)]``."""
        if not prepared:
            return np.zeros(0, np.uint32)
        return np.concatenate([p["key"] for p in prepared]).astype(np.uint32)

    def index_rows(self, prepared: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """What the index keeps of one reference: keys, and per hash its time, span, pitch and near bits.

        Returns
        -------
        keys : uint32 ``[shape=(n,)]``
        extra : ``{"t", "span", "pitch": float32 [shape=(n,)], "near": uint16 [shape=(n,)]}``
        """
        return (np.ascontiguousarray(prepared["key"], np.uint32),
                {k: np.ascontiguousarray(prepared[k]) for k in ("t", "span", "pitch", "near")})

"""audio-voice: who is speaking, as speaker embeddings over the stretches where one voice speaks.

The speaker encoder is GE2E (Wan et al., 2018) as trained for Resemblyzer: a
3-layer LSTM over 40-band mel frames of 16 kHz audio, giving a unit 256-d
d-vector per 1.6-second window. Its weights, ``pretrained.pt`` (Apache-2.0), ship
inside the PyPI package ``resemblyzer==0.1.4``; they are loaded here, where pip put
them (``torch.load(weights_only=True)``), into a small module of our own, so the
package's own code and its old helpers (``webrtcvad``'s sdist, which needs
``pkg_resources``) are never imported: the package is installed ``--no-deps``
(``make demo`` and ``make test`` do it). Speech is found with Silero VAD (MIT), its
ONNX model read from the ``silero-vad`` package and run on onnxruntime: unlike the
WebRTC detector, which calls most of a music track speech (84% of a 30-second
orchestral excerpt here), it gives music and tones no speech at all.

Each file is read once, in chunks (:class:`scanner.features.base.AudioFeaturizer`):
resampled to 16 kHz, its 32-ms frames judged speech or not (Silero VAD), and speech
gathered into *stretches*: a pause longer than
:data:`STRETCH_GAP` ends one. Each stretch is cut into 1.6-second windows
(half overlapping) whose d-vectors are averaged (GE2E's utterance embedding). Music
and effects without speech give no stretch, so no evidence. Only per-window vectors
and the current stretch's samples are kept, never the whole signal.

A reference's stretches are also described as heard through two other channels
(:data:`CHANNELS`): a telephone line (8 kHz, 300-3400 Hz, G.711 mu-law) and a
noisy room (pink noise at :data:`NOISE_SNR_DB`). The encoder hears a channel as much
as a voice (a line through a telephone band is at cosine 0.69 from itself as
recorded, the other lead voice of the same game at 0.58), so a talent enrolled
from studio recordings alone is not recognised over a phone; enrolled through the
channels too, the voice is compared like with like (multi-condition enrolment).

Speaker encoders take a cloned or generated voice for the speaker: that is what is
wanted here, and it also means they cannot tell a consented recording from a
generated one (the decision ledger records which it was).
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from scanner.errors import ModelError
from scanner.features.base import AudioFeaturizer
from scanner.models import file_sha256, package_folder

PACKAGE = "resemblyzer"
PACKAGE_VERSION = "0.1.4"
INSTALL = (f"pip install --no-deps {PACKAGE}=={PACKAGE_VERSION}; pip install silero-vad torch "
           "(make demo and make test install them)")
LICENCE = (f"{PACKAGE} {PACKAGE_VERSION}: GE2E speaker encoder weights (pretrained.pt), Apache-2.0; "
           "silero-vad: Silero VAD, MIT")
#: Silero VAD's model that takes a sequence of frames with the recurrent state carried between calls.
VAD_MODEL = "silero_vad_16k_sequence.onnx"
WEIGHTS = "pretrained.pt"
#: The encoder's sample rate, mel bands and frames per window (1.6 s at 10-ms hops).
SR = 16000
N_MELS = 40
N_FFT = 400      # 25 ms
HOP = 160        # 10 ms
WINDOW_FRAMES = 160
#: Hop between windows (frames): half overlapping, as Resemblyzer's partial utterances.
WINDOW_HOP = 80
#: VAD frame (samples at 16 kHz: 32 ms), the context it sees of the frame before, and the
#: speech probability that calls a frame speech (Silero's own default).
VAD_FRAME = 512
VAD_CONTEXT = 64
VAD_THRESHOLD = 0.5
#: A pause this long (seconds) ends a stretch of one voice.
STRETCH_GAP = 1.0
#: Speech a stretch needs (seconds) to be described: a word or two says too little of a voice.
MIN_SPEECH = 1.0
#: A stretch is closed after this much speech even without a pause (memory stays bounded, and a
#: long take is judged in parts).
MAX_SPEECH = 30.0
#: Quiet speech is raised to this level before the mel frames (Resemblyzer's normalisation, never lowered).
TARGET_DBFS = -30.0
#: Windows embedded per batch.
BATCH = 64
#: The channels a reference's stretches are described through (module docstring); a stretch's
#: ``channel`` is its number here. An output's stretches are described as they are (0).
CHANNELS = ("as recorded", "over a telephone line", "in a noisy room")
#: Signal-to-noise ratio (dB) of the noisy-room channel.
NOISE_SNR_DB = 12.0
#: What a file's stretches are kept as: the averaged d-vector, start and duration in the file
#: (seconds), the seconds of speech inside it, and the channel it was described through.
STRETCH_DTYPE = np.dtype([("emb", np.float32, (256,)), ("start", np.float32), ("duration", np.float32),
                          ("speech", np.float32), ("channel", np.uint8)])


def weights_file() -> Path | None:
    """The installed encoder weights, or None when the package is absent."""
    folder = package_folder("resemblyzer")
    path = None if folder is None else folder / WEIGHTS
    return path if path is not None and path.is_file() else None


def vad_file() -> Path | None:
    """Silero VAD's installed ONNX model, or None when the package is absent."""
    folder = package_folder("silero_vad")
    path = None if folder is None else folder / "data" / VAD_MODEL
    return path if path is not None and path.is_file() else None


def available() -> bool:
    """Whether audio-voice can run here: the encoder's weights, torch and the VAD model are installed."""
    import importlib.util

    return (weights_file() is not None and vad_file() is not None
            and importlib.util.find_spec("torch") is not None)


class _Encoder(threading.local):
    """The GE2E encoder and the VAD session, one per thread (their buffers are not shared)."""

    def get(self) -> Any:
        if getattr(self, "model", None) is None:
            self.model = load_encoder()
        return self.model

    def vad(self) -> Any:
        if getattr(self, "session", None) is None:
            import onnxruntime as ort

            path = vad_file()
            if path is None:
                raise ModelError(f"audio-voice needs Silero VAD's model: {INSTALL}")
            opts = ort.SessionOptions()
            opts.intra_op_num_threads = opts.inter_op_num_threads = 1   # a few ms a minute of audio
            self.session = ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
        return self.session


_ENCODER = _Encoder()


def load_encoder() -> Any:
    """GE2E's LSTM and projection with the package's weights, in eval mode.

    Raises
    ------
    ModelError : the package (or torch) is not installed
    """
    path = weights_file()
    if path is None or not available():
        raise ModelError(f"audio-voice needs the {PACKAGE} weights, torch and silero-vad: {INSTALL}")
    import torch
    from torch import nn

    class GE2E(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lstm = nn.LSTM(N_MELS, 256, 3, batch_first=True)
            self.linear = nn.Linear(256, 256)

        def forward(self, mels: Any) -> Any:
            _, (hidden, _) = self.lstm(mels)
            e = torch.relu(self.linear(hidden[-1]))
            return e / torch.norm(e, dim=1, keepdim=True).clamp_min(1e-12)

    state = torch.load(path, map_location="cpu", weights_only=True)["model_state"]
    model = GE2E()
    # the training-time similarity scale and bias are not part of the encoder
    model.load_state_dict({k: v for k, v in state.items() if k.startswith(("lstm.", "linear."))}, strict=True)
    return model.eval()


def mel_frames(wav: np.ndarray) -> np.ndarray:
    """Power mel frames of 16-kHz audio, float32 ``[shape=(frames, 40)]`` (the encoder takes them unlogged)."""
    import librosa

    return librosa.feature.melspectrogram(y=wav, sr=SR, n_fft=N_FFT, hop_length=HOP, n_mels=N_MELS).T.astype(
        np.float32)


def window_starts(n_frames: int) -> np.ndarray:
    """First frames of a stretch's windows: every :data:`WINDOW_HOP`, the last one ending at the stretch's end
    (a stretch shorter than a window gives one window, padded)."""
    if n_frames <= WINDOW_FRAMES:
        return np.zeros(1, np.int64)
    starts = np.arange(0, n_frames - WINDOW_FRAMES + 1, WINDOW_HOP)
    if starts[-1] + WINDOW_FRAMES < n_frames:
        starts = np.append(starts, n_frames - WINDOW_FRAMES)
    return starts


def embed_windows(mels: Sequence[np.ndarray]) -> np.ndarray:
    """d-vectors of mel windows ``[shape=(160, 40)]`` each: float32 ``[shape=(n, 256)]``, unit length."""
    import torch

    if not mels:
        return np.zeros((0, 256), np.float32)
    model = _ENCODER.get()
    out = []
    with torch.inference_mode():
        for lo in range(0, len(mels), BATCH):
            out.append(model(torch.from_numpy(np.stack(mels[lo:lo + BATCH]))).numpy())
    return np.concatenate(out).astype(np.float32)


def stretch_embedding(wav: np.ndarray) -> np.ndarray:
    """The averaged d-vector of one stretch of speech (16 kHz float32), unit length ``[shape=(256,)]``."""
    rms = float(np.sqrt(np.mean(np.square(wav, dtype=np.float64)))) if len(wav) else 0.0
    if rms > 0:
        gain_db = TARGET_DBFS - 20 * np.log10(rms)
        if gain_db > 0:  # only quiet speech is raised
            wav = wav * np.float32(10 ** (gain_db / 20))
    need = max(len(wav), WINDOW_FRAMES * HOP)
    mel = mel_frames(np.pad(wav, (0, need - len(wav))))
    vecs = embed_windows([mel[s:s + WINDOW_FRAMES] for s in window_starts(len(mel))])
    e = vecs.mean(axis=0)
    return (e / max(float(np.linalg.norm(e)), 1e-12)).astype(np.float32)


def telephone_band(wav: np.ndarray) -> np.ndarray:
    """16-kHz audio as a telephone line carries it: 8 kHz, 300-3400 Hz, G.711 mu-law (8 bits).

    Parameters
    ----------
    wav : float32 ``[shape=(n,)]`` at :data:`SR`

    Returns
    -------
    float32 ``[shape=(n,)]`` at :data:`SR`, the same length
    """
    from scipy import signal

    if not len(wav):
        return np.zeros(0, np.float32)
    y = signal.resample_poly(np.asarray(wav, np.float64), 1, 2)
    y = signal.sosfilt(signal.butter(4, [300, 3400], btype="bandpass", fs=SR // 2, output="sos"), y)
    peak = float(np.abs(y).max())
    if peak > 0:
        mu = 255.0
        y = y / peak
        q = np.round(np.sign(y) * np.log1p(mu * np.abs(y)) / np.log1p(mu) * 127) / 127
        y = np.sign(q) * np.expm1(np.abs(q) * np.log1p(mu)) / mu * peak
    out = signal.resample_poly(y, 2, 1)[:len(wav)]
    return np.pad(out, (0, len(wav) - len(out))).astype(np.float32)


def noisy_room(wav: np.ndarray, snr_db: float = NOISE_SNR_DB) -> np.ndarray:
    """16-kHz audio under pink noise at ``snr_db`` below its own power, float32 ``[shape=(n,)]``.

    The noise is drawn from a generator seeded by the length: the same stretch
    always gets the same noise (an index build is repeatable).
    """
    n = len(wav)
    if not n:
        return np.zeros(0, np.float32)
    white = np.fft.rfft(np.random.default_rng(n).standard_normal(n))
    pink = np.fft.irfft(white / np.sqrt(np.maximum(np.arange(len(white)), 1)), n)
    power = float(np.mean(np.square(wav, dtype=np.float64)))
    pink *= np.sqrt(power / max(float(np.mean(pink ** 2)), 1e-20) / 10 ** (snr_db / 10))
    return (wav + pink).astype(np.float32)


#: How each channel of :data:`CHANNELS` after the first is made from a stretch.
_THROUGH = (telephone_band, noisy_room)


class Voice(AudioFeaturizer):
    """Speaker embeddings of the stretches of speech in a recording or soundtrack.

    ``finish`` gives ``[shape=(n,)]`` of :data:`STRETCH_DTYPE`, one per stretch of at
    least :data:`MIN_SPEECH` seconds of speech (none for music, effects or silence); a
    reference's, one per stretch and channel (:data:`CHANNELS`), stretch-major.
    """

    name = "audio-voice"
    kind = "voice"
    metric = "ip"
    codes_per_item = 0
    embeds_with_model = True
    for_talents = True

    @property
    def version(self) -> str:
        return f"ge2e-silero{VAD_THRESHOLD:g}-gap{STRETCH_GAP:g}-2"

    @property
    def dim(self) -> int:
        return 256

    @property
    def model_id(self) -> str:
        path = weights_file()
        if path is None:
            raise ModelError(f"audio-voice needs the {PACKAGE} weights: {INSTALL}")
        return f"ge2e-resemblyzer-{PACKAGE_VERSION}:{file_sha256(path)[:16]}"

    def start(self, *, sr: int, reference: bool = False) -> dict[str, Any]:
        import soxr

        return {"resample": soxr.ResampleStream(sr, SR, 1, dtype="float32"),
                "pending": np.zeros(0, np.float32), "t": 0,                 # 16-kHz samples judged so far
                "context": np.zeros(VAD_CONTEXT, np.float32),
                "h": np.zeros((1, 1, 128), np.float32), "c": np.zeros((1, 1, 128), np.float32),
                "speech": [], "held": [], "voiced": 0, "speech_start": None, "speech_end": 0, "quiet": 0,
                "out": [], "reference": reference}

    def update(self, state: dict[str, Any], chunk: Any) -> None:
        y = state["resample"].resample_chunk(np.asarray(chunk.y, np.float32), last=bool(chunk.last))
        buf = np.concatenate([state["pending"], y])
        whole = len(buf) // VAD_FRAME * VAD_FRAME
        frames, state["pending"] = buf[:whole].reshape(-1, VAD_FRAME), buf[whole:]
        for frame, p in zip(frames, self._speech_probability(state, frames)):
            t0 = state["t"]
            state["t"] += VAD_FRAME
            if p >= VAD_THRESHOLD:
                if state["speech_start"] is None:
                    state["speech_start"] = t0
                # the stretch as heard, its short pauses kept (a voice is not its syllables cut apart)
                state["speech"].extend(state["held"])
                state["speech"].append(frame)
                state["held"], state["voiced"] = [], state["voiced"] + 1
                state["speech_end"], state["quiet"] = state["t"], 0
                if state["voiced"] * VAD_FRAME / SR >= MAX_SPEECH:
                    self._close(state)
            elif state["speech_start"] is not None:
                state["quiet"] += VAD_FRAME
                state["held"].append(frame)   # kept if speech follows within the gap
                if state["quiet"] >= STRETCH_GAP * SR:
                    self._close(state)
        if chunk.last:
            self._close(state)

    @staticmethod
    def _speech_probability(state: dict[str, Any], frames: np.ndarray) -> np.ndarray:
        """Silero VAD's speech probability of each frame, its recurrent state carried in ``state``."""
        if not len(frames):
            return np.zeros(0, np.float32)
        before = np.concatenate([state["context"][None], frames[:-1, -VAD_CONTEXT:]])
        state["context"] = frames[-1, -VAD_CONTEXT:].copy()
        p, state["h"], state["c"] = _ENCODER.vad().run(
            ["speech_probs", "hn", "cn"],
            {"input": np.ascontiguousarray(np.concatenate([before, frames], axis=1), np.float32),
             "h": state["h"], "c": state["c"]})
        return np.asarray(p).reshape(-1)

    @staticmethod
    def _close(state: dict[str, Any]) -> None:
        """End the current stretch: embed it (from its first to its last speech, short pauses
        included) when it holds enough speech."""
        if state["speech_start"] is not None and state["voiced"] * VAD_FRAME / SR >= MIN_SPEECH:
            wav = np.concatenate(state["speech"])
            heard = [wav] + ([through(wav) for through in _THROUGH] if state["reference"] else [])
            rows = np.zeros(len(heard), STRETCH_DTYPE)
            rows["emb"] = [stretch_embedding(w) for w in heard]
            rows["start"] = state["speech_start"] / SR
            rows["duration"] = (state["speech_end"] - state["speech_start"]) / SR
            rows["speech"] = state["voiced"] * VAD_FRAME / SR
            rows["channel"] = np.arange(len(heard))
            state["out"].append(rows)
        state["speech"], state["held"], state["voiced"], state["speech_start"], state["quiet"] = [], [], 0, None, 0

    def finish(self, state: dict[str, Any]) -> np.ndarray:
        self._close(state)
        return np.concatenate(state["out"]) if state["out"] else np.zeros(0, STRETCH_DTYPE)

    def index_rows(self, prepared: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        return (np.ascontiguousarray(prepared["emb"], np.float32),
                {"start": np.ascontiguousarray(prepared["start"]), "duration": np.ascontiguousarray(prepared["duration"]),
                 "speech": np.ascontiguousarray(prepared["speech"]),
                 "channel": np.ascontiguousarray(prepared["channel"])})

    def embed(self, prepared: Sequence[np.ndarray]) -> np.ndarray:
        return np.concatenate([p["emb"] for p in prepared]) if prepared else np.zeros((0, 256), np.float32)

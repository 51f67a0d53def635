"""Decode video safely: scene-cut keyframes as pictures, the soundtrack as audio chunks.

A video reaches the featurizers through the two paths that already exist:

* its **keyframes** — the first frame, the first frame after each cut, and a
  frame every few seconds of a long shot whose picture drifts — are RGB
  pictures of bounded size, prepared by the image featurizers exactly as image
  files are;
* its **soundtrack** is an :class:`scanner.media.Audio` whose chunks come from
  PyAV instead of libsndfile or ffmpeg, so mixing to mono, resampling, the
  silence test and the audio featurizers' ``start``/``update``/``finish`` loop
  are the audio files' own.

Memory is bounded whatever the length: frames are decoded one at a time and
dropped, only keyframes leave this module (at most :data:`MAX_KEYFRAMES`, their
spacing widened for very long files), and the soundtrack streams in chunks.
Nothing here knows about features, indexes or reports.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from scanner import media
from scanner.errors import DecodeError, ParameterError

__all__ = [
    "VIDEO_EXTENSIONS",
    "Keyframe",
    "Video",
    "open_video",
    "timecode",
]

VIDEO_EXTENSIONS = media.VIDEO_EXTENSIONS

#: Seconds between the frames looked at for cuts (every frame is decoded, since
#: inter-coded frames need their predecessors, but only these are compared).
SAMPLE_STEP: float = 0.2
#: Side (pixels) of the grey thumbnails compared to find cuts.
_PROBE_W, _PROBE_H = 64, 36
#: A thumbnail pixel whose grey level moved by more than this (0..1) has changed.
_PIXEL_CHANGE: float = 0.08
#: Share of changed pixels, against the last keyframe, that makes a cut. A share
#: rather than a mean difference: two drawings on white differ in few pixels,
#: but those pixels differ a lot.
CUT_SHARE: float = 0.12
#: Share of changed pixels from one looked-at frame to the next that makes an
#: abrupt cut in a still or slow scene (a small drawing on white replaced by
#: another changes a few percent of the picture at once) ...
ABRUPT_SHARE: float = 0.004
#: ... as long as it is this many times the scene's recent frame-to-frame change
#: (its motion): a moving scene changes that much all the time.
ABRUPT_OVER_MOTION: float = 4.0
#: Share that makes a long shot's picture worth another keyframe.
DRIFT_SHARE: float = 0.02
#: Seconds of a long shot after which a drifted picture is taken again.
LONG_SHOT: float = 4.0
#: Fewest seconds between keyframes (bursts of cuts or fast motion).
MIN_GAP: float = 0.5
#: Most keyframes of one file; a longer file's gaps widen to stay below it, so
#: a feature film costs bounded memory and time.
MAX_KEYFRAMES: int = 2000
#: Threads of swscale's conversions (frame to grey thumbnail, frame to picture). One: our
#: pictures are small and few, and PyAV (from 18.1.1) keeps each thread's converter, with
#: its pool of threads, for the thread's whole life. A process forked from one where such a
#: pool lives frees the converter (Python clears the other threads' thread-locals in the
#: child) and waits for ever on the pool's threads, which stayed in the parent: a scan's
#: decode workers or the server's picture workers, forked while a thread had decoded video.
_SWS_THREADS: int = 1
#: Decode errors (bad packets) tolerated before a file is called corrupt.
MAX_BAD_PACKETS: int = 25


def timecode(seconds: float | None) -> str:
    """``mm:ss.ff`` (``h:mm:ss.ff`` past an hour); ``ff`` is hundredths of a second.

    Examples
    --------
    >>> timecode(83.456)
    '01:23.46'
    >>> timecode(3725.0)
    '1:02:05.00'
    """
    if seconds is None:
        return ""
    cs = int(round(max(float(seconds), 0.0) * 100))
    h, rest = divmod(cs, 360000)
    m, rest = divmod(rest, 6000)
    s, ff = divmod(rest, 100)
    return f"{h}:{m:02d}:{s:02d}.{ff:02d}" if h else f"{m:02d}:{s:02d}.{ff:02d}"


@dataclass(frozen=True)
class Keyframe:
    """A frame that goes to the image featurizers.

    Attributes
    ----------
    time : float, seconds from the start of the video stream
    image : PIL.Image.Image [mode="RGB"], longer side at most the ``max_side`` asked for
    reason : ``"first"``, ``"cut"`` or ``"long shot"``
    """

    time: float
    image: Image.Image
    reason: str


def _stream_length(container, stream) -> float | None:
    """Seconds one stream lasts per the file's headers, or ``None`` when they do not say.

    The stream's own duration (mp4), else its ``DURATION`` tag (Matroska: the
    stream's end time), else the container's when the stream is alone in it:
    streams may legitimately end apart, so another stream's length is no
    measure of this one.
    """
    base = float(stream.time_base) if stream.time_base else 0.0
    start = stream.start_time * base if stream.start_time is not None and base else 0.0
    if stream.duration and base:
        return float(stream.duration * base)
    tag = (stream.metadata or {}).get("DURATION") or (stream.metadata or {}).get("duration")
    if tag:
        try:
            h, m, sec = str(tag).split(":")
            return max(int(h) * 3600 + int(m) * 60 + float(sec) - start, 0.0)
        except ValueError:
            pass
    if len(container.streams) == 1 and container.duration:
        return max(container.duration / 1e6 - start, 0.0)
    return None


def _check_complete(path: Path, what: str, reached: float, length: float | None, max_seconds: float,
                    last: float) -> None:
    """Raise when a stream ended well before the length its header gives (a truncated or garbled file).

    Demuxers resynchronise over damage silently, or stop at it: a file cut at a
    fifth would otherwise be judged on its first fifth. ``reached`` is where
    the last decoded frame starts, ``last`` its own duration (seconds); up to
    1 s or 1% short is allowed (headers round, and soundtracks end early).
    """
    if not length or length <= 0:
        return
    expected = min(float(length), max_seconds)
    if reached + last < expected - max(1.0, 0.01 * expected):
        raise DecodeError(path, f"truncated or corrupt {what} (decoded {timecode(reached + last)} of "
                                f"{timecode(expected)})")


def _changed(a: np.ndarray, b: np.ndarray) -> float:
    """Share of thumbnail pixels whose grey level moved by more than :data:`_PIXEL_CHANGE`."""
    return float(np.mean(np.abs(a - b) > _PIXEL_CHANGE * 255))


def _av():
    import av  # noqa: PLC0415 - heavy; only video inputs need it

    return av


def _reason(exc: BaseException) -> str:
    return media._detail(exc)


@contextlib.contextmanager
def _decoding(path: Path, what: str) -> Iterator[None]:
    """Map what PyAV raises while decoding ``what`` ("video", "soundtrack") to a DecodeError naming the file."""
    av = _av()
    try:
        yield
    except DecodeError:
        raise
    except av.FFmpegError as exc:
        raise DecodeError(path, f"truncated or corrupt {what} ({_reason(exc)})") from None
    except MemoryError:
        raise DecodeError(path, f"not enough memory to decode the {what}") from None


class Video:
    """An opened video file. Use :func:`open_video`.

    Every call of :meth:`keyframes` or :meth:`soundtrack` decodes the file anew.

    Attributes
    ----------
    path : Path
    duration : float or None, seconds per the container
    has_video, has_audio : bool, whether a decodable stream of that kind exists
    width, height : int, the video stream's size in pixels (0 without video)
    fps : float or None, average frame rate
    audio_offset : float, seconds of the picture's timeline at which the soundtrack starts
    codec : str, the video codec's name ("" without video)
    frames_decoded : int, frames decoded by the last :meth:`keyframes` pass
    frames_looked_at : int, frames compared for cuts by that pass
    bad_packets : int, packets the decoder rejected in that pass (tolerated up
        to :data:`MAX_BAD_PACKETS`)
    """

    def __init__(self, path: Path, *, duration: float | None, has_video: bool, has_audio: bool, width: int,
                 height: int, fps: float | None, codec: str, audio_sr: int, channels: int, max_seconds: float):
        self.path = path
        self.duration = duration
        self.has_video = has_video
        self.has_audio = has_audio
        self.width = width
        self.height = height
        self.fps = fps
        self.codec = codec
        self.audio_sr = audio_sr
        self.channels = channels
        self.max_seconds = max_seconds
        self.frames_decoded = 0
        self.frames_looked_at = 0
        self.bad_packets = 0
        #: seconds from the first frame to the first sound (streams of a container may start apart)
        self.audio_offset = 0.0
        #: positions of the chosen streams among the container's video / audio streams
        self._video_stream = 0
        self._audio_stream = 0

    def __repr__(self) -> str:
        return (f"Video({str(self.path)!r}, {self.width}x{self.height}, codec={self.codec!r}, fps={self.fps}, "
                f"duration={self.duration}, audio={self.has_audio})")

    def min_gap(self) -> float:
        """Fewest seconds between keyframes for this file (wider past :data:`MAX_KEYFRAMES`)."""
        length = min(self.duration or 0.0, self.max_seconds)
        return max(MIN_GAP, length / MAX_KEYFRAMES)

    def keyframes(self, *, max_side: int = 512, step: float = SAMPLE_STEP,
                  skip_b_frames: bool | None = None) -> Iterator[Keyframe]:
        """Decode the video stream, yielding the frames worth checking.

        A frame is looked at every ``step`` seconds and reduced to a small grey
        thumbnail; it becomes a keyframe when it is the first, when its
        picture differs from the last keyframe's in at least
        :data:`CUT_SHARE` of its pixels (a cut, or a pan that has moved on),
        when it changed abruptly from the frame looked at before (at least
        :data:`ABRUPT_SHARE` of its pixels and :data:`ABRUPT_OVER_MOTION`
        times the scene's recent motion: a cut between two stills that
        differ in a small area), or when a long shot has run
        :data:`LONG_SHOT` seconds and its picture drifted by
        :data:`DRIFT_SHARE` (a frozen shot is checked once). Two keyframes
        are at least :meth:`min_gap` apart; a cut inside the gap is taken at
        the gap's end if the picture still differs.

        Parameters
        ----------
        max_side : int > 0
            Longer side of the keyframes' pictures, in pixels (never enlarged).
        step : float > 0
            Seconds between frames looked at.
        skip_b_frames : bool or None
            Leave B-frames undecoded (no other frame needs them); ``None``: when
            there are at least four frames per look (a look then lands at most
            three frames late). Decoding costs about half as much.

        Yields
        ------
        Keyframe
            In time order; none if the file has no video stream.

        Raises
        ------
        DecodeError
            When the stream turns out corrupt part way, naming the file.
        """
        if not isinstance(max_side, int) or max_side < 1:
            raise ParameterError(f"max_side must be a positive integer, given max_side={max_side!r}")
        if not step > 0:
            raise ParameterError(f"step must be positive, given step={step!r}")
        self.frames_decoded = self.frames_looked_at = self.bad_packets = 0
        if not self.has_video:
            return
        av = _av()
        scale = min(1.0, max_side / max(self.width, self.height, 1))
        out_w, out_h = max(1, round(self.width * scale)), max(1, round(self.height * scale))
        gap = self.min_gap()
        with _decoding(self.path, "video"), av.open(str(self.path)) as container:
            stream = container.streams.video[self._video_stream]
            stream.thread_type = "AUTO"  # slice/frame threads inside libavcodec, outside the GIL
            if skip_b_frames or (skip_b_frames is None and (self.fps or 0.0) * step >= 4):
                stream.codec_context.skip_frame = "BIDIR"
            base = float(stream.time_base) if stream.time_base else 0.0
            origin = stream.start_time * base if stream.start_time is not None else None
            next_look = 0.0
            reached = 0.0  # time of the latest frame decoded
            last_probe: np.ndarray | None = None  # the last keyframe's
            prev_probe: np.ndarray | None = None  # the last looked-at frame's
            motion = 0.0  # running share of pixels changed between looked-at frames
            pending = False  # an abrupt change came inside the gap
            last_time = -np.inf
            for frame in self._frames(container, stream):
                self.frames_decoded += 1
                if frame.pts is not None and base:
                    t = frame.pts * base
                    origin = t if origin is None else origin
                    t -= origin
                else:  # no timestamps: count frames
                    t = (self.frames_decoded - 1) / (self.fps or 25.0)
                if t > self.max_seconds:
                    break
                reached = max(reached, t)
                if t + 1e-6 < next_look:
                    continue
                next_look = t + step
                self.frames_looked_at += 1
                # AREA: the fastest, and it averages
                probe = frame.to_ndarray(width=_PROBE_W, height=_PROBE_H, format="gray", interpolation="AREA",
                                         threads=_SWS_THREADS).astype(np.float32)
                if prev_probe is not None:
                    step_share = _changed(probe, prev_probe)
                    pending |= step_share >= max(ABRUPT_SHARE, ABRUPT_OVER_MOTION * motion)
                    motion = 0.7 * motion + 0.3 * step_share
                prev_probe = probe
                reason = None
                if last_probe is None:
                    reason = "first"
                elif t - last_time >= gap - 1e-6:
                    share = _changed(probe, last_probe)
                    if share >= CUT_SHARE or (pending and share >= ABRUPT_SHARE):
                        reason = "cut"
                    elif t - last_time >= LONG_SHOT and share >= DRIFT_SHARE:
                        reason = "long shot"
                    pending = False if reason else pending
                if reason is None:
                    continue
                last_probe, last_time = probe, t
                image = frame.to_image(width=out_w, height=out_h, threads=_SWS_THREADS)
                yield Keyframe(round(t, 3), image if image.mode == "RGB" else image.convert("RGB"), reason)
            _check_complete(self.path, "video", reached, _stream_length(container, stream), self.max_seconds,
                            1.0 / (self.fps or 25.0))

    def frame_at(self, seconds: float, *, max_side: int = 512) -> Image.Image:
        """The frame shown at ``seconds`` (from the video stream's start), as RGB, longer side at most ``max_side``.

        Seeks to the keyframe before and decodes forward, so it costs one
        group of pictures, not the file up to there.

        Raises
        ------
        DecodeError
            No video stream, or it does not decode there.
        """
        if not self.has_video:
            raise DecodeError(self.path, "no video stream")
        av = _av()
        scale = min(1.0, max_side / max(self.width, self.height, 1))
        size = dict(width=max(1, round(self.width * scale)), height=max(1, round(self.height * scale)))
        try:
            with av.open(str(self.path)) as container:
                stream = container.streams.video[self._video_stream]
                base = float(stream.time_base)
                origin = stream.start_time or 0
                container.seek(origin + int(max(seconds, 0.0) / base), stream=stream, backward=True)
                last = None
                for frame in self._frames(container, stream):
                    if last is not None and frame.pts is not None and (frame.pts - origin) * base > seconds + 1e-3:
                        break
                    last = frame
                if last is None:
                    raise DecodeError(self.path, f"no frame at {timecode(seconds)}")
                return last.to_image(**size, threads=_SWS_THREADS).convert("RGB")
        except DecodeError:
            raise
        except av.FFmpegError as exc:
            raise DecodeError(self.path, f"truncated or corrupt video ({_reason(exc)})") from None

    def _frames(self, container, stream) -> Iterator:
        """Decoded frames of ``stream``, passing over up to :data:`MAX_BAD_PACKETS` bad packets."""
        av = _av()
        for packet in container.demux(stream):
            try:
                frames = packet.decode()
            except av.error.InvalidDataError as exc:
                self.bad_packets += 1
                if self.bad_packets > MAX_BAD_PACKETS:
                    raise DecodeError(self.path, f"truncated or corrupt video ({self.bad_packets} bad packets; "
                                                 f"last: {_reason(exc)})") from None
                continue
            yield from frames

    def soundtrack(self, *, sr: int = media.ANALYSIS_SR) -> media.Audio | None:
        """The first audio stream as :class:`scanner.media.Audio` (chunked, mono, at ``sr``), or ``None``."""
        if not self.has_audio:
            return None
        track = _Soundtrack(self.path, sr=sr, source_sr=self.audio_sr, channels=self.channels,
                            duration=self.duration, backend="pyav", max_seconds=self.max_seconds)
        track._stream = self._audio_stream
        return track


class _Soundtrack(media.Audio):
    """A video's audio stream: :class:`scanner.media.Audio` with PyAV as the block source."""

    _stream = 0  # position among the container's audio streams

    def _blocks(self, block: int) -> Iterator[np.ndarray]:
        av = _av()
        with _decoding(self.path, "soundtrack"), av.open(str(self.path)) as container:
            stream = container.streams.audio[self._stream]
            # planar float at the stream's own rate and layout: channels are
            # averaged here as libsndfile blocks are, and soxr resamples
            resampler = av.AudioResampler(format="fltp")
            parts: list[np.ndarray] = []
            held = 0
            bad = 0
            total = 0  # samples yielded so far, at the source rate
            for packet in container.demux(stream):
                try:
                    decoded = packet.decode()
                except av.error.InvalidDataError as exc:
                    bad += 1
                    if bad > MAX_BAD_PACKETS:
                        raise DecodeError(self.path, f"truncated or corrupt soundtrack ({bad} bad packets; "
                                                     f"last: {_reason(exc)})") from None
                    continue
                for frame in decoded:
                    for out in resampler.resample(frame):
                        a = out.to_ndarray()
                        parts.append(a.mean(axis=0, dtype=np.float32) if a.shape[0] > 1 else a[0])
                        held += a.shape[1]
                if held >= block:
                    yield np.concatenate(parts)
                    total += held
                    parts, held = [], 0
            for out in resampler.resample(None):
                a = out.to_ndarray()
                parts.append(a.mean(axis=0, dtype=np.float32) if a.shape[0] > 1 else a[0])
            if parts:
                yield np.concatenate(parts)
            total += sum(len(p) for p in parts)
            _check_complete(self.path, "soundtrack", total / self.source_sr, _stream_length(container, stream),
                            self.max_seconds, 0.0)


def thumbnail_at(path: str | Path, seconds: float) -> bytes | None:
    """A report thumbnail (:func:`scanner.thumbs.encode`) of a video's frame at ``seconds``, or ``None``."""
    from scanner import thumbs

    try:
        return thumbs.encode(open_video(path).frame_at(seconds, max_side=2 * thumbs.SIDE))
    except DecodeError:
        return None


def soundtrack_strip(path: str | Path) -> tuple[bytes, dict[str, float]] | None:
    """A spectrogram strip of a video's soundtrack and ``{"duration": seconds}``
    (:class:`scanner.thumbs.StripBuilder`), or ``None``."""
    from scanner import thumbs

    try:
        track = open_video(path).soundtrack()
        if track is None:
            return None
        builder = thumbs.StripBuilder(track.sr)
        for chunk in track.chunks():
            builder.update(chunk.y)
    except DecodeError:
        return None
    return builder.finish(), {"duration": round(builder.duration, 3)}


def _looks_like_video(path: Path) -> bool:
    """Whether the file's first bytes carry a video container's signature."""
    try:
        with open(path, "rb") as f:
            return media._sniff_bytes(f.read(32)) == "video"
    except OSError:
        return False


def open_video(path: str | Path, *, max_seconds: float = media.DEFAULT_MAX_SECONDS) -> Video:
    """Open a video file, checking that it holds a decodable video or audio stream.

    Only the container header is read here (PyAV / libavformat); frames and
    samples are decoded by :meth:`Video.keyframes` and :meth:`Video.soundtrack`.

    Parameters
    ----------
    path : str or Path
        The video file (mp4, mov, mkv, webm, avi, mpeg-ts, ...).
    max_seconds : float > 0
        Decode at most this many seconds of either stream (duration cap).

    Returns
    -------
    video : Video

    Raises
    ------
    DecodeError
        "no such file", "permission denied", "is a directory", "zero-byte
        file", "not a recognised video format", "no video or audio stream",
        "unsupported video codec (...)", "video too large: W x H pixels ...",
        naming the file. No other exception escapes for a bad file.
    ParameterError
        If ``max_seconds`` is not positive.
    """
    if not max_seconds > 0:
        raise ParameterError(f"max_seconds must be positive, given max_seconds={max_seconds!r}")
    path = Path(path)
    media.regular_file(path)
    try:
        av = _av()
    except ImportError:
        raise DecodeError(path, "video needs PyAV (pip install av), which is not installed") from None
    try:
        with av.open(str(path)) as container:
            duration = container.duration / 1e6 if container.duration else None
            vpos = next((i for i, s in enumerate(container.streams.video) if s.codec_context is not None
                         and s.codec_context.width > 0), None)
            apos = next((i for i, s in enumerate(container.streams.audio) if s.codec_context is not None
                         and s.codec_context.sample_rate > 0), None)
            vs = container.streams.video[vpos] if vpos is not None else None
            aus = container.streams.audio[apos] if apos is not None else None
            if vs is None and aus is None:
                if container.streams.video or container.streams.audio:
                    names = ", ".join(sorted({s.codec_context.name for s in container.streams
                                              if s.codec_context is not None} or {"unknown"}))
                    raise DecodeError(path, f"unsupported codec ({names})")
                raise DecodeError(path, "no video or audio stream")
            width = height = 0
            fps = None
            codec = ""
            if vs is not None:
                width, height = vs.codec_context.width, vs.codec_context.height
                if width * height > media.DEFAULT_MAX_PIXELS:
                    raise DecodeError(path, f"video too large: {width} x {height} pixels exceeds the limit of "
                                            f"{media.DEFAULT_MAX_PIXELS:,} (decompression-bomb guard)")
                fps = float(vs.average_rate) if vs.average_rate else None
                codec = vs.codec_context.name
            video = Video(path, duration=duration, has_video=vs is not None, has_audio=aus is not None,
                          width=width, height=height, fps=fps, codec=codec,
                          audio_sr=int(aus.codec_context.sample_rate) if aus is not None else 0,
                          channels=int(aus.codec_context.layout.nb_channels) if aus is not None else 0,
                          max_seconds=max_seconds)
            video._video_stream, video._audio_stream = vpos or 0, apos or 0
            if vs is not None and aus is not None and vs.start_time is not None and aus.start_time is not None:
                video.audio_offset = round(float(aus.start_time * aus.time_base - vs.start_time * vs.time_base), 3)
            return video
    except DecodeError:
        raise
    except av.error.InvalidDataError:
        if _looks_like_video(path):
            raise DecodeError(path, "truncated or corrupt video (its container cannot be read)") from None
        raise DecodeError(path, "not a recognised video format") from None
    except av.FFmpegError as exc:
        raise DecodeError(path, f"truncated or corrupt video ({_reason(exc)})") from None
    except MemoryError:
        raise DecodeError(path, "not enough memory to read the video header") from None


def write_clip(path: str | Path, shots: list[tuple[Image.Image, float]], *, size: tuple[int, int] = (160, 96),
               fps: int = 10, audio: np.ndarray | None = None, sr: int = 22050, codec: str = "libx264",
               audio_codec: str = "aac") -> Path:
    """Write a video made of still shots, with an optional mono soundtrack (tests, benchmarks, demo).

    Parameters
    ----------
    path : str or Path
        Output file; the container follows the extension (``.mp4``, ``.mkv``, ``.webm`` ...).
    shots : list of (PIL.Image.Image, float)
        Pictures and how many seconds each stays on screen, in order. Each is
        scaled to fit ``size`` (up or down, aspect kept) on a black frame.
    size : (width, height), even numbers of pixels
    fps : frames per second
    audio : np.ndarray [shape=(n,)] float in [-1, 1], or None
        The soundtrack at ``sr`` Hz.
    codec, audio_codec : encoder names as FFmpeg knows them

    Returns
    -------
    path : Path
    """
    av = _av()
    path = Path(path)
    w, h = size
    with av.open(str(path), "w") as container:
        vs = container.add_stream(codec, rate=fps)
        vs.width, vs.height, vs.pix_fmt = w, h, "yuv420p"
        aus = None
        rate = sr
        if audio is not None:
            codec_rates = av.Codec(audio_codec, "w").audio_rates
            # Opus takes 48 kHz only, and a few others a fixed set: the nearest rate above
            rate = sr if not codec_rates or sr in codec_rates else min(
                [r for r in codec_rates if r >= sr] or [max(codec_rates)])
            aus = container.add_stream(audio_codec, rate=rate)
            aus.layout = "mono"
        n = 0
        for picture, seconds in shots:
            canvas = Image.new("RGB", (w, h))
            pic = picture.convert("RGB")
            scale = min(w / pic.width, h / pic.height)
            pic = pic.resize((max(1, round(pic.width * scale)), max(1, round(pic.height * scale))),
                             Image.Resampling.LANCZOS)
            canvas.paste(pic, ((w - pic.width) // 2, (h - pic.height) // 2))
            for _ in range(max(1, round(seconds * fps))):
                frame = av.VideoFrame.from_image(canvas)
                frame.pts = n
                n += 1
                container.mux(vs.encode(frame))
        container.mux(vs.encode(None))
        if aus is not None and audio is not None:
            samples = np.clip(np.asarray(audio, np.float32), -1, 1)
            formats = aus.codec_context.codec.audio_formats
            resampler = av.AudioResampler(format=formats[0].name if formats else "fltp", layout="mono", rate=rate,
                                          frame_size=aus.codec_context.frame_size or None)
            for i in range(0, len(samples), 1024):
                frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(samples[None, i:i + 1024]), format="fltp",
                                                   layout="mono")
                frame.sample_rate, frame.pts = sr, i
                for out in resampler.resample(frame):
                    container.mux(aus.encode(out))
            for out in resampler.resample(None):
                container.mux(aus.encode(out))
            container.mux(aus.encode(None))
    return path

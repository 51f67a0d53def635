"""Video: keyframes and soundtrack decoding, timecoded evidence, video references, the timeline listing.

Every clip is made here with PyAV from synthetic pictures and signals: small
frames (160 x 96), low frame rates, 6-10 s.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from scanner import media, pipeline, video
from scanner.demo import synthetic_picture
from scanner.errors import DecodeError

pytest.importorskip("av")

SR = 22050
FPS = 10
FEATURES = pipeline.FeatureOptions(names=["image-phash", "image-local", "audio-fingerprint"])
#: A keyframe is found within one looked-at frame of a cut.
SLACK = video.SAMPLE_STEP + 1.0 / FPS


def recording(seed: int, seconds: float) -> np.ndarray:
    """Notes with onsets (a melody-like signal that fingerprints well)."""
    rng = np.random.default_rng(seed)
    out = np.zeros(int(SR * seconds), np.float32)
    t = 0.0
    while t < seconds - 0.3:
        d = float(rng.choice([0.15, 0.25, 0.4]))
        n = int(d * SR)
        tt = np.arange(n) / SR
        f = 196.0 * 2 ** (int(rng.integers(0, 24)) / 12)
        out[int(t * SR):][:n] += (0.2 * np.exp(-tt * 4) * sum(np.sin(2 * np.pi * f * h * tt) / h for h in (1, 2, 3)))[
            : len(out[int(t * SR):][:n])]
        t += d
    return out


def hum(seconds: float, f: float = 220.0) -> np.ndarray:
    t = np.arange(int(SR * seconds)) / SR
    return (0.05 * np.sin(2 * np.pi * f * t)).astype(np.float32)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """References (pictures, a recording, a video), their index, and a folder of clips to scan."""
    root = tmp_path_factory.mktemp("video")
    refs = root / "refs"
    refs.mkdir()
    for i in range(6):
        synthetic_picture(i).save(refs / f"work{i}.png")
    song = recording(7, 14.0)
    sf.write(refs / "song.flac", song, SR)
    # a reference video: two shots, the second from 3.0 s
    video.write_clip(refs / "trailer.mp4", [(synthetic_picture(40), 3.0), (synthetic_picture(41), 3.0)], fps=FPS)
    index = root / "index"
    summary = pipeline.build_index([refs], index, options=FEATURES)
    assert summary.added == 8 and not summary.errors

    out = root / "clips"
    out.mkdir()
    # work2 on screen from 3.0 s to 5.0 s, amid unrelated shots
    video.write_clip(out / "picture.mp4", [(synthetic_picture(100), 3.0), (synthetic_picture(2), 2.0),
                                           (synthetic_picture(101), 4.0)], fps=FPS, audio=hum(9.0), sr=SR)
    # the recording from its 4.0 s, heard from 2.0 s of the clip, under unrelated pictures
    track = np.concatenate([hum(2.0), song[4 * SR: 10 * SR], hum(1.0)])
    video.write_clip(out / "sound.mkv", [(synthetic_picture(102), 4.5), (synthetic_picture(103), 4.5)],
                     fps=FPS, audio=track, sr=SR)
    # the trailer's second shot, from 1.0 s of the clip
    video.write_clip(out / "recut.mp4", [(synthetic_picture(104), 1.0), (synthetic_picture(41), 3.0),
                                         (synthetic_picture(105), 2.0)], fps=FPS)
    video.write_clip(out / "unrelated.webm", [(synthetic_picture(106 + k), 2.0) for k in range(4)],
                     fps=FPS, audio=recording(99, 8.0), sr=SR, codec="libvpx", audio_codec="libopus")
    whole = (out / "picture.mp4").read_bytes()
    (out / "corrupt.mp4").write_bytes(whole[: len(whole) // 3])
    return root


@pytest.fixture(scope="module")
def scanned(setup):
    from typer.testing import CliRunner

    from scanner.cli import app

    res = CliRunner().invoke(app, ["scan", str(setup / "clips"), "--index", str(setup / "index"),
                                   "--out", str(setup / "out")])
    lines = {Path(r["path"]).name: r for r in map(json.loads, (setup / "out" / "results.jsonl").read_text().splitlines())}
    return res, lines


def test_sniffed_as_video_by_content_and_name(setup, tmp_path):
    clips = setup / "clips"
    for name in ("picture.mp4", "sound.mkv", "unrelated.webm"):
        renamed = tmp_path / (name + ".bin")
        renamed.write_bytes((clips / name).read_bytes())
        assert media.sniff(renamed) == "video", name
    assert media.sniff(tmp_path / "missing.mov") == "video"
    found = {Path(i.path).name: i.modality for i in media.discover([clips]) if isinstance(i, media.Input)}
    assert found == {"picture.mp4": "video", "sound.mkv": "video", "recut.mp4": "video",
                     "unrelated.webm": "video", "corrupt.mp4": "video"}


def test_keyframes_at_cuts_and_bounded(setup, tmp_path):
    clip = video.open_video(setup / "clips" / "picture.mp4")
    assert (clip.width, clip.height, clip.has_audio) == (160, 96, True)
    keys = list(clip.keyframes(max_side=64))
    times = [k.time for k in keys]
    assert times[0] == 0.0 and len(keys) == 3, times
    assert 3.0 <= times[1] <= 3.0 + SLACK and 5.0 <= times[2] <= 5.0 + SLACK
    assert all(k.image.mode == "RGB" and max(k.image.size) == 64 for k in keys)
    assert clip.frames_decoded == 90 and clip.frames_looked_at < clip.frames_decoded
    # a frozen long shot is checked once; a very long file's keyframes are spaced to stay bounded
    still = video.write_clip(tmp_path / "still.mp4", [(synthetic_picture(3), 12.0)], fps=5)
    assert [k.reason for k in video.open_video(still).keyframes()] == ["first"]
    film = video.open_video(still)
    film.duration = 4 * 3600.0
    assert film.min_gap() * video.MAX_KEYFRAMES >= 4 * 3600.0


def test_small_change_between_stills_is_a_cut(tmp_path):
    """A small drawing on white replaced by another: few pixels change, but all at once."""
    from PIL import Image, ImageDraw

    def icon(x: int) -> Image.Image:
        im = Image.new("RGB", (160, 96), "white")
        ImageDraw.Draw(im).rectangle([x, 40, x + 10, 50], fill="black")
        return im

    path = video.write_clip(tmp_path / "icons.mp4", [(icon(20), 2.0), (icon(120), 2.0)], fps=FPS)
    times = [k.time for k in video.open_video(path).keyframes()]
    assert len(times) == 2 and 2.0 <= times[1] <= 2.0 + SLACK, times


def test_soundtrack_decodes_like_an_audio_file(setup):
    track = video.open_video(setup / "clips" / "sound.mkv").soundtrack()
    y = track.read()
    assert track.sr == media.ANALYSIS_SR and abs(len(y) / track.sr - 9.0) < 0.1
    assert track.featureless() is None
    assert video.open_video(setup / "refs" / "trailer.mp4").soundtrack() is None


@pytest.mark.parametrize("content, reason", [
    (b"", "zero-byte file"),
    (b"\x00\x00\x00\x20ftypisom" + bytes(200), "truncated or corrupt video"),
    (b"hello, not a film" * 10, "not a recognised video format"),
])
def test_bad_files_raise_decode_error(tmp_path, content, reason):
    path = tmp_path / "bad.mp4"
    path.write_bytes(content)
    with pytest.raises(DecodeError, match=reason):
        video.open_video(path)


def test_timecode_text():
    assert video.timecode(83.456) == "01:23.46"
    assert video.timecode(3725.0) == "1:02:05.00"
    assert video.timecode(None) == ""


def test_protected_picture_flagged_at_its_timecode(scanned):
    res, lines = scanned
    assert res.exit_code == 1, res.output
    r = lines["picture.mp4"]
    assert r["verdict"] == "flagged" and r["modality"] == "video", r["reason"]
    m = r["matches"][0]
    assert Path(m["ref_path"]).name == "work2.png"
    assert 3.0 <= m["locator"]["timecode"] <= 3.0 + SLACK and m["locator"]["timecode_text"].startswith("00:03")
    assert r["video"]["keyframes_checked"] == 3 and r["video"]["soundtrack"]
    (shown,) = [e for e in r["video"]["timeline"] if Path(e["ref_path"]).name == "work2.png"]
    assert shown["source"] == "picture" and 3.0 <= shown["start"] <= 3.0 + SLACK
    assert 5.0 <= shown["end"] <= 5.0 + SLACK


def test_protected_recording_flagged_at_its_offset(scanned):
    r = scanned[1]["sound.mkv"]
    assert r["verdict"] == "flagged", r["reason"]
    m = r["matches"][0]
    assert m["feature"] == "audio-fingerprint" and Path(m["ref_path"]).name == "song.flac"
    loc = m["locator"]
    # clip 2.0 s is the recording's 4.0 s
    assert abs((loc["ref_start"] - loc["query_start"]) - 2.0) <= 0.15
    assert 1.8 <= loc["query_start"] <= 5.0 and loc["duration"] >= 2.0
    (span,) = [e for e in r["video"]["timeline"] if e["source"] == "soundtrack"]
    assert span["start"] == pytest.approx(loc["query_start"], abs=0.01)


def test_video_reference_match_says_where_in_the_reference(scanned):
    r = scanned[1]["recut.mp4"]
    assert r["verdict"] == "flagged", r["reason"]
    m = r["matches"][0]
    assert Path(m["ref_path"]).name == "trailer.mp4"
    assert 1.0 <= m["locator"]["timecode"] <= 1.0 + SLACK
    assert 3.0 <= m["locator"]["ref_timecode"] <= 3.0 + SLACK


def test_unrelated_clear_and_corrupt_is_an_error(scanned):
    lines = scanned[1]
    assert lines["unrelated.webm"]["verdict"] == "clear", lines["unrelated.webm"]["reason"]
    assert lines["corrupt.mp4"]["verdict"] == "error" and "corrupt" in lines["corrupt.mp4"]["error"]
    assert len(lines) == 5  # the scan went on past the corrupt file


def test_timeline_csv_lists_every_place(setup, scanned):
    with open(setup / "out" / "timeline.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    where = {(Path(r["deliverable"]).name, Path(r["asset"]).name, r["source"]): r for r in rows}
    assert ("picture.mp4", "work2.png", "picture") in where
    assert ("sound.mkv", "song.flac", "soundtrack") in where
    assert ("recut.mp4", "trailer.mp4", "picture") in where
    assert where[("picture.mp4", "work2.png", "picture")]["start_tc"].startswith("00:03")
    assert not any(Path(r["deliverable"]).name == "unrelated.webm" for r in rows)


def test_each_keyframe_is_a_chance_bonferroni(setup):
    """The same matching keyframe counted among ten is ten times as likely by chance."""
    scanner = pipeline.Scanner(setup / "index")
    try:
        p = pipeline.prepare_one(media.Input(setup / "clips" / "picture.mp4", "video"), scanner.featurizers)
        key = next(q for q in p.parts if q.item.modality == "image" and 2.9 <= (q.timecode or 0) <= 3.5)
        one = pipeline.Prepared(p.item, sha256=p.sha256, parts=[key], video={})
        ten = pipeline.Prepared(p.item, sha256=p.sha256, video={},
                                parts=[pipeline.Prepared(key.item, prepared=key.prepared, timecode=float(t))
                                       for t in range(10)])
        r1, r10 = scanner.judge([one, ten])
    finally:
        scanner.close()
    assert r10.video["keyframes_checked"] == 10
    e1, e10 = r1.matches[0]["expected"], r10.matches[0]["expected"]
    assert e10 == pytest.approx(10 * e1, rel=1e-6)


def test_report_keeps_the_matched_frame_and_the_soundtrack_strip(setup, scanned):
    from scanner import thumbs

    lines = scanned[1]
    frame = thumbs.load(setup / "out" / "thumbs", lines["picture.mp4"]["sha256"])
    assert frame is not None and 3.0 <= frame[1]["timecode"] <= 3.0 + SLACK
    strip = thumbs.load(setup / "out" / "thumbs", lines["sound.mkv"]["sha256"])
    assert strip is not None and strip[1]["duration"] == pytest.approx(9.0, abs=0.1)
    assert thumbs.load(setup / "out" / "thumbs", lines["unrelated.webm"]["sha256"]) is None
    page = (setup / "out" / "report.html").read_text()
    assert "keyframe at 00:03" in page and "where in the video" in page
    assert 'class="soundtrack"' in page and "soundtrack: song.flac" in page


def test_check_prints_where_in_the_video(setup):
    from typer.testing import CliRunner

    from scanner.cli import app

    res = CliRunner().invoke(app, ["check", str(setup / "clips" / "sound.mkv"), "--index", str(setup / "index")])
    assert res.exit_code == 1, res.output
    flat = "".join(res.output.split())  # rich wraps long paths
    assert "Whereinthevideo" in flat and "soundtrack:" in flat and "song.flac(workat" in flat


def test_frame_at_seeks(setup):
    clip = video.open_video(setup / "clips" / "picture.mp4")
    before, inside = clip.frame_at(2.5, max_side=80), clip.frame_at(4.0, max_side=80)
    key = next(k for k in clip.keyframes(max_side=80) if k.time >= 3.0)
    diff = lambda a, b: float(np.abs(np.asarray(a, np.float32) - np.asarray(b, np.float32)).mean())  # noqa: E731
    assert diff(inside, key.image) < 8 < diff(before, key.image)


def test_garbled_streams_name_the_problem_and_a_few_bad_packets_pass(setup, tmp_path):
    """Garbage over parts of a clip: a few bad packets are passed over, many make an error line."""
    data = bytearray((setup / "clips" / "sound.mkv").read_bytes())
    rng = np.random.default_rng(0)
    light = bytearray(data)
    light[len(data) // 2: len(data) // 2 + 64] = rng.integers(0, 256, 64, dtype=np.uint8).tobytes()
    (tmp_path / "light.mkv").write_bytes(light)
    heavy = bytearray(data)
    for frac in np.linspace(0.2, 0.95, 40):
        i = int(len(data) * frac)
        heavy[i:i + 400] = rng.integers(0, 256, 400, dtype=np.uint8).tobytes()
    (tmp_path / "heavy.mkv").write_bytes(heavy)
    scanner = pipeline.Scanner(setup / "index")
    try:
        light_r, heavy_r = scanner.judge([pipeline.prepare_one(media.Input(tmp_path / n, "video"), scanner.featurizers)
                                          for n in ("light.mkv", "heavy.mkv")])
    finally:
        scanner.close()
    assert light_r.verdict != "error", light_r.error
    assert heavy_r.verdict == "error" and "heavy.mkv" not in heavy_r.error and heavy_r.error.startswith(
        ("truncated or corrupt", "not a recognised")), heavy_r.error


def test_soundtrack_that_starts_late_is_placed_on_the_picture_timeline(setup, tmp_path):
    """Streams of a container may start apart: a soundtrack match is given in the picture's time."""
    import av

    shifted = tmp_path / "late.mkv"
    with av.open(str(setup / "clips" / "sound.mkv")) as src, av.open(str(shifted), "w") as dst:
        streams = {s.index: dst.add_stream_from_template(s) for s in src.streams}
        for packet in src.demux():
            if packet.size == 0:  # the demuxer's flush packets
                continue
            if packet.stream.type == "audio":  # the sound 1.5 s later than the picture
                delay = int(round(1.5 / packet.time_base))
                packet.pts += delay
                packet.dts = None if packet.dts is None else packet.dts + delay
            packet.stream = streams[packet.stream.index]
            dst.mux(packet)
    assert video.open_video(shifted).audio_offset == pytest.approx(1.5, abs=0.05)
    result, _ = pipeline.check(shifted, setup / "index")
    loc = next(m["locator"] for m in result.matches if m["feature"] == "audio-fingerprint")
    # the recording's 4.0 s is now heard at 3.5 s of the picture
    assert abs((loc["ref_start"] - loc["query_start"]) - 0.5) <= 0.15, loc


_FORK_AFTER_DECODING = """
import os, sys
from concurrent.futures import ThreadPoolExecutor
from scanner import video
from scanner.demo import synthetic_picture

clip = video.write_clip(sys.argv[1], [(synthetic_picture(s), 1.0) for s in (1, 2, 3)], fps=5)
# a long-lived thread decodes, as a server's check threads do, and stays alive
thread = ThreadPoolExecutor(1)
assert thread.submit(lambda: len(list(video.open_video(clip).keyframes()))
                     + video.open_video(clip).frame_at(1.5).width).result() > 0
pid = os.fork()  # as a scan forks its decode workers, or the server its picture workers
if pid == 0:
    os._exit(0)
_, status = os.waitpid(pid, 0)
sys.exit(os.waitstatus_to_exitcode(status))
"""


def test_a_process_forked_while_a_thread_has_decoded_video_starts(tmp_path):
    """The conversions' threads: a forked child frees what other threads held (their
    thread-locals), and a converter with a pool of its own threads hangs it for ever."""
    proc = subprocess.Popen([sys.executable, "-c", _FORK_AFTER_DECODING, str(tmp_path / "clip.mp4")],
                            start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        out, _ = proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        pytest.fail("a process forked after a thread decoded video hangs")
    assert proc.returncode == 0, out

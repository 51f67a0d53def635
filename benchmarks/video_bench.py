#!/usr/bin/env python
"""Video: decoding speed on a 10-minute 1080p clip, and recall on clips assembled from the corpora.

Two measurements, reproducible (fixed seed), media kept under ``--work`` (never
in the repository):

1. **Speed.** A 10-minute 1920x1080 25 fps H.264 clip with an AAC tone
   (FFmpeg's ``testsrc2`` pattern: a moving picture, so cuts/drift keep
   firing) is made with ffmpeg once. Timed on it: the keyframe pass alone
   (:meth:`scanner.video.Video.keyframes`: frames decoded per second, real-time
   factor = video seconds per wall second), the soundtrack pass alone, and a
   whole ``scanner.pipeline.scan`` of the file (decoding, image and audio
   featurizers, search, verdict: the code path of ``likeness scan``) against
   the recall index below.
2. **Recall.** References: ``--refs`` openclipart pictures (composited over
   white) from some topic folders, and ``--tracks`` Wesnoth music tracks.
   Clips (640x360, 25 fps, H.264 + AAC, 16-20 s): shots of 2-3 s of pictures
   from *other* folders; a positive clip shows one reference picture for 2-3 s
   at a random place and/or carries a 10 s excerpt of a reference track from a
   random offset at a random place of its soundtrack (the rest: an unindexed
   track, quieter). Negative clips have only unindexed pictures and music. A
   picture hit: the clip's timeline lists the right work starting within one
   looked-at frame (0.2 s + a frame) of the true start. A sound hit: a
   soundtrack span of the right work whose offset (``ref_start - start``)
   agrees with the truth within 0.2 s. False flags: negative clips flagged.

Writes ``benchmarks/results/video_bench-seed<SEED>.json`` and ``.md`` with the
machine's load average (the machine is shared; figures move with it).

Usage::

    python benchmarks/video_bench.py [--clips 24] [--negatives 8] [--refs 60] [--tracks 8] [--seed 0]
                                     [--work DIR] [--skip-speed] [--skip-recall]
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import random
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from scanner import media, pipeline, video  # noqa: E402

CLIPART = Path("/usr/share/openclipart/png")
MUSIC = Path("/usr/share/games/wesnoth/1.16/data/core/music")
SR = 22050
FPS = 25
SIZE = (640, 360)
FEATURES = ["image-phash", "image-local", "audio-fingerprint"]
SLACK = video.SAMPLE_STEP + 1.0 / FPS


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def make_long_clip(path: Path, seconds: int = 600) -> Path:
    if not path.exists():
        tmp = path.with_suffix(".tmp.mp4")
        subprocess.run(["ffmpeg", "-y", "-nostdin", "-v", "error", "-f", "lavfi", "-i",
                        "testsrc2=size=1920x1080:rate=25", "-f", "lavfi", "-i", "sine=frequency=440:sample_rate=48000",
                        "-t", str(seconds), "-c:v", "libx264", "-preset", "veryfast", "-pix_fmt", "yuv420p",
                        "-c:a", "aac", "-b:a", "128k", str(tmp)], check=True)
        tmp.rename(path)
    return path


def speed(path: Path, index: Path | None) -> dict[str, Any]:
    out: dict[str, Any] = {"file": path.name, "load_before": load()}
    clip = video.open_video(path)
    out.update(width=clip.width, height=clip.height, fps=clip.fps, duration=clip.duration, codec=clip.codec)
    t0 = time.perf_counter()
    n = sum(1 for _ in clip.keyframes(max_side=pipeline.KEYFRAME_SIDE))
    dt = time.perf_counter() - t0
    frames = round(clip.duration * clip.fps)  # the video's frames (B-frames are skipped, not decoded)
    out["frames"] = frames
    out["keyframes_pass"] = {"seconds": round(dt, 2), "frames_decoded": clip.frames_decoded,
                             "frames_per_second": round(frames / dt, 1),
                             "keyframes": n, "realtime_factor": round(clip.duration / dt, 2)}
    t0 = time.perf_counter()
    n = sum(1 for _ in clip.keyframes(max_side=pipeline.KEYFRAME_SIDE, skip_b_frames=False))
    dt = time.perf_counter() - t0
    out["keyframes_pass_every_frame"] = {"seconds": round(dt, 2), "frames_decoded": clip.frames_decoded,
                                         "frames_per_second": round(frames / dt, 1), "keyframes": n,
                                         "realtime_factor": round(clip.duration / dt, 2)}
    t0 = time.perf_counter()
    track = clip.soundtrack()
    samples = sum(len(c.y) for c in track.chunks()) if track else 0
    dt = time.perf_counter() - t0
    out["soundtrack_pass"] = {"seconds": round(dt, 2), "samples": samples,
                              "realtime_factor": round(clip.duration / dt, 1)}
    if index is not None:
        got: list[Any] = []
        t0 = time.perf_counter()
        pipeline.scan([path], index, options=pipeline.FeatureOptions(), on_result=got.append)
        dt = time.perf_counter() - t0
        r = got[0]
        out["scan"] = {"seconds": round(dt, 2), "realtime_factor": round(clip.duration / dt, 2),
                       "frames_per_second": round(frames / dt, 1), "verdict": r.verdict,
                       "keyframes_checked": (r.video or {}).get("keyframes_checked"), "features": FEATURES}
    out["load_after"] = load()
    return out


def over_white(path: Path):

    im = media.load_image(path, max_side=720)  # transparency composited over white, as a person sees it
    return im if im.mode == "RGB" else im.convert("RGB")


def read_track(path: Path) -> np.ndarray:
    audio = media.open_audio(path, sr=SR)
    return audio.read()


def recall(args: argparse.Namespace, work: Path) -> tuple[dict[str, Any], Path]:
    rng = random.Random(args.seed)
    folders = sorted(p for p in CLIPART.iterdir() if p.is_dir())
    rng.shuffle(folders)
    ref_folders, neg_folders = folders[: len(folders) // 2], folders[len(folders) // 2:]
    ref_pics = sorted(p for f in ref_folders for p in f.rglob("*.png"))
    neg_pics = sorted(p for f in neg_folders for p in f.rglob("*.png"))
    ref_pics = rng.sample(ref_pics, args.refs)
    neg_pics = rng.sample(neg_pics, min(len(neg_pics), max(400, 8 * (args.clips + args.negatives))))
    import soundfile as sf

    # tracks long enough for a 10 s excerpt anywhere in them (the short stingers are not)
    tracks = sorted(p for p in MUSIC.glob("*.ogg") if sf.info(str(p)).duration >= 40)
    rng.shuffle(tracks)
    ref_tracks, neg_tracks = tracks[: args.tracks], tracks[args.tracks: args.tracks + 6]

    refs = work / "refs"
    if refs.exists():
        import shutil

        shutil.rmtree(refs)
    refs.mkdir(parents=True)
    for i, p in enumerate(ref_pics):
        os.symlink(p, refs / f"pic{i:03d}-{p.name}")
    for t in ref_tracks:
        os.symlink(t, refs / t.name)
    index = work / "index"
    t0 = time.perf_counter()
    built = pipeline.build_index([refs], index, options=pipeline.FeatureOptions(names=FEATURES))
    build_s = time.perf_counter() - t0
    from scanner.index import store

    with store.open_index(index) as opened:
        featureless = {Path(w.path).name for w in opened.works().values() if w.featureless}
    # a near-uniform work carries no identifiable expression and is never evidence: not a target
    targets = [k for k, p in enumerate(ref_pics) if f"pic{k:03d}-{p.name}" not in featureless]

    clips = work / "clips"
    if clips.exists():
        import shutil

        shutil.rmtree(clips)
    clips.mkdir()
    truth: dict[str, dict[str, Any]] = {}
    neg_iter = itertools.cycle(neg_pics)
    music_cache: dict[Path, np.ndarray] = {}

    def music(p: Path) -> np.ndarray:
        if p not in music_cache:
            music_cache[p] = read_track(p)
        return music_cache[p]

    n_total = args.clips + args.negatives
    for c in range(n_total):
        positive = c < args.clips
        kind = ("both", "picture", "sound")[c % 3] if positive else "none"
        shots: list[tuple[Any, float]] = []
        t = 0.0
        pic_truth = None
        n_shots = rng.randint(6, 8)
        target_shot = rng.randint(1, n_shots - 2) if kind in ("both", "picture") else -1
        for s in range(n_shots):
            seconds = rng.choice([2.0, 2.4, 2.8])
            if s == target_shot:
                k = rng.choice(targets)
                shots.append((over_white(ref_pics[k]), seconds))
                pic_truth = {"work": refs / f"pic{k:03d}-{ref_pics[k].name}", "start": t, "end": t + seconds}
            else:
                shots.append((over_white(next(neg_iter)), seconds))
            t += seconds
        length = t
        bed = music(rng.choice(neg_tracks))
        off = rng.uniform(0, max(0.0, len(bed) / SR - length - 1))
        track = 0.3 * bed[int(off * SR):][: int(length * SR)]
        track = np.pad(track, (0, int(length * SR) - len(track)))
        sound_truth = None
        if kind in ("both", "sound"):
            ref = rng.choice(ref_tracks)
            y = music(ref)
            ref_off = rng.uniform(0, len(y) / SR - 11)
            at = rng.uniform(0, length - 10.5)
            piece = y[int(ref_off * SR):][: 10 * SR]
            track[int(at * SR):][: len(piece)] = piece[: len(track[int(at * SR):])]
            sound_truth = {"work": refs / ref.name, "start": at, "ref_start": ref_off}
        name = f"clip{c:03d}.mp4"
        video.write_clip(clips / name, shots, size=SIZE, fps=FPS, audio=track, sr=SR)
        truth[name] = {"kind": kind, "picture": pic_truth, "sound": sound_truth}

    got: list[Any] = []
    t0 = time.perf_counter()
    pipeline.scan([clips], index, on_result=got.append)
    scan_s = time.perf_counter() - t0
    stats = {"picture": [0, 0], "sound": [0, 0], "flagged_positive": [0, 0], "false_flags": [0, 0],
             "review_negative": [0, 0]}
    misses = []
    verdicts: dict[str, dict[str, int]] = {"positive": {}, "negative": {}}
    video_seconds = 0.0
    for r in got:
        name = Path(r.path).name
        tr = truth[name]
        video_seconds += (r.video or {}).get("duration") or 0.0
        timeline = (r.video or {}).get("timeline") or []
        side = verdicts["negative" if tr["kind"] == "none" else "positive"]
        side[r.verdict] = side.get(r.verdict, 0) + 1
        if tr["kind"] == "none":
            stats["false_flags"][1] += 1
            stats["false_flags"][0] += r.verdict == "flagged"
            stats["review_negative"][1] += 1
            stats["review_negative"][0] += r.verdict == "review"
            continue
        stats["flagged_positive"][1] += 1
        stats["flagged_positive"][0] += r.verdict == "flagged"
        if tr["picture"]:
            p = tr["picture"]
            ok = any(e["source"] == "picture" and Path(e["ref_path"]).name == p["work"].name
                     and p["start"] - 1e-3 <= e["start"] <= p["start"] + SLACK for e in timeline)
            stats["picture"][1] += 1
            stats["picture"][0] += ok
            if not ok:
                misses.append({"clip": name, "what": "picture", "truth": {**p, "work": p["work"].name},
                               "verdict": r.verdict, "timeline": timeline[:3]})
        if tr["sound"]:
            s = tr["sound"]
            ok = any(e["source"] == "soundtrack" and Path(e["ref_path"]).name == s["work"].name
                     and abs((e["ref_start"] - e["start"]) - (s["ref_start"] - s["start"])) <= 0.2 for e in timeline)
            stats["sound"][1] += 1
            stats["sound"][0] += ok
            if not ok:
                misses.append({"clip": name, "what": "sound", "truth": {**s, "work": s["work"].name},
                               "verdict": r.verdict, "timeline": timeline[:3]})
    out = {
        "refs": {"pictures": len(ref_pics), "tracks": len(ref_tracks), "works_indexed": built.n_works,
                 "featureless_pictures_not_targets": len(ref_pics) - len(targets),
                 "build_seconds": round(build_s, 1)},
        "clips": {"positives": args.clips, "negatives": args.negatives, "size": list(SIZE), "fps": FPS,
                  "video_seconds": round(video_seconds, 1)},
        "scan_seconds": round(scan_s, 1), "scan_realtime_factor": round(video_seconds / scan_s, 2),
        **{k: {"hits": v[0], "of": v[1], "rate": round(v[0] / v[1], 3) if v[1] else None} for k, v in stats.items()},
        "verdicts": verdicts, "misses": misses,
    }
    return out, index


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--clips", type=int, default=24)
    ap.add_argument("--negatives", type=int, default=8)
    ap.add_argument("--refs", type=int, default=60)
    ap.add_argument("--tracks", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--work", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "likeness-video-bench")
    ap.add_argument("--skip-speed", action="store_true")
    ap.add_argument("--skip-recall", action="store_true")
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {"seed": args.seed, "machine": {"cpus": len(os.sched_getaffinity(0)),
                                                            "platform": platform.platform(),
                                                            "load_start": load()}}
    index = None
    if not args.skip_recall:
        result["recall"], index = recall(args, args.work)
        print(json.dumps({k: v for k, v in result["recall"].items() if k != "misses"}, indent=1), flush=True)
    if index is None and (args.work / "index" / "manifest.json").exists():
        index = args.work / "index"  # the recall index of an earlier run, for the whole-scan timing
    if not args.skip_speed:
        long_clip = make_long_clip(args.work / "testsrc2-1080p-600s.mp4")
        result["speed"] = speed(long_clip, index)
        print(json.dumps(result["speed"], indent=1), flush=True)
    result["machine"]["load_end"] = load()
    res_dir = ROOT / "benchmarks" / "results"
    res_dir.mkdir(exist_ok=True)
    stem = res_dir / f"video_bench-seed{args.seed}"
    if stem.with_suffix(".json").exists():  # a part skipped now keeps its figures from the last run
        before = json.loads(stem.with_suffix(".json").read_text())
        for part in ("recall", "speed"):
            if part not in result and part in before:
                result[part] = before[part]
                result["machine"].setdefault("earlier_" + part, before.get("machine"))
    stem.with_suffix(".json").write_text(json.dumps(result, indent=1, default=str) + "\n")
    lines = [f"# video_bench (seed {args.seed})", "",
             f"Machine: {result['machine']['cpus']} CPUs, load average {result['machine']['load_start']} at start, "
             f"{result['machine']['load_end']} at end (shared machine).", ""]
    if "speed" in result:
        s = result["speed"]
        lines += ["## 10-minute 1080p clip", "", "| pass | wall s | frames/s | real-time factor |", "|---|---|---|---|",
                  f"| keyframes (decode + cut detection) | {s['keyframes_pass']['seconds']} | "
                  f"{s['keyframes_pass']['frames_per_second']} | {s['keyframes_pass']['realtime_factor']} |",
                  f"| keyframes, every frame decoded (B-frames too) | {s['keyframes_pass_every_frame']['seconds']} | "
                  f"{s['keyframes_pass_every_frame']['frames_per_second']} | "
                  f"{s['keyframes_pass_every_frame']['realtime_factor']} |",
                  f"| soundtrack (decode + resample) | {s['soundtrack_pass']['seconds']} | | "
                  f"{s['soundtrack_pass']['realtime_factor']} |"]
        if "scan" in s:
            lines.append(f"| whole scan ({', '.join(FEATURES)}) | {s['scan']['seconds']} | "
                         f"{s['scan']['frames_per_second']} | {s['scan']['realtime_factor']} |")
        lines += ["", f"frames/s: the video's frames per wall second. {s['keyframes_pass']['frames_decoded']} of "
                      f"{s.get('frames', '?')} frames decoded (B-frames skipped), "
                      f"{s['keyframes_pass']['keyframes']} keyframes. Load {s['load_before']} before, "
                      f"{s['load_after']} after.", ""]
    if "recall" in result:
        r = result["recall"]
        lines += ["## Recall on assembled clips", "",
                  f"{r['refs'].get('featureless_pictures_not_targets', 0)} near-uniform indexed picture(s) "
                  "(featureless: never evidence) are not used as targets.", "",
                  f"{r['refs']['pictures']} openclipart pictures and {r['refs']['tracks']} Wesnoth tracks indexed; "
                  f"{r['clips']['positives']} positive and {r['clips']['negatives']} negative clips "
                  f"({r['clips']['video_seconds']} s of video), scanned in {r['scan_seconds']} s "
                  f"({r['scan_realtime_factor']}x real time).", "",
                  "| measure | hits | of | rate |", "|---|---|---|---|"]
        for k in ("picture", "sound", "flagged_positive", "false_flags", "review_negative"):
            lines.append(f"| {k} | {r[k]['hits']} | {r[k]['of']} | {r[k]['rate']} |")
        lines += ["", f"Verdicts: positives {r.get('verdicts', {}).get('positive')}, negatives "
                      f"{r.get('verdicts', {}).get('negative')}. Misses:", ""]
        for m in r.get("misses", []):
            lines.append(f"- {m['clip']} {m['what']} ({m['truth'].get('work')}): verdict {m['verdict']}")
        lines.append("")
    stem.with_suffix(".md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()

#!/usr/bin/env python
"""``audio-voice`` (talents): a voice actor's other lines found, other speakers and music left alone, speed.

A reproducible (fixed seed) measurement on a real dub:

1. Source: the Debian package ``fillets-ng-data-nl``, the Dutch dub of *Fish
   Fillets NG* (``/usr/share/games/fillets-ng/sound/**/nl/*.ogg``: 1,616 spoken
   lines, one actor per character). The character is in the file name: a
   token ``m`` (``let-m-oko``, ``m-co``, ``agenti-m``) is the small fish, ``v``
   the big fish. The 178 lines named for neither (``briefcase/help7``,
   ``keys/rand-0-3``...) were meant as minor characters' lines, but the level
   scripts subtitle every one of them in a fish's font (``script/<level>/
   dialogs*.lua``: ``dialogId(id, "font_small" | "font_big", text)``), as they
   do every named line, in agreement with its name: the Dutch package holds the
   two fish only. Those lines are judged against the fish their subtitles name
   and reported apart. Lines with the same bytes as an earlier line are dropped
   (listed).
2. Talents: each fish is one talent (consent no), enrolled from ``--enrol`` (5)
   seeded random lines of 2.5-4 seconds (about 15 s of audio); both talents in
   one index (the realistic case), built with ``scanner.pipeline.build_index(...,
   options=FeatureOptions(names=["audio-voice"]), metadata=talent.csv)``.
3. Positives: a seeded sample of ``--per-fish`` (100; 0: all) of each fish's
   other lines of at least 3 s, each as ``clean`` (the file), ``telephone``
   (sox ``sinc 300-3400 rate 8000``: band-pass, 8 kHz), ``mp3-64k`` (ffmpeg/LAME
   64 kbit/s; the scanner decodes the MP3), ``noise-10dB`` (white noise at 10 dB
   SNR over the whole line, seeded). Diagnosis only: ``--short`` (40) lines of
   2-3 s per fish, clean.
4. Negatives: every positive is also a line of the *other* fish for the other
   talent (must never be flagged with it); the lines named for neither fish,
   against the fish their subtitles do not name (reported apart); ``--music``
   (all) 30-second excerpts of the ``wesnoth-1.16-music`` tracks at seeded
   offsets (must give no evidence at all: no stretch judged); synthetic speech of
   espeak-ng (and flite, when installed) in several voices, Dutch and English.
5. Everything is scanned by the CLI in a subprocess, ``python -m scanner.cli scan
   QUERIES --index I --out O -q --candidates 2`` (``--candidates`` records every
   talent's best cosine, ``raw``, for every file with a judged stretch). A
   positive is *found* when a match with its own talent is at flag level
   (``expected <= flag_at``; review level counted apart); a match of any other
   talent at flag or review level is an *other speaker flagged / sent to review*.
6. EER of the cosines (``raw``) per transform: a fish's lines against its own
   talent (targets) and the other fish's lines against the same talent
   (non-targets), pooled over both talents. The same on clean lines computed
   directly with the featurizer (``make("audio-voice").prepare``, the judge's rule:
   per talent the best stretch of at least ``scanner.match.voices.MIN_SPEECH``
   seconds of speech) at the pipeline's decoding rate
   (``scanner.media.ANALYSIS_SR``, 11,025 Hz, which the featurizer resamples to
   16 kHz: nothing above 5.5 kHz reaches the encoder) and decoded at 16 kHz, to
   see what the 11,025-Hz decode costs.
7. Speed: the ``audio-voice`` featurizer on a fixed set of lines and music
   excerpts, in fresh subprocesses (thread settings are read when the libraries
   load): seconds of audio per second of wall and CPU time, best of ``--repeat``,
   (a) one file at a time on 2 threads (torch's and OpenBLAS's defaults on this
   machine), (b) one file at a time on 1 thread, (c) two files at a time on 1
   thread each. Decoding, Silero VAD, mel frames and the GE2E LSTM are timed
   apart in (a) and (b). The CPU model, its vector flags and the load average are
   recorded; the end-to-end scan's audio seconds per wall second too.

Writes ``benchmarks/results/voices-seed<SEED>.json`` and ``.md``. Audio, the index
and the scan stay under ``--work`` (never in the repository).

Usage::

    python benchmarks/voices_bench.py [--seed 0] [--per-fish 100] [--short 40] [--music 0] [--repeat 2] \\
        [--speed-lines 30] [--speed-music 6] [--scan-threads 0] [--work /tmp/likeness-voices]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if __package__ in (None, ""):  # run as a script: make ``scanner`` importable
    sys.path.insert(0, str(ROOT))

from benchmarks.accuracy.metrics import distribution  # noqa: E402

DUB = Path("/usr/share/games/fillets-ng/sound")
SCRIPTS = Path("/usr/share/games/fillets-ng/script")
MUSIC = Path("/usr/share/games/wesnoth/1.16/data/core/music")
FISH = {"m": "Small fish (nl)", "v": "Big fish (nl)"}
TRANSFORMS = ["clean", "telephone", "mp3-64k", "noise-10dB"]
#: Enrolment lines are drawn among lines this long (seconds): five make about 15 s.
ENROL_SECONDS = (2.5, 4.0)
#: Positives: lines at least this long; the short-line diagnosis: lines in this range.
MIN_LINE = 3.0
SHORT = (2.0, 3.0)
MUSIC_SECONDS = 30.0
NOISE_SNR_DB = 10.0
TARGETS = {"clean": 0.95, "telephone": 0.9, "mp3-64k": 0.9, "noise-10dB": 0.9,
           "others_flagged": 0, "others_review": 0.02, "music_evidence": 0, "realtime": 100.0}
#: A speed pass slower than this (seconds) is not repeated (the defaults can stall for minutes under load).
SLOW_PASS_S = 30.0
#: Speed settings the target is judged on (2 threads: torch's and OpenBLAS's defaults on this machine, or
#: two files at a time on one thread each).
DEFAULT_SETTING = "2 threads, one file at a time (defaults)"
TWO_FILES_SETTING = "1 thread each, two files at a time"
#: Synthetic speakers: espeak-ng voices (language + variant) and what they say.
ESPEAK_VOICES = ["nl", "nl+f3", "nl+m3", "nl+klatt", "af", "de+m2", "en", "en+f2"]
PHRASES = {
    "nl": ["Goedemorgen, de trein naar Amsterdam vertrekt over vijf minuten van spoor drie.",
           "Kijk eens naar die vis, hij zwemt steeds rondjes in het aquarium.",
           "Ik denk dat we de sleutel onder de grote steen moeten zoeken.",
           "Vandaag wordt het bewolkt met in de middag een paar regenbuien.",
           "Wil je alsjeblieft de deur dichtdoen als je naar buiten gaat?"],
    "en": ["Good morning, the train to Amsterdam leaves from platform three in five minutes.",
           "Look at that fish, it keeps swimming in circles around the tank.",
           "I think we should look for the key under the large stone.",
           "Tomorrow will be cloudy with a few showers in the afternoon.",
           "Please close the door behind you when you go outside."],
}


# --- machine and sources ---------------------------------------------------------------------

def cpu_info() -> dict[str, Any]:
    """CPU model, the vector extensions that matter to the LSTM and the mel projection, cores, libraries."""
    from scanner import blas

    model, flags = blas.cpu_name(), (blas.cpu() or ("", set()))[1]
    import torch

    try:
        from threadpoolctl import threadpool_info

        pools = [{k: p.get(k) for k in ("user_api", "internal_api", "num_threads", "version", "architecture")}
                 for p in threadpool_info()]
    except ImportError:
        pools = []
    return {"model": model, "cores": os.cpu_count(), "affinity": len(os.sched_getaffinity(0)),
            "platform": platform.platform(), "avx2": "avx2" in flags, "fma": "fma" in flags,
            "avx512f": "avx512f" in flags, "avx512_vnni": "avx512_vnni" in flags, "avx_vnni": "avx_vnni" in flags,
            "torch": torch.__version__, "torch_threads_default": torch.get_num_threads(), "thread_pools": pools}


def code_state() -> dict[str, Any]:
    """The checkout's commit and the voice modules' hashes (the scanner may change while a run is under way)."""
    from scanner.media import sha256_file

    def git(*a: str) -> str:
        try:
            return subprocess.run(["git", *a], cwd=ROOT, capture_output=True, text=True, timeout=30).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""

    files = ["scanner/features/voice.py", "scanner/match/voices.py", "scanner/match/templates.py",
             "scanner/policy.py", "scanner/media.py", "scanner/pipeline/scan.py"]
    return {"commit": git("rev-parse", "HEAD"), "scanner_dirty": bool(git("status", "--porcelain", "scanner")),
            "sha256": {f: sha256_file(ROOT / f)[:16] for f in files if (ROOT / f).is_file()}}


def run(cmd: list[str]) -> None:
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def character(path: Path) -> str:
    """``m`` (small fish), ``v`` (big fish), or ``minor``: from the file name's tokens."""
    tokens = re.split(r"[-_]", path.stem)
    for fish in ("m", "v"):
        if fish in tokens:
            return fish
    return "minor"


def level(path: Path) -> str:
    """The level (folder) a line belongs to: ``airplane``, ``share+border``."""
    rel = path.relative_to(DUB).parts[:-2]
    return "+".join(rel)


def subtitle_fonts(path: Path, cache: dict[tuple[str, ...], dict[str, set[str]]]) -> set[str]:
    """The subtitle fonts the level's scripts give line ``path`` (``dialogId(id, font, text)`` in
    ``script/<level>/dialogs*.lua``): ``font_small`` is the small fish speaking, ``font_big`` the big one."""
    lvl = path.relative_to(DUB).parts[:-2]
    if lvl not in cache:
        fonts: dict[str, set[str]] = {}
        for f in sorted(SCRIPTS.joinpath(*lvl).glob("dialogs*.lua")):
            for ident, font in re.findall(r"""dialogId\(\s*["']([^"']+)["']\s*,\s*["']([^"']+)["']""",
                                          f.read_text(encoding="utf-8", errors="replace")):
                fonts.setdefault(ident, set()).add(font)
        cache[lvl] = fonts
    return cache[lvl].get(path.stem, set())


def catalogue() -> tuple[list[dict[str, Any]], list[str]]:
    """Every Dutch line: path, level, character (by name, and by subtitle font), duration; byte-identical
    repeats dropped (listed)."""
    from scanner.media import sha256_file

    import soundfile as sf

    lines, seen, dupes = [], {}, []
    fonts: dict[tuple[str, ...], dict[str, set[str]]] = {}
    for p in sorted(DUB.rglob("*.ogg")):
        if p.parent.name != "nl" or not p.is_file():
            continue
        digest = sha256_file(p)
        if digest in seen:
            dupes.append(f"{p.relative_to(DUB)} = {seen[digest]}")
            continue
        seen[digest] = str(p.relative_to(DUB))
        info = sf.info(str(p))
        font = subtitle_fonts(p, fonts)
        by_font = {"font_small": "m", "font_big": "v"}.get(next(iter(font))) if len(font) == 1 else None
        lines.append({"path": p, "level": level(p), "who": character(p), "by_font": by_font,
                      "seconds": info.frames / info.samplerate,
                      "sr": info.samplerate, "channels": info.channels,
                      "stem": f"{level(p)}+{p.stem}"})
    return lines, dupes


# --- queries ---------------------------------------------------------------------------------

def transform(name: str, src: Path, dst_stem: Path, rng: np.random.Generator) -> Path:
    """``src`` after transform ``name``, written next to ``dst_stem`` (its suffix chosen here)."""
    import soundfile as sf

    if name == "clean":
        dst = dst_stem.with_suffix(src.suffix)
        shutil.copy(src, dst)
    elif name == "telephone":
        dst = dst_stem.with_suffix(".wav")
        run(["sox", "-G", str(src), str(dst), "sinc", "300-3400", "rate", "8000"])
    elif name == "mp3-64k":
        dst = dst_stem.with_suffix(".mp3")
        run(["ffmpeg", "-nostdin", "-y", "-v", "error", "-i", str(src), "-c:a", "libmp3lame", "-b:a", "64k", str(dst)])
    elif name == "noise-10dB":
        dst = dst_stem.with_suffix(".wav")
        y, sr = sf.read(str(src), dtype="float64", always_2d=True)
        n = rng.standard_normal(y.shape)
        n *= np.sqrt(np.mean(y ** 2) / np.mean(n ** 2) / 10 ** (NOISE_SNR_DB / 10))
        z = y + n
        sf.write(str(dst), z / max(1.0, float(np.abs(z).max())), sr, subtype="PCM_16")
    else:
        raise ValueError(name)
    return dst


def music_excerpts(dest: Path, n: int, rng: np.random.Generator) -> list[dict[str, Any]]:
    """30-second mono excerpts (FLAC, the track's rate) of ``n`` tracks (0: all), at seeded offsets."""
    import soundfile as sf

    tracks = sorted(MUSIC.glob("*.ogg"))
    if n and n < len(tracks):
        tracks = [tracks[i] for i in sorted(rng.choice(len(tracks), n, replace=False))]
    out = []
    for t in tracks:
        dur = float(sf.info(str(t)).duration)
        start = float(rng.uniform(0, max(0.0, dur - MUSIC_SECONDS)))
        dst = dest / f"music-{t.stem}.flac"
        run(["ffmpeg", "-nostdin", "-y", "-v", "error", "-ss", f"{start:.3f}", "-t", f"{MUSIC_SECONDS:g}",
             "-i", str(t), "-ac", "1", "-c:a", "flac", str(dst)])
        out.append({"file": dst.name, "track": t.name, "start": round(start, 2),
                    "seconds": round(min(MUSIC_SECONDS, dur - start), 2)})
    return out


def synthetic_speech(dest: Path) -> tuple[list[dict[str, Any]], list[str]]:
    """espeak-ng (and flite) speaking the phrases in several voices; what was not installed, listed."""
    out, missing = [], []
    if shutil.which("espeak-ng") is None:
        missing.append("espeak-ng")
    else:
        for voice_name in ESPEAK_VOICES:
            lang = "en" if voice_name.startswith("en") else "nl"
            for k, text in enumerate(PHRASES[lang]):
                dst = dest / f"espeak-{voice_name.replace('+', '_')}-{k}.wav"
                run(["espeak-ng", "-v", voice_name, "-w", str(dst), text])
                out.append({"file": dst.name, "engine": "espeak-ng", "voice": voice_name, "text": text})
    if shutil.which("flite") is None:
        missing.append("flite")
    else:
        for voice_name in ("kal", "slt", "awb", "rms"):
            for k, text in enumerate(PHRASES["en"]):
                dst = dest / f"flite-{voice_name}-{k}.wav"
                try:
                    run(["flite", "-voice", voice_name, "-t", text, "-o", str(dst)])
                except subprocess.CalledProcessError:
                    break
                out.append({"file": dst.name, "engine": "flite", "voice": voice_name, "text": text})
    return out, missing


# --- judging ---------------------------------------------------------------------------------

def judge(r: dict[str, Any] | None, own: str | None, flag_at: float, review_at: float) -> dict[str, Any]:
    """One scan result against the talent it should (``own``) or should not match."""
    if r is None:
        return {"verdict": "missing"}

    def lvl(m: dict[str, Any]) -> str | None:
        return "flag" if m["expected"] <= flag_at else "review" if m["expected"] <= review_at else None

    matches = [m for m in r.get("matches") or [] if m.get("talent")]
    cands = [c for c in r.get("candidates") or [] if c.get("talent")]
    right = [lvl(m) for m in matches if m["talent"] == own]
    wrong_hits = [{"talent": m["talent"], "raw": m["raw"], "expected": m["expected"], "level": lvl(m),
                   "locator": m.get("locator")} for m in matches if m["talent"] != own and lvl(m)]
    wrong = ("flag" if any(h["level"] == "flag" for h in wrong_hits) else
             "review" if wrong_hits else "none")
    raw = {c["talent"]: float(c["raw"]) for c in cands}
    exp = {c["talent"]: float(c["expected"]) for c in cands}
    loc = {c["talent"]: c.get("locator") or {} for c in cands}
    out = {"verdict": r["verdict"], "judged": bool(cands), "wrong": wrong, "wrong_hits": wrong_hits,
           "raw": raw, "expected": exp, "error": r.get("error")}
    if own is not None:
        out["flagged_right"] = "flag" in right
        out["review_right"] = "flag" not in right and "review" in right
        out["speech"] = loc.get(own, {}).get("speech")
    return out


def eer(targets: list[float], nontargets: list[float]) -> dict[str, Any]:
    """Equal error rate of scores (higher: same speaker) and the threshold where it falls."""
    t, n = np.asarray(targets, np.float64), np.asarray(nontargets, np.float64)
    if not len(t) or not len(n):
        return {"eer": None, "targets": int(len(t)), "nontargets": int(len(n))}
    best = (2.0, 0.0, 0.0, 0.0)
    for th in np.unique(np.concatenate([t, n])):
        frr, far = float((t < th).mean()), float((n >= th).mean())
        if abs(far - frr) < best[0]:
            best = (abs(far - frr), (far + frr) / 2, float(th), far)
    return {"eer": round(best[1], 4), "threshold_cosine": round(best[2], 4), "targets": int(len(t)),
            "nontargets": int(len(n))}


def mark(ok: bool) -> str:
    return "✓" if ok else "✗"


# --- the featurizer directly -----------------------------------------------------------------

def direct_scores(files: dict[str, Path], enrol: dict[str, list[Path]], sr: int) -> dict[str, Any]:
    """Per file, per talent, the judge's cosine computed with the featurizer directly, decoded at ``sr``."""
    from scanner import media
    from scanner.features import make
    from scanner.match import voices

    min_speech = float(getattr(voices, "MIN_SPEECH", 2.0))
    feat = make("audio-voice")
    vecs, who, weight = [], [], []
    enrolled: dict[str, Any] = {}
    for k, fish in enumerate(sorted(enrol)):
        for p in enrol[fish]:
            st = feat.prepare_reference(media.open_audio(p, sr=sr))
            vecs += list(st["emb"])
            who += [k] * len(st)
            weight += list(st["speech"])
            e = enrolled.setdefault(FISH[fish], {"stretches": 0, "speech_s": 0.0, "lines_without_stretch": 0})
            e["stretches"] += int(len(st))
            e["speech_s"] = round(e["speech_s"] + float(st["speech"].sum()), 2)
            e["lines_without_stretch"] += int(not len(st))
    _, cents = voices.centroids(np.asarray(vecs, np.float32), np.asarray(who, np.int64),
                                np.asarray(weight, np.float32))
    out = {}
    for name, p in files.items():
        st = feat.prepare(media.open_audio(p, sr=sr))
        judged = st[st["speech"] >= min_speech]
        out[name] = {"stretches": int(len(st)), "judged": int(len(judged)),
                     "speech": [round(float(s), 2) for s in st["speech"]],
                     "raw": ({FISH[f]: float((judged["emb"] @ cents[k]).max()) for k, f in enumerate(sorted(enrol))}
                             if len(judged) else {})}
    return {"files": out, "enrolled": enrolled}


def file_embeddings(files: dict[str, Path]) -> dict[str, np.ndarray | None]:
    """Per file, the speech-weighted mean of its stretches' d-vectors (unit length), decoded as the pipeline does."""
    from scanner import media
    from scanner.features import make

    feat = make("audio-voice")
    out: dict[str, np.ndarray | None] = {}
    for name, p in files.items():
        st = feat.prepare(media.open_audio(p))
        if not len(st):
            out[name] = None
            continue
        e = (st["emb"] * st["speech"][:, None]).sum(axis=0)
        out[name] = e / max(float(np.linalg.norm(e)), 1e-12)
    return out


# --- speed (in a fresh process per setting) --------------------------------------------------

def speed_worker(spec_path: Path) -> int:
    """Time the featurizer on ``spec['files']`` with ``spec['threads']`` and ``spec['parallel']``; JSON to stdout."""
    spec = json.loads(spec_path.read_text())
    import torch

    if spec.get("threads"):
        torch.set_num_threads(int(spec["threads"]))
    from scanner import media
    from scanner.features import make, voice

    feat = make("audio-voice")
    clock: dict[str, float] = {"vad": 0.0, "mel": 0.0, "lstm": 0.0}

    def timed(fn: Callable[..., Any], key: str) -> Callable[..., Any]:
        def wrapper(*a: Any, **k: Any) -> Any:
            t = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                clock[key] += time.perf_counter() - t
        return wrapper

    # stage clocks (this process only; names looked up defensively, the module may change)
    if spec["parallel"] == 1:
        if hasattr(voice, "mel_frames"):
            voice.mel_frames = timed(voice.mel_frames, "mel")
        if hasattr(voice, "embed_windows"):
            voice.embed_windows = timed(voice.embed_windows, "lstm")
        if hasattr(voice.Voice, "_speech_probability"):
            voice.Voice._speech_probability = staticmethod(timed(voice.Voice._speech_probability, "vad"))

    def one(p: str) -> tuple[float, int]:
        a = media.open_audio(p)
        st = feat.prepare(a)
        return a.samples / a.sr, int(len(st))

    def decode(p: str) -> float:
        a = media.open_audio(p)
        for _ in a.chunks():
            pass
        return a.samples / a.sr

    out: dict[str, Any] = {"threads": torch.get_num_threads(), "parallel": spec["parallel"],
                           "env": {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                                                                  "MKL_NUM_THREADS", "OMP_WAIT_POLICY")}}
    one(spec["files"][0])  # load the models
    for group in ("speech", "music"):
        files = [f for f, g in zip(spec["files"], spec["groups"]) if g == group]
        if not files:
            continue
        best: dict[str, Any] | None = None
        for attempt in range(max(1, spec["repeat"])):
            if attempt and best is not None and best["wall_s"] > SLOW_PASS_S:
                best["repeats_skipped"] = "a pass took over %g s" % SLOW_PASS_S
                break
            for k in clock:
                clock[k] = 0.0
            t, c = time.perf_counter(), time.process_time()
            if spec["parallel"] > 1:
                with ThreadPoolExecutor(spec["parallel"]) as pool:
                    done = list(pool.map(one, files))
            else:
                done = [one(f) for f in files]
            wall, cpu = time.perf_counter() - t, time.process_time() - c
            if best is None or wall < best["wall_s"]:
                audio = sum(d[0] for d in done)
                best = {"files": len(files), "audio_s": round(audio, 2), "wall_s": round(wall, 3),
                        "cpu_s": round(cpu, 3), "x_realtime_wall": round(audio / wall, 1),
                        "x_realtime_cpu": round(audio / cpu, 1), "stretches": sum(d[1] for d in done),
                        "stages_s": {k: round(v, 3) for k, v in clock.items()} if spec["parallel"] == 1 else None}
        if spec["parallel"] == 1 and best is not None:
            t = time.perf_counter()
            audio = sum(decode(f) for f in files)
            best["stages_s"]["decode"] = round(time.perf_counter() - t, 3)
            best["stages_s"]["rest"] = round(best["wall_s"] - sum(best["stages_s"].values()), 3)
        out[group] = best
    out["load_average"] = [round(v, 2) for v in os.getloadavg()]
    print(json.dumps(out))
    return 0


def speed(files: list[Path], groups: list[str], work: Path, repeat: int) -> dict[str, Any]:
    """The featurizer's speed in three settings, each in a fresh subprocess."""
    spec_path = work / "speed.json"
    one = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    settings = {
        DEFAULT_SETTING: ({}, 0, 1),
        "2 threads, OMP_WAIT_POLICY=PASSIVE, one file at a time": ({"OMP_WAIT_POLICY": "PASSIVE"}, 0, 1),
        "1 thread, one file at a time": (one, 1, 1),
        TWO_FILES_SETTING: (one, 1, 2),
        "2 threads (defaults), three files at a time (the scan's decode threads)": ({}, 0, 3),
    }
    out = {}
    for label, (env, threads, parallel) in settings.items():
        spec_path.write_text(json.dumps({"files": [str(f) for f in files], "groups": groups, "threads": threads,
                                         "parallel": parallel, "repeat": repeat}))
        full_env = {k: v for k, v in os.environ.items()
                    if k not in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "OMP_WAIT_POLICY")}
        full_env.update(env)
        done = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--speed-worker", str(spec_path)],
                              cwd=ROOT, env=full_env, capture_output=True, text=True)
        if done.returncode != 0:
            out[label] = {"error": done.stderr.strip().splitlines()[-1:] or [f"exit {done.returncode}"]}
        else:
            out[label] = json.loads(done.stdout.strip().splitlines()[-1])
        print(f"speed, {label}: {json.dumps({g: (out[label].get(g) or {}).get('x_realtime_wall') for g in ('speech', 'music')})} x real time (wall)", flush=True)
    return out


# --- main ------------------------------------------------------------------------------------

def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--enrol", type=int, default=5, help="lines enrolled per fish")
    ap.add_argument("--per-fish", type=int, default=100, help="positive lines (>= 3 s) per fish; 0: all")
    ap.add_argument("--short", type=int, default=40, help="lines of 2-3 s per fish (diagnosis, clean only)")
    ap.add_argument("--music", type=int, default=0, help="music tracks excerpted (0: all)")
    ap.add_argument("--repeat", type=int, default=2, help="timing runs of the featurizer (best counts)")
    ap.add_argument("--speed-lines", type=int, default=30, help="positive lines (clean) timed")
    ap.add_argument("--speed-music", type=int, default=6, help="music excerpts timed")
    ap.add_argument("--channel-lines", type=int, default=60,
                    help="positive lines whose transformed copies are compared with the clean line directly")
    ap.add_argument("--scan-threads", type=int, default=0,
                    help="OMP/OpenBLAS threads of the scan subprocess (0: the libraries' defaults)")
    ap.add_argument("--work", type=Path, default=Path("/tmp/likeness-voices"))
    ap.add_argument("--speed-worker", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.speed_worker:
        return speed_worker(args.speed_worker)

    from scanner import policy as pol
    from scanner.features import voice
    from scanner.match import voices
    from scanner.pipeline import FeatureOptions, build_index
    from scanner.results import iter_results

    if not voice.available():
        print(f"audio-voice cannot run here: {voice.INSTALL}", file=sys.stderr)
        return 2
    for tool in ("sox", "ffmpeg"):
        if shutil.which(tool) is None:
            print(f"{tool} is needed (apt-get install {tool})", file=sys.stderr)
            return 2
    if not DUB.is_dir() or not MUSIC.is_dir():
        print(f"needs {DUB} (apt-get install fillets-ng-data-nl) and {MUSIC} (wesnoth-1.16-music)", file=sys.stderr)
        return 2
    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    dirs = {k: work / k for k in ("refs", "queries", "index", "scan")}
    for d in dirs.values():
        if d.exists():
            shutil.rmtree(d)
    qdirs = {k: dirs["queries"] / k for k in TRANSFORMS + ["short", "minor", "music", "synthetic"]}
    for d in [dirs["refs"], *qdirs.values()]:
        d.mkdir(parents=True)
    # one seeded stream per purpose: the enrolment does not move when a sample size changes
    rngs = {k: np.random.default_rng([args.seed, i]) for i, k in enumerate(("enrol", "positive", "short", "noise",
                                                                           "music"))}
    load_before = os.getloadavg()
    code_start = code_state()
    t_start = time.perf_counter()

    # lines, talents, queries
    lines, dupes = catalogue()
    by_who: dict[str, list[dict[str, Any]]] = {}
    for x in lines:
        by_who.setdefault(x["who"], []).append(x)
    enrol: dict[str, list[dict[str, Any]]] = {}
    positives: dict[str, list[dict[str, Any]]] = {}
    short: dict[str, list[dict[str, Any]]] = {}
    for fish in FISH:
        pool = by_who[fish]
        cand = [i for i, x in enumerate(pool) if ENROL_SECONDS[0] <= x["seconds"] <= ENROL_SECONDS[1]]
        chosen = set(rngs["enrol"].choice(cand, args.enrol, replace=False).tolist())
        enrol[fish] = [pool[i] for i in sorted(chosen)]
        rest = [x for i, x in enumerate(pool) if i not in chosen]
        long_ = [x for x in rest if x["seconds"] >= MIN_LINE]
        take = len(long_) if not args.per_fish else min(args.per_fish, len(long_))
        positives[fish] = [long_[i] for i in sorted(rngs["positive"].choice(len(long_), take, replace=False))]
        shorts = [x for x in rest if SHORT[0] <= x["seconds"] < SHORT[1]]
        short[fish] = [shorts[i] for i in sorted(rngs["short"].choice(len(shorts), min(args.short, len(shorts)), replace=False))]
    csv = work / "talent.csv"
    rows_csv = []
    for fish, xs in enrol.items():
        for x in xs:
            dst = dirs["refs"] / f"{fish}-{x['stem']}{x['path'].suffix}"
            shutil.copy(x["path"], dst)
            rows_csv.append(f"{dst.name},{FISH[fish]},no\n")
    csv.write_text("path,talent,consent\n" + "".join(rows_csv))

    t0 = time.perf_counter()
    queries: dict[str, dict[str, Any]] = {}  # relative path under queries/ -> what it is
    for fish, xs in positives.items():
        for x in xs:
            for tr in TRANSFORMS:
                dst = transform(tr, x["path"], qdirs[tr] / f"{fish}-{x['stem']}", rngs["noise"])
                queries[str(dst.relative_to(dirs["queries"]))] = {
                    "role": "positive", "fish": fish, "talent": FISH[fish], "transform": tr,
                    "line": str(x["path"].relative_to(DUB)), "seconds": round(x["seconds"], 2)}
    for fish, xs in short.items():
        for x in xs:
            dst = transform("clean", x["path"], qdirs["short"] / f"{fish}-{x['stem']}", rngs["noise"])
            queries[str(dst.relative_to(dirs["queries"]))] = {
                "role": "short", "fish": fish, "talent": FISH[fish], "transform": "clean",
                "line": str(x["path"].relative_to(DUB)), "seconds": round(x["seconds"], 2)}
    for x in by_who.get("minor", []):
        dst = transform("clean", x["path"], qdirs["minor"] / x["stem"], rngs["noise"])
        queries[str(dst.relative_to(dirs["queries"]))] = {
            "role": "minor", "level": x["level"], "line": str(x["path"].relative_to(DUB)),
            "by_font": x["by_font"], "talent": FISH.get(x["by_font"] or ""),
            "seconds": round(x["seconds"], 2)}
    music = music_excerpts(qdirs["music"], args.music, rngs["music"])
    for m in music:
        queries[f"music/{m['file']}"] = {"role": "music", **m}
    synth, synth_missing = synthetic_speech(qdirs["synthetic"])
    import soundfile as sf

    for s in synth:
        queries[f"synthetic/{s['file']}"] = {"role": "synthetic", **s,
                                             "seconds": round(float(sf.info(str(qdirs["synthetic"] / s["file"])).duration), 2)}
    make_s = time.perf_counter() - t0
    n_pos = sum(len(v) for v in positives.values())
    print(f"{len(lines)} lines ({', '.join(f'{k}: {len(v)}' for k, v in by_who.items())}; {len(dupes)} repeats "
          f"dropped); enrolled {args.enrol} per fish; {n_pos} positive lines x {len(TRANSFORMS)} transforms, "
          f"{len(queries)} queries made in {make_s:.0f} s", flush=True)

    # speed: the featurizer alone, fresh processes
    speed_files = ([dirs["queries"] / q for q, v in queries.items()
                    if v["role"] == "positive" and v["transform"] == "clean"][:args.speed_lines]
                   + [qdirs["music"] / m["file"] for m in music][:args.speed_music])
    speed_groups = ["speech"] * min(args.speed_lines, n_pos) + ["music"] * min(args.speed_music, len(music))
    timing = speed(speed_files, speed_groups, work, args.repeat)

    # index (both talents in one) and scan (the CLI, in a subprocess)
    t = time.perf_counter()
    build_index([dirs["refs"]], dirs["index"], options=FeatureOptions(names=["audio-voice"]), metadata=csv)
    build_s = time.perf_counter() - t
    manifest = json.loads((dirs["index"] / "manifest.json").read_text())
    null = manifest["null"]["audio-voice"]
    policy = pol.Policy.from_params(manifest.get("policy") or {})
    feat_spec = manifest["features"]["audio-voice"]
    env = dict(os.environ)
    if args.scan_threads:
        env.update({k: str(args.scan_threads) for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")})
    cmd = [sys.executable, "-m", "scanner.cli", "scan", str(dirs["queries"]), "--index", str(dirs["index"]),
           "--out", str(dirs["scan"]), "-q", "--candidates", str(len(FISH))]
    t = time.perf_counter()
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    scan_s = time.perf_counter() - t
    if done.returncode not in (0, 1, 3, 4) or not (dirs["scan"] / "results.jsonl").is_file():  # verdict codes
        print(done.stdout[-2000:], done.stderr[-4000:], file=sys.stderr)
        return 1
    results = {str(Path(r["path"]).relative_to(dirs["queries"])): r
               for r in iter_results(dirs["scan"] / "results.jsonl")}
    audio_total = sum(float(q.get("seconds") or 0) for q in queries.values())
    print(f"build {build_s:.1f} s, scan {len(results)} files ({audio_total:.0f} s of audio) in {scan_s:.0f} s",
          flush=True)

    rows = []
    for name, q in queries.items():
        own = q.get("talent") if q["role"] in ("positive", "short", "minor") else None
        rows.append({"file": name, **q, **judge(results.get(name), own, policy.flag_at, policy.review_at)})

    def share(xs: list[dict[str, Any]], key: str) -> float:
        return round(sum(bool(x.get(key)) for x in xs) / max(1, len(xs)), 3)

    other_of = {FISH["m"]: FISH["v"], FISH["v"]: FISH["m"]}
    per_transform, eers = [], {}
    for tr in TRANSFORMS:
        pos = [x for x in rows if x["role"] == "positive" and x["transform"] == tr]
        tgt = [x["raw"][x["talent"]] for x in pos if x["talent"] in x.get("raw", {})]
        non = [x["raw"][other_of[x["talent"]]] for x in pos if other_of[x["talent"]] in x.get("raw", {})]
        eers[tr] = {"pooled": eer(tgt, non), **{
            talent: eer([x["raw"][talent] for x in pos if x["talent"] == talent and talent in x["raw"]],
                        [x["raw"][talent] for x in pos if x["talent"] != talent and talent in x["raw"]])
            for talent in FISH.values()}}
        per_transform.append({
            "transform": tr, "n": len(pos), "judged": share(pos, "judged"), "found": share(pos, "flagged_right"),
            "review": share(pos, "review_right"),
            "found_by_fish": {f: share([x for x in pos if x["fish"] == f], "flagged_right") for f in FISH},
            "same": distribution(tgt), "other_fish": distribution(non),
            "other_fish_flagged": sum(x["wrong"] == "flag" for x in pos),
            "other_fish_review": round(sum(x["wrong"] == "review" for x in pos) / max(1, len(pos)), 3),
            "eer": eers[tr]["pooled"]["eer"]})
    pos_all = [x for x in rows if x["role"] == "positive"]
    synth_rows = [x for x in rows if x["role"] == "synthetic"]
    minor_rows = [x for x in rows if x["role"] == "minor"]
    music_rows = [x for x in rows if x["role"] == "music"]
    short_rows = [x for x in rows if x["role"] == "short"]
    others = pos_all + synth_rows  # each positive is the other fish's line for the other talent
    others_flagged = sum(x["wrong"] == "flag" for x in others)
    others_review = sum(x["wrong"] == "review" for x in others) / max(1, len(others))
    music_evidence = sum(x.get("judged", False) or x["wrong"] != "none" for x in music_rows)

    def neg_summary(xs: list[dict[str, Any]], wrong_only: bool = False) -> dict[str, Any]:
        """Counts of a negative group; ``wrong_only``: the cosine to the talent a line is not of."""
        best = [max(v for k, v in x["raw"].items() if not wrong_only or k != x.get("talent"))
                for x in xs if x.get("raw") and (not wrong_only or len(x["raw"]) > 1)]
        return {"n": len(xs), "judged": sum(bool(x.get("judged")) for x in xs),
                "flagged": sum(x["wrong"] == "flag" for x in xs),
                "review": sum(x["wrong"] == "review" for x in xs),
                "review_share": round(sum(x["wrong"] == "review" for x in xs) / max(1, len(xs)), 3),
                "best_cosine": distribution(best),
                "errors": sum(x.get("verdict") in ("error", "missing") for x in xs)}

    negatives = {"other fish's lines (every positive, against the other talent)": neg_summary(pos_all, wrong_only=True),
                 "synthetic speech": neg_summary(synth_rows),
                 "lines without m/v in their name, against the fish their subtitles do not name":
                     neg_summary(minor_rows, wrong_only=True),
                 "music excerpts": neg_summary(music_rows)}
    # lines named for neither fish: the subtitles say which fish speaks (there is no third voice in the dub)
    minor_by_level: dict[str, dict[str, Any]] = {}
    for x in minor_rows:
        c = minor_by_level.setdefault(x["level"], {"lines": 0, "by_subtitle": {}, "judged": 0, "flagged_right": 0,
                                                   "review_right": 0, "flagged_wrong": 0, "review_wrong": 0})
        c["lines"] += 1
        c["by_subtitle"][x.get("talent") or "none"] = c["by_subtitle"].get(x.get("talent") or "none", 0) + 1
        c["judged"] += bool(x.get("judged"))
        c["flagged_right"] += bool(x.get("flagged_right"))
        c["review_right"] += bool(x.get("review_right"))
        c["flagged_wrong"] += x["wrong"] == "flag"
        c["review_wrong"] += x["wrong"] == "review"
    unnamed = {"lines": len(minor_rows), "with_a_subtitle_fish": sum(bool(x.get("talent")) for x in minor_rows),
               "judged": sum(bool(x.get("judged")) for x in minor_rows),
               "flagged_right": sum(bool(x.get("flagged_right")) for x in minor_rows),
               "review_right": sum(bool(x.get("review_right")) for x in minor_rows),
               "flagged_wrong": sum(x["wrong"] == "flag" for x in minor_rows),
               "review_wrong": sum(x["wrong"] == "review" for x in minor_rows)}
    named = [x for x in lines if x["who"] in FISH]
    agreement = {"named_lines": len(named), "with_a_subtitle_font": sum(x["by_font"] is not None for x in named),
                 "agree": sum(x["by_font"] == x["who"] for x in named),
                 "disagree": sum(x["by_font"] not in (None, x["who"]) for x in named),
                 "unnamed_lines": len(by_who.get("minor", [])),
                 "unnamed_with_a_subtitle_fish": sum(x["by_font"] is not None for x in by_who.get("minor", []))}

    # found against the judged stretch's speech (the short-stretch diagnosis)
    buckets = [(0, 2.5), (2.5, 3.0), (3.0, 4.0), (4.0, 6.0), (6.0, 1e9)]
    by_speech = []
    for tr in TRANSFORMS:
        pos = [x for x in rows if x["role"] == "positive" and x["transform"] == tr]
        row = {"transform": tr}
        for lo, hi in buckets:
            b = [x for x in pos if x.get("speech") is not None and lo <= x["speech"] < hi]
            cos = [x["raw"][x["talent"]] for x in b if x["talent"] in x["raw"]]
            row[f"{lo:g}-{hi:g}" if hi < 1e9 else f">={lo:g}"] = [len(b), share(b, "flagged_right"),
                                                                  round(float(np.median(cos)), 3) if cos else None]
        row["no stretch judged"] = sum(not x.get("judged") for x in pos)
        by_speech.append(row)

    # the featurizer directly on the clean positives: 11,025 Hz (the pipeline) against 16 kHz
    t = time.perf_counter()
    clean = {x["file"]: dirs["queries"] / x["file"] for x in pos_all if x["transform"] == "clean"}
    enrol_paths = {f: [x["path"] for x in xs] for f, xs in enrol.items()}
    from scanner import media

    import torch

    threads_before = torch.get_num_threads()
    torch.set_num_threads(1)  # diagnosis only: one thread is the fastest here (see the speed table)
    try:
        from threadpoolctl import threadpool_limits

        limits: Any = threadpool_limits(1)
    except ImportError:
        limits = None
    try:
        shorts = {x["file"]: dirs["queries"] / x["file"] for x in short_rows}  # for the VAD figures
        direct_full = {str(sr): direct_scores({**clean, **shorts}, enrol_paths, sr)
                       for sr in (media.ANALYSIS_SR, 16000)}
        direct = {sr: d["files"] for sr, d in direct_full.items()}
        # channel: a line's transformed copy against its own clean original (same speaker, same words)
        lines_ch = sorted({x["line"] for x in pos_all})[:args.channel_lines]
        pick = {x["file"]: dirs["queries"] / x["file"] for x in pos_all if x["line"] in lines_ch}
        embs = file_embeddings(pick)
    finally:
        torch.set_num_threads(threads_before)
        if limits is not None:
            limits.restore_original_limits()
    direct_eer = {}
    for sr, scores in direct.items():
        tgt = [scores[x["file"]]["raw"][x["talent"]] for x in pos_all if x["transform"] == "clean"
               and scores[x["file"]]["raw"]]
        non = [scores[x["file"]]["raw"][other_of[x["talent"]]] for x in pos_all if x["transform"] == "clean"
               and scores[x["file"]]["raw"]]
        direct_eer[sr] = {**eer(tgt, non), "same": distribution(tgt), "other_fish": distribution(non),
                          "no_stretch_judged": sum(not scores[f]["raw"] for f in clean)}
    # the VAD on the clean lines: how much of a line is speech, and why a line has no judged stretch
    min_speech = float(getattr(voices, "MIN_SPEECH", 2.0))
    vad_rows = []
    for x in pos_all + short_rows:
        if x["transform"] != "clean" or x["file"] not in direct[str(media.ANALYSIS_SR)]:
            continue
        sp = direct[str(media.ANALYSIS_SR)][x["file"]]["speech"]
        vad_rows.append({"role": x["role"], "seconds": x["seconds"], "speech_total": sum(sp),
                         "longest": max(sp, default=0.0), "stretches": len(sp)})
    vad = {}
    for role in ("positive", "short"):
        v = [r for r in vad_rows if r["role"] == role]
        vad[role] = {"lines": len(v),
                     "speech_share_of_line": distribution([r["speech_total"] / r["seconds"] for r in v]),
                     "longest_stretch_speech_s": distribution([r["longest"] for r in v]),
                     "no_stretch_of_1s": sum(r["stretches"] == 0 for r in v),
                     "total_below_min_speech": sum(0 < r["speech_total"] < min_speech for r in v),
                     "split_below_min_speech": sum(r["speech_total"] >= min_speech and r["longest"] < min_speech
                                                   for r in v)}
    channel = {}
    by_line = {(x["line"], x["transform"]): x["file"] for x in pos_all if x["file"] in embs}
    for tr in TRANSFORMS[1:]:
        cos = [float(embs[by_line[(ln, tr)]] @ embs[by_line[(ln, "clean")]]) for ln in lines_ch
               if (ln, tr) in by_line and (ln, "clean") in by_line
               and embs[by_line[(ln, tr)]] is not None and embs[by_line[(ln, "clean")]] is not None]
        channel[tr] = distribution(cos)
    scan_vs_direct = [abs(x["raw"][x["talent"]] - direct[str(media.ANALYSIS_SR)][x["file"]]["raw"][x["talent"]])
                      for x in pos_all if x["transform"] == "clean" and x["talent"] in x["raw"]
                      and direct[str(media.ANALYSIS_SR)][x["file"]]["raw"]]
    direct_s = time.perf_counter() - t

    # the null, and what it makes of a cosine
    n_t = len(FISH)
    thresholds = {f"{s} stretch(es) judged": {
        "flag_at_cosine": round(1 - pol.distance_at_rate(policy.flag_at / (n_t * s), null), 4),
        "review_at_cosine": round(1 - pol.distance_at_rate(policy.review_at / (n_t * s), null), 4)} for s in (1, 2)}
    clean_non = [1 - x["raw"][other_of[x["talent"]]] for x in pos_all
                 if x["transform"] == "clean" and other_of[x["talent"]] in x["raw"]]
    fitted = pol.fit_null(np.asarray(clean_non), prior=voices.PRIOR_VOICE_DISTANCE)
    fitted_thresholds = {"flag_at_cosine": round(1 - pol.distance_at_rate(policy.flag_at / n_t, fitted), 4),
                         "review_at_cosine": round(1 - pol.distance_at_rate(policy.review_at / n_t, fitted), 4)}

    # what the verdicts would be under that null (fitted on the same lines it is tried on: optimistic)
    def under(raw: float, expected: float) -> float:
        d = 1.0 - raw
        return expected * float(pol.pair_rate(d, fitted)) / max(float(pol.pair_rate(d, null)), 1e-300)

    counterfactual = {}
    for tr in TRANSFORMS:
        pos = [x for x in rows if x["role"] == "positive" and x["transform"] == tr]
        own = [under(x["raw"][x["talent"]], x["expected"][x["talent"]]) for x in pos if x["talent"] in x["raw"]]
        oth = [under(x["raw"][other_of[x["talent"]]], x["expected"][other_of[x["talent"]]]) for x in pos
               if other_of[x["talent"]] in x["raw"]]
        counterfactual[tr] = {"found": round(sum(e <= policy.flag_at for e in own) / max(1, len(pos)), 3),
                              "review": round(sum(policy.flag_at < e <= policy.review_at for e in own)
                                              / max(1, len(pos)), 3),
                              "other_fish_flagged": sum(e <= policy.flag_at for e in oth),
                              "other_fish_review": sum(policy.flag_at < e <= policy.review_at for e in oth)}

    # targets
    spd = {k: v.get("speech", {}).get("x_realtime_wall") or 0 for k, v in timing.items()}
    best_2 = max(spd.get(DEFAULT_SETTING, 0), spd.get(TWO_FILES_SETTING, 0))
    found = {x["transform"]: x["found"] for x in per_transform}
    targets = {f"found (flagged, right talent), {tr} >= {TARGETS[tr]}": [found[tr], found[tr] >= TARGETS[tr]]
               for tr in TRANSFORMS}
    targets.update({
        "other speakers' lines flagged == 0 (other fish, all transforms; synthetic)": [others_flagged,
                                                                                       others_flagged == 0],
        "other speakers' lines sent to review <= 2%": [round(others_review, 3), others_review <= TARGETS["others_review"]],
        "music excerpts with any evidence == 0": [music_evidence, music_evidence == 0],
        "featurizer >= 100x real time on 2 threads (speech, wall; best 2-thread setting)": [best_2, best_2 >= 100],
    })

    misses = [{k: x.get(k) for k in ("file", "transform", "seconds", "verdict", "raw", "expected", "speech",
                                     "review_right", "judged")}
              for x in pos_all if not x.get("flagged_right")]
    neg_hits = [{k: x.get(k) for k in ("file", "role", "level", "wrong", "wrong_hits", "raw")}
                for x in rows if x["wrong"] != "none"]
    run_json = dirs["scan"] / "run.json"
    code_end = code_state()
    changed = code_end["sha256"] != code_start["sha256"]
    if changed:
        print("WARNING: the scanner's voice modules changed during this run: rerun", file=sys.stderr)
    report = {
        "benchmark": "voices", "seed": args.seed,
        "command": " ".join([".venv/bin/python", "benchmarks/voices_bench.py"] + sys.argv[1:]),
        "code": {"start": code_start, "end": code_end, "changed_during_run": changed},
        "machine": {**cpu_info(), "load_average_start": [round(v, 2) for v in load_before]},
        "featurizer": {"name": "audio-voice", "version": feat_spec.get("version"),
                       "model_id": feat_spec.get("model"), "analysis_sr": media.ANALYSIS_SR,
                       "encoder_sr": getattr(voice, "SR", None),
                       "min_speech_judged": getattr(voices, "MIN_SPEECH", None),
                       "note": f"the pipeline decodes audio at {media.ANALYSIS_SR} Hz and the featurizer resamples "
                               f"to {getattr(voice, 'SR', 16000)} Hz: the encoder sees nothing above "
                               f"{media.ANALYSIS_SR / 2:.0f} Hz"},
        "sources": {"dub": str(DUB), "lines": len(lines), "by_character": {k: len(v) for k, v in by_who.items()},
                    "repeats_dropped": dupes, "music": str(MUSIC), "music_excerpts": music,
                    "synthetic": sorted({f"{s['engine']} {s['voice']}" for s in synth}),
                    "synthetic_not_installed": synth_missing},
        "talents": {FISH[f]: {"lines": [str(x["path"].relative_to(DUB)) for x in xs],
                              "seconds": round(sum(x["seconds"] for x in xs), 2)} for f, xs in enrol.items()},
        "index": {"talents": len(FISH), "stretches": feat_spec.get("count"), "null": null,
                  "null_source": null.get("source"), "flag_at": policy.flag_at, "review_at": policy.review_at,
                  "thresholds": thresholds, "prior": list(voices.PRIOR_VOICE_DISTANCE),
                  "null_if_fitted_on_other_fish_clean_lines": {**fitted, "thresholds_1_stretch": fitted_thresholds,
                                                               "verdicts_under_it": counterfactual}},
        "summary": {"positives": len(pos_all), "found": round(sum(bool(x.get("flagged_right")) for x in pos_all)
                                                             / max(1, len(pos_all)), 3),
                    "others": len(others), "others_flagged": others_flagged, "others_review": round(others_review, 3),
                    "music_evidence": music_evidence,
                    "errors": sum(x.get("verdict") in ("error", "missing") for x in rows)},
        "per_transform": per_transform, "eer": eers, "by_speech": by_speech,
        "short_lines": {"n": len(short_rows), "judged": share(short_rows, "judged"),
                        "found": share(short_rows, "flagged_right"), "review": share(short_rows, "review_right"),
                        "same": distribution([x["raw"][x["talent"]] for x in short_rows if x["talent"] in x["raw"]])},
        "negatives": negatives, "unnamed_lines": {**unnamed, "by_level": minor_by_level},
        "names_against_subtitles": agreement,
        "vad": {"min_speech_judged_s": min_speech, **vad},
        "channel_cosine_to_own_clean_line": channel,
        "direct": {"eer": direct_eer, "enrolled": {sr: d["enrolled"] for sr, d in direct_full.items()}, "scan_vs_direct_max_abs_diff": round(max(scan_vs_direct), 5)
                   if scan_vs_direct else None, "seconds": round(direct_s, 1)},
        "targets": targets,
        "timing": {"featurizer": timing, "make_s": round(make_s, 1), "build_s": round(build_s, 1),
                   "scan_s": round(scan_s, 1), "scan_audio_s": round(audio_total, 1),
                   "scan_x_realtime": round(audio_total / scan_s, 1), "scan_threads_env": args.scan_threads or None,
                   "scan_run": json.loads(run_json.read_text()) if run_json.is_file() else None,
                   "total_s": round(time.perf_counter() - t_start, 1)},
        "misses": misses, "negative_hits": neg_hits, "rows": rows,
    }
    dest = ROOT / "benchmarks" / "results"
    dest.mkdir(parents=True, exist_ok=True)
    (dest / f"voices-seed{args.seed}.json").write_text(json.dumps(report, indent=2, default=float))

    # markdown
    m = report["machine"]
    t1 = thresholds["1 stretch(es) judged"]
    enr = direct_full[str(media.ANALYSIS_SR)]["enrolled"]
    talents_words = "; ".join(f"{k}: {len(v['lines'])} lines, {v['seconds']:.1f} s, {enr[k]['stretches']} stretches, "
                              f"{enr[k]['speech_s']:.1f} s of speech" for k, v in report["talents"].items())
    md = [f"# audio-voice: talents' voices (seed {args.seed})", "",
          f"`{report['command']}` — Dutch dub of Fish Fillets NG ({len(lines)} lines: small fish "
          f"{len(by_who['m'])}, big fish {len(by_who['v'])}, named for neither {len(by_who.get('minor', []))}). "
          f"Both fish enrolled in one index (consent no; {talents_words}). Featurizer `{feat_spec.get('version')}` "
          f"({feat_spec.get('model')}; commit {code_start['commit'][:8]}"
          f"{', scanner modified' if code_start['scanner_dirty'] else ''}"
          f"{'; WARNING: the scanner changed during the run' if changed else ''}). Index null: **{null.get('source')}** (centre {null['centre']:.3f}, "
          f"spread {null['spread']:.3f} x {null.get('tail_widening', pol.TAIL_WIDENING)}, {null['pairs']} pairs): "
          f"a file with one judged stretch flags at cosine >= {t1['flag_at_cosine']:.3f}, reviews at >= "
          f"{t1['review_at_cosine']:.3f}.", "",
          "| transform | lines | stretch judged | found (flagged, right talent) | review, right talent | "
          "same-speaker cosine median / p10 / min | other-fish cosine median / p90 / max | other fish flagged | "
          "other fish to review | EER |",
          "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for k in per_transform:
        s, o = k["same"], k["other_fish"]
        md.append(f"| {k['transform']} | {k['n']} | {k['judged']:.2f} | {k['found']:.3f} | {k['review']:.3f} | "
                  + (f"{s['median']:.3f} / {s['p10']:.3f} / {s['min']:.3f}" if s["n"] else "-") + " | "
                  + (f"{o['median']:.3f} / {o['p90']:.3f} / {o['max']:.3f}" if o["n"] else "-")
                  + f" | {k['other_fish_flagged']} | {100 * k['other_fish_review']:.1f}% | "
                  + (f"{100 * k['eer']:.1f}%" if k["eer"] is not None else "-") + " |")
    md += ["", "Found by fish: " + ", ".join(f"{k['transform']} " + " / ".join(
        f"{FISH[f]} {v:.2f}" for f, v in k["found_by_fish"].items()) for k in per_transform) + ".", "",
        "Found against the speech (s) of the stretch judged for the line's own talent (lines: found share, "
        "median same-speaker cosine):", "",
        "| transform | " + " | ".join(k for k in by_speech[0] if k != "transform") + " |",
        "|---|" + "---:|" * (len(by_speech[0]) - 1)]
    for b in by_speech:
        md.append(f"| {b['transform']} | " + " | ".join(
            (f"{v[0]}: {v[1]:.2f}, {v[2] if v[2] is not None else '-'}" if isinstance(v, list) else str(v))
            for k, v in b.items() if k != "transform") + " |")
    sl = report["short_lines"]
    md += ["", f"Lines of 2-3 s (clean, not in the targets): {sl['n']}, a stretch judged in {100 * sl['judged']:.0f}%, "
               f"found {sl['found']:.2f}, review {sl['review']:.2f}"
               + (f", same-speaker cosine median {sl['same']['median']:.3f}" if sl["same"]["n"] else "") + ".", "",
           "| negatives | files | stretch judged | flagged | to review | best cosine median / p90 / max |",
           "|---|---:|---:|---:|---:|---:|"]
    for label, s in negatives.items():
        b = s["best_cosine"]
        md.append(f"| {label} | {s['n']} | {s['judged']} | {s['flagged']} | {s['review']} "
                  f"({100 * s['review_share']:.1f}%) | "
                  + (f"{b['median']:.3f} / {b['p90']:.3f} / {b['max']:.3f}" if b["n"] else "-") + " |")
    ag = agreement
    md += ["", f"Minor characters: the {ag['unnamed_lines']} lines named for neither fish (levels "
               f"{', '.join(sorted(minor_by_level))}) are not minor characters: the level scripts subtitle "
               f"{ag['unnamed_with_a_subtitle_fish']} of them in the small or the big fish's font "
               f"(`script/<level>/dialogs*.lua`, `font_small` / `font_big`), and on the "
               f"{ag['with_a_subtitle_font']} named lines with a font, name and font agree on {ag['agree']} and "
               f"disagree on {ag['disagree']}. Judged as the fish their subtitles name: "
               f"{unnamed['judged']} with a stretch judged, flagged with the right fish {unnamed['flagged_right']}, "
               f"review with it {unnamed['review_right']}; flagged with the other fish {unnamed['flagged_wrong']}, "
               f"sent to review with it {unnamed['review_wrong']}. By level: "
           + "; ".join(f"{lv} ({c['lines']} lines, {c['judged']} judged): right fish flagged {c['flagged_right']}, "
                       f"review {c['review_right']}; other fish flagged {c['flagged_wrong']}, review {c['review_wrong']}"
                       for lv, c in minor_by_level.items()) + "."]
    if synth_missing:
        md += ["", f"Not installed (skipped): {', '.join(synth_missing)}."]
    for role, v in vad.items():
        if v["lines"]:
            sh, lg = v["speech_share_of_line"], v["longest_stretch_speech_s"]
            md += ["", f"VAD on the clean {'positive lines (>= 3 s)' if role == 'positive' else 'lines of 2-3 s'} "
                       f"({v['lines']}, featurizer directly): speech is {100 * sh['median']:.0f}% of a line "
                       f"(median; p10 {100 * sh['p10']:.0f}%), longest stretch median {lg['median']:.2f} s of "
                       f"speech; no judged stretch (< {min_speech:g} s of speech in one stretch) because the VAD "
                       f"found no stretch of 1 s: {v['no_stretch_of_1s']}, less than {min_speech:g} s of speech "
                       f"in all: {v['total_below_min_speech']}, enough speech but split by pauses: "
                       f"{v['split_below_min_speech']}."]
    md += ["", "EER of the cosines (a fish's lines against its own talent vs the other fish's lines against it):", "",
           "| transform | pooled | " + " | ".join(FISH.values()) + " | threshold (pooled) |",
           "|---|---:|" + "---:|" * len(FISH) + "---:|"]
    for tr, e in eers.items():
        md.append(f"| {tr} | " + " | ".join(
            (f"{100 * e[k]['eer']:.1f}%" if e[k]["eer"] is not None else "-") for k in ["pooled", *FISH.values()])
            + f" | {e['pooled'].get('threshold_cosine')} |")
    de = direct_eer
    md += ["", "The featurizer directly on the clean lines (the judge's rule; same enrolment): "
           + "; ".join(f"decoded at {sr} Hz: EER {100 * (v['eer'] or 0):.1f}%, same-speaker median "
                       f"{v['same'].get('median')}, other-fish median {v['other_fish'].get('median')} / max "
                       f"{v['other_fish'].get('max')}, {v['no_stretch_judged']} lines without a judged stretch"
                       for sr, v in de.items())
           + f" (scan against direct at {media.ANALYSIS_SR} Hz: largest cosine difference "
             f"{report['direct']['scan_vs_direct_max_abs_diff']}).", "",
           f"Null fitted on the clean other-fish cosines instead ({fitted['pairs']} lines): centre "
           f"{fitted['centre']:.3f}, spread {fitted['spread']:.3f}: one stretch would flag at cosine >= "
           f"{fitted_thresholds['flag_at_cosine']:.3f}, review at >= {fitted_thresholds['review_at_cosine']:.3f}; "
           "found (flagged) / review under it, fitted on the very lines it is tried on: "
           + ", ".join(f"{tr} {v['found']:.2f} / {v['review']:.2f} (other fish flagged {v['other_fish_flagged']}, "
                       f"to review {v['other_fish_review']})" for tr, v in counterfactual.items()) + ".", "",
           f"Channel: a line's transformed copy against its own clean original (whole-file d-vectors, same speaker "
           f"and words; {len(lines_ch)} lines): "
           + ", ".join(f"{tr} cosine median {v['median']:.3f} (p10 {v['p10']:.3f})" for tr, v in channel.items()
                       if v["n"]) + ".", "",
           f"Speed of the featurizer (speech: {args.speed_lines} clean lines; music: {args.speed_music} 30-s "
           f"excerpts; fresh process each, best of {args.repeat}; {m['cores']} cores, {m['model']}, AVX2 "
           f"{'yes' if m['avx2'] else 'no'}, AVX-512 {'yes' if m['avx512f'] else 'no'}; torch {m['torch']}; load "
           f"average {load_before[0]:.1f} at the start). The pipeline decodes at {media.ANALYSIS_SR} Hz; the "
           f"featurizer resamples to {getattr(voice, 'SR', 16000)} Hz:", "",
           "| setting | speech: x real time (wall / CPU) | music: x real time (wall / CPU) | speech stages (s): "
           "decode / VAD / mel / LSTM / rest | load after |", "|---|---:|---:|---|---:|"]
    for label, v in timing.items():
        if "error" in v:
            md.append(f"| {label} | error: {v['error']} | | | |")
            continue
        sp, mu = v.get("speech") or {}, v.get("music") or {}
        st = sp.get("stages_s") or {}
        stages = " / ".join(str(st.get(k, "-")) for k in ("decode", "vad", "mel", "lstm", "rest")) if st else "-"
        md.append(f"| {label} | {sp.get('x_realtime_wall')} / {sp.get('x_realtime_cpu')} | "
                  f"{mu.get('x_realtime_wall')} / {mu.get('x_realtime_cpu')} | {stages} | {v['load_average'][0]} |")
    per_core = (timing.get("1 thread, one file at a time") or {}).get("speech") or {}
    if per_core.get("x_realtime_cpu"):
        md += ["", f"One thread's CPU time (load-independent): {per_core['x_realtime_cpu']}x real time per core on "
                   f"speech, so two idle cores, two files at a time, could reach about "
                   f"{2 * per_core['x_realtime_cpu']:.0f}x; the wall figures above were taken at a load average of "
                   f"{load_before[0]:.1f} on {m['cores']} cores. Stage \"rest\" is by difference (decode timed "
                   "in a separate pass)."]
    tm = report["timing"]
    md += ["", f"Scan end to end (`likeness scan`, subprocess{', OMP/OpenBLAS threads ' + str(args.scan_threads) if args.scan_threads else ', library defaults'}): "
               f"{len(results)} files, {tm['scan_audio_s']:.0f} s of audio in {tm['scan_s']:.0f} s "
               f"({tm['scan_x_realtime']}x real time); build {tm['build_s']} s; whole run {tm['total_s']:.0f} s.",
           "", "| target | measured | |", "|---|---:|:-:|"]
    md += [f"| {k} | {v[0]} | {mark(v[1])} |" for k, v in targets.items()]
    if neg_hits:
        md += ["", f"Negatives matched ({len(neg_hits)}):", ""]
        md += [f"- {x['file']} ({x['role']}): {x['wrong']} "
               + ", ".join(f"{h['talent']} cosine {h['raw']:.3f} expected {h['expected']:.2g}" for h in x["wrong_hits"])
               for x in neg_hits[:40]]
    if misses:
        md += ["", f"Positives not flagged ({len(misses)}; first 60):", ""]
        md += [f"- {x['file']}: {'no stretch judged' if not x['judged'] else 'review' if x['review_right'] else 'too far'}"
               f" ({x['seconds']} s line, judged stretch {x['speech']} s of speech, cosines "
               + ", ".join(f"{k} {v:.3f}" for k, v in (x.get("raw") or {}).items()) + ")" for x in misses[:60]]
    (dest / f"voices-seed{args.seed}.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    sys.exit(main())

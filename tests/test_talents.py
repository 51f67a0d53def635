"""Talents: protected performers in the index, their consent per modality, image-face matches,
withdrawal and removal."""

from __future__ import annotations

import datetime as _dt
import json
import shutil
import stat
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps
from typer.testing import CliRunner

from scanner import policy as pol
from scanner.cli import app
from scanner.demo import synthetic_picture
from scanner.errors import ParameterError
from scanner.features import face, voice
from scanner.index.metadata import read_metadata
from scanner.index.store import open_index
from scanner.match.faces import PRIOR_FACE_DISTANCE, fit_face_null
from scanner.pipeline import FeatureOptions, build_index, check, remove_talent, set_talent_consent
from scanner.talents import Consent, Talent, parse_consent

needs_faces = pytest.mark.skipif(not face.available(), reason=f"image-face models not installed ({face.INSTALL})")


def portrait() -> Image.Image:
    """A public-domain portrait shipped with scikit-image (tests need a real face)."""
    data = pytest.importorskip("skimage.data")
    return Image.fromarray(data.astronaut())


def test_consent_is_in_force_until_its_last_day() -> None:
    day = _dt.date(2026, 6, 1)
    assert Consent(True).in_force(day) and Consent(True).words(day) == "yes"
    assert Consent(True, "2026-06-01").in_force(day) and Consent(True, "2026-06-01").words(day) == "yes until 2026-06-01"
    assert not Consent(True, "2026-05-31").in_force(day) and Consent(True, "2026-05-31").words(day) == "expired 2026-05-31"
    assert not Consent(False).in_force(day) and Consent(False).words(day) == "no"
    assert Talent("A", {"face": Consent(True)}).consent_for("image-face").given
    assert not Talent("A", {"face": Consent(True)}).consent_for("audio-voice").given


def test_metadata_reads_talent_and_consent_and_names_a_bad_value(tmp_path: Path) -> None:
    good = tmp_path / "talent.csv"
    good.write_text("path,talent,consent\na.png,Ada Lovelace,yes\nb.png,Ada Lovelace,\nc.png,,\n")
    meta = read_metadata(good)
    assert (meta["a.png"]["talent"], meta["a.png"]["consent"]) == ("Ada Lovelace", True)
    assert meta["b.png"]["consent"] is None and "talent" not in meta["c.png"]
    bad = tmp_path / "bad.csv"
    bad.write_text("path,talent,consent\na.png,Ada,perhaps\n")
    with pytest.raises(ParameterError, match=r"bad\.csv.*a\.png.*yes or no"):
        read_metadata(bad)
    assert parse_consent(" No ") is False


def test_a_talent_match_flags_unless_consent_is_in_force() -> None:
    policy = pol.Policy()
    m = {"feature": "image-face", "work_id": 1, "expected": 1e-6, "licensed": False, "featureless_ref": None,
         "talent": "Ada", "consent": "no"}
    assert pol.decide([m], policy) == ("flagged", "resembles Ada (no consent on record)")
    assert pol.decide([{**m, "expected": 0.01}], policy)[0] == "review"
    assert pol.decide([{**m, "licensed": True, "consent": "yes"}], policy) == ("licensed", "resembles Ada (consent yes)")


def test_the_face_null_comes_from_the_talents_or_from_the_prior() -> None:
    rng = np.random.default_rng(0)
    people = rng.normal(size=(20, 128)).astype(np.float32) * 0.07          # 20 people, 3 photos each
    vecs = np.repeat(people, 3, axis=0) + rng.normal(size=(60, 128)).astype(np.float32) * 0.01
    talent, work = np.repeat(np.arange(20), 3), np.arange(60)
    null = fit_face_null(vecs, talent, work)
    # each face against each other talent's photo, both ways round
    assert null["source"] == "talents" and null["talents"] == 20 and null["pairs"] == 2 * 20 * 19 // 2 * 9
    assert null["within"]["median"] < null["centre"]                     # one person's photos are closer
    few = fit_face_null(vecs[:6], talent[:6], work[:6])                  # two people: too few pairs
    assert few["source"] == "prior" and (few["centre"], few["spread"]) == PRIOR_FACE_DISTANCE
    # renderings of a photo are no new samples of a face: 4 people x 3 photos give 54 photo pairs
    # (fitted), 3 x 3 give 27 (the prior), however many renderings each photo has
    rendered = np.repeat(vecs, 3, axis=0) + rng.normal(size=(180, 128)).astype(np.float32) * 0.02
    by = (np.repeat(talent, 3), np.repeat(work, 3), np.tile(np.arange(3), 60))
    assert fit_face_null(rendered[:36], *(x[:36] for x in by))["source"] == "talents"
    thin = fit_face_null(rendered[:27], *(x[:27] for x in by))
    assert thin["source"] == "prior" and thin["pairs"] > 50                # 27 photo pairs, 2 x 81 scored


@needs_faces
def test_a_talents_face_is_found_withdrawn_consent_flags_and_removal_deletes_the_templates(tmp_path: Path) -> None:
    refs = tmp_path / "refs"
    refs.mkdir()
    person = portrait()
    person.save(refs / "ada.png")
    person.crop((64, 0, 448, 384)).save(refs / "ada2.png")  # a second photo of her
    for i in range(3):  # works beside the talent: never face templates
        synthetic_picture(i).save(refs / f"work{i}.png")
    (tmp_path / "talent.csv").write_text("path,talent,consent\nada.png,Ada Lovelace,no\nada2.png,Ada Lovelace,no\n")
    index = tmp_path / "index"
    build_index([refs], index, options=FeatureOptions(names=["image-phash", "image-face"]),
                metadata=tmp_path / "talent.csv")
    with open_index(index) as idx:
        assert list(idx.talents()) == ["Ada Lovelace"] and idx.talents()["Ada Lovelace"].works == 2
        faces_rows = np.asarray(idx.rows("image-face"))
        assert set(faces_rows[:, 0]) == {1, 2}                           # the talent's references only
        # her face in each photo, as photographed and re-rendered
        assert len(faces_rows) == 2 * len(face.RENDERINGS)
        assert sorted(idx.landmarks("image-face")["rendering"]) == sorted(2 * list(range(len(face.RENDERINGS))))
        assert idx.manifest["features"]["image-phash"]["count"] == 3 * idx.manifest["features"]["image-phash"][
            "codes_per_item"]                                                           # works only
        assert idx.null["image-face"]["source"] == "prior"
    for suffix in (".faiss", ".rows.npy", ".npz"):
        assert stat.S_IMODE((index / f"image-face{suffix}").stat().st_mode) == 0o600
    variant = tmp_path / "variant.jpg"  # another take: smaller, grey, mirrored, recompressed
    ImageOps.mirror(ImageOps.grayscale(person)).resize((360, 360)).save(variant, quality=70)
    result, _ = check(variant, index)
    assert result.verdict == "flagged" and result.reason == "resembles Ada Lovelace (no consent on record)"
    m = result.matches[0]
    assert (m["feature"], m["talent"], m["consent"]) == ("image-face", "Ada Lovelace", "no")
    assert len([x for x in result.matches if x["feature"] == "image-face"]) == 1  # one person, one match
    assert m["locator"]["query_box"] and m["locator"]["ref_box"] and m["raw"] < 0.6
    stranger = tmp_path / "stranger.png"
    synthetic_picture(42).save(stranger)
    assert check(stranger, index)[0].verdict == "clear"                  # no face: no evidence
    set_talent_consent(index, "Ada Lovelace", face=True)
    assert check(variant, index)[0].verdict == "licensed"
    set_talent_consent(index, "Ada Lovelace", face=True, until="2001-01-01")   # lapsed
    lapsed, _ = check(variant, index)
    assert lapsed.verdict == "flagged" and lapsed.matches[0]["consent"] == "expired 2001-01-01"
    with pytest.raises(ParameterError, match="no talent called"):
        set_talent_consent(index, "Nobody", face=True)
    assert remove_talent(index, "Ada Lovelace") == [1, 2]
    with open_index(index) as idx:
        assert idx.talents() == {} and idx.faiss_index("image-face").ntotal == 0
    assert check(variant, index)[0].verdict != "flagged"
    assert CliRunner().invoke(app, ["index", "verify", "--index", str(index)]).exit_code == 0


@needs_faces
def test_a_talents_face_is_also_described_re_rendered() -> None:
    """A restyled picture of a talent (a filter unlike the renderings) is closer to their
    re-rendered faces than to their photo: what the renderings are for."""
    import cv2

    person = portrait()
    ref = face.Face().prepare_reference(person)
    assert list(ref["rendering"]) == list(range(len(face.RENDERINGS)))
    assert (ref["box"] == ref["box"][0]).all()                           # one face, described three ways
    styled = face.Face().prepare(Image.fromarray(cv2.stylization(np.asarray(person), sigma_s=60, sigma_r=0.45)))
    d = np.linalg.norm(ref["desc"] - styled["desc"][0], axis=1)
    assert d[1:].min() < d[0] - 0.1, d


@needs_faces
def test_the_talent_commands(tmp_path: Path) -> None:
    refs = tmp_path / "refs"
    refs.mkdir()
    portrait().save(refs / "ada.png")
    (tmp_path / "t.csv").write_text("path,talent,consent\nada.png,Ada Lovelace,yes\n")
    runner = CliRunner()
    res = runner.invoke(app, ["index", "build", str(refs), "--index", str(tmp_path / "i"), "--metadata",
                              str(tmp_path / "t.csv"), "-q"])
    assert res.exit_code == 0, res.output
    manifest = json.loads((tmp_path / "i" / "manifest.json").read_text())
    assert "image-face" in manifest["features"]                          # talents named: faces are kept
    res = runner.invoke(app, ["index", "talent", "list", "--index", str(tmp_path / "i")])
    assert "Ada Lovelace: 1 reference(s); consent: face yes, voice yes" in " ".join(res.output.split())
    res = runner.invoke(app, ["index", "talent", "consent", "Ada Lovelace", "--voice", "no", "--index",
                              str(tmp_path / "i")])
    assert res.exit_code == 0 and "voice no" in res.output
    res = runner.invoke(app, ["index", "talent", "consent", "Ada Lovelace", "--face", "maybe", "--index",
                              str(tmp_path / "i")])
    assert res.exit_code != 0 and "yes or no" in res.output and "Traceback" not in res.output
    info = json.loads(runner.invoke(app, ["index", "info", "--json", "--index", str(tmp_path / "i")]).stdout)
    assert info["talents"]["count"] == 1 and info["talents"]["null"]["image-face"]["source"] == "prior"
    res = runner.invoke(app, ["index", "talent", "remove", "Ada Lovelace", "--index", str(tmp_path / "i")])
    assert res.exit_code == 0 and "removed talent Ada Lovelace: 1 reference(s)" in " ".join(res.output.split())


needs_voices = pytest.mark.skipif(not (voice.available() and shutil.which("espeak-ng")),
                                  reason=f"audio-voice needs its models ({voice.INSTALL}) and espeak-ng")
LINES = ("The quick brown fox jumps over the lazy dog near the river bank today.",
         "She sells sea shells by the sea shore while the tide goes out slowly.",
         "Every morning the baker opens his shop and sells fresh bread to the village.",
         "A long time ago a small boat sailed across the cold northern sea in winter.")


def speak(path: Path, text: str, voice_name: str) -> Path:
    """``text`` spoken by espeak-ng's ``voice_name`` into ``path`` (WAV); returns ``path``."""
    subprocess.run(["espeak-ng", "-v", voice_name, "-s", "150", "-w", str(path), text], check=True,
                   capture_output=True)
    return path


@needs_voices
def test_a_talents_voice_is_found_in_its_span_and_music_or_another_voice_is_no_evidence(tmp_path: Path) -> None:
    import soundfile as sf
    from scipy import signal

    from scanner.report.words import describe_match

    refs = tmp_path / "refs"
    refs.mkdir()
    for i in range(3):
        speak(refs / f"a{i}.wav", LINES[i], "en+m3")
    (tmp_path / "talent.csv").write_text("path,talent,consent\n" + "".join(f"a{i}.wav,Voice A,no\n" for i in range(3)))
    index = tmp_path / "index"
    build_index([refs], index, options=FeatureOptions(names=["audio-fingerprint", "audio-voice"]),
                metadata=tmp_path / "talent.csv")
    with open_index(index) as idx:
        # three stretches, each described as recorded, through a telephone band and in a noisy room
        assert idx.faiss_index("audio-voice").ntotal == 3 * len(voice.CHANNELS) == 9
        assert idx.null["audio-voice"]["source"] == "prior"
        assert stat.S_IMODE((index / "audio-voice.faiss").stat().st_mode) == 0o600
    # a new line in the same voice, after five seconds of a chord (music: no speech, no evidence)
    line, sr = sf.read(speak(tmp_path / "line.wav", LINES[3], "en+m3"), dtype="float32")
    t = np.arange(5 * sr) / sr
    chord = 0.1 * sum(np.sin(2 * np.pi * f * t) for f in (220.0, 277.2, 329.6)).astype(np.float32)
    sf.write(tmp_path / "generated.wav", np.concatenate([chord, line]), sr)
    result, _ = check(tmp_path / "generated.wav", index)
    assert result.verdict == "flagged" and result.reason == "resembles Voice A (no consent on record)"
    m = result.matches[0]
    assert (m["feature"], m["talent"]) == ("audio-voice", "Voice A") and m["raw"] > 0.85
    assert 4.0 <= m["locator"]["query_start"] <= 6.0 and m["locator"]["duration"] >= 2.0
    sf.write(tmp_path / "music.wav", chord, sr)
    assert check(tmp_path / "music.wav", index)[0].verdict == "clear"
    speak(tmp_path / "other.wav", LINES[3], "en+f4")                      # another voice, the same words
    assert check(tmp_path / "other.wav", index)[0].verdict == "clear"
    # over a telephone line (a filter of its own here, not the enrolment's): still the talent, matched
    # through the telephone-band voice; the other voice over the same line stays clear
    for name in ("line", "other"):
        y, sr_y = sf.read(tmp_path / f"{name}.wav", dtype="float64")
        y8 = signal.resample_poly(y, 8000, sr_y)
        y8 = signal.sosfilt(signal.butter(6, [350, 3000], btype="bandpass", fs=8000, output="sos"), y8)
        sf.write(tmp_path / f"{name}-phone.wav", (0.9 * y8 / np.abs(y8).max()).astype(np.float32), 8000)
    phone, _ = check(tmp_path / "line-phone.wav", index)
    assert phone.verdict == "flagged" and phone.matches[0]["talent"] == "Voice A", phone.reason
    assert phone.matches[0]["locator"]["talent_heard"] == "over a telephone line"
    assert "as heard over a telephone line" in describe_match(phone.matches[0])["words"]
    assert check(tmp_path / "other-phone.wav", index)[0].verdict == "clear"
    # the same speech as a film's soundtrack: found where it is heard
    from scanner import video

    soundtrack = np.concatenate([chord, line])
    video.write_clip(tmp_path / "film.mp4", [(synthetic_picture(7), len(soundtrack) / sr)], fps=5,
                     audio=soundtrack, sr=sr)
    film, _ = check(tmp_path / "film.mp4", index)
    assert film.verdict == "flagged" and film.video["timeline"]
    assert film.video["timeline"][0]["talent"] == "Voice A" and 4.0 <= film.video["timeline"][0]["start"] <= 6.0
    set_talent_consent(index, "Voice A", voice=True)
    assert check(tmp_path / "generated.wav", index)[0].verdict == "licensed"


def test_a_voice_null_counts_a_stretch_once_whatever_channels_describe_it() -> None:
    from scanner.match.voices import fit_voice_null

    rng = np.random.default_rng(0)

    def rows(stretches: int, talents: int = 2) -> tuple[np.ndarray, ...]:
        n = stretches * talents * len(voice.CHANNELS)
        v = rng.standard_normal((n, 256)).astype(np.float32)
        v /= np.linalg.norm(v, axis=1, keepdims=True)
        return (v, np.repeat(np.arange(talents), n // talents), np.ones(n, np.float32),
                np.tile(np.arange(len(voice.CHANNELS)), n // len(voice.CHANNELS)))

    # 2 talents x 10 stretches: 20 pairs as recorded (60 through the channels) are too few to fit on
    assert fit_voice_null(*rows(10))["source"] == "prior"
    fitted = fit_voice_null(*rows(30))                     # 60 pairs as recorded: fitted
    # every stretch through every channel against the other talent's closest voice: 2 x 30 x 3 pairs
    assert fitted["source"] == "talents" and fitted["pairs"] == 180 and fitted["talents"] == 2


def test_templates_of_an_index_built_before_renderings_and_channels_read_as_recorded() -> None:
    import faiss

    from scanner.match.faces import Faces
    from scanner.match.voices import Voices

    class Old:   # what an older index's files hold: no rendering or channel per row
        def read_faiss(self):
            index = faiss.IndexFlatIP(4)
            index.add(np.eye(4, dtype=np.float32)[:3])
            return index

        def load_npy(self, suffix: str) -> np.ndarray:
            return np.array([[1, 0], [2, 0], [2, 1]], np.int32)

        def load_npz(self, suffix: str) -> dict[str, np.ndarray]:
            return {"speech": np.ones(3, np.float32)}

    for kind, key in ((Faces(), "rendering"), (Voices(), "channel")):
        vecs, rows, arrays = kind.read(Old())   # type: ignore[arg-type]
        assert len(vecs) == 3 and list(arrays[key]) == [0, 0, 0] and "speech" in arrays


def test_the_distance_a_chance_rate_needs_inverts_the_pair_rate() -> None:
    null = {"centre": 0.37, "spread": 0.04, "tail_widening": 1.5}
    for rate in (1e-6, 5e-4, 0.01, 0.5):
        d = pol.distance_at_rate(rate, null)
        assert abs(float(pol.pair_rate(d, null)) - rate) < 1e-9 * max(1.0, rate / 1e-6)
    assert pol.distance_at_rate(5e-4, null) < pol.distance_at_rate(0.01, null) < null["centre"]


@needs_faces
def test_a_talents_photo_gives_one_template_the_largest_face() -> None:
    person = portrait()
    scene = Image.new("RGB", (1024, 600), (200, 200, 200))
    scene.paste(person.resize((560, 560)), (10, 20))      # the talent
    scene.paste(person.resize((420, 420)), (595, 90))     # someone smaller beside them
    feat = face.Face()
    found = feat.prepare(scene)
    assert len(found) >= 2                                # an output: every face is judged
    kept = feat.prepare_reference(scene)
    # one face (as photographed, then re-rendered), the largest
    assert len(kept) == len(face.RENDERINGS) and (kept["eye"] == found["eye"].max()).all()
    assert kept["box"][0][0] < 0.4
    assert kept["box"][0][1] < 0.4                        # her face, not the badge on her suit


@needs_faces
def test_a_face_40_pixels_between_the_eyes_is_found_in_a_1024_pixel_picture() -> None:
    """Too small for the reduced first pass to detect: its weak candidate there earns a second look."""
    person = portrait()
    feat = face.Face()
    whole = feat.prepare(person)
    big = whole[np.argmax(whole["eye"])]
    rng = np.random.default_rng(0)
    scene = Image.fromarray(rng.integers(90, 170, (768, 1024, 3), dtype=np.uint8))  # a busy ground
    s = 40.0 / float(big["eye"])
    small = person.resize((round(person.width * s), round(person.height * s)), Image.Resampling.LANCZOS)
    scene.paste(small, (700, 400))
    found = feat.prepare(scene)
    assert len(found) >= 1
    near = found[np.argmin(np.linalg.norm(found["desc"] - big["desc"], axis=1))]
    assert 30 <= float(near["eye"]) <= 50
    assert float(np.linalg.norm(near["desc"] - big["desc"])) < 0.35     # the same person
    x0, y0, x1, y1 = near["box"]
    assert x0 >= 700 / 1024 - 0.01 and y0 >= 400 / 768 - 0.01            # where she was pasted


@needs_faces
def test_the_numpy_descriptor_gives_dlibs_own_descriptors() -> None:
    """dlib's network read from its file and run with numpy: dlib's vectors, several faces at once
    (dlib's add of a 3-pixel block onto a 4-pixel shortcut included), any number of them."""
    import dlib

    person = np.ascontiguousarray(np.asarray(portrait()))
    scene = np.ascontiguousarray(np.asarray(ImageOps.mirror(portrait()).rotate(8)))
    detector, shaper, network, _ = face._MODELS.get()
    own = dlib.face_recognition_model_v1(str(face.model_dir() / face.DESCRIPTOR_FILE))
    for rgb in (person, scene):
        shapes = dlib.full_object_detections()
        for b in face.detect(rgb, detector):
            shapes.append(shaper(rgb, dlib.rectangle(*b)))
        assert len(shapes) >= 1
        want = np.array([np.asarray(v) for v in own.compute_face_descriptor(rgb, shapes, 0)], np.float32)
        chips = np.stack([np.asarray(c) for c in dlib.get_face_chips(rgb, shapes, 150, 0.25)] * 3)
        got = network(chips)
        assert got.shape == (3 * len(shapes), 128) and got.dtype == np.float32
        assert np.abs(got[:len(shapes)] - want).max() < 1e-4
        assert np.abs(got[len(shapes):2 * len(shapes)] - want).max() < 1e-4
    assert network(np.zeros((0, 150, 150, 3), np.uint8)).shape == (0, 128)


def test_a_file_that_is_not_the_face_network_is_refused_by_name(tmp_path: Path) -> None:
    from scanner.errors import ModelError
    from scanner.features.dlib_dnn import FaceDescriptor, FaceDetector

    bad = tmp_path / "dlib_face_recognition_resnet_model_v1.dat"
    bad.write_bytes(b"\x01\x05con_4" + bytes(range(256)) * 4)
    with pytest.raises(ModelError, match="dlib_face_recognition_resnet_model_v1.dat"):
        FaceDescriptor(bad)
    with pytest.raises(ModelError, match="not dlib's ResNet"):
        FaceDescriptor(tmp_path / "missing.dat")
    with pytest.raises(ModelError, match="not dlib's CNN"):    # the descriptor's file is no detector
        FaceDetector(face.model_dir() / face.DESCRIPTOR_FILE)


@needs_faces
def test_the_numpy_cnn_detector_scores_a_face_as_dlibs_own() -> None:
    """dlib's CNN (MMOD) face detector read from its file: at the pyramid level where dlib found
    the astronaut, the same score and nearly the same window."""
    import dlib

    rgb = np.ascontiguousarray(np.asarray(portrait()))
    own = dlib.cnn_face_detection_model_v1(str(face.model_dir() / face.DETECTOR_FILE))(rgb, 0)
    assert len(own) == 1
    level = np.ascontiguousarray(np.asarray(portrait().resize((427, 427), Image.Resampling.BILINEAR)))  # 5/6
    score, box = face._MODELS.get()[3].best(level)
    assert score == pytest.approx(own[0].confidence, abs=0.05)
    r = own[0].rect
    ours = [v * 512 / 427 for v in box]
    assert max(abs(ours[0] - r.left()), abs(ours[1] - r.top()), abs(ours[2] - r.right()), abs(ours[3] - r.bottom())) < 12


@needs_faces
def test_a_face_with_its_eyes_covered_is_found_by_the_cnn_look() -> None:
    """HOG's candidate there is too weak to confirm; dlib's CNN detector finds the face."""
    from PIL import ImageDraw

    person = portrait()
    feat = face.Face()
    her = feat.prepare(person)[0]
    x0, y0, x1, y1 = (her["box"] * 512).round().astype(int)
    covered = person.copy()
    ImageDraw.Draw(covered).rectangle((x0 + 5, y0 + (y1 - y0) // 4, x1 - 5, y0 + (y1 - y0) // 2), fill=(0, 0, 0))
    rgb = np.ascontiguousarray(np.asarray(covered))
    detector, _, _, cnn = face._MODELS.get()
    assert face.detect(rgb, detector) == []                              # HOG alone: no face
    found = feat.prepare(covered)
    assert len(found) == 1
    assert abs(found["box"][0][0] - her["box"][0]) < 0.05 and abs(found["box"][0][1] - her["box"][1]) < 0.07
    assert float(np.linalg.norm(found["desc"][0] - her["desc"])) < 0.6   # dlib: the same person


@needs_faces
def test_faceless_pictures_get_no_face_from_the_cnn_look(monkeypatch) -> None:
    looks = []
    own = face._cnn_look
    monkeypatch.setattr(face, "CNN_FROM", face.FIRST_THRESHOLD)        # every candidate is looked at
    monkeypatch.setattr(face, "_cnn_look", lambda *a: looks.append(own(*a)) or looks[-1])
    data = pytest.importorskip("skimage.data")
    feat = face.Face()
    for name in ("coffee", "coins", "immunohistochemistry", "gravel", "grass", "page"):   # shipped, no faces
        picture = Image.fromarray(getattr(data, name)()).convert("RGB")
        assert len(feat.prepare(picture)) == 0, name
    assert len(looks) >= 6 and all(box is None for box in looks)

"""image-clip and the models registry, on a tiny open_clip model built at test time.

Every checkpoint here is written by :mod:`tests.tiny_clip` into a temporary folder and
loaded through ``make("image-clip", model=CONFIG, pretrained=CHECKPOINT)``, the same
path a real checkpoint takes. Nothing is downloaded; a socket guard makes sure.
"""

from __future__ import annotations

import json
import os
import pickle
import socket
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

sys.path.insert(0, str(Path(__file__).resolve().parent))  # for tiny_clip, whatever the rootdir

from tiny_clip import TINY_NAME, make_tiny_checkpoint  # noqa: E402

from scanner import models  # noqa: E402
from scanner.errors import ModelError, ParameterError  # noqa: E402
from scanner.features import make  # noqa: E402
from scanner.features import clip as clip_mod  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------- fixtures


def synthetic_image(seed: int, size: tuple[int, int] = (96, 80)) -> Image.Image:
    """A random background with 3-7 random rectangles/ellipses of random colours."""
    rng = np.random.default_rng(seed)
    w, h = size
    img = Image.new("RGB", size, tuple(int(v) for v in rng.integers(0, 256, 3)))
    draw = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(3, 8))):
        x0, y0 = int(rng.integers(0, w - 10)), int(rng.integers(0, h - 10))
        x1, y1 = x0 + int(rng.integers(8, w)), y0 + int(rng.integers(8, h))
        fill = tuple(int(v) for v in rng.integers(0, 256, 3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)([x0, y0, x1, y1], fill=fill)
    return img


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Any attempt to open a network connection fails the test."""

    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args!r}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


@pytest.fixture(autouse=True)
def isolated_models_dir(tmp_path, monkeypatch):
    """Never read the project's real models/ folder."""
    monkeypatch.setenv(models.MODELS_DIR_ENV, str(tmp_path / "models-default"))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """(config, random checkpoint seed 0) in a folder shared by the module."""
    return make_tiny_checkpoint(tmp_path_factory.mktemp("tiny"), seed=0)


@pytest.fixture(scope="module")
def clip(tiny):
    config, ckpt = tiny
    return make("image-clip", model=str(config), pretrained=str(ckpt))


@pytest.fixture(scope="module")
def images():
    return [synthetic_image(i) for i in range(16)]


def works_and_outputs(tmp_path: Path, n: int) -> tuple[Path, Path]:
    """``refs/`` with ``n`` works, ``outs/`` with a JPEG copy of each (``c*``) and ``n`` unrelated pictures (``n*``)."""
    from scanner.demo import MILD_TRANSFORMS, synthetic_picture

    refs, outs = tmp_path / "refs", tmp_path / "outs"
    refs.mkdir()
    outs.mkdir()
    for s in range(n):
        synthetic_picture(s).save(refs / f"r{s}.png")
        MILD_TRANSFORMS["jpeg-q40"](synthetic_picture(s)).save(outs / f"c{s}.png")
        synthetic_picture(60 + s).save(outs / f"n{s}.png")
    return refs, outs


def embed_images(featurizer, imgs):
    return featurizer.embed([featurizer.prepare(im) for im in imgs])


# ----------------------------------------------------------------------------- embeddings


def test_identity_and_shapes(clip, images):
    assert isinstance(clip, clip_mod.Clip)
    assert (clip.name, clip.kind, clip.metric, clip.modality) == ("image-clip", "dense", "ip", "image")
    assert clip.dim == 32
    assert clip.version == clip_mod.VERSION
    assert clip.model_id.startswith(f"{TINY_NAME}:sha256:")
    ident = clip.identity()
    assert ident["model"] == clip.model_id and ident["dim"] == 32
    assert ident["model_name"] == TINY_NAME and len(ident["checkpoint_sha256"]) == 64

    p = clip.prepare(images[0])
    assert p.shape == (3, 32, 32) and p.dtype == np.uint8          # normalised on the device

    v = embed_images(clip, images)
    assert v.shape == (len(images), 32) and v.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)


def test_pixels_are_normalised_on_the_device_as_in_numpy(clip, images):
    """uint8 pixels scaled and normalised in embed() give the rows float32 normalised on the host gives."""
    pix = [clip.prepare(im) for im in images[:4]]
    _, mean, std, _ = clip._preprocessing()
    host = [np.ascontiguousarray((p.astype(np.float32) / 255 - mean) / std, np.float32) for p in pix]
    np.testing.assert_allclose(clip.embed(pix), clip.embed(host), atol=2e-5)
    with pytest.raises(ParameterError, match="uint8"):
        clip.embed([p.astype(np.int16) for p in pix])


def test_prepare_accepts_any_mode_and_size(clip):
    for img in (synthetic_image(1).convert("L"), synthetic_image(2).convert("RGBA"), synthetic_image(3, (20, 300))):
        assert clip.prepare(img).shape == (3, 32, 32)


def test_deterministic_across_calls_and_instances(clip, tiny, images):
    a = embed_images(clip, images)
    b = embed_images(clip, images)
    np.testing.assert_array_equal(a, b)
    config, ckpt = tiny
    other = make("image-clip", model=str(config), pretrained=str(ckpt))
    np.testing.assert_allclose(embed_images(other, images), a, atol=1e-6)


def test_batched_equals_one_by_one(clip, tiny, images):
    batched = embed_images(clip, images)
    single = np.concatenate([clip.embed([clip.prepare(im)]) for im in images])
    # bf16 kernels may block differently per batch size: compare as cosines
    assert np.min(np.sum(batched * single, axis=1)) >= clip_mod.AUTOCAST_MIN_COSINE
    config, ckpt = tiny
    chunked = make("image-clip", model=str(config), pretrained=str(ckpt), batch_size=3)
    assert np.min(np.sum(embed_images(chunked, images) * batched, axis=1)) >= clip_mod.AUTOCAST_MIN_COSINE


def test_empty_batch_and_bad_shape(clip):
    assert clip.embed([]).shape == (0, 32)
    with pytest.raises(ParameterError, match="shape"):
        clip.embed([np.zeros((3, 16, 16), np.float32)])


def test_resized_copy_is_nearer_than_unrelated(clip, images):
    v = embed_images(clip, images)
    for i in range(8):
        w, h = images[i].size
        copy = images[i].resize((int(w * 0.7), int(h * 0.7)), Image.BILINEAR)
        c = clip.embed([clip.prepare(copy)])[0]
        near = float(c @ v[i])
        others = np.delete(v @ c, i)
        assert near > others.max(), (i, near, others.max())


def test_precision_is_verified(clip, tiny, images):
    # autocast only with native support and a passing probe; fp32 always available
    assert clip.precision_ in ("fp32", "bf16", "fp16")
    if clip.precision_ != "fp32":
        assert clip.probe_cosine_ >= clip_mod.AUTOCAST_MIN_COSINE
    config, ckpt = tiny
    fp32 = make("image-clip", model=str(config), pretrained=str(ckpt), precision="fp32")
    assert fp32.precision_ == "fp32"
    cos = np.sum(embed_images(fp32, images) * embed_images(clip, images), axis=1)
    assert cos.min() >= clip_mod.AUTOCAST_MIN_COSINE


def test_model_id_tracks_the_weights(tmp_path, tiny, clip):
    config, _ = tiny
    _, ckpt1 = make_tiny_checkpoint(tmp_path, seed=1)
    other = make("image-clip", model=str(config), pretrained=str(ckpt1))
    assert other.model_id != clip.model_id
    assert other.model_id == f"{TINY_NAME}:sha256:{models.sha256_file(ckpt1)[:16]}"


def test_safetensors_and_wrapped_state_dicts_load_alike(tmp_path, clip, images):
    import torch

    ref = embed_images(clip, images)
    config, st = make_tiny_checkpoint(tmp_path, seed=0, fmt="safetensors")
    v = embed_images(make("image-clip", model=str(config), pretrained=str(st)), images)
    assert np.min(np.sum(v * ref, axis=1)) >= clip_mod.AUTOCAST_MIN_COSINE

    _, pt = make_tiny_checkpoint(tmp_path, seed=0)
    sd = torch.load(pt, weights_only=True)
    wrapped = tmp_path / "wrapped.pt"
    torch.save({"state_dict": {"module." + k: t for k, t in sd.items()}, "epoch": 3}, wrapped)
    v = embed_images(make("image-clip", model=str(config), pretrained=str(wrapped)), images)
    assert np.min(np.sum(v * ref, axis=1)) >= clip_mod.AUTOCAST_MIN_COSINE


def test_checkpoint_that_does_not_fit_is_refused(tmp_path, tiny):
    import torch

    config, ckpt = tiny
    sd = torch.load(ckpt, weights_only=True)
    del sd["visual.proj"]
    bad = tmp_path / "bad.pt"
    torch.save(sd, bad)
    with pytest.raises(ModelError, match="does not fit"):
        make("image-clip", model=str(config), pretrained=str(bad)).embed([np.zeros((3, 32, 32), np.float32)])


def test_unknown_model_name(tmp_path):
    with pytest.raises(ParameterError, match="unknown open_clip model"):
        _ = make("image-clip", model="No-Such-Arch", pretrained="x").dim


# ----------------------------------------------------------------------------- no code from checkpoints


class _Payload:
    """Pickles to a call of ``open(marker, "w")``: code that must never run."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_pickled_objects_are_refused(tmp_path, tiny):
    import torch

    config, ckpt = tiny
    sd = torch.load(ckpt, weights_only=True)
    marker = tmp_path / "code-ran"
    evil = tmp_path / "evil.pt"
    torch.save({"state_dict": sd, "extra": _Payload(marker)}, evil)
    c = make("image-clip", model=str(config), pretrained=str(evil))
    with pytest.raises(ModelError, match="refused") as err:
        c.embed([np.zeros((3, 32, 32), np.float32)])
    assert not marker.exists()

    assert "weights_only=False" not in str(err.value)  # never suggest the unsafe retry

    legacy = tmp_path / "legacy.bin"  # a bare pickle, not torch's zip format
    legacy.write_bytes(pickle.dumps({"a": 1}))
    with pytest.raises(ModelError, match="refused"):
        make("image-clip", model=str(config), pretrained=str(legacy)).embed([np.zeros((3, 32, 32), np.float32)])

    not_weights = tmp_path / "numbers.pt"
    torch.save({"a": 1, "b": [2, 3]}, not_weights)
    with pytest.raises(ModelError, match="state dict"):
        make("image-clip", model=str(config), pretrained=str(not_weights)).embed([np.zeros((3, 32, 32), np.float32)])


def test_torch_load_is_called_with_weights_only(tiny, monkeypatch):
    import torch

    calls = []
    real = torch.load

    def spy(*args, **kwargs):
        calls.append(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    config, ckpt = tiny
    make("image-clip", model=str(config), pretrained=str(ckpt)).embed([np.zeros((3, 32, 32), np.float32)])
    assert calls and all(kw.get("weights_only") is True for kw in calls)


# ----------------------------------------------------------------------------- missing weights


def test_missing_tag_names_the_remedies(tmp_path, tiny):
    config, _ = tiny
    c = make("image-clip", model=str(config), pretrained="no-such-tag", models_dir=str(tmp_path / "m"))
    with pytest.raises(ModelError) as err:
        c.embed([np.zeros((3, 32, 32), np.float32)])
    msg = str(err.value)
    assert "likeness models fetch" in msg and "--clip-pretrained" in msg and "image-phash" in msg
    assert "\n" not in msg  # one paragraph


def test_default_model_without_weights_never_downloads(tmp_path):
    # ViT-B-32 / laion2b_s34b_b79k is an open_clip tag it *could* download: it must not
    c = make("image-clip", models_dir=str(tmp_path / "empty"))
    assert c.dim == 512
    with pytest.raises(ModelError, match="likeness models fetch --model ViT-B-32 --pretrained laion2b_s34b_b79k"):
        _ = c.model_id
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
        assert os.environ[var] == "1"


def test_missing_checkpoint_path(tmp_path, tiny):
    config, _ = tiny
    with pytest.raises(ModelError, match="does not exist.*--clip-pretrained"):
        _ = make("image-clip", model=str(config), pretrained=str(tmp_path / "nope.pt")).model_id


# ----------------------------------------------------------------------------- registry


def test_import_register_and_verify(tmp_path, tiny, clip, images):
    config, ckpt = tiny
    mdir = tmp_path / "models"
    entry = models.import_checkpoint(ckpt, model=TINY_NAME, tag="tiny-test", models_dir=mdir)
    assert entry["sha256"] == models.sha256_file(ckpt)
    assert entry["size"] == ckpt.stat().st_size and entry["pretrained"] == "tiny-test"
    assert (mdir / entry["file"]).is_file()
    assert models.list_models(mdir) == [entry]
    # importing the same bytes again is a no-op
    assert models.import_checkpoint(ckpt, model=TINY_NAME, tag="tiny-test", models_dir=mdir) == entry
    assert len(models.list_models(mdir)) == 1
    assert not [p for p in mdir.iterdir() if p.name.startswith(".import-")]

    by_tag = make("image-clip", model=str(config), pretrained="tiny-test", models_dir=str(mdir))
    assert by_tag.model_id == f"{TINY_NAME}:tiny-test"
    np.testing.assert_allclose(embed_images(by_tag, images[:4]), embed_images(clip, images[:4]), atol=1e-6)
    # the same bytes named by path get the registered tag's id
    by_path = make("image-clip", model=str(config), pretrained=str(ckpt), models_dir=str(mdir))
    assert by_path.model_id == by_tag.model_id

    # tamper with the registered copy: refused by tag and by path, before loading
    copy = mdir / entry["file"]
    data = bytearray(copy.read_bytes())
    data[len(data) // 2] ^= 0xFF
    copy.write_bytes(bytes(data))
    with pytest.raises(ModelError, match="checksum mismatch"):
        _ = make("image-clip", model=str(config), pretrained="tiny-test", models_dir=str(mdir)).model_id
    with pytest.raises(ModelError, match="checksum mismatch"):
        models.resolve_checkpoint(TINY_NAME, str(copy), models_dir=mdir)


def test_import_rejects_bad_input(tmp_path):
    with pytest.raises(ParameterError, match="no such"):
        models.import_checkpoint(tmp_path / "missing.pt", model="ViT-B-32", models_dir=tmp_path)
    odd = tmp_path / "weights.txt"
    odd.write_text("x")
    with pytest.raises(ParameterError, match="suffix"):
        models.import_checkpoint(odd, model="ViT-B-32", models_dir=tmp_path)


def test_damaged_registry_is_reported(tmp_path):
    (tmp_path / models.REGISTRY_NAME).write_text("{not json")
    with pytest.raises(ModelError, match="registry"):
        models.list_models(tmp_path)


def test_default_models_dir(monkeypatch):
    monkeypatch.setenv(models.MODELS_DIR_ENV, "/srv/likeness-models")
    assert models.default_models_dir() == Path("/srv/likeness-models")
    monkeypatch.delenv(models.MODELS_DIR_ENV)
    assert models.default_models_dir() == Path("models")


def test_fetch_registers_what_open_clip_downloads(tmp_path, tiny, monkeypatch):
    import open_clip

    _, ckpt = tiny
    seen = {}

    def fake_download(cfg, prefer_hf_hub=True, cache_dir=None):
        seen["cache_dir"] = cache_dir
        target = Path(cache_dir) / "open_clip_model.safetensors"
        target.write_bytes(ckpt.read_bytes())
        return str(target)

    monkeypatch.setattr(open_clip, "download_pretrained", fake_download)
    entry = models.fetch("ViT-B-32", "laion2b_s34b_b79k", models_dir=tmp_path)
    assert entry["sha256"] == models.sha256_file(ckpt)
    assert entry["source"].startswith("laion/")
    assert Path(seen["cache_dir"]).parent == tmp_path and not Path(seen["cache_dir"]).exists()
    file, sha = models.resolve_checkpoint("ViT-B-32", "laion2b_s34b_b79k", models_dir=tmp_path)
    assert sha == entry["sha256"] and file.suffix == ".safetensors"


def test_fetch_offline_and_unknown_tag(tmp_path, monkeypatch):
    import open_clip

    def offline(cfg, prefer_hf_hub=True, cache_dir=None):
        raise OSError("network is unreachable")

    monkeypatch.setattr(open_clip, "download_pretrained", offline)
    with pytest.raises(ModelError, match="needs network access"):
        models.fetch("ViT-B-32", "laion2b_s34b_b79k", models_dir=tmp_path)
    assert models.list_models(tmp_path) == []
    with pytest.raises(ParameterError, match="no pretrained tag"):
        models.fetch("ViT-B-32", "no-such-tag", models_dir=tmp_path)


# ----------------------------------------------------------------------------- degenerate models


def test_check_informative_accepts_tiny_random_model(clip):
    v = embed_images(clip, [synthetic_image(100 + i) for i in range(16)])
    clip_mod.check_informative(v, model_id=clip.model_id)
    stats = clip_mod.informativeness(v)
    assert stats["mean_cosine"] < clip_mod.MAX_MEAN_COSINE
    assert stats["effective_rank"] > clip_mod.MIN_EFFECTIVE_RANK


@pytest.mark.parametrize("variant, reason", [("constant", "mean pairwise cosine"), ("zeros", "zero vector")])
def test_check_informative_refuses_degenerate_checkpoints(tmp_path, variant, reason):
    config, ckpt = make_tiny_checkpoint(tmp_path, variant=variant)
    c = make("image-clip", model=str(config), pretrained=str(ckpt))
    v = embed_images(c, [synthetic_image(100 + i) for i in range(16)])
    with pytest.raises(ModelError, match=reason) as err:
        c.check_informative(v)
    assert c.model_id in str(err.value)
    # too few references to judge: no verdict
    clip_mod.check_informative(v[:4], model_id=c.model_id)


def test_check_informative_on_plain_arrays():
    rng = np.random.default_rng(0)
    spread = rng.normal(size=(64, 512))
    spread /= np.linalg.norm(spread, axis=1, keepdims=True)
    clip_mod.check_informative(spread, model_id="m")
    # a cone like real CLIP's (mean cosine ~0.55) is fine too
    cone = spread * 0.7 + np.eye(512)[0] * 0.8
    cone /= np.linalg.norm(cone, axis=1, keepdims=True)
    assert 0.4 < clip_mod.informativeness(cone)["mean_cosine"] < 0.7
    clip_mod.check_informative(cone, model_id="m")
    # one direction plus a little noise: collapsed
    line = np.eye(512)[0] + 0.01 * rng.normal(size=(64, 512))
    with pytest.raises(ModelError, match="mean pairwise cosine"):
        clip_mod.check_informative(line, model_id="m")
    # two clusters only: cosine fine, effective rank too low
    two = np.repeat(np.eye(512)[:2], 32, axis=0)
    with pytest.raises(ModelError, match="effective rank"):
        clip_mod.check_informative(two, model_id="m")
    with pytest.raises(ParameterError):
        clip_mod.check_informative(np.zeros(5), model_id="m")


# ----------------------------------------------------------------------------- threads and laziness


def test_prepare_and_load_from_many_threads(tiny, images, monkeypatch):
    config, ckpt = tiny
    c = make("image-clip", model=str(config), pretrained=str(ckpt))
    loads = []
    real_load = clip_mod.Clip._load

    def counting_load(self):
        loads.append(threading.get_ident())
        return real_load(self)

    monkeypatch.setattr(clip_mod.Clip, "_load", counting_load)
    barrier = threading.Barrier(8)

    def work(i):
        barrier.wait()  # all threads hit the lazy paths at the same moment
        p = c.prepare(images[i])
        return p, c.embed([p])[0]

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(work, range(8)))
    assert len(loads) == 1
    sequential = [c.prepare(im) for im in images[:8]]
    for (p, v), s in zip(results, sequential):
        np.testing.assert_array_equal(p, s)
        assert v.shape == (32,)


def test_fresh_process_imports_lazily_and_loads_the_config(tiny):
    config, ckpt = tiny
    code = (
        "import sys\n"
        "import scanner.models, scanner.features.clip\n"
        "from scanner.features import make\n"
        f"c = make('image-clip', model={str(config)!r}, pretrained={str(ckpt)!r})\n"
        "assert 'torch' not in sys.modules and 'open_clip' not in sys.modules, 'eager import'\n"
        "import numpy as np\n"
        "v = c.embed([np.zeros((3, 32, 32), np.float32)])\n"
        "print(c.model_id, v.shape)\n"
    )
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=REPO, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == [f"{TINY_NAME}:sha256:{models.sha256_file(ckpt)[:16]}", "(1,", "32)"]


# --- through the pipeline ------------------------------------------------------------------


def test_index_with_clip_scans_and_refuses_another_model(tmp_path: Path) -> None:
    from scanner.demo import MILD_TRANSFORMS, synthetic_picture
    from scanner.errors import IndexMismatchError
    from scanner.pipeline import FeatureOptions, build_index, check

    config, ckpt_a = make_tiny_checkpoint(tmp_path / "a", seed=0)
    _, ckpt_b = make_tiny_checkpoint(tmp_path / "b", seed=1)
    refs = tmp_path / "refs"
    refs.mkdir()
    for s in range(12):
        synthetic_picture(s).save(refs / f"r{s}.png")
    opts = FeatureOptions(names=["image-phash", "image-clip"], clip_model=str(config), clip_pretrained=str(ckpt_a),
                          models_dir=str(tmp_path / "models"))
    summary = build_index([refs], tmp_path / "index", options=opts)
    assert summary.features == ["image-phash", "image-clip"] and summary.added == 12
    from scanner.index.store import open_index

    assert open_index(tmp_path / "index").features["image-clip"]["index"]["type"] == "flat"  # small: exact
    MILD_TRANSFORMS["resize-50"](synthetic_picture(4)).save(tmp_path / "copy.png")
    result, run = check(tmp_path / "copy.png", tmp_path / "index", options=opts)
    assert result.verdict == "flagged" and Path(result.matches[0]["ref_path"]).name == "r4.png"
    assert result.matches[0]["feature"] == "image-phash"
    assert {f["name"]: f for f in run["features"]}["image-clip"]["model"] == make("image-clip", model=str(config), pretrained=str(ckpt_a)).model_id
    other = FeatureOptions(clip_model=str(config), clip_pretrained=str(ckpt_b), models_dir=str(tmp_path / "models"))
    with pytest.raises(IndexMismatchError) as info:
        check(tmp_path / "copy.png", tmp_path / "index", options=other)
    message = str(info.value)
    assert make("image-clip", model=str(config), pretrained=str(ckpt_a)).model_id in message
    assert make("image-clip", model=str(config), pretrained=str(ckpt_b)).model_id in message


def test_degenerate_checkpoint_is_refused_at_build(tmp_path: Path) -> None:
    from scanner.demo import synthetic_picture
    from scanner.pipeline import FeatureOptions, build_index

    config, ckpt = make_tiny_checkpoint(tmp_path / "c", variant="constant")
    refs = tmp_path / "refs"
    refs.mkdir()
    for s in range(10):
        synthetic_picture(s).save(refs / f"r{s}.png")
    opts = FeatureOptions(names=["image-clip"], clip_model=str(config), clip_pretrained=str(ckpt))
    with pytest.raises(ModelError, match="degenerate|mean"):
        build_index([refs], tmp_path / "index", options=opts)
    assert not (tmp_path / "index").exists()


def test_embedding_ahead_gives_the_same_results(tmp_path: Path) -> None:
    """A distributed engine embeds on GPU workers before judging: same results as embedding in judge."""
    from scanner import media
    from scanner.pipeline import FeatureOptions, Scanner, build_index, embed_ahead, prepare_stream

    config, ckpt = make_tiny_checkpoint(tmp_path / "m", seed=0)
    refs, outs = works_and_outputs(tmp_path, 6)
    opts = FeatureOptions(names=["image-phash", "image-clip"], clip_model=str(config), clip_pretrained=str(ckpt),
                          models_dir=str(tmp_path / "models"))
    build_index([refs], tmp_path / "index", options=opts)
    scanner = Scanner(tmp_path / "index", options=opts, candidates=3)
    items = [media.Input(p, "image") for p in sorted(outs.iterdir())]
    plain = scanner.judge(list(prepare_stream(items, scanner.featurizers)))
    ahead = list(prepare_stream(items, scanner.featurizers))
    embed_ahead(ahead, scanner.featurizers)
    assert all(p.vectors["image-clip"].shape == (1, 32) for p in ahead)
    early = scanner.judge(ahead)
    assert [r.verdict for r in early] == [r.verdict for r in plain]
    for a, b in zip(early, plain):
        assert [(c["feature"], c["work_id"]) for c in a.candidates] == [(c["feature"], c["work_id"]) for c in b.candidates]
        np.testing.assert_allclose([c["score"] for c in a.candidates], [c["score"] for c in b.candidates], rtol=1e-5)
    assert any(c["feature"] == "image-clip" for r in early for c in r.candidates)


def test_scans_find_the_same_works_whichever_search_path_runs(tmp_path: Path, monkeypatch) -> None:
    """--backend auto (measured here), faiss, numpy and torch int8/bf16 give the same candidates."""
    from scanner import search_choice
    from scanner.pipeline import FeatureOptions, build_index, scan

    monkeypatch.setattr(search_choice, "MIN_ROWS", 1)             # measure even this small index
    config, ckpt = make_tiny_checkpoint(tmp_path / "m", seed=0)
    refs, outs = works_and_outputs(tmp_path, 8)
    base = dict(names=["image-clip"], clip_model=str(config), clip_pretrained=str(ckpt),
                models_dir=str(tmp_path / "models"), device="cpu")
    build_index([refs], tmp_path / "index", options=FeatureOptions(**base))
    seen = {}
    for backend, precision in [("faiss", None), ("auto", None), ("numpy", None), ("torch", "int8"), ("torch", "bf16")]:
        out = tmp_path / f"out-{backend}-{precision}"
        summary = scan([outs], tmp_path / "index", out_dir=out, candidates=3,
                       options=FeatureOptions(**base, backend=backend, precision=precision))
        lines = [json.loads(x) for x in (out / "results.jsonl").read_text().splitlines()]
        seen[backend, precision] = {r["path"]: (r["verdict"], [(c["work_id"], round(c["score"], 3))
                                                               for c in r["candidates"]]) for r in lines}
        run = json.loads((out / "run.json").read_text())
        assert run["models"] == {"image-clip": {"runtime": "torch", "device": "cpu"}}  # where the encoder ran
        if backend == "auto":
            (shape, used), = run["search"].items()
            assert shape == "8x32" and used["source"] in ("measured", "cache")
        else:
            assert run["search"] == {}
        assert sum(summary.counts.values()) == 16
        tops = {Path(r["path"]).stem: Path(r["candidates"][0]["ref_path"]).stem for r in lines if r["candidates"]}
        assert sum(tops.get(f"c{s}") == f"r{s}" for s in range(8)) >= 6   # a copy's nearest work is its own
    first = seen["faiss", None]
    assert all(v == first for v in seen.values())

"""End-to-end behaviour of build and scan through scanner.pipeline."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageOps

from scanner.demo import MILD_TRANSFORMS, clip_art, flatten, synthetic_picture
from scanner.pipeline import check, read_results, scan


@pytest.mark.parametrize("transform", sorted(MILD_TRANSFORMS))
@pytest.mark.parametrize("ref", [0, 3, 5])
def test_transformed_copy_is_flagged_with_its_work(phash_index: Path, refs_dir: Path, tmp_path: Path,
                                                   transform: str, ref: int) -> None:
    src = flatten(Image.open(refs_dir / f"ref{ref}.png"))
    path = tmp_path / f"copy-{transform}.png"
    MILD_TRANSFORMS[transform](src).save(path)
    result, run = check(path, phash_index)
    assert result.verdict == "flagged", result.reason
    assert Path(result.matches[0]["ref_path"]).name == f"ref{ref}.png"
    assert result.matches[0]["rights_holder"] == f"Holder {ref}"
    assert result.matches[0]["expected"] < 1e-3
    assert run["n_works"] == 10


def test_unrelated_pictures_are_clear(phash_index: Path, tmp_path: Path) -> None:
    for seed in range(500, 520):
        synthetic_picture(seed).save(tmp_path / f"new{seed}.png")
    summary = scan([tmp_path], phash_index)
    assert summary.counts["clear"] == 20, summary.counts
    assert summary.exit_code() == 0


def test_rgba_with_garbage_under_alpha_matches_its_flattened_copy(phash_index: Path, refs_dir: Path,
                                                                   tmp_path: Path) -> None:
    ref = Image.open(refs_dir / "ref7.png")
    assert ref.mode == "RGBA"
    arr = np.asarray(ref).copy()
    hidden = arr[..., 3] == 0
    assert hidden.any() and arr[hidden][:, :3].std() > 50  # the garbage is really there
    flatten(ref).save(tmp_path / "flat.png")
    result, _ = check(tmp_path / "flat.png", phash_index)
    assert result.verdict == "flagged"
    assert Path(result.matches[0]["ref_path"]).name == "ref7.png"


def test_near_uniform_output_against_near_empty_reference_is_not_flagged(tmp_path: Path) -> None:
    from scanner.pipeline import FeatureOptions, build_index

    refs = tmp_path / "refs"
    refs.mkdir()
    empty = Image.new("RGB", (200, 200), (250, 250, 250))
    ImageDraw.Draw(empty).point([(100, 100)], fill=(0, 0, 0))
    empty.save(refs / "empty.png")
    synthetic_picture(1).save(refs / "real.png")
    build_index([refs], tmp_path / "index", options=FeatureOptions(names=["image-phash"]))
    Image.new("RGB", (300, 300), (248, 248, 248)).save(tmp_path / "flat.png")
    result, _ = check(tmp_path / "flat.png", tmp_path / "index")
    assert result.verdict == "clear"
    assert result.reason.startswith("near-uniform picture")
    assert result.score == 0.0


def test_a_speck_one_block_thick_is_judged_not_an_error() -> None:
    from scanner.features.content import analyse

    # a few faint pixels on a white page: peeling the margins leaves one block
    # row, and the next pass had no rows left to read a frame from
    page = np.full((94, 154, 3), 255, np.uint8)
    page[38:43, 24:26] = 216
    content = analyse(Image.fromarray(page))
    assert content.featureless == "almost empty picture"
    assert content.box is not None


def test_corrupt_and_zero_byte_files_error_and_sidecars_are_skipped(phash_index: Path, refs_dir: Path,
                                                                     tmp_path: Path) -> None:
    outs = tmp_path / "outs"
    outs.mkdir()
    (outs / "empty.jpg").write_bytes(b"")
    good = outs / "fine.png"
    synthetic_picture(900).save(good)
    (outs / "broken.jpg").write_bytes((refs_dir / "ref0.png").read_bytes()[:200])
    (outs / "prompt.json").write_text('{"prompt": "x"}')
    summary = scan([outs], phash_index, out_dir=tmp_path / "res")
    assert summary.counts["error"] == 2 and summary.counts["clear"] == 1
    assert summary.skipped == 1
    assert summary.exit_code() == 3
    lines = {Path(r["path"]).name: r for r in read_results(tmp_path / "res" / "results.jsonl")}
    assert set(lines) == {"empty.jpg", "fine.png", "broken.jpg"}
    assert lines["empty.jpg"]["error"] == "zero-byte file"
    assert "truncated" in lines["broken.jpg"]["error"] or "corrupt" in lines["broken.jpg"]["error"]
    assert all(r["index_id"] == summary.run["index_id"] for r in lines.values())
    run = json.loads((tmp_path / "res" / "run.json").read_text())
    assert run["counts"]["error"] == 2 and run["skipped"] == 1
    assert run["models"] == {}  # weight-free features: no model ran
    assert (tmp_path / "res" / "results.csv").read_text().count("\n") == 4
    assert "broken.jpg" in (tmp_path / "res" / "report.html").read_text()


def test_resume_skips_done_inputs_and_ignores_a_torn_line(phash_index: Path, tmp_path: Path) -> None:
    outs = tmp_path / "outs"
    outs.mkdir()
    for s in range(6):
        synthetic_picture(700 + s).save(outs / f"o{s}.png")
    res = tmp_path / "res"
    scan([outs], phash_index, out_dir=res)
    lines = (res / "results.jsonl").read_text().splitlines(keepends=True)
    # as if killed after three lines, in the middle of the fourth
    (res / "results.jsonl").write_text("".join(lines[:3]) + lines[3][:25])
    summary = scan([outs], phash_index, out_dir=res, resume=True)
    assert summary.resumed == 3
    paths = [r["path"] for r in read_results(res / "results.jsonl")]
    assert sorted(paths) == sorted(str(p) for p in outs.glob("*.png"))
    assert summary.counts["clear"] == 6


def test_licensed_work_gives_licensed(phash_index: Path, refs_dir: Path, tmp_path: Path) -> None:
    Image.open(refs_dir / "ref9.png").save(tmp_path / "mine.png")
    result, _ = check(tmp_path / "mine.png", phash_index)
    assert result.verdict == "licensed"


def test_clip_art_reference_found_from_its_bordered_copy(phash_index: Path, refs_dir: Path,
                                                         tmp_path: Path) -> None:
    art = clip_art(3)
    MILD_TRANSFORMS["border-5"](flatten(art)).save(tmp_path / "b.png")
    result, _ = check(tmp_path / "b.png", phash_index)
    assert result.verdict == "flagged" and Path(result.matches[0]["ref_path"]).name == "ref3.png"


def test_a_turned_copy_is_flagged_by_its_upright_hash(phash_index: Path, refs_dir: Path,
                                                     tmp_path: Path) -> None:
    """pHash of a turned picture is another picture's; its content set upright hashes like the work."""
    src = flatten(Image.open(refs_dir / "ref4.png"))
    src.rotate(-9, resample=Image.Resampling.BICUBIC, expand=True, fillcolor=(220, 40, 160)).save(tmp_path / "t.png")
    result, _ = check(tmp_path / "t.png", phash_index)
    assert result.verdict == "flagged", result.reason
    match = result.matches[0]
    assert Path(match["ref_path"]).name == "ref4.png" and match["expected"] < 1e-3
    assert match["locator"]["query_view"] == "content inside frames"


def test_candidates_recorded_whatever_the_verdict(phash_index: Path, tmp_path: Path) -> None:
    synthetic_picture(4242).save(tmp_path / "new.png")
    seen = []
    scan([tmp_path / "new.png"], phash_index, candidates=3, on_result=seen.append)
    line = seen[0].to_dict()
    assert line["verdict"] == "clear" and line["matches"] == []
    assert len(line["candidates"]) == 3
    assert len({c["work_id"] for c in line["candidates"]}) == 3
    assert [c["expected"] for c in line["candidates"]] == sorted(c["expected"] for c in line["candidates"])


def test_chance_in_plain_words() -> None:
    from scanner.policy import one_in

    assert one_in(0.7) == "likely by chance"
    assert one_in(2e-7) == "1 in 5 million by chance"
    assert one_in(1e-20) == "less than 1 in 1,000 trillion by chance"


def test_a_decoder_crash_costs_one_error_line_not_the_scan(phash_index: Path, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    from scanner.pipeline import prepare

    outs = tmp_path / "outs"
    outs.mkdir()
    for s in range(20):
        synthetic_picture(800 + s).save(outs / f"o{s:02d}.png")
    real = prepare.prepare_one

    def crashing(item, featurizers, reference=False):  # as a segfaulting C decoder would
        if item.path.name == "o07.png":
            os._exit(139)
        return real(item, featurizers, reference)

    monkeypatch.setattr(prepare, "prepare_one", crashing)
    summary = scan([outs], phash_index, out_dir=tmp_path / "res")
    lines = {Path(r["path"]).name: r for r in read_results(tmp_path / "res" / "results.jsonl")}
    assert len(lines) == 20
    assert lines["o07.png"]["verdict"] == "error" and "crashed" in lines["o07.png"]["error"]
    assert summary.counts["clear"] == 19 and summary.exit_code() == 3


def test_a_picture_turned_on_a_plain_ground_is_found_and_set_upright() -> None:
    from scanner.features.content import analyse, upright

    pic = synthetic_picture(41, (400, 300))
    for degrees in (-12.0, 7.0):
        turned = pic.rotate(degrees, resample=Image.Resampling.BICUBIC, expand=True, fillcolor=(30, 160, 90))
        turn = analyse(turned).turn
        assert turn is not None and abs(turn.degrees + degrees) < 1.0, (degrees, turn)  # clockwise on screen
        assert abs(turn.size[0] - 400) < 20 and abs(turn.size[1] - 300) < 20, turn.size
        back = np.asarray(upright(turned, turn), np.float32)
        # the same picture, less a block along each edge
        inner = np.asarray(pic.crop((12, 12, 388, 288)).resize((back.shape[1] - 24, back.shape[0] - 24)),
                           np.float32)
        assert np.abs(back[12:-12, 12:-12] - inner).mean() < 12
        # none of the ground's colour is left in the upright picture
        assert not (np.abs(back - (30, 160, 90)).max(axis=2) < 8).any()
        # JPEG rings along the turned edges: the lean is still found
        buf = io.BytesIO()
        turned.save(buf, "JPEG", quality=60)
        again = analyse(Image.open(buf).convert("RGB")).turn
        assert again is not None and abs(again.degrees - turn.degrees) < 1.0


def test_the_turn_is_looked_for_only_when_a_featurizer_reads_it(tmp_path: Path) -> None:
    """The search for a turned picture is the costlier half of the content analysis:
    prepared for image-phash it runs, for a model feature alone (CLIP, SSCD) it does not."""
    from scanner import media
    from scanner.features import make
    from scanner.features.content import analyse
    from scanner.pipeline.prepare import prepare_one

    turned = synthetic_picture(41, (400, 300)).rotate(9.0, resample=Image.Resampling.BICUBIC, expand=True,
                                                       fillcolor=(30, 160, 90))
    assert analyse(turned).turn is not None
    assert analyse(turned, turn=False).turn is None
    assert analyse(turned, turn=False).box == analyse(turned).box   # the rest of the analysis is the same
    path = tmp_path / "turned.png"
    turned.save(path)
    item = next(i for i in media.discover([path]) if isinstance(i, media.Input))
    seen: list[bool] = []

    class Reader:   # records whether the content it was given holds the turn
        name, modality, reads_turn, decode_side = "reader", "image", True, 512

        def prepare(self, image: Image.Image, content: object) -> np.ndarray:
            seen.append(getattr(content, "turn") is not None)
            return np.zeros(1)

    class Blind(Reader):
        name, reads_turn = "blind", False

    for featurizers in ([Blind()], [Blind(), Reader()]):
        assert prepare_one(item, featurizers).error is None  # type: ignore[arg-type]
    assert seen == [False, True, True]
    assert make("image-phash").reads_turn and make("image-local").reads_turn


def test_frame_edges_read_as_pixel_by_pixel() -> None:
    """Each side's frame, read from its rows' extremes, is the one a pixel-by-pixel reading finds:
    the first row's mean colour, then the rows whose every inner pixel lies within the tolerance."""
    from scanner.features import content as ct

    def by_pixels(planes: np.ndarray, skip: int) -> tuple[int, np.ndarray | None]:
        inner = planes[:, :, ct.CORNER:-ct.CORNER] if planes.shape[2] > 4 * ct.CORNER else planes
        if inner.shape[1] <= skip:
            return 0, None
        colour = ((inner[:3, skip] + inner[3:, skip]) / 2).mean(axis=1)
        depth = skip
        for row in range(skip, inner.shape[1]):
            lo, hi = inner[:3, row], inner[3:, row]
            if (hi - colour[:, None] > ct.LINE_TOLERANCE).any() or (colour[:, None] - lo > ct.LINE_TOLERANCE).any():
                break
            depth = row + 1
        return (depth, colour) if depth > skip else (0, None)

    rng = np.random.default_rng(7)
    framed = 0
    for _ in range(60):
        h, w = rng.integers(1, 40, size=2)
        ground = rng.uniform(0, 255, 3)
        lo = np.clip(ground[:, None, None] - rng.uniform(0, 30, (3, h, w)), 0, 255)
        hi = np.clip(lo + rng.uniform(0, 20, (3, h, w)), 0, 255)
        body = (slice(int(rng.integers(0, h)), h), slice(int(rng.integers(0, w)), w))  # content behind the frames
        lo[:, body[0], body[1]] = rng.uniform(0, 200, (3, h - body[0].start, w - body[1].start))
        hi[:, body[0], body[1]] = lo[:, body[0], body[1]] + 50
        planes = np.concatenate([lo, hi]).astype(np.float32)
        for view in (planes, planes.transpose(0, 2, 1)):
            got = ct._edges(view)
            want = [by_pixels(view, 0), by_pixels(view, 1), by_pixels(view[:, ::-1], 0), by_pixels(view[:, ::-1], 1)]
            for (d, c), (d0, c0) in zip(got, want):
                assert d == d0
                assert (c is None) == (c0 is None)
                if c is not None:
                    np.testing.assert_allclose(c, c0, atol=1e-3)
                    framed += 1
    assert framed > 50  # the random pictures do have frames
    colours = [rng.uniform(0, 255, 3).astype(np.float32) for _ in range(4)]
    for n in (3, 4):
        np.testing.assert_allclose(ct._middle(colours[:n]), np.median(np.stack(colours[:n]), axis=0), rtol=1e-6)


def test_drawings_bordered_pictures_and_diamonds_are_not_turned() -> None:
    from scanner.features.content import analyse

    disc = Image.new("RGB", (300, 300), "white")
    ImageDraw.Draw(disc).ellipse((40, 40, 260, 260), fill=(200, 30, 30))
    bordered = ImageOps.expand(synthetic_picture(42), border=30, fill=(0, 0, 0))
    diamond = Image.new("RGB", (300, 300), "white")
    ImageDraw.Draw(diamond).polygon([(150, 10), (290, 150), (150, 290), (10, 150)], fill=(250, 200, 0))
    for name, pic in (("disc", disc), ("bordered", bordered), ("diamond", diamond)):
        assert analyse(pic).turn is None, name

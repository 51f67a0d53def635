"""The ``likeness`` command: parses options, calls the library, maps outcomes to exit codes.

Exit codes (DESIGN.md): 2 usage or index error, nothing scanned; otherwise 1 if
anything is flagged; else 3 if some inputs could not be checked; else 4 if
anything needs review; else 0.
"""

from __future__ import annotations

import contextlib
import functools
import json
import sys
from pathlib import Path
from typing import Any, Callable, Iterator, List, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from scanner import __version__, blas
from scanner.errors import LikenessError

app = typer.Typer(help="likeness: find generated outputs that reproduce protected works.",
                  no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)
index_app = typer.Typer(help="Build and maintain an index of protected reference works.", no_args_is_help=True)
models_app = typer.Typer(help="List, fetch and import model checkpoints.", no_args_is_help=True)
app.add_typer(index_app, name="index")
app.add_typer(models_app, name="models")

out = Console()
err = Console(stderr=True)

IndexOpt = typer.Option(..., "--index", "-i", help="Index directory.")
HmacOpt = typer.Option(None, "--hmac-key-file", help="Key file to sign/verify the manifest "
                       "(or LIKENESS_HMAC_KEY_FILE).")
ClipModelOpt = typer.Option(None, "--clip-model", help="open_clip model name or JSON config path "
                            "(default ViT-B-32).")
ClipPretrainedOpt = typer.Option(None, "--clip-pretrained", help="Pretrained tag or checkpoint path "
                                 "(default laion2b_s34b_b79k, from models/).")
SscdModelOpt = typer.Option(None, "--sscd-model", help="image-sscd's model: distilled (MobileNetV4 student, "
                            "the default) or full (SSCD, ResNet-50, int8; about 6x slower here).")
ModelsDirOpt = typer.Option(None, "--models-dir", help="Checkpoint folder (default models/ or LIKENESS_MODELS_DIR).")
EngineOpt = typer.Option("local", "--engine", help="local (this machine) or ray (a Ray cluster: "
                         "pip install 'likeness-scanner[ray]').")
AddressOpt = typer.Option(None, "--address", help="With --engine ray: auto (the cluster started here with "
                          "`ray start`) or HOST:PORT; default: a private cluster on this machine for this run.")
WorkersOpt = typer.Option(None, "--workers", min=1, help="With --engine ray: decode workers at most "
                          "(default: every CPU the other stages leave).")
NoThumbsOpt = typer.Option(False, "--no-thumbnails", help="Keep and embed no picture of the outputs "
                           "(for outputs that must not leave the scan).")


def _fail(message: str, code: int = 2) -> None:
    err.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def handled(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn likeness errors into one clear message and exit code 2, never a traceback."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except LikenessError as exc:
            _fail(str(exc))
        except KeyboardInterrupt:
            _fail("interrupted", 130)

    return wrapper


class RichProgress:
    """The pipeline's progress protocol drawn as a rich progress bar on stderr."""

    def __init__(self, progress: Progress):
        self.progress = progress
        self.task: Any = None

    def start(self, total: int, description: str) -> None:
        if self.task is not None:
            self.progress.remove_task(self.task)
        self.task = self.progress.add_task(description, total=total)

    def advance(self, n: int = 1) -> None:
        self.progress.advance(self.task, n)


@contextlib.contextmanager
def progress_bar(enabled: bool = True) -> Iterator[RichProgress | None]:
    if not enabled:
        yield None
        return
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TextColumn("{task.speed:>6.0f}/s" if False else ""), TimeRemainingColumn(),
                  console=err, transient=True) as p:
        yield RichProgress(p)


def _options(features: Optional[str], clip_model: Optional[str], clip_pretrained: Optional[str],
             models_dir: Optional[str], device: str = "auto", backend: str = "auto",
             precision: Optional[str] = None, sscd_model: Optional[str] = None) -> Any:
    from scanner.pipeline import FeatureOptions
    from scanner.search_choice import Plan

    Plan(device, backend, precision)  # a bad --backend/--precision is refused before any work
    names = [f.strip() for f in features.split(",") if f.strip()] if features else None
    return FeatureOptions(names=names, clip_model=clip_model, clip_pretrained=clip_pretrained,
                          models_dir=models_dir, device=device, backend=backend, precision=precision,
                          sscd_model=sscd_model)


@contextlib.contextmanager
def _engine(name: str, address: Optional[str], workers: Optional[int]) -> Iterator[Any]:
    """The engine a build or scan runs on (``None``: the local one)."""
    if name == "local":
        if address is not None or workers is not None:
            _fail("--address and --workers go with --engine ray")
        yield None
        return
    if name != "ray":
        _fail(f"--engine must be local or ray, given {name!r}")
    from scanner.engine_ray import RayEngine

    with RayEngine(address, workers=workers) as engine:
        yield engine


def _warn_blas() -> None:
    """Say where a BLAS this process searches with runs a kernel older than the CPU can (scanner.blas)."""
    for line in blas.warnings(blas.in_use()):
        err.print(f"[yellow]warning:[/] {escape(line)}", highlight=False, soft_wrap=True)


def _key(path: Optional[Path]) -> bytes | None:
    from scanner.index.store import load_hmac_key

    return load_hmac_key(path)


# --- index -------------------------------------------------------------------------------


def _print_build(summary: Any, verb: str) -> None:
    for note in summary.notes:
        err.print(f"[dim]note:[/] {note}", highlight=False)
    for path, reason in summary.errors:
        err.print(f"[magenta]error[/] {path}: {reason}", highlight=False)
    if summary.duplicates:
        err.print(f"[dim]{len(summary.duplicates)} duplicate file(s) not added again[/]")
    out.print(f"{verb} {summary.added} work(s); index {summary.index_id} now holds {summary.n_works} "
              f"work(s); features: {', '.join(summary.features)}; "
              f"{len(summary.errors)} unreadable, {len(summary.skipped)} skipped (not media)", highlight=False)


@index_app.command("build")
@handled
def index_build(refs: List[Path] = typer.Argument(..., help="Reference files or folders."),
                index: Path = IndexOpt,
                features: Optional[str] = typer.Option(None, "--features", help="Comma-separated: "
                                                       "image-phash,image-local,image-sscd,image-clip "
                                                       "(default: all that can run here)."),
                metadata: Optional[Path] = typer.Option(None, "--metadata", help="CSV/JSON with path, title, "
                                                        "rights_holder, licence, notes, licensed."),
                clip_model: Optional[str] = ClipModelOpt, clip_pretrained: Optional[str] = ClipPretrainedOpt,
                sscd_model: Optional[str] = SscdModelOpt,
                models_dir: Optional[str] = ModelsDirOpt, hmac_key_file: Optional[Path] = HmacOpt,
                engine: str = EngineOpt, address: Optional[str] = AddressOpt, workers: Optional[int] = WorkersOpt,
                quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar.")) -> None:
    """Build a new index from reference works (replaces any index at --index, atomically)."""
    _warn_blas()
    from scanner.pipeline import build_index

    with _engine(engine, address, workers) as eng, progress_bar(not quiet) as prog:
        summary = build_index(refs, index, options=_options(features, clip_model, clip_pretrained, models_dir,
                                                            sscd_model=sscd_model),
                              metadata=metadata, create=True, hmac_key=_key(hmac_key_file), progress=prog,
                              engine=eng)
    _print_build(summary, "indexed")
    if summary.added == 0:
        _fail("no reference work could be indexed")


@index_app.command("add")
@handled
def index_add(refs: List[Path] = typer.Argument(..., help="Reference files or folders."),
              index: Path = IndexOpt,
              metadata: Optional[Path] = typer.Option(None, "--metadata"),
              clip_model: Optional[str] = ClipModelOpt, clip_pretrained: Optional[str] = ClipPretrainedOpt,
              models_dir: Optional[str] = ModelsDirOpt, hmac_key_file: Optional[Path] = HmacOpt,
              engine: str = EngineOpt, address: Optional[str] = AddressOpt, workers: Optional[int] = WorkersOpt,
              quiet: bool = typer.Option(False, "--quiet", "-q")) -> None:
    """Add reference works to an existing index (with the index's own features)."""
    _warn_blas()
    from scanner.pipeline import build_index

    with _engine(engine, address, workers) as eng, progress_bar(not quiet) as prog:
        summary = build_index(refs, index, options=_options(None, clip_model, clip_pretrained, models_dir),
                              metadata=metadata, create=False, hmac_key=_key(hmac_key_file), progress=prog,
                              engine=eng)
    _print_build(summary, "added")


@index_app.command("add-feature")
@handled
def index_add_feature(refs: List[Path] = typer.Argument(..., help="The reference files or folders the index "
                                                                   "was built from."),
                      index: Path = IndexOpt,
                      features: str = typer.Option(..., "--features", help="Comma-separated features to add, "
                                                   "e.g. image-sscd."),
                      clip_model: Optional[str] = ClipModelOpt, clip_pretrained: Optional[str] = ClipPretrainedOpt,
                      sscd_model: Optional[str] = SscdModelOpt,
                      models_dir: Optional[str] = ModelsDirOpt, hmac_key_file: Optional[Path] = HmacOpt,
                      engine: str = EngineOpt, address: Optional[str] = AddressOpt,
                      workers: Optional[int] = WorkersOpt,
                      quiet: bool = typer.Option(False, "--quiet", "-q")) -> None:
    """Add features to an existing index from its works' own files (matched by content), in one atomic write."""
    _warn_blas()
    from scanner.pipeline import add_features

    with _engine(engine, address, workers) as eng, progress_bar(not quiet) as prog:
        summary = add_features(refs, index, options=_options(features, clip_model, clip_pretrained, models_dir,
                                                             sscd_model=sscd_model),
                               hmac_key=_key(hmac_key_file), progress=prog, engine=eng)
    out.print(f"added {', '.join(summary.features)} to {summary.added} of {summary.n_works} work(s) of index "
              f"{summary.index_id}; {len(summary.errors)} unreadable, {len(summary.skipped)} skipped",
              highlight=False)
    for note in summary.notes:
        err.print(f"note: {note}", markup=False, highlight=False)
    if summary.added == 0:
        _fail("no work of the index was among the files given")


@index_app.command("remove")
@handled
def index_remove(work_ids: List[int] = typer.Argument(..., help="Work ids (see `index info`)."),
                 index: Path = IndexOpt, hmac_key_file: Optional[Path] = HmacOpt) -> None:
    """Remove works (and their vectors) from an index."""
    from scanner.pipeline import remove_from_index

    found = remove_from_index(index, work_ids, hmac_key=_key(hmac_key_file))
    missing = sorted(set(work_ids) - set(found))
    out.print(f"removed {len(found)} work(s)" + (f"; not in the index: {missing}" if missing else ""))
    if missing:
        raise typer.Exit(2)


talent_app = typer.Typer(help="Talents of an index: protected performers, their consent, their removal.",
                         no_args_is_help=True)
index_app.add_typer(talent_app, name="talent")


@talent_app.command("list")
@handled
def talent_list(index: Path = IndexOpt, as_json: bool = typer.Option(False, "--json"),
                hmac_key_file: Optional[Path] = HmacOpt) -> None:
    """List the talents of an index with their references and consent per modality, as of today."""
    import datetime as _dt

    from scanner.index.store import open_index

    with open_index(index, hmac_key=_key(hmac_key_file)) as idx:
        talents = idx.talents()
    if as_json:
        print(json.dumps([t.to_dict() for t in talents.values()], indent=2))
        return
    today = _dt.date.today()
    if not talents:
        out.print("no talents in this index (give a metadata file with talent and consent columns)")
    for t in talents.values():
        out.print(f"{escape(t.name)}: {t.works} reference(s); consent: face "
                  f"{t.consent['face'].words(today)}, voice {t.consent['voice'].words(today)}", highlight=False)


def _yes_no(value: Optional[str], option: str) -> Optional[bool]:
    from scanner.talents import parse_consent

    return parse_consent(value, where=option)


@talent_app.command("consent")
@handled
def talent_consent(name: str = typer.Argument(..., help="The talent's name, as in the metadata."),
                   face: Optional[str] = typer.Option(None, "--face", help="yes or no: may their face be used."),
                   voice: Optional[str] = typer.Option(None, "--voice", help="yes or no: may their voice be used."),
                   until: Optional[str] = typer.Option(None, "--until",
                                                       help="Last day (YYYY-MM-DD) a yes holds; none: no end."),
                   index: Path = IndexOpt, hmac_key_file: Optional[Path] = HmacOpt) -> None:
    """Record a talent's consent per modality; the next scan applies it (a withdrawn one flags again)."""
    from scanner.pipeline import set_talent_consent
    from scanner.talents import parse_until

    t = set_talent_consent(index, name, face=_yes_no(face, "--face"), voice=_yes_no(voice, "--voice"),
                           until=parse_until(until), hmac_key=_key(hmac_key_file))
    said = "; ".join(f"{m} {'yes' if c['given'] else 'no'}" + (f" until {c['until']}" if c["until"] else "")
                     for m, c in t["consent"].items())
    out.print(f"{escape(name)}: consent now {said}", highlight=False)


@talent_app.command("remove")
@handled
def talent_remove(name: str = typer.Argument(..., help="The talent's name."),
                  index: Path = IndexOpt, hmac_key_file: Optional[Path] = HmacOpt) -> None:
    """Remove a talent: their references, every face and voice template made from them, and their
    consent row, in one atomic write (no rebuild)."""
    from scanner.pipeline import remove_talent

    found = remove_talent(index, name, hmac_key=_key(hmac_key_file))
    out.print(f"removed talent {escape(name)}: {len(found)} reference(s) and their templates", highlight=False)


@index_app.command("info")
@handled
def index_info(index: Path = IndexOpt, as_json: bool = typer.Option(False, "--json"),
               hmac_key_file: Optional[Path] = HmacOpt) -> None:
    """Describe an index: id, works, features, models, thresholds, search structure and its recall."""
    from scanner.index.store import open_index
    from scanner.search import describe_index
    from scanner.talents import FEATURE_MODALITY

    with open_index(index, hmac_key=_key(hmac_key_file)) as idx:
        m = idx.manifest
        info = {"path": str(index), "index_id": idx.index_id, "format_version": m["format_version"],
                "created_at": m.get("created_at"), "updated_at": m.get("updated_at"), "works": m["works"],
                "features": m["features"], "policy": m.get("policy"),
                "size_bytes": sum(f["size"] for f in m["files"].values()), "blas": blas.in_use(),
                "talents": {"count": len(idx.talents()),
                            "null": {name: {k: m["null"][name].get(k) for k in ("source", "talents", "pairs",
                                                                                  "centre", "spread", "within")}
                                     for name in m["features"] if name in FEATURE_MODALITY and name in m.get("null", {})}}}
    if as_json:
        print(json.dumps(info, indent=2))
        return
    out.print(f"index {info['index_id']} at {index}", highlight=False)
    out.print(f"  works: {info['works']['count']} {info['works'].get('by_modality', {})}", highlight=False)
    if info["talents"]["count"] or info["talents"]["null"]:
        nulls = "; ".join(f"{name} null from {n['source']}"
                          + (f" ({n['talents']} talents, {n['pairs']} pairs of different people)"
                             if n["source"] == "talents" else
                             f" (too few talents for its own: a documented prior, centre {n['centre']}, spread "
                             f"{n['spread']}; see the README)")
                          for name, n in info["talents"]["null"].items())
        out.print(f"  talents: {info['talents']['count']}" + (f"; {nulls}" if nulls else ""), highlight=False)
    for name, spec in info["features"].items():
        tail = (m.get("null") or {}).get(name, {}).get("tail")
        aligned = ((m.get("null") or {}).get(name, {}).get("aligned") or {}).get("tail")
        out.print(f"  {name}: {spec['count']} vectors, {spec['kind']} dim {spec['dim']}, "
                  f"version {spec['version']}" + (f", model {spec['model']}" if spec.get("model") else "")
                  + (f", search: {describe_index(spec['index'])}" if spec.get("index") else "")
                  + (f", chance from its pairs' measured tail down to {10 ** tail['log10_rate'][0]:.0e} "
                     f"({tail['pairs']} pairs)" if tail else "")
                  + (f"; looks again where another feature places a work, chance from plain pairs down to "
                     f"{10 ** aligned['log10_rate'][0]:.0e}" if aligned else ""), highlight=False)
    out.print(f"  thresholds (expected chance matches): {info['policy']}", highlight=False)
    out.print(f"  size: {info['size_bytes'] / 1e6:.1f} MB; updated {info['updated_at']}", highlight=False)
    out.print("  BLAS: " + "; ".join(f"{b['library']}'s {b['api']} {b['version']} ({b['kernel']} kernel, "
                                     f"{b['threads']} threads)" for b in info["blas"]), highlight=False)


@index_app.command("verify")
@handled
def index_verify(index: Path = IndexOpt, hmac_key_file: Optional[Path] = HmacOpt) -> None:
    """Check every data file of an index against its manifest."""
    from scanner.index.store import verify_index

    r = verify_index(index, hmac_key=_key(hmac_key_file))
    out.print(f"index {r['index_id']} OK: {r['files']} files, {r['bytes'] / 1e6:.1f} MB verified")


# --- scan and check ------------------------------------------------------------------------


@app.command("scan")
@handled
def scan_cmd(inputs: List[Path] = typer.Argument(..., help="Output files or folders to scan."),
             index: Path = IndexOpt,
             out_dir: Optional[Path] = typer.Option(None, "--out", "-o", help="Folder for results.jsonl, "
                                                    "results.csv, report.html, run.json."),
             resume: bool = typer.Option(False, "--resume", help="Skip inputs already in --out/results.jsonl."),
             device: str = typer.Option("auto", "--device", help="auto, cpu or cuda."),
             backend: str = typer.Option("auto", "--backend",
                                         help="Dense search: auto (the fastest measured on this machine, "
                                              "cached), faiss, torch or numpy."),
             precision: Optional[str] = typer.Option(None, "--precision",
                                                     help="With --backend torch: fp32, bf16, fp16 or int8."),
             candidates: int = typer.Option(0, "--candidates", min=0, help="Also record the N nearest works "
                                            "per input, whatever the verdict (for evaluation)."),
             clip_model: Optional[str] = ClipModelOpt, clip_pretrained: Optional[str] = ClipPretrainedOpt,
             models_dir: Optional[str] = ModelsDirOpt, hmac_key_file: Optional[Path] = HmacOpt,
             no_thumbnails: bool = NoThumbsOpt,
             engine: str = EngineOpt, address: Optional[str] = AddressOpt, workers: Optional[int] = WorkersOpt,
             quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar.")) -> None:
    """Scan outputs against an index; one verdict per input."""
    _warn_blas()
    from scanner.pipeline import scan
    from scanner.report.console import summary_table

    if device not in ("auto", "cpu", "cuda"):
        _fail(f"--device must be auto, cpu or cuda, given {device!r}")
    if resume and out_dir is None:
        _fail("--resume needs --out (the folder whose results.jsonl to continue)")
    with _engine(engine, address, workers) as eng, progress_bar(not quiet) as prog:
        summary = scan(inputs, index, out_dir=out_dir, resume=resume,
                       options=_options(None, clip_model, clip_pretrained, models_dir, device, backend,
                                        precision),
                       hmac_key=_key(hmac_key_file), progress=prog, candidates=candidates,
                       thumbnails=not no_thumbnails, engine=eng)
    out.print(summary_table(summary.counts, skipped=summary.skipped, resumed=summary.resumed))
    if out_dir is not None:
        out.print(f"results: {out_dir / 'results.jsonl'}, {out_dir / 'results.csv'}, "
                  f"{out_dir / 'report.html'}", highlight=False)
    raise typer.Exit(summary.exit_code())


@app.command("check")
@handled
def check_cmd(file: Path = typer.Argument(..., help="One asset to check."), index: Path = IndexOpt,
              html: Optional[Path] = typer.Option(None, "--html", help="Also write a one-asset HTML page."),
              as_json: bool = typer.Option(False, "--json", help="Print the result line as JSON."),
              clip_model: Optional[str] = ClipModelOpt, clip_pretrained: Optional[str] = ClipPretrainedOpt,
              models_dir: Optional[str] = ModelsDirOpt, hmac_key_file: Optional[Path] = HmacOpt,
              no_thumbnails: bool = NoThumbsOpt) -> None:
    """Check one asset and explain the verdict in plain words (and on a one-asset HTML page)."""
    _warn_blas()
    from scanner.pipeline import ScanSummary, check
    from scanner.report import write_html
    from scanner.report.console import print_check

    result, run = check(file, index, options=_options(None, clip_model, clip_pretrained, models_dir),
                        hmac_key=_key(hmac_key_file))
    line = result.to_dict()
    if as_json:
        print(json.dumps(line, ensure_ascii=False))
    else:
        print_check(out, line, run)
    if html is not None:
        from scanner.report.html import output_thumbnail

        found = None if no_thumbnails else output_thumbnail({**line, "path": str(file)})
        own = None if found is None else {f"o{line['sha256']}": found[0]}
        write_html([line], run, html, index_dir=index, single=True, thumbnails=not no_thumbnails,
                   own_thumbs={k: v for k, v in (own or {}).items() if v is not None})
        err.print(f"one-asset page: {html}", highlight=False)
    summary = ScanSummary()
    summary.counts[result.verdict] += 1
    raise typer.Exit(summary.exit_code())


@app.command("review")
@handled
def review_cmd(target: str = typer.Argument(..., help="The output file, or its sha256."), index: Path = IndexOpt,
               decision: str = typer.Option(..., "--decision", help="approved, rejected or licensed."),
               by: str = typer.Option(..., "--by", help="Who decides."),
               why: str = typer.Option(..., "--why", help="Why (shown to whoever looks next)."),
               work: Optional[List[int]] = typer.Option(None, "--work", help="A work id the decision concerns "
                                                        "(repeatable). Default: the works the file matches "
                                                        "now, or the output as a whole."),
               clip_model: Optional[str] = ClipModelOpt, clip_pretrained: Optional[str] = ClipPretrainedOpt,
               models_dir: Optional[str] = ModelsDirOpt, hmac_key_file: Optional[Path] = HmacOpt) -> None:
    """Record a person's decision on an output in the index's decision ledger; later scans honour it."""
    from scanner.ledger import ledger_path
    from scanner.decisions import review

    d = review(target, index, decision=decision, by=by, why=why, work_ids=work,
               options=_options(None, clip_model, clip_pretrained, models_dir), hmac_key=_key(hmac_key_file))
    works = ", ".join(f"work {w['work_id']} ({w.get('title') or '?'})" for w in d.works) or "the output as a whole"
    out.print(f"recorded: {d.decision} by {d.by} for {d.sha256[:16]}… concerning {works}; "
              f"ledger {ledger_path(index)}", highlight=False)


@app.command("report")
@handled
def report_cmd(results: Path = typer.Argument(..., help="A results.jsonl written by `likeness scan`."),
               out_file: Path = typer.Option(..., "--out", "-o", help="The HTML page to write."),
               index: Optional[Path] = typer.Option(None, "--index", "-i", help="The index the results came "
                                                    "from (default: the one named in run.json)."),
               no_thumbnails: bool = NoThumbsOpt) -> None:
    """Rebuild the HTML report from results and the index alone (no rescan, no reference files)."""
    from scanner.report.html import rebuild

    n, notes = rebuild(results, out_file, index_dir=index, thumbnails=not no_thumbnails)
    for note in notes:
        err.print(f"[dim]note:[/] {note}", highlight=False)
    out.print(f"report of {n} result(s): {out_file}", highlight=False)


@app.command("calibrate")
@handled
def calibrate_cmd(index: Path = IndexOpt,
                  positives: List[Path] = typer.Option(..., "--positives", help="Outputs that copy works of "
                                                       "the index (files or folders; repeat the option)."),
                  negatives: List[Path] = typer.Option(..., "--negatives", help="Outputs that copy none "
                                                       "(files or folders; repeat the option)."),
                  target_precision: float = typer.Option(0.99, "--target-precision",
                                                         help="Precision of flagging on the labelled set."),
                  max_flag_rate: float = typer.Option(0.01, "--max-flag-rate",
                                                      help="Share of negatives that may be flagged."),
                  max_review_rate: float = typer.Option(0.05, "--max-review-rate",
                                                        help="Share of negatives that may go to review."),
                  dry_run: bool = typer.Option(False, "--dry-run", help="Print the thresholds; keep the index's."),
                  as_json: bool = typer.Option(False, "--json", help="Print the calibration report as JSON."),
                  quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
                  clip_model: Optional[str] = ClipModelOpt, clip_pretrained: Optional[str] = ClipPretrainedOpt,
                  models_dir: Optional[str] = ModelsDirOpt, hmac_key_file: Optional[Path] = HmacOpt) -> None:
    """Set the index's verdict thresholds from labelled positives and negatives."""
    from scanner.decisions import calibrate

    with progress_bar(not quiet and not as_json) as prog:
        cal = calibrate(index, positives, negatives, target_precision=target_precision,
                        max_flag_rate=max_flag_rate, max_review_rate=max_review_rate,
                        options=_options(None, clip_model, clip_pretrained, models_dir),
                        hmac_key=_key(hmac_key_file), write=not dry_run, progress=prog)
    if as_json:
        print(json.dumps({**cal.report, "policy": cal.policy.get_params(), "written": cal.written}))
    else:
        _print_calibration(cal)


def _print_calibration(cal: Any) -> None:
    from rich.table import Table

    r = cal.report
    for w in r["warnings"]:
        err.print(f"[yellow]warning:[/] {w}", highlight=False)
    left = ", ".join(f"{n} {k}" for k, n in r["left_out"].items())
    out.print(f"{r['positives']} positives and {r['negatives']} negatives checked"
              + (f" ({left} left out)" if left else ""), highlight=False)
    table = Table(title="thresholds (expected chance matches)")
    for col in ("verdict", "before", "calibrated", "recall", "precision", "negatives called"):
        table.add_column(col, justify="right")
    for verdict, key in (("flagged", "flag"), ("review or flagged", "review")):
        s = r[key]
        table.add_row(verdict, f"{r['before'][key + '_at']:.3g}", f"{s['threshold']:.3g}", f"{s['recall']:.3f}",
                      "—" if s["precision"] is None else f"{s['precision']:.3f}",
                      f"{s['negatives_called']} of {r['negatives']}")
    out.print(table)
    out.print("stored in the index manifest: later scans use these thresholds" if cal.written
              else "dry run: the index keeps its thresholds", highlight=False)


# --- models ---------------------------------------------------------------------------------


@models_app.command("list")
@handled
def models_list(models_dir: Optional[str] = ModelsDirOpt) -> None:
    """Checkpoints registered in the models folder, and the models installed with packages (with their licences)."""
    from scanner.features import sscd
    from scanner.models import default_models_dir, file_sha256, list_models

    entries = list_models(models_dir or default_models_dir())
    if not entries:
        out.print("no checkpoints registered (use `likeness models fetch` or `likeness models import`)")
    for e in entries:
        out.print(f"{e['model']}  {e.get('pretrained') or '-'}  {e['file']}  sha256 {e['sha256'][:16]}…",
                  highlight=False)
    if not sscd.available():
        out.print(f"image-sscd: not installed ({sscd.INSTALL})", highlight=False)
        return
    for name in sscd.MODELS:
        path = sscd.model_file(name)
        out.print(f"image-sscd {name}{' (default)' if name == sscd.DEFAULT_MODEL else ''}  {path}  "
                  f"sha256 {file_sha256(path)[:16]}…", highlight=False)
    out.print(f"  licence: {sscd.LICENCE}", highlight=False)


@models_app.command("fetch")
@handled
def models_fetch(model: str = typer.Option("ViT-B-32", "--model"),
                 pretrained: str = typer.Option("laion2b_s34b_b79k", "--pretrained"),
                 models_dir: Optional[str] = ModelsDirOpt) -> None:
    """Download an open_clip pretrained checkpoint into models/ (the one command that uses the network)."""
    from scanner.models import default_models_dir, fetch

    entry = fetch(model, pretrained, models_dir=models_dir or default_models_dir())
    out.print(f"fetched {model} {pretrained}: {entry['file']} sha256 {entry['sha256']}", highlight=False)


@models_app.command("import")
@handled
def models_import(path: Path = typer.Argument(..., help="Checkpoint file brought in by hand."),
                  model: str = typer.Option("ViT-B-32", "--model"),
                  pretrained: Optional[str] = typer.Option(None, "--pretrained", help="Tag to register it under."),
                  models_dir: Optional[str] = ModelsDirOpt) -> None:
    """Copy a checkpoint into models/ and record its sha256."""
    from scanner.models import default_models_dir, import_checkpoint

    entry = import_checkpoint(path, model=model, tag=pretrained, models_dir=models_dir or default_models_dir())
    out.print(f"imported {path} as {entry['file']} sha256 {entry['sha256']}", highlight=False)


# --- demo -------------------------------------------------------------------------------------


@app.command("demo")
@handled
def demo_cmd(out_dir: Path = typer.Option(Path("demo-out"), "--out", help="Where the demo writes media and results."),
             quiet: bool = typer.Option(False, "--quiet", "-q")) -> None:
    """Build a demo index from generated pictures and scan generated outputs (offline)."""
    from scanner.demo import run_demo
    from scanner.report.console import summary_table

    with progress_bar(not quiet) as prog:
        outcome = run_demo(out_dir, progress=prog)
    out.print(summary_table(outcome.summary.counts, skipped=outcome.summary.skipped))
    for line in outcome.lines:
        out.print(line, highlight=False)
    if outcome.problems:
        for p in outcome.problems:
            err.print(f"[red]demo problem:[/] {p}", highlight=False)
        raise typer.Exit(1)
    out.print(f"[green]demo worked[/]: results in {out_dir / 'results'}", highlight=False)


# --- bench (search core benchmarks; library code in scanner/bench.py) -----------------------

bench_app = typer.Typer(help="Measure search and scanning against this machine's limits.", no_args_is_help=True)
app.add_typer(bench_app, name="bench")


@bench_app.command("search")
@handled
def bench_search_cmd(refs: int = typer.Option(100_000, "--refs", help="Reference vectors (codes for binary)."),
                     dim: int = typer.Option(512, "--dim", help="Dimensions (bits for --kind binary)."),
                     queries: int = typer.Option(1000, "--queries", help="Queries searched as one batch."),
                     k: int = typer.Option(10, "--k", help="Neighbours per query."),
                     backend: str = typer.Option("auto", "--backend",
                                                 help="faiss, torch, numpy, torch-plain, searchsorted (postings) "
                                                      "or auto: the scanner's own choice, measured once on this "
                                                      "machine and cached (faiss for binary, numpy for "
                                                      "postings)."),
                     precision: str = typer.Option("fp32", "--precision", help="fp32, bf16, fp16 or int8."),
                     device: str = typer.Option("cpu", "--device", help="cpu, cuda or auto."),
                     kind: str = typer.Option("dense", "--kind", help="dense, binary (Hamming codes) or postings "
                                                                      "(fingerprint lookups)."),
                     recall_queries: int = typer.Option(1000, "--recall-queries",
                                                        help="Queries checked against exact search (0: skip)."),
                     repeat: int = typer.Option(1, "--repeat", help="Timed runs; the fastest counts."),
                     seed: int = typer.Option(0, "--seed"),
                     index_kind: str = typer.Option("flat", "--index",
                                                    help="flat, ivf or auto: the faiss index build_faiss_index "
                                                         "makes (dense, faiss)."),
                     single: bool = typer.Option(False, "--single",
                                                 help="Latency mode: one query per search; reports p50_ms."),
                     compare: str = typer.Option("", "--compare",
                                                 help="Several paths on the same data, timed in turns, e.g. "
                                                      "faiss,torch:int8,torch:bf16,numpy,hnswlib,usearch:int8 "
                                                      "(backend[:precision]; faiss-ivf for faiss's IVF); hnswlib "
                                                      "and usearch are left out when not installed."),
                     as_json: bool = typer.Option(False, "--json",
                                                  help="Print one JSON object (a list with --compare).")) -> None:
    """Batched top-k search throughput vs the machine's GEMM peak (or memory bandwidth for binary/postings)."""
    _warn_blas()
    from scanner.bench import bench_compare, bench_search

    if compare:
        rows = bench_compare([e for e in compare.split(",") if e.strip()], n_refs=refs, dim=dim, n_queries=queries,
                             k=k, device=device, kind=kind, recall_queries=recall_queries, repeat=repeat, seed=seed,
                             index=index_kind, single=single,
                             skipped=lambda line: err.print(f"bench: {line}", markup=False, highlight=False,
                                                            soft_wrap=True))
        if not rows:
            raise typer.BadParameter(f"--compare {compare!r}: every path was left out")
        if as_json:
            print(json.dumps(rows))
            return
        base = rows[0]["qps"]
        out.print(f"{kind}: {refs} refs x {dim}, {queries} queries, k={k}, load average "
                  f"{rows[-1]['load1']}", highlight=False)
        fmt = lambda v, f: "—" if v is None else format(v, f)  # noqa: E731
        for r in rows:
            out.print(f"  {r['backend']} {r['precision']} ({r['index']}){' [chosen]' if r['chosen'] else ''}: "
                      f"{r['qps']:.1f} queries/s "
                      f"({r['qps'] / base:.2f}x the first), {fmt(r['ratio'], '.0%')} of peak, recall "
                      f"{fmt(r['recall'], '.4f')}, built in {fmt(r['build_s'], '.1f')} s, index "
                      f"{fmt(r['index_mb'], '.0f')} MB" + (f", p50 {r['p50_ms']:.2f} ms" if single else ""),
                      highlight=False)
        return
    result = bench_search(n_refs=refs, dim=dim, n_queries=queries, k=k, backend=backend, precision=precision,
                          device=device, kind=kind, recall_queries=recall_queries, repeat=repeat, seed=seed,
                          index=index_kind, single=single)
    if as_json:
        print(json.dumps(result))
        return
    unit = result["unit"]
    out.print(f"{result['backend']} {result['precision']} {kind}"
              f"{' (chosen by the scanner on this machine)' if result['chosen'] else ''}: {result['n_refs']} refs x "
              f"{result['dim']}, {result['n_queries']} queries, k={result['k']}", highlight=False)
    speed = ("" if result["gflops"] is None or result["peak_gflops"] is None else
             f"{result['gflops']:.1f} {unit} of {result['peak_gflops']:.1f} peak ({result['ratio']:.0%}), ")
    held = "" if result["index_mb"] is None else f"index {result['index_mb']:.0f} MB, "
    out.print(f"  {result['qps']:.1f} queries/s, {speed}recall {result['recall']}, {held}peak RSS "
              f"{result['rss_mb']:.0f} MB, load average {result['load1']}", highlight=False)
    if result["p50_ms"] is not None:
        out.print(f"  one query at a time ({result['index']}): p50 {result['p50_ms']:.2f} ms", highlight=False)


@bench_app.command("choice")
@handled
def bench_choice_cmd(clear: bool = typer.Option(False, "--clear", help="Delete every cached choice: the next "
                                                                      "scan of each shape measures again."),
                     as_json: bool = typer.Option(False, "--json", help="Print the cached choices as JSON.")) -> None:
    """The dense search paths this machine measured fastest, per index shape (and where they are cached)."""
    from scanner import search_choice

    if clear:
        n = search_choice.clear()
        out.print(f"cleared {n} cached search choice{'s' if n != 1 else ''} ({search_choice.cache_path()})",
                  highlight=False)
        return
    entries = search_choice.cached()
    if as_json:
        print(json.dumps(entries))
        return
    out.print(f"{len(entries)} cached search choice{'s' if len(entries) != 1 else ''} in "
              f"{search_choice.cache_path()}", highlight=False)
    for e in entries:
        key = e["key"]
        speeds = ", ".join(f"{name} {t['qps']:.0f}/s" + ("" if t["recall"] is None else f" (recall {t['recall']})")
                           for name, t in sorted(e.get("timings", {}).items()))
        out.print(f"  {key['rows']} rows x {key['dim']}, {key['batch']} queries a call, {key['threads']} threads: "
                  f"{e['backend']} {e['precision']}  [{speeds}]", markup=False, highlight=False)


@bench_app.command("scan")
@handled
def bench_scan_cmd(work_dir: Path = typer.Option(Path("bench-work"), "--work-dir",
                                                 help="Where generated pictures, models and indexes are kept."),
                   arch: str = typer.Option("ViT-B-32", "--arch",
                                            help="open_clip architecture with random weights, or tiny."),
                   images: int = typer.Option(256, "--images", help="Pictures scanned end to end."),
                   check_works: int = typer.Option(10_000, "--check-works", help="Works in the check index."),
                   check_runs: int = typer.Option(3, "--check-runs", help="Fresh likeness check processes timed."),
                   device: str = typer.Option("cpu", "--device", help="cpu, cuda or auto (image-clip)."),
                   skip: list[str] = typer.Option([], "--skip", help="Leave out a part: clip or check."),
                   as_json: bool = typer.Option(False, "--json", help="Print one JSON object.")) -> None:
    """image-clip end-to-end images/s against the bare encoder, and cold `likeness check` latency."""
    from scanner.bench import bench_check_cold, bench_clip_scan, has_torch

    bad = set(skip) - {"clip", "check"}
    if bad or images < 1 or check_works < 1 or check_runs < 1:
        raise typer.BadParameter(f"--skip takes clip or check (given {sorted(bad)}); counts must be >= 1")
    result: dict = {}
    if "clip" not in skip and not has_torch():
        err.print("bench: the image-clip part left out: torch is not installed "
                  "(pip install 'likeness-scanner[clip]')", markup=False, highlight=False, soft_wrap=True)
        skip = [*skip, "clip"]
    if "clip" not in skip:
        result["clip"] = bench_clip_scan(work_dir=work_dir, arch=arch, n_images=images, device=device)
    if "check" not in skip:
        result["check"] = bench_check_cold(work_dir=work_dir, n_works=check_works, runs=check_runs)
    if as_json:
        print(json.dumps(result))
        return
    if "clip" in result:
        c = result["clip"]
        out.print(f"image-clip {c['arch']} ({c['precision']}, batch {c['batch_size']}): end to end "
                  f"{c['e2e_images_s']:.1f} images/s, bare encoder {c['encoder_images_s']:.1f} images/s "
                  f"({c['ratio']:.0%}), load average {c['load1']}", highlight=False)
    if "check" in result:
        c = result["check"]
        out.print(f"likeness check, cold, {c['n_works']} works: p50 {c['p50_s']:.2f} s, best {c['best_s']:.2f} s "
                  f"(runs {c['cold_s']}), load average {c['load1']}", highlight=False)


# --- end of bench --------------------------------------------------------------------------


# --- serve and users (library code in scanner/serve/) ---------------------------------------

users_app = typer.Typer(help="People who may use `likeness serve`, and their tokens.", no_args_is_help=True)
app.add_typer(users_app, name="users")
StateOpt = typer.Option(None, "--state", help="The server's state folder: users, private upload space "
                        "(default $LIKENESS_STATE_DIR or ~/.local/state/likeness).")


def _state(state: Optional[Path]) -> Path:
    from scanner.serve.auth import default_state_dir

    return state or default_state_dir()


@app.command("serve")
@handled
def serve_cmd(index: Path = IndexOpt,
              host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on (loopback by default; "
                                       "any other needs --tls-cert/--tls-key or --insecure-http)."),
              port: int = typer.Option(8765, "--port", min=1, max=65535),
              state: Optional[Path] = StateOpt,
              tls_cert: Optional[Path] = typer.Option(None, "--tls-cert", help="PEM certificate: serve HTTPS."),
              tls_key: Optional[Path] = typer.Option(None, "--tls-key", help="PEM private key of --tls-cert."),
              insecure_http: bool = typer.Option(False, "--insecure-http", help="Allow plain HTTP off loopback."),
              allow_root: Optional[List[Path]] = typer.Option(None, "--allow-root", help="A folder whose files "
                                                              "API clients may name by path (repeatable)."),
              max_upload_mb: float = typer.Option(512, "--max-upload-mb", min=0.001, help="Largest upload (413 "
                                                  "beyond)."),
              workers: Optional[int] = typer.Option(None, "--workers", min=1, help="Checks at once (default: "
                                                    "the CPUs)."),
              queue: Optional[int] = typer.Option(None, "--queue", min=0, help="Checks waiting beyond those "
                                                  "(503 beyond; default 32)."),
              processes: Optional[int] = typer.Option(None, "--processes", min=0, help="Processes that check "
                                                      "pictures, forked from the warm scanner (default: the CPUs; "
                                                      "0: threads only)."),
              rate: float = typer.Option(600, "--rate", min=0, help="Requests a minute per token (429 beyond; "
                                         "0: no limit)."),
              thumbnails: bool = typer.Option(False, "--thumbnails", help="Show thumbnails of outputs that need a "
                                              "person on the page (kept in memory only)."),
              clip_model: Optional[str] = ClipModelOpt, clip_pretrained: Optional[str] = ClipPretrainedOpt,
              models_dir: Optional[str] = ModelsDirOpt, hmac_key_file: Optional[Path] = HmacOpt) -> None:
    """Serve the creative lead's page and the pipelines' HTTP API over one warm index."""
    from scanner.serve import check_bind, serve
    from scanner.serve.app import ServeConfig

    warning = check_bind(host, tls_cert=tls_cert, tls_key=tls_key, insecure_http=insecure_http)
    if warning:
        err.print(f"[yellow]warning:[/] {escape(warning)}", highlight=False, soft_wrap=True)
    for root in allow_root or []:
        if not root.is_dir():
            _fail(f"--allow-root {root}: no such folder")
    if not (index / "manifest.json").is_file():
        _fail(f"no index at {index} (build one with `likeness index build`)")
    _warn_blas()
    config = ServeConfig(index_dir=index, state_dir=_state(state), max_upload_bytes=int(max_upload_mb * 2 ** 20),
                         workers=workers, queue=queue, processes=processes, rate_per_minute=rate,
                         allow_roots=list(allow_root or []),
                         thumbnails=thumbnails, hmac_key=_key(hmac_key_file),
                         options=_options(None, clip_model, clip_pretrained, models_dir))
    scheme = "https" if tls_cert else "http"
    err.print(f"likeness serve: {scheme}://{host}:{port}/ (index {index}; state {config.state_dir})",
              highlight=False, markup=False)
    serve(config, host=host, port=port, tls_cert=tls_cert, tls_key=tls_key)


@users_app.command("add")
@handled
def users_add(name: str = typer.Argument(..., help="Who (shown as `by` in the decision ledger)."),
              role: str = typer.Option(..., "--role", help="viewer (check, read), reviewer (also decide) or "
                                       "admin (also manage users)."),
              state: Optional[Path] = StateOpt) -> None:
    """Add a user and print their token, once, alone on the last line (only its hash is kept)."""
    from scanner.serve.auth import UserStore

    user, token = UserStore(_state(state)).add(name, role)
    err.print(f"added {escape(user.name)} ({user.role}); their token follows, shown this once:", highlight=False)
    print(token)


@users_app.command("list")
@handled
def users_list(state: Optional[Path] = StateOpt, as_json: bool = typer.Option(False, "--json")) -> None:
    """List users and their roles (never tokens)."""
    from scanner.serve.auth import UserStore

    users = [u.public() for u in UserStore(_state(state)).list()]
    if as_json:
        print(json.dumps(users))
        return
    if not users:
        out.print("no users (add one with `likeness users add NAME --role ...`)")
    for u in users:
        out.print(f"{escape(u['name'])}  {u['role']}  added {u['created']}", highlight=False)


@users_app.command("remove")
@handled
def users_remove(name: str = typer.Argument(...), state: Optional[Path] = StateOpt) -> None:
    """Remove a user: their token stops working and a running server ends their sessions."""
    from scanner.serve.auth import UserStore

    user = UserStore(_state(state)).remove(name)
    out.print(f"removed {escape(user.name)} ({user.role})", highlight=False)


@app.callback(invoke_without_command=True)
def main(version: bool = typer.Option(False, "--version", help="Print the version and exit.")) -> None:
    if version:
        print(f"likeness {__version__}")
        raise typer.Exit(0)


def run() -> None:  # console-script entry point
    app()


if __name__ == "__main__":
    sys.exit(app())

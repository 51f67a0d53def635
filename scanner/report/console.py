"""Console output with rich: the scan summary and the one-asset verdict."""

from __future__ import annotations

from typing import Any, Mapping

from rich.console import Console
from rich.table import Table

from scanner.report.words import describe_match, plain_verdict

COLOURS = {"flagged": "bold red", "review": "bold yellow", "error": "bold magenta",
           "licensed": "bold blue", "clear": "bold green"}
VERDICT_ORDER = ("flagged", "error", "review", "licensed", "clear")


def summary_table(counts: Mapping[str, int], *, skipped: int = 0, resumed: int = 0) -> Table:
    """Every count, so no category hides behind another."""
    table = Table(title="likeness scan summary", show_header=True)
    table.add_column("verdict")
    table.add_column("files", justify="right")
    for v in VERDICT_ORDER:
        table.add_row(f"[{COLOURS[v]}]{v}[/]", str(counts.get(v, 0)))
    table.add_row("skipped (not media)", str(skipped))
    if resumed:
        table.add_row("already done (resumed)", str(resumed))
    return table


def print_check(console: Console, result: Mapping[str, Any], run: Mapping[str, Any]) -> None:
    """Print one asset's verdict in plain words and colour, then the evidence per matched work."""
    from rich.markup import escape

    v = result["verdict"]
    console.print(f"[{COLOURS[v]}]{v.upper()}[/]  {escape(str(result['path']))}", highlight=False)
    console.print(escape(plain_verdict(result, run)), highlight=False)
    shown: set[Any] = set()
    for m in result.get("matches") or []:
        if m["work_id"] not in shown:
            shown.add(m["work_id"])
            if m.get("talent"):  # a performer, not a work: who, and their consent
                console.print(f"\n  [bold]{escape(str(m['talent']))}[/] · consent {escape(str(m.get('consent')))}"
                              f" [dim](talent reference {m['work_id']}, {escape(str(m.get('ref_path')))})[/]",
                              highlight=False)
            else:
                licensed = " [bold blue](the studio holds the rights)[/]" if m.get("licensed") else ""
                console.print(f"\n  [bold]{escape(str(m.get('title') or 'work ' + str(m['work_id'])))}[/]{licensed}"
                              f" · rights holder {escape(str(m.get('rights_holder') or 'unknown'))}"
                              f" · licence {escape(str(m.get('licence') or 'unknown'))}"
                              f" [dim](work {m['work_id']}, {escape(str(m.get('ref_path')))})[/]", highlight=False)
        ev = describe_match(m)
        colour = "red" if ev["score"] >= 0.8 else "yellow" if ev["score"] >= 0.5 else "dim"
        detail = "; ".join(x for x in (ev["words"], ev["where"]) if x)
        console.print(f"    [{colour}]{m['feature']}[/] strength {ev['score']:.2f} · {ev['chance']}"
                      + (f"\n      [dim]{escape(detail)}[/]" if detail else ""), highlight=False)
    timeline = (result.get("video") or {}).get("timeline") or []
    if timeline:  # a video: every stretch where a work shows
        console.print("\n  [bold]Where in the video[/]", highlight=False)
        for e in timeline:
            ref = f" (work at {e['ref_start']:.2f} s)" if e.get("ref_start") is not None else ""
            console.print(f"    {e['start_text']}–{e['end_text']} {e['source']}: "
                          f"{escape(str(e.get('talent') or e.get('title') or e.get('ref_path')))}{ref} · {e['feature']} · "
                          f"{e.get('chance')}", highlight=False)
    console.print(f"\n[dim]index {run.get('index_id')} · {run.get('n_works')} works · "
                  f"sha256 {result.get('sha256') or '—'}[/]", highlight=False)

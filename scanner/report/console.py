"""Console output with rich: the scan summary and the one-asset verdict."""

from __future__ import annotations

from typing import Any, Mapping

from rich.console import Console
from rich.table import Table

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


def plain_verdict(result: Mapping[str, Any], run: Mapping[str, Any]) -> str:
    """The verdict in plain words for a person (never "cleared")."""
    n, index = run.get("n_works", 0), run.get("index_path", "the index")
    v = result["verdict"]
    if v == "clear":
        return f"No near-copy found among the {n} works of index {index}. ({result['reason']})"
    if v == "flagged":
        return "Too close to a protected work: do not use without clearing the rights."
    if v == "review":
        return "Doubtful: a person must look at the evidence below and decide."
    if v == "licensed":
        return "Matches a work the studio holds the rights to (reported, not flagged)."
    return f"Could not be checked: {result.get('error')}. This file is NOT cleared."


def print_check(console: Console, result: Mapping[str, Any], run: Mapping[str, Any]) -> None:
    """Print one asset's verdict and evidence."""
    v = result["verdict"]
    console.print(f"[{COLOURS[v]}]{v.upper()}[/]  {result['path']}", highlight=False)
    console.print(plain_verdict(result, run), highlight=False)
    if result.get("matches"):
        table = Table(show_header=True, title="matched works")
        for col in ("work", "rights holder", "feature", "strength", "significance", "file"):
            table.add_column(col)
        for m in result["matches"]:
            table.add_row(str(m.get("title") or f"work {m['work_id']}"), str(m.get("rights_holder") or "—"),
                          m["feature"], f"{m['score']:.2f}", m["chance"], str(m.get("ref_path")))
        console.print(table)
    console.print(f"[dim]index {run.get('index_id')} · {run.get('n_works')} works · "
                  f"sha256 {result.get('sha256') or '—'}[/]", highlight=False)

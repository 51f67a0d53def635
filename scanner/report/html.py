"""``report.html``: one self-contained page (inline CSS and JS, no network fetches).

Every string from files or metadata goes through jinja2's autoescape.
"""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path
from typing import Any, Sequence

VERDICT_ORDER = ("flagged", "error", "review", "licensed", "clear")


def render_html(results: Sequence[dict[str, Any]], run: dict[str, Any]) -> str:
    """The report page as a string."""
    import jinja2

    env = jinja2.Environment(loader=jinja2.PackageLoader("scanner.report", "templates"),
                             autoescape=True, undefined=jinja2.StrictUndefined)
    counts = Counter(r["verdict"] for r in results)
    order = {v: i for i, v in enumerate(VERDICT_ORDER)}
    rows = sorted(results, key=lambda r: (order.get(r["verdict"], 9), -(r.get("score") or 0)))
    return env.get_template("report.html.j2").render(
        results=rows, run=run, counts=[(v, counts.get(v, 0)) for v in VERDICT_ORDER])


def write_html(results: Sequence[dict[str, Any]], run: dict[str, Any], path: Path) -> None:
    """Write the report page (atomically)."""
    tmp = path.with_name(path.name + ".tmp")
    # a file name that is not UTF-8 shows as \udcXX escapes; the page stays valid UTF-8
    tmp.write_text(render_html(results, run), encoding="utf-8", errors="backslashreplace")
    os.replace(tmp, path)

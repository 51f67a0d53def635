"""Markdown tables and the precision-recall figure of one evaluated half."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from benchmarks.accuracy.corpora import STOCK_FOLDERS

#: Published DISC21 (ISC2021 descriptor track) figures of SSCD (Pizzi et al., CVPR 2022), for context.
SSCD_DISC21 = {"muAP": (0.61, 0.72), "recall_at_p90": (0.38, 0.63)}
#: Issue targets, per group of transforms, on negatives and on the descriptor metrics: the
#: weight-free features' (the first accuracy issue), and the stricter ones a learned copy
#: descriptor is held to (the image-sscd issue: every hard transform >= 0.92, every mild one
#: >= 0.98, negatives flagged <= 0.3% and sent to review <= 2%, muAP and recall@P90 >= 0.95).
TARGETS = {"mild": 0.95, "hard": 0.85, "combo": None, "negatives_flagged": 0.01, "negatives_review": 0.05,
           "muAP": None, "recall_at_p90": None}
TARGETS_LEARNED = {"mild": 0.98, "hard": 0.92, "combo": None, "negatives_flagged": 0.003,
                   "negatives_review": 0.02, "muAP": 0.95, "recall_at_p90": 0.95}


def targets(features: str) -> dict[str, float | None]:
    """The targets a run of these features (comma-separated) is judged by."""
    return TARGETS_LEARNED if "image-sscd" in features.split(",") else TARGETS
#: The negative rates count toward the targets only from this many negatives (counted as works):
#: below it one false match moves a rate by a third of the 1% allowed flagged or more (the photos
#: corpus holds 20 negatives per half).
MIN_NEGATIVES = 300


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def _f(x: float | None, nd: int = 3) -> str:
    return "-" if x is None else f"{x:.{nd}f}"


def _stock_apart(c: dict[str, Any]) -> str:
    """Recall without the stock-geometry references, with its n (``-`` in older reports)."""
    if c.get("recall_without_stock") is None:
        return "-"
    return f"{c['recall_without_stock']:.3f} ({c['n_without_stock']})"


def markdown(rep: dict[str, Any]) -> str:
    """The tables of one half, as markdown."""
    cfg, s = rep["config"], rep["set"]
    half = cfg["half"].upper()
    label = "REPORT half (the figures to quote)" if cfg["half"] == "report" else \
        "TUNE half (thresholds and choices may be looked at here only)"
    lines = [
        f"### {rep['set_name']}: {label}",
        "",
        f"Features `{cfg['features']}`; corpus `{cfg['corpus']}`, seed {cfg['seed']}; "
        f"{s['n_refs']} references from {len(s['ref_topics'])} folders ({', '.join(s['ref_topics'])}); "
        f"{s['n_negatives']} negatives from {len(s['negative_topics'])} other folders "
        f"({', '.join(s['negative_topics'])}); {s['n_queries']} copies; pictures at most {cfg['max_side']} px."
        + (f" The half's topics hold {s['n_works']} works; its negatives are {s['n_negative_works']} works."
           if s.get("n_works") is not None else ""),
        "",
        "| transform | group | n | flagged, right work | review, right work | recall | target | wrong work "
        "| clear | error | recall@1 | muAP | scan images/s | recall, stock geometry apart |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    bars = targets(cfg["features"])
    for t, c in rep["per_transform"].items():
        target = bars[c["group"]]
        met = "" if target is None else (" ✓" if c["recall"] >= target else " ✗")
        lines.append(
            f"| {t} | {c['group']} | {c['n']} | {c['flagged_right']} ({_f(c['recall_flagged'], 2)}) "
            f"| {c['review_right']} ({_f(c['recall_review'], 2)}) | **{c['recall']:.3f}**{met} "
            f"| {'-' if target is None else f'>= {target}'} | {c['wrong_work']} | {c['clear']} | {c['error']} "
            f"| {c['recall_at_rank1']:.3f} | {c['muAP']:.3f} | {c['scan_images_per_s']:.0f} "
            f"| {_stock_apart(c)} |")
    stock = STOCK_FOLDERS.get(cfg["corpus"], ())
    lines += ["", "Targets (✓/✗) are judged on every copy. The last column sets apart the references in the "
                  "corpus's folders of stock geometry"
              + (f" ({', '.join(stock)})" if stock else " (none in this corpus)")
              + ", which distinctiveness weighting counts for little (`corpora.STOCK_FOLDERS`); n in brackets."]
    neg = rep["negatives"]
    ok = (neg["share_flagged"] <= bars["negatives_flagged"] and neg["share_review"] <= bars["negatives_review"])
    met = f"fewer than {MIN_NEGATIVES} negatives: rates not counted toward targets" \
        if s.get("n_negative_works", neg["n"]) < MIN_NEGATIVES else ("yes" if ok else "NO")
    lines += [
        "",
        "| negatives (unseen folders) | n | flagged | review | clear | error | target | met | scan images/s |",
        "|---|---:|---:|---:|---:|---:|---:|:-:|---:|",
        f"| {half} | {neg['n']} | {neg['flagged']} ({_pct(neg['share_flagged'])}) | {neg['review']} "
        f"({_pct(neg['share_review'])}) | {neg['clear']} | {neg['error']} "
        f"| <= {_pct(bars['negatives_flagged'])} flagged, <= {_pct(bars['negatives_review'])} review "
        f"| {met} | {neg['scan_images_per_s']:.0f} |",
        "",
        "| descriptor metrics (ISC2021/DISC21 definitions, score = -log10 expected) | muAP | recall@P90 "
        "| expected at P90 | recall@1 |",
        "|---|---:|---:|---:|---:|",
    ]
    def judged(x: float | None, bar: float | None) -> str:
        return "" if bar is None or x is None else (" ✓" if x >= bar else " ✗")

    for key, m in rep["descriptor"].items():
        thr = m.get("threshold_at_p90")
        mu, rp = (bars["muAP"], bars["recall_at_p90"]) if key == "all copies" else (None, None)
        lines.append(f"| {key} | **{m['muAP']:.3f}**{judged(m['muAP'], mu)} "
                     f"| **{_f(m['recall_at_p90'])}**{judged(m['recall_at_p90'], rp)} "
                     f"| {'-' if thr is None else f'{10 ** -thr:.2g}'} | {_f(m.get('recall_at_rank1'))} |")
    lo, hi = SSCD_DISC21["muAP"], SSCD_DISC21["recall_at_p90"]
    lines.append(f"| SSCD on DISC21 (published, for context) | {lo[0]}–{lo[1]} | {hi[0]}–{hi[1]} | | |")
    alt = rep.get("descriptor_with_strength_score")
    if alt:
        lines.append(f"| all, score = the 0–1 `score` field instead | {alt['muAP']:.3f} "
                     f"| {_f(alt['recall_at_p90'])} | | |")
    folders = rep.get("by_folder") or {}
    if folders:
        lines += ["", "| recall by reference folder (a diagnostic: where the misses gather) | refs | mild | hard "
                      "| combo |", "|---|---:|---:|---:|---:|"]
        for folder, row in folders.items():
            cells = [f"{row[g]['recall']:.3f}" if g in row else "-" for g in ("mild", "hard", "combo")]
            lines.append(f"| {folder} | {row['refs']} | " + " | ".join(cells) + " |")
    cal = rep.get("calibration")
    if cal:
        lines += ["", f"Calibrated on this half's labels (`likeness calibrate`'s function, precision 0.99, at most "
                      f"1% of negatives flagged and 5% sent to review): flag at expected <= {cal['flag_at']:.2g} (recall "
                      f"{_f(cal['flag']['recall'])}, {cal['flag']['negatives_called']} of {cal['negatives']} "
                      f"negatives), review at <= {cal['review_at']:.2g}."]
    ac = rep.get("at_tune_calibration")
    if ac:
        lines += ["", f"Under the thresholds calibrated on TUNE (flag <= {ac['flag_at']:.2g}, review <= "
                      f"{ac['review_at']:.2g}), this half's copies are flagged with the right work "
                      f"{_f(ac['flagged'])} and sent to review {_f(ac['review'])}; negatives flagged "
                      f"{ac['negatives_flagged']:.1%}, sent to review {ac['negatives_review']:.1%}."]
    tt = rep.get("at_tune_threshold")
    if tt:
        lines += ["", f"At the score threshold that gives precision 0.9 on TUNE (expected <= "
                      f"{10 ** -tt['threshold']:.2g}), this half has precision {_f(tt['precision'])} and recall "
                      f"{_f(tt['recall'])} ({tt['predictions']} predictions kept)."]
    tp = rep["throughput"]
    lines += [
        "",
        f"Index build: {tp['build_files']} references in {tp['build_seconds']:.2f} s "
        f"({tp['build_images_per_s']:.0f} images/s, wall clock). Scans: {tp['scan_files']} inputs in "
        f"{tp['scan_seconds_in_process']:.2f} s in-process ({tp['scan_images_per_s']:.0f} images/s; "
        f"{tp['scan_seconds_wall']:.2f} s wall clock over {tp['scan_runs']} runs, process start included). "
        f"Per-transform rates are in-process (run.json `seconds`). Making the set took "
        f"{tp['set_seconds']:.0f} s{' (reused)' if tp['set_reused'] else ''}. Machine: "
        f"{rep['machine']['cpus']} CPU cores; 1-min load average {tp['loadavg_before']} before, "
        f"{tp['loadavg_after']} after.",
    ]
    if s["notes"]:
        lines += ["", "Notes: " + "; ".join(s["notes"]) + "."]
    return "\n".join(lines) + "\n"


def figure(rep: dict[str, Any], path: Path) -> bool:
    """Precision-recall curves (all copies, and mild / hard / combo) with the P90 points; False without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, ax = plt.subplots(figsize=(6.4, 4.8), dpi=110)
    for key, m in rep["descriptor"].items():
        curve = m.get("curve")
        if not curve:
            continue
        ax.plot(curve["recall"], curve["precision"], lw=2.2 if key == "all copies" else 1.2,
                label=f"{key}: muAP {m['muAP']:.3f}, R@P90 {_f(m['recall_at_p90'])}")
        if m["recall_at_p90"] is not None:
            ax.plot([m["recall_at_p90"]], [m["precision_at_p90_point"]], "k.", ms=6)
    ax.axhline(0.9, color="grey", lw=0.8, ls="--")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("recall (copies whose reference is predicted)")
    ax.set_ylabel("precision (pooled predictions, negatives included)")
    cfg = rep["config"]
    ax.set_title(f"{rep['set_name']} — {cfg['half'].upper()} half\n{cfg['features']}, "
                 f"{rep['set']['n_refs']} refs, {rep['set']['n_negatives']} negatives", fontsize=10)
    ax.legend(fontsize=7, loc="lower left")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return True

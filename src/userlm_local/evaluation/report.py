"""The bench's outputs: ``bench.json`` (everything), ``report.md`` (the table a person reads
first) and a self-contained ``report.html`` (the tables and matplotlib plots, embedded as PNG)."""

from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path

import numpy as np

from ..util.files import write_text_atomic
from .metrics.behaviour import BEHAVIOUR
from . import extrinsic_preservation as extrinsic


def _f(v, digits: int = 4) -> str:
    if v is None or (isinstance(v, float) and not np.isfinite(v)):
        return "-"
    if isinstance(v, float):
        return f"{v:.{digits}g}"
    return str(v)


def summary_rows(report: dict) -> list[list[str]]:
    rows = [["model", "MiB", "mean KLD", "p99 KLD", "same top-1", "nucleus kept", "PPL ratio (intent)",
             "identical convs", "token gates", "verdict", "degraded", "undecided"]]
    for c in report["candidates"]:
        t, m = c["token"], c["metrics"]["ppl_with_intent"]
        ratio = m["cand"] / m["ref"] if m["ref"] else None
        rows.append([c["label"], f"{c['model']['bytes'] / 2**20:.1f}", _f(t["kld_mean"]), _f(t["kld_p99"]),
                     "-" if t["same_top1"] is None else f"{100 * t['same_top1']:.1f}%",
                     "-" if t["nucleus_kept"] is None else f"{100 * t['nucleus_kept']:.1f}%",
                     _f(ratio), _pct((c.get("coupling") or {}).get("identical_share")), c["token_gates"],
                     c["verdict"].upper() if c["verdict"] == "degraded" else c["verdict"],
                     ", ".join(c["degraded"]) or "-", ", ".join(c.get("inconclusive", [])) or "-"])
    return rows


def _pct(v) -> str:
    return "-" if v is None else f"{100 * v:.0f}%"


def metric_rows(report: dict) -> list[list[str]]:
    """REF over every conversation the bench ran; a candidate that stopped at an earlier look, or a
    metric decided at one, says so, with the REF value it was compared with."""
    rows = [["metric", "tolerance", "REF"] + [c["label"] for c in report["candidates"]]]
    for name, spec in BEHAVIOUR.items():
        cells = []
        for c in report["candidates"]:
            m = c["metrics"][name]
            lo, hi = m["verdict_interval"]
            n = m.get("n_needed")
            mark = {"preserved": " ok", "degraded": " **degraded**", "info": "",
                    "inconclusive": f" undecided{f' (~{n} needed)' if n else ''}"}[m["verdict"]]
            upto = (c.get("look") or {}).get("conversations", report["n_conversations"])
            if m.get("decided_at"):
                mark += f" (decided at {m['decided_at']})"
            ref = (f" (REF {_f(m['ref'])} on the same {m['items']} {m['paired_by']}s)" if "ref_items" in m else  # its part stopped early
                   f" (REF {_f(m['ref'])} at {upto})" if upto != report["n_conversations"] else "")
            cells.append(f"{_f(m['cand'])}{ref} [{_f(lo, 2)}, {_f(hi, 2)}]{mark}")
        tol = "info" if spec.tolerance is None else (f"±{spec.tolerance:.0%} of REF" if spec.relative
                                                     else f"±{spec.tolerance:g}")
        ref_n = (report["ref"].get("items") or {}).get(spec.unit)
        if ref_n is None:  # a bench.json from before REF recorded its counts: REF ran what any candidate still
            # needed, so its count is the largest a candidate was paired with
            seen = [c["metrics"][name].get("ref_items", c["metrics"][name].get("items")) for c in report["candidates"]]
            ref_n = max((n for n in seen if n is not None), default=None)
        short = spec.unit != "intent probe" and ref_n is not None and ref_n < report["n_conversations"]
        rows.append([name, tol, _f(report["ref"]["metrics"][name]) + (f" ({ref_n} {spec.unit}s)" if short else "")] + cells)
    return rows


def token_rows(report: dict) -> list[list[str]]:
    """llama.cpp's KL-divergence statistics, on user-turn positions, and the KLD by REF's confidence."""
    rows = [["model", "mean Δp", "RMS Δp", "Δp p1", "Δp p99", "KLD p99.9",
             "KLD, REF top-1 < 0.5", "0.5-0.9", ">= 0.9"]]
    for c in report["candidates"]:
        t = c["token"]
        pct = lambda v: "-" if v is None else f"{100 * v:+.2f}%"  # noqa: E731
        conf = [f"{_f(t.get(f'kld_mean_{k}_confidence'))} ({t.get(f'positions_{k}_confidence', 0)})"
                for k in ("low", "medium", "high")]
        rows.append([c["label"], pct(t.get("dp_mean")), pct(t.get("dp_rms")), pct(t.get("dp_p1")),
                     pct(t.get("dp_p99")), _f(t.get("kld_p99_9")), *conf])
    return rows


def md_table(rows: list[list[str]]) -> str:
    out = ["| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])]
    out += ["| " + " | ".join(r) + " |" for r in rows[1:]]
    return "\n".join(out)


KLD_FLOOR = 1e-8  # a log axis has no place for the zeros of identical distributions


def setup_sentence(report: dict) -> str:
    """What was run: the conversations, the campaign and its settings (report.md and report.html)."""
    cfg = report["config"]
    guardrails = cfg.get("guardrails", "paper")  # reports written before the key existed banned the end token
    return (f"The first {report['n_conversations']} held-out conversations ({cfg['data']}) that fit whole in "
            f"{cfg['max_len']} tokens and their intents, {cfg['trials']} seeded campaign conversations each (seed "
            f"{cfg['seed']}, up to {cfg['max_turns']} user turns of at most {cfg['max_new_tokens']} tokens, paper "
            f"sampling, guardrails: {guardrails}; the conversation's real assistant turns replayed).")


def render_md(report: dict) -> str:
    lines = [
        f"# UserLM preservation bench: {report['verdict'].upper()}", "",
        f"REF: `{report['ref']['model']['name']}` ({report['ref']['label']}, sha256 "
        f"{str(report['ref']['model'].get('sha256') or '-')[:16]}). "
        f"{setup_sentence(report)}", "",
        md_table(summary_rows(report)), "",
        *[f"- {c['headline']}" for c in report["candidates"]], "",
        "## Every metric: CAND value [90% interval of CAND - REF] and its verdict", "",
        md_table(metric_rows(report)), "",
        *_extrinsic_md(report),
        "## Token statistics (llama.cpp's; Δp = CAND - REF probability of the token actually there)", "",
        md_table(token_rows(report)), "",
        f"- Gates: {report['gates']['text']}.",
        f"- Anchors: {report['gates']['anchors']}.",
        f"- Verdicts: {report['verdict_rule']}.",
        "- KLD, same top-1 and nucleus kept are over every user-turn target position (with intent); "
        "the nucleus is REF's top-p=0.8 set, and 'kept' is CAND's mass on it over REF's.",
        f"- Machine: {report['machine'].get('cpu_model')}, {report['machine'].get('cores')} cores; "
        f"commit {report['machine'].get('git_commit') or '-'}; {report['seconds']:.0f} s in all.",
    ]
    return "\n".join(lines) + "\n"


def _extrinsic_md(report: dict) -> list[str]:
    """``bench --extrinsic``: the task-score section (its notes go with the report's others)."""
    if not report.get("extrinsic"):
        return []
    return [f"## {extrinsic.TITLE}", "", md_table(extrinsic.rows(report["extrinsic"])), "",
            *[f"- {n}" for n in extrinsic.notes(report["extrinsic"])], ""]


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    return base64.b64encode(buf.getvalue()).decode()


def plots(report: dict, kld: dict[str, np.ndarray]) -> list[tuple[str, str]]:
    """(title, base64 PNG) of each plot; empty when matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    out = []
    cands = report["candidates"]
    fig, ax = plt.subplots(figsize=(7, 3.5))
    clipped = 0
    for c in cands:
        k = kld.get(c["label"])
        if k is not None and len(k):
            clipped += int((k < KLD_FLOOR).sum())
            ax.hist(np.log10(np.maximum(k, KLD_FLOOR)), bins=50, histtype="step", label=c["label"])
    ax.set_xlabel("log10 KL(REF || CAND) per user-turn position"
                  + (f" ({clipped} positions below 1e-8 drawn at -8)" if clipped else ""))
    ax.set_ylabel("positions")
    ax.legend(fontsize=7)
    out.append(("KL divergence per user-turn position", _png(fig)))
    plt.close(fig)
    names = list(BEHAVIOUR)
    cols = 3
    fig, axes = plt.subplots((len(names) + cols - 1) // cols, cols, figsize=(11, 2.4 * ((len(names) + 2) // cols)))
    for ax, name in zip(axes.flat, names):
        ys = np.arange(len(cands))
        for y, c in zip(ys, cands):  # each bar around the REF value its candidate was compared with
            m = c["metrics"][name]  # (a candidate decided at an earlier look saw fewer conversations)
            lo, hi = m["verdict_interval"]
            color = {"degraded": "tab:red", "inconclusive": "tab:orange"}.get(m["verdict"], "tab:blue")
            if np.isfinite(lo) and np.isfinite(hi):
                ax.plot([m["ref"] + lo, m["ref"] + hi], [y, y], color=color, lw=2)
            ax.plot([m["ref"]], [y], "|", color="black", markersize=12)
            ax.plot([m["cand"]], [y], "o", color=color)
        ax.set_yticks(ys, [c["label"] for c in cands], fontsize=7)
        ax.set_title(name, fontsize=8)
        ax.tick_params(axis="x", labelsize=7)
    for ax in list(axes.flat)[len(names):]:
        ax.axis("off")
    fig.suptitle("each metric: CAND (dot) and REF + the 90% interval of CAND - REF (bar; red: degraded, "
                 "orange: inconclusive); black tick: the REF it was compared with", fontsize=9)
    fig.tight_layout()
    out.append(("Every metric next to REF", _png(fig)))
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(8, 3.5))
    markers = "osD^v<>pP*Xh"
    for k, c in enumerate(cands):  # a legend, not labels beside the points: types of one size overlap
        if c["token"]["kld_mean"] is not None:
            ax.scatter(c["model"]["bytes"] / 2**20, max(c["token"]["kld_mean"], KLD_FLOOR),
                       marker=markers[k % len(markers)], label=c["label"])
    ax.set_xlabel("file size (MiB)")
    ax.set_ylabel("mean KLD")
    ax.set_yscale("log")
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    out.append(("File size vs mean KLD", _png(fig)))
    plt.close(fig)
    return out


def split_columns(rows: list[list[str]], keep: int, per: int) -> list[list[list[str]]]:
    """A wide table as several: the first ``keep`` columns repeated, then ``per`` columns at a time
    (a page 1,400 px wide never scrolls sideways)."""
    width = len(rows[0])
    if width - keep <= per:
        return [rows]
    return [[r[:keep] + r[i:i + per] for r in rows] for i in range(keep, width, per)]


def html_table(rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in rows[0])
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c).replace('**degraded**', '<b>degraded</b>')}</td>"
                                    for c in r) + "</tr>" for r in rows[1:])
    return f"<table><tr>{head}</tr>{body}</table>"


def render_html(report: dict, kld: dict[str, np.ndarray]) -> str:
    figs = plots(report, kld)
    heads = {f"- {c['headline']}" for c in report["candidates"]}
    notes = "".join(f"<li>{html.escape(line[2:])}</li>" for line in render_md(report).splitlines()
                    if line.startswith("- ") and line not in heads)
    imgs = "".join(f"<h2>{html.escape(t)}</h2><img alt='{html.escape(t)}' src='data:image/png;base64,{b}'>"
                   for t, b in figs) or "<p>No plots: matplotlib is not installed (pip install matplotlib).</p>"
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>UserLM preservation bench</title>
<style>body{{font-family:sans-serif;max-width:1150px;margin:2em auto;color:#222}}
table{{border-collapse:collapse;font-size:13px;margin:1em 0}}td,th{{border:1px solid #ccc;padding:3px 7px;text-align:right}}
td:first-child,th:first-child{{text-align:left}}img{{max-width:100%}}td,th{{overflow-wrap:break-word}}</style></head><body>
<h1>UserLM preservation bench: {html.escape(report['verdict'])}</h1>
<p>REF: <code>{html.escape(report['ref']['model']['name'])}</code> ({html.escape(report['ref']['label'])}, sha256
{html.escape(str(report['ref']['model'].get('sha256') or '-')[:16])}).
{html.escape(setup_sentence(report))}</p>
<ul class="headline">{"".join(f"<li><b>{html.escape(c['headline'])}</b></li>" for c in report["candidates"])}</ul>
{html_table(summary_rows(report))}
<h2>Every metric: CAND value [90% interval of CAND - REF] and its verdict</h2>
{"".join(html_table(t) for t in split_columns(metric_rows(report), 3, 4))}
{_extrinsic_html(report)}
<h2>Token statistics (llama.cpp's; Δp = CAND - REF probability of the token actually there)</h2>
{html_table(token_rows(report))}
<ul>{notes}</ul>
{imgs}
</body></html>
"""


def _extrinsic_html(report: dict) -> str:
    if not report.get("extrinsic"):
        return ""
    return f"<h2>{html.escape(extrinsic.TITLE)}</h2>{html_table(extrinsic.rows(report['extrinsic']))}"


def write_outputs(out: Path, report: dict, kld: dict[str, np.ndarray]) -> list[Path]:
    """bench.json, report.md and report.html, each written whole (temporary file, then renamed)."""
    files = {"bench.json": json.dumps(report, indent=1, default=float) + "\n",
             "report.md": render_md(report), "report.html": render_html(report, kld)}

    for name, text in files.items():
        write_text_atomic(out / name, text)
    return [out / name for name in files]

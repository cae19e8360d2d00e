"""``eval``'s outputs: ``eval.json`` (everything), ``report.md`` and a self-contained ``report.html``
(the tables and matplotlib plots embedded as PNG), the way the bench writes its own."""

from __future__ import annotations

import html
import json
from pathlib import Path

from ..util.files import write_text_atomic
from .report import _png, html_table, md_table

FILES = ("eval.json", "report.md", "report.html")


def _f(v, digits: int = 1, unit: str = "") -> str:
    return "-" if v is None else f"{v:.{digits}f}{unit}"


def _ci(stat: dict | None, unit: str = "%") -> str:
    if not stat or stat.get("value") is None:
        return "-"
    lo, hi = stat["interval"]
    return f"{stat['value']:.1f}{unit} [{_f(lo)}, {_f(hi)}]"


def headline(r: dict) -> list[str]:
    s = r["scores"]
    lines = [f"Task score with simulated users (up to {s['max_turns']} user turns): {_ci(s['score'])} over "
             f"{s['n_tasks']} tasks x {s['trials']} trial{'s' if s['trials'] > 1 else ''} (95% bootstrap interval over tasks)"]
    if "single_turn" in s:
        lines.append(f"Single-turn baseline (the whole problem in one message): {_ci(s['single_turn'])}")
        lines.append(f"Multi-turn drop (baseline - simulated, paired by task): {_ci(s['drop'], ' points')}")
    if r.get("fail_under") is not None:
        lo = s["score"]["interval"][0]
        verdict = "FAIL" if r["fail_under"]["failed"] else "pass"
        lines.append(f"--fail-under {r['fail_under']['threshold']:g}: {verdict} (lower bound {_f(lo)}%)")
    return lines


def metric_rows(r: dict) -> list[list[str]]:
    s, sim, t = r["scores"], r["scores"]["simulation"], r["scores"]["turns_to_success"]
    rows = [["metric", "value"],
            ["turns to success (mean / median, solved conversations)", f"{_f(t['mean'], 2)} / {_f(t['median'], 1)}"],
            ["user turns per conversation", _f(sim["user_turns_mean"], 2)],
            ["turn variance per task (mean)", _f(sim["turn_variance"], 3)],
            ["turn range per task (mean)", _f(sim["turn_range"], 2)],
            ["unigram difference between simulations of a task", _f(sim["unigram_difference"], 1)],
            ["intent coverage (lexical proxy)", _f(sim["intent_coverage"], 1, "%")],
            ["replies / attempts graded", f"{s['replies']} / {s['attempts']}"],
            ["checks by outcome (simulated)", ", ".join(f"{k} {v}" for k, v in s["checks"].items()) or "-"],
            ["conversations ended by", ", ".join(f"{k} {v}" for k, v in s["ended_by"].items())],
            ["seconds per conversation", _f(s["seconds_per_conversation"], 2)]]
    if "single_turn" in s:
        st = s["single_turn"]
        rows.append(["single-turn checks by outcome", ", ".join(f"{k} {v}" for k, v in st["checks"].items())])
        rows.append(["seconds per single-turn task", _f(st["seconds_per_task"], 2)])
    return rows


def task_rows(r: dict) -> list[list[str]]:
    base = "single_turn" in r["scores"]
    rows = [["task", "score", *(["single-turn"] if base else []), "turns to success", "user turns", "coverage"]]
    for t in r["scores"]["tasks"]:
        rows.append([t["id"], f"{t['score']:.0f}%", *([f"{t['single_turn']:.0f}%"] if base else []),
                     " ".join("-" if k is None else str(k) for k in t["turns_to_success"]),
                     " ".join(map(str, t["user_turns"])), _f(t["intent_coverage"], 0, "%")])
    return rows


def setup_lines(r: dict) -> list[str]:
    c, sb = r["config"], r["sandbox"]
    return [f"User model: `{c['user_model']}`; assistant: `{c['assistant']}`; tasks: {c['tasks']}; seed {c['seed']}; "
            f"sampling {c['sampling']}; guardrails paper; user turns of at most {c['max_new_tokens']} tokens.",
            "Sandbox: " + "; ".join(f"{k}: {v}" for k, v in sb["enforced"].items() if k != "self_test") + ".",
            *[f"**Sandbox warning**: {w}" for w in sb["warnings"]],
            f"Machine: {r['machine'].get('cpu_model')}, {r['machine'].get('cores')} cores; commit "
            f"{r['machine'].get('git_commit') or '-'}; {r['seconds']:.0f} s in all."]


def render_md(r: dict) -> str:
    lines = [f"# Assistant evaluation with simulated users: {_ci(r['scores']['score'])}", "",
             *[f"- {h}" for h in headline(r)], "", md_table(metric_rows(r)), "",
             *[f"- {s}" for s in setup_lines(r)], "", "## Per task", "", md_table(task_rows(r))]
    return "\n".join(lines) + "\n"


def plots(r: dict) -> list[tuple[str, str]]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    s, out = r["scores"], []
    fig, ax = plt.subplots(figsize=(5, 3.2))
    bars = [("simulated users", s["score"])] + ([("single turn", s["single_turn"])] if "single_turn" in s else [])
    for i, (name, st) in enumerate(bars):
        lo, hi = st["interval"]
        ax.bar(i, st["value"], color="tab:blue" if i == 0 else "tab:gray")
        ax.errorbar(i, st["value"], yerr=[[st["value"] - lo], [hi - st["value"]]], color="black", capsize=6)
    ax.set_xticks(range(len(bars)), [b[0] for b in bars])
    ax.set_ylabel("task score (%)")
    ax.set_ylim(0, 100)
    out.append(("Task score with its 95% interval", _png(fig)))
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(6, 3.2))
    t = s["turns_to_success"]
    k = list(range(1, s["max_turns"] + 1))
    ax.plot(k, t["solved_by_turn"], "o-", label="simulated users: solved by turn k")
    if "single_turn" in s:
        ax.axhline(s["single_turn"]["value"], color="tab:gray", ls="--", label="single-turn baseline")
    ax.bar(k, [100 * t["histogram"][str(j)] / s["conversations"] for j in k], alpha=0.3, label="solved at turn k")
    ax.set_xlabel("assistant reply (turn)")
    ax.set_ylabel("% of conversations")
    ax.set_xticks(k)
    ax.set_ylim(0, 100)
    ax.legend(fontsize=7)
    out.append(("Turns to success", _png(fig)))
    plt.close(fig)
    return out


def render_html(r: dict) -> str:
    imgs = "".join(f"<h2>{html.escape(t)}</h2><img alt='{html.escape(t)}' src='data:image/png;base64,{b}'>"
                   for t, b in plots(r)) or "<p>No plots: matplotlib is not installed (pip install matplotlib).</p>"
    setup = "".join(f"<li>{html.escape(line).replace('**Sandbox warning**', '<b>Sandbox warning</b>')}</li>"
                    for line in setup_lines(r))
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>Assistant evaluation</title>
<style>body{{font-family:sans-serif;max-width:1150px;margin:2em auto;color:#222}}
table{{border-collapse:collapse;font-size:13px;margin:1em 0}}td,th{{border:1px solid #ccc;padding:3px 7px;text-align:right}}
td:first-child,th:first-child{{text-align:left}}img{{max-width:100%}}td,th{{overflow-wrap:anywhere}}</style></head><body>
<h1>Assistant evaluation with simulated users: {html.escape(_ci(r['scores']['score']))}</h1>
<ul class="headline">{"".join(f"<li><b>{html.escape(h)}</b></li>" for h in headline(r))}</ul>
{html_table(metric_rows(r))}
<ul>{setup}</ul>
{imgs}
<h2>Per task</h2>
{html_table(task_rows(r))}
</body></html>
"""


def write_outputs(out: Path, report: dict) -> list[Path]:
    """eval.json, report.md and report.html, each written whole (temporary file, then renamed)."""
    texts = {"eval.json": json.dumps(report, indent=1, default=float) + "\n", "report.md": render_md(report),
             "report.html": render_html(report)}
    for name, text in texts.items():
        write_text_atomic(out / name, text)
    return [out / name for name in FILES]

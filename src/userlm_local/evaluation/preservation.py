"""Does a converted UserLM still behave like its reference?  The library behind ``userlm-local bench``.

For the reference (REF) and every candidate (CAND), on the same held-out conversations and the
same seeded intents:
* **one scoring pass** per conversation and condition (``evaluation.score_conversation``): the
  perplexity of the user turns with and without intent, P(end) at every termination probe,
  and, with intent, the full next-token distribution at every user-turn target position. REF's
  distributions go to a scratch directory; each CAND's are compared with them position by
  position (``token_stats``): KL(REF || CAND), same top-1, and how much of REF's top-p nucleus
  CAND keeps;
* **one seeded campaign** per model against a replayed assistant (the real assistant turns of the
  conversation each intent came from, so the assistant is identical for every model), with
  the paper's sampling and guardrails except its ban on ``<|endconversation|>``: when and how
  often the user ends is behaviour the bench measures.

``compare`` turns two runs into the report: token-level statistics against stated gates, and
every behaviour metric with a paired bootstrap 95% interval of CAND - REF and a verdict.
"""

from __future__ import annotations

import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..assistants.scripted import ReplayAssistant
from ..data.flip import flip
from ..data.sharegpt import load_dialogues
from ..runtime.backends import load_tokenizer
from ..runtime.backends.llama_cpp import FILE_TYPES
from ..simulation.campaign import Campaign, CampaignConfig
from ..simulation.guardrails import Guardrails
from ..simulation.intent_sets import Intent
from ..simulation.transcripts import MemorySink
from ..util.errors import UserError
from .metrics.behaviour import BEHAVIOUR, behaviour_items, ref_summary
from .metrics.bootstrap import paired_diffs
from .metrics.equivalence import (ALPHA, DEGRADED, INCONCLUSIVE, PRESERVED, RULE, Bootstrap, combine, decide,
                                  jackknife)
from .bench_models import ENGINE, describe_model, label_of, load_checked
from .bench_robustness import Probes, first_turn_naturalness, probe_model
from .scoring import ConversationScore, score_conversation
from .token_stats import llama_cpp_stats, token_stats
from .verdicts import LOOK_FURTHER, coupling, end_flip_rate, gate, headline, look_line, more_data, one_sample

TOKEN_GATES = {"kld_mean_max": 0.05, "same_top1_min": 0.90}
ANCHORS = ("llama.cpp's Llama-3-8B KL-divergence scoreboard (wikitext): Q8_0 mean KLD 0.0014 with 97.7% "
           "same top-1; Q4_K_M 0.031 with 91.9%")
GATES_TEXT = (f"token level, on user-turn positions: mean KL(REF||CAND) <= {TOKEN_GATES['kld_mean_max']} and "
              f"same top-1 >= {TOKEN_GATES['same_top1_min']:.0%} (looser than the Q4_K_M anchor, which is an 8B "
              "on generic text; small models lose more to quantization)")
VERDICT_TEXT = RULE[0].upper() + RULE[1:] + ("; a candidate is preserved when its token gates pass and every metric "
                                             "is preserved, degraded when any is degraded, inconclusive otherwise")


@dataclass
class BenchConfig:
    limit: int = 20
    max_len: int = 1024
    max_turns: int = 4
    trials: int = 2  # campaign conversations per intent (same intent, its own RNG stream)
    max_new_tokens: int = 64
    seed: int = 0
    bootstrap: int = 10000
    data: str = "heldout"
    data_file: str | None = None
    concurrency: int = 1  # campaign conversations in flight on one engine (batched decode steps)
    until_decided: bool = False  # look at 32, 64, 128, ... conversations, stop once every metric is decided
    max_intents: int = 256


CAMPAIGN_GUARDRAILS = "paper, <|endconversation|> allowed"  # the ban would make every end metric 0


# which part of a model's run feeds which metrics (by their unit) and gates
HALVES = {"scoring": ("conversation",), "campaign": ("intent",), "probes": ("role probe", "intent probe")}


def halves_needed(result: dict | None) -> set[str]:
    """The parts of a run a candidate still needs at the next look: those with an undecided gate or
    metric.  A decided verdict is frozen, so the work behind it is not done again (an informational
    metric is reported over the looks that ran its part)."""
    if result is None:
        return set(HALVES)
    units = {BEHAVIOUR[k].unit for k, m in result["metrics"].items() if m["verdict"] == INCONCLUSIVE}
    need = {h for h, us in HALVES.items() if units & set(us)}
    return need | ({"scoring"} if any(g["verdict"] == INCONCLUSIVE for g in result["gates"].values()) or
                   not result["gates"] else set())


@dataclass
class ModelRun:
    """What one model did on the bench's conversations and intents."""

    path: str
    role: str  # "ref" | "cand"
    describe: dict
    scores: list[ConversationScore] = field(default_factory=list)
    records: list[dict] = field(default_factory=list)
    p_human: list[float | None] = field(default_factory=list)  # each record's first turn (None: no first turn)
    role_ok: list[bool] = field(default_factory=list)  # each role probe: the user did not answer its own question
    intent_ok: list[tuple[bool, bool]] = field(default_factory=list)  # each intent probe: (returned, went on)
    token: dict | None = None  # vs REF (candidates only)
    seconds: dict = field(default_factory=dict)

    def sizes(self) -> dict[str, int]:
        """Items per unit of ``behaviour_items``: scored conversations, intents, probes."""
        return {"conversation": len(self.scores), "intent": len(dict.fromkeys(r["intent_id"] for r in self.records)),
                "role probe": len(self.role_ok), "intent probe": len(self.intent_ok)}

    def like(self, other: ModelRun) -> ModelRun:
        """This run cut to ``other``'s length in each part: REF paired with a candidate that stopped
        running a part at an earlier look (every part grows by whole looks, in the same order)."""
        n = len(other.records)
        return ModelRun(self.path, self.role, self.describe, self.scores[:len(other.scores)], self.records[:n],
                        self.p_human[:n], self.role_ok[:len(other.role_ok)], self.intent_ok[:len(other.intent_ok)],
                        self.token, self.seconds)


def score_model(backend, dialogues, cfg: BenchConfig, run: ModelRun, scratch: Path, *, progress: bool) -> None:
    """The scoring pass; REF's distributions are written to ``scratch``, a candidate's compared."""
    from tqdm import tqdm

    old = run.token or {}
    per_conv = old.get("per_conversation") or {"kld_sum": [], "top1_hits": [], "nucleus_sum": [], "positions": []}
    klds, dps, confs = [old.get("kld", np.zeros(0))], [old.get("dp", np.zeros(0))], [old.get("ref_top1_p", np.zeros(0))]
    start = len(run.scores)  # a later look appends: the scratch files are numbered across looks
    for i, d in enumerate(tqdm(dialogues, desc=f"scoring {Path(run.path).name}", unit="conv",
                               file=sys.stderr, disable=not progress), start):
        c = score_conversation(backend, d, max_len=min(cfg.max_len, backend.context_length), keep_rows=True)
        rows, tokens, c.rows, c.row_tokens = c.rows, c.row_tokens, None, None
        run.scores.append(c)
        file = scratch / f"{i}.npy"
        if run.role == "ref":
            np.save(file, rows if rows is not None else np.zeros((0, 0), np.float32))
            continue
        ref_rows = np.load(file)
        st = token_stats(ref_rows, rows, tokens) if ref_rows.size else {
            "kld": np.zeros(0), "top1": np.zeros(0, bool), "nucleus_kept": np.zeros(0), "dp": np.zeros(0),
            "ref_top1_p": np.zeros(0)}
        per_conv["kld_sum"].append(float(st["kld"].sum()))
        per_conv["top1_hits"].append(int(st["top1"].sum()))
        per_conv["nucleus_sum"].append(float(st["nucleus_kept"].sum()))
        per_conv["positions"].append(int(len(st["kld"])))
        klds.append(st["kld"])
        dps.append(st.get("dp", np.zeros(0)))
        confs.append(st["ref_top1_p"])
    if run.role == "cand":
        cat = lambda xs: np.concatenate(xs) if xs else np.zeros(0)  # noqa: E731
        run.token = {"per_conversation": per_conv, "kld": cat(klds), "dp": cat(dps), "ref_top1_p": cat(confs)}


def campaign_model(backend, dialogues, cfg: BenchConfig, run: ModelRun, *, progress: bool) -> None:
    """The seeded campaign: every intent once, against its conversation's replayed assistant turns."""
    from tqdm import tqdm

    intents = [Intent(d.id, d.intent) for d in dialogues]
    replies = {(d.id, t): [m["content"] for m in d.messages if m["role"] == "assistant"] or ["OK."]
               for d in dialogues for t in range(cfg.trials)}
    config = CampaignConfig(trials=cfg.trials, max_turns=cfg.max_turns, seed=cfg.seed,
                            guardrails=Guardrails.paper(end_token_ban=False), guardrails_name=CAMPAIGN_GUARDRAILS,
                            max_new_tokens=cfg.max_new_tokens, concurrency=cfg.concurrency)
    campaign = Campaign(backend, ReplayAssistant(replies, "replayed held-out assistant turns"), config,
                        {"path": run.path})
    bar = tqdm(total=len(replies), desc=f"campaign {Path(run.path).name}", unit="conv", file=sys.stderr,
               disable=not progress)
    sink = MemorySink()
    campaign.run(intents, sink, progress=lambda s: (bar.update(s.done - bar.n)))
    records = sink.records
    bar.close()
    by_key = {(r["intent_id"], r["trial"]): r for r in records}
    new = [by_key[k] for k in replies if k in by_key]  # replies is in (intent, trial) order
    if len(new) != len(replies):
        raise UserError(f"{run.path}: the campaign finished {len(new)} of {len(replies)} conversations")
    run.records += new
    run.p_human += first_turn_naturalness(new)


def lookpoints(cfg: BenchConfig, available: int) -> list[int]:
    """How many conversations each look sees: all of them at once, or with ``until_decided`` 32, 64,
    128, ... up to ``max_intents`` (and what the data holds)."""
    if not cfg.until_decided:
        return [available]
    top = min(cfg.max_intents, available)
    out = [n for n in (32, 64, 128, 256, 512, 1024) if n < top]
    return out + [top]


def pick_dialogues(fmt, cfg: BenchConfig, pool) -> list:
    """The first ``limit`` held-out conversations (of ``pool``) with an intent that fit whole in
    ``max_len`` tokens, so each costs one forward pass per condition (a longer one needs a pass per
    truncated sample: ten times the cost for the same number of user turns)."""

    out = []
    for d in pool:
        samples = flip(fmt, d, max_len=None) if d.intent.strip() else []
        if samples and max(len(s.input_ids) for s in samples) <= cfg.max_len:
            out.append(d)
            if len(out) == cfg.limit:
                break
    if not out:
        raise UserError(f"no held-out conversation with an intent fits in {cfg.max_len} tokens in {cfg.data!r}")
    return out


def run_model(path: Path, role: str, dialogues, probes: Probes, cfg: BenchConfig, scratch: Path, *,
              ref_backend=None, progress: bool = True, run: ModelRun | None = None,
              halves: set[str] = frozenset(HALVES)) -> ModelRun:
    """One model on ``dialogues``: scored, its campaign, its probes (those of ``halves``); appended to
    ``run`` (a later look)."""
    run = run or ModelRun(str(path), role, describe_model(path))
    t0 = time.perf_counter()
    backend = load_checked(path, ref_backend, sequences=cfg.concurrency)
    try:
        if "scoring" in halves:
            score_model(backend, dialogues, cfg, run, scratch, progress=progress)
        t1 = time.perf_counter()
        if "campaign" in halves:
            campaign_model(backend, dialogues, cfg, run, progress=progress)
        t2 = time.perf_counter()
        if "probes" in halves:
            probe_model(backend, probes, run, seed=cfg.seed, max_new_tokens=cfg.max_new_tokens, progress=progress,
                        concurrency=cfg.concurrency)
        took = {"scoring": t1 - t0, "campaign": t2 - t1, "probes": time.perf_counter() - t2}
        run.seconds = {k: round(run.seconds.get(k, 0.0) + v, 2) for k, v in took.items()}
    finally:
        backend.close()
    return run


def compare(ref: ModelRun, cand: ModelRun, *, n_boot: int, seed: int = 0, tokenize=None, alpha: float = ALPHA,
            frozen: dict | None = None, advice: str = LOOK_FURTHER) -> dict:
    """CAND against REF: token-level statistics and gates, every metric with its interval and verdict.
    ``alpha``: each one-sided test's level; ``frozen``: an earlier look's report of this candidate,
    whose decided gates and metrics keep their verdicts (a sequential bench decides each once);
    ``advice``: how an undecided candidate's headline ends (``verdicts.more_data``)."""
    tok = cand.token or {"per_conversation": {}, "kld": np.zeros(0)}
    kld, pc = tok["kld"], tok["per_conversation"]
    n_pos = int(sum(pc.get("positions", [])))
    token = {
        "positions": n_pos,
        "kld_mean": float(kld.mean()) if n_pos else None,
        "kld_median": float(np.median(kld)) if n_pos else None,
        "kld_p99": float(np.percentile(kld, 99)) if n_pos else None,
        "kld_max": float(kld.max()) if n_pos else None,
        "same_top1": sum(pc["top1_hits"]) / n_pos if n_pos else None,
        "nucleus_kept": sum(pc["nucleus_sum"]) / n_pos if n_pos else None,
        **(llama_cpp_stats(kld, tok.get("dp", np.zeros(0)), tok.get("ref_top1_p", np.zeros(0))) if n_pos else {}),
    }
    rng = np.random.default_rng(seed)
    gates = {}
    if n_pos:
        per_conv = np.array(list(zip(pc["kld_sum"], pc["top1_hits"], pc["positions"])), dtype=np.float64)
        ratio = (lambda col: lambda d, idx: d[idx, col].sum() / d[idx, 2].sum() if d[idx, 2].sum() else np.nan)
        for name, col, bound, at_most in (("kld_mean", 0, TOKEN_GATES["kld_mean_max"], True),
                                          ("same_top1", 1, TOKEN_GATES["same_top1_min"], False)):
            v, iv = gate(one_sample(ratio(col), per_conv, n_boot, rng), bound, at_most=at_most, alpha=alpha)
            gates[name] = {"verdict": v, "verdict_interval": iv, "bound": bound}
            if frozen and frozen["gates"].get(name, {}).get("verdict") in (PRESERVED, DEGRADED):
                gates[name] = frozen["gates"][name]
    gate_verdicts = [g["verdict"] for g in gates.values()] or [INCONCLUSIVE]
    metrics, boots, tols, sizes = {}, {}, {}, {}
    full = ref.sizes()
    ref = ref.like(cand)  # REF on the same conversations, intents and probes as CAND
    ref_items, cand_items = behaviour_items(ref), behaviour_items(cand)
    for name, spec in BEHAVIOUR.items():
        r, c = ref_items[spec.unit][name], cand_items[spec.unit][name]
        value_ref, value_cand, diffs = paired_diffs(spec.fn, r, c, n_boot, rng)
        b = Bootstrap.of(value_cand - value_ref, diffs, jackknife(spec.fn, r, c))
        lo, hi = b.interval(0.95)
        tol = None if spec.tolerance is None else spec.tolerance * (abs(value_ref) if spec.relative else 1.0)
        metrics[name] = {"ref": value_ref, "cand": value_cand, "diff": value_cand - value_ref,
                         "ci95": [lo, hi], "verdict_interval": list(b.interval(1 - 2 * alpha)), "tolerance": tol,
                         "paired_by": spec.unit, "verdict": "info", "n_needed": None, "what": spec.what,
                         "items": len(r), **({"ref_items": full[spec.unit]} if full[spec.unit] != len(r) else {})}
        if tol is not None:
            boots[name], tols[name], sizes[name] = b, tol, len(r)
    for name, d in decide(boots, tols, sizes, alpha).items():
        metrics[name].update(d)
        before = (frozen or {}).get("metrics", {}).get(name)
        if before and before["verdict"] in (PRESERVED, DEGRADED):
            metrics[name].update({k: before[k] for k in ("verdict", "verdict_interval", "p_degraded", "n_needed")},
                                 decided_at=before.get("decided_at", before.get("items")))
    decided = [m["verdict"] for m in metrics.values() if m["verdict"] != "info"]
    verdict = combine(gate_verdicts + decided)
    return {
        "label": label_of(cand.describe), "model": cand.describe, "token": token, "gates": gates,
        "token_gates": combine(gate_verdicts), "metrics": metrics,
        "degraded": [k for k, m in metrics.items() if m["verdict"] == DEGRADED],
        "inconclusive": [k for k, m in metrics.items() if m["verdict"] == INCONCLUSIVE],
        "verdict": verdict, "headline": headline(label_of(cand.describe), verdict, gates, metrics, advice),
        "coupling": {**(coupling(ref, cand, tokenize) if tokenize else {}), "end_flip_rate": end_flip_rate(ref, cand)},
        "kld_per_conversation": pc, "seconds": cand.seconds,
    }


def run_bench(ref_path: Path, cand_paths: list[Path], cfg: BenchConfig, *, progress: bool = True,
              log=None) -> tuple[dict, dict[str, np.ndarray]]:
    """Everything ``bench`` reports, and each candidate's KLD at every position (no files written here)."""
    say = log or (lambda m: print(m, file=sys.stderr, flush=True))
    say(f"checking {1 + len(cand_paths)} models")
    ref_backend = load_checked(ref_path)
    described = ref_backend.describe()
    if described["format"] == "gguf":
        ft = str(described["quant"])
        if FILE_TYPES.get(ft, ft) not in ("F32", "F16", "BF16"):
            print(f"warning: REF {ref_path} is {FILE_TYPES.get(ft, 'type ' + ft)}, not the full model (F32/F16/BF16, "
                  "or a Hugging Face directory): the candidates are measured against a quantized reference",
                  file=sys.stderr)
    if any(Path(p).resolve() == Path(ref_path).resolve() for p in cand_paths):
        print("warning: a CAND is the REF file itself", file=sys.stderr)
    # the coupling statistics tokenize after every engine is closed: a tokenizer of its own (a GGUF
    # backend's vocab is freed with its model; using it segfaulted when REF was a GGUF)
    tokenize = load_tokenizer(ref_path).encode
    try:
        pool = load_dialogues(cfg.data, limit=None, path=cfg.data_file)
        dialogues = pick_dialogues(ref_backend.fmt, cfg, pool)
        for p in cand_paths:
            b = load_checked(p, ref_backend)
            b.close()
    finally:
        ref_backend.close()
    looks = lookpoints(cfg, len(dialogues))
    advice = more_data(len(dialogues), cfg.limit, until_decided=cfg.until_decided, max_len=cfg.max_len)
    probes = Probes.build(looks[-1], pool)
    alpha = ALPHA / len(looks)  # the error spent over every look (Bonferroni): each decision stays at 5%
    results, klds, runs = [None] * len(cand_paths), {}, {}
    with tempfile.TemporaryDirectory(prefix="userlm-bench-ref-") as tmp:
        done = 0
        for look, upto in enumerate(looks, 1):
            part, probes.upto = dialogues[done:upto], upto
            if len(looks) > 1:
                say(f"look {look} of {len(looks)}: {upto} conversations and intents")
            need = {k: halves_needed(r) for k, r in enumerate(results) if r is None or r["verdict"] == INCONCLUSIVE}
            union = set().union(*need.values())
            if union != set(HALVES):
                say(f"skipping {', '.join(h for h in HALVES if h not in union)}: decided for every candidate still running")
            say(f"REF {ref_path}: {len(part)} conversations")
            ref = runs["ref"] = run_model(ref_path, "ref", part, probes, cfg, Path(tmp), progress=progress,
                                          run=runs.get("ref"), halves=union)
            for k, p in enumerate(cand_paths):
                if k not in need:
                    continue  # decided at an earlier look
                say(f"CAND {p}")
                cand = runs[k] = run_model(p, "cand", part, probes, cfg, Path(tmp), progress=progress, run=runs.get(k),
                                           halves=need[k])
                results[k] = compare(ref, cand, n_boot=cfg.bootstrap, seed=cfg.seed, tokenize=tokenize, alpha=alpha,
                                     frozen=results[k], advice=advice)
                results[k]["look"] = {"look": look, "of": len(looks), "conversations": upto}
                say(look_line(results[k], upto))
                klds[results[k]["label"]] = cand.token["kld"]
            done = upto
            if all(r["verdict"] != INCONCLUSIVE for r in results):
                break
    dialogues = dialogues[:done]
    report = {
        "ref": {"label": label_of(ref.describe), "model": ref.describe, "seconds": ref.seconds,
                "items": ref.sizes(), **ref_summary(ref)},
        "candidates": results,
        "config": {**cfg.__dict__, "guardrails": CAMPAIGN_GUARDRAILS, "engine": dict(ENGINE),
                   "data_file": Path(cfg.data_file).name if cfg.data_file else None},
        "n_conversations": len(dialogues),
        "conversation_ids": [d.id for d in dialogues],
        "gates": {**TOKEN_GATES, "text": GATES_TEXT, "anchors": ANCHORS},
        "verdict_rule": VERDICT_TEXT + (f"; sequential: looks at {', '.join(map(str, looks))} conversations, "
                                        f"each test at {alpha:.4f} (5% over the looks)" if len(looks) > 1 else ""),
        "verdict": combine([r["verdict"] for r in results]),
        "advice": advice,
    }
    return report, klds

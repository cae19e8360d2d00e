"""The default UserLM, version against version: v1 (the adapter as first shipped) and the bundled
one, on the same held-out conversations and intents, with the bench's paired bootstrap.

Each version is built from its adapter bundle exactly as a user's first run builds it (Q8_0
GGUF, each in its own cache folder), then scored on the first ``--conversations`` held-out
conversations whose end sample fits ``--max-len`` tokens (user-turn perplexity with and without
intent, P(end) at every turn boundary -> termination ROC AUC and best F1) and asked for one
first turn on each of ``--first-turns`` held-out intents (paper sampling, seeded).  Every metric
is printed with the 95% paired-bootstrap interval of NEW - OLD (items: conversations, intents).

Scores are cached per build (``--work``/<key>.json), so a rerun after training only scores the
new build:

    python bench/default_userlm_versions.py [--old-commit 16be7dd] [--out bench/results/default_userlm_v2.json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tarfile
import io
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, ROOT, machine_facts, save_results, table  # noqa: E402

from userlm_local.defaults.model import BUNDLE, build_key, default_user_model  # noqa: E402
from userlm_local.evaluation.metrics.behaviour import BEHAVIOUR, FirstTurns, _diversity  # noqa: E402
from userlm_local.evaluation.metrics.bootstrap import interval, paired_diffs  # noqa: E402

BUNDLE_PATH = "src/userlm_local/bundled/smollm2-userlm"
CONV_METRICS = ("ppl_with_intent", "ppl_without_intent", "termination_auc", "termination_best_f1",
                "p_end_at_ends", "p_end_elsewhere")


def old_bundle(commit: str, dest: Path) -> Path:
    """The adapter bundle as it was at ``commit`` (read from git), under ``dest/smollm2-userlm``."""
    out = dest / "smollm2-userlm"
    if not out.is_dir():
        data = subprocess.run(["git", "-C", str(ROOT), "archive", commit, BUNDLE_PATH],
                              check=True, capture_output=True).stdout
        with tarfile.open(fileobj=io.BytesIO(data)) as tar:
            tar.extractall(dest / "git")
        (dest / "git" / BUNDLE_PATH).rename(out)
    return out


def build(bundle: Path, work: Path) -> Path:
    """The version's GGUF, built as a first run builds it, in a cache of its own (a shared cache
    keeps one version only)."""
    os.environ["XDG_CACHE_HOME"] = str(work / "cache" / build_key(bundle))
    try:
        return default_user_model(bundle=bundle)
    finally:
        del os.environ["XDG_CACHE_HOME"]


def short_held_out(bundle: Path, n: int, max_len: int):
    from userlm_local.data import flip, load_dialogues
    from userlm_local.text.prompt_format import ChatFormat
    from userlm_local.text.tokenizer import Tokenizer

    fmt = ChatFormat(Tokenizer.from_dir(bundle))
    out = []
    for d in load_dialogues("heldout"):
        samples = flip(fmt, d, max_len=None)
        if samples and samples[-1].kind == "end" and len(samples[-1].input_ids) <= max_len:
            out.append(d)
        if len(out) == n:
            break
    return out


def score_version(path: Path, convs, firsts, args) -> dict:
    """Per-item results of one build: (sum log-prob, tokens) per condition and (P(end), is_end)
    probes per conversation; the first turn per intent."""
    from userlm_local.runtime.backends import load_backend
    from userlm_local.evaluation.scoring import score_all
    from userlm_local.runtime.sampling import PRESETS
    from userlm_local.simulation.user import UserSimulator

    backend = load_backend(path, n_ctx=4096, threads=args.threads)
    t0 = time.perf_counter()
    scores = score_all(backend, convs, max_len=args.max_len, progress=not args.quiet, desc=path.parent.name[:24])
    scored = {c.id: {"with_intent": c.totals("with_intent"), "without_intent": c.totals("without_intent"),
                     "probes": c.termination()} for c in scores}
    t1 = time.perf_counter()
    sim = UserSimulator(backend, sampling=PRESETS["paper"], max_new_tokens=64)
    turns = {}
    for d in firsts:
        user = sim.start(d.intent, seed=args.seed, key=(d.id,))
        turn = user.next_turn()
        user.session.close()
        turns[d.id] = "" if turn.ended else turn.text
    backend.close()
    return {"path": str(path), "conversations": scored, "first_turns": turns,
            "score_seconds": round(t1 - t0, 1), "first_turn_seconds": round(time.perf_counter() - t1, 1)}


def cached_score(path: Path, convs, firsts, args) -> dict:
    cache = args.work / f"{path.parent.name}.scores.json"
    want = {"convs": [d.id for d in convs], "firsts": [d.id for d in firsts], "max_len": args.max_len,
            "seed": args.seed}
    if cache.is_file():
        got = json.loads(cache.read_text())
        if got.get("setup") == want:
            return got
    res = {"setup": want, **score_version(path, convs, firsts, args)}
    cache.write_text(json.dumps(res))
    return res


def conv_items(res: dict, ids: list[str], metric: str):
    convs = res["conversations"]
    if metric.startswith("ppl_"):
        cond = metric[len("ppl_"):]
        return np.array([convs[i][cond] for i in ids], dtype=np.float64)
    return [tuple(convs[i]["probes"]) for i in ids]


def compare(old: dict, new: dict, human: list[str], args) -> dict:
    ids = [i for i in old["conversations"] if i in new["conversations"]]
    rng = np.random.default_rng(args.seed)
    rows = {}
    for m in CONV_METRICS:
        a, b = conv_items(old, ids, m), conv_items(new, ids, m)
        v_old, v_new, d = paired_diffs(BEHAVIOUR[m].fn, a, b, args.bootstrap, rng)
        rows[m] = {"old": v_old, "new": v_new, "ci95": interval(d, 0.95, args.bootstrap)}
    fids = list(old["first_turns"])
    groups = [[k] for k in range(len(fids))]
    ft = {name: FirstTurns([res["first_turns"][i] for i in fids], groups) for name, res in (("old", old), ("new", new))}
    v_old, v_new, d = paired_diffs(_diversity, ft["old"], ft["new"], args.bootstrap, rng)
    rows["first_turn_diversity"] = {"old": v_old, "new": v_new, "ci95": interval(d, 0.95, args.bootstrap),
                                    "human": _diversity(FirstTurns(human, groups), range(len(fids)))}
    n_end = sum(sum(new["conversations"][i]["probes"][1]) for i in ids)
    n_probe = sum(len(new["conversations"][i]["probes"][1]) for i in ids)
    return {"n_conversations": len(ids), "n_probes": n_probe, "n_true_ends": n_end,
            "n_first_turns": len(fids), "metrics": rows}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--old-commit", default="16be7dd", help="a commit whose bundle is the old version (default: v1)")
    ap.add_argument("--conversations", type=int, default=100)
    ap.add_argument("--first-turns", type=int, default=100)
    ap.add_argument("--max-len", type=int, default=1024)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--bootstrap", type=int, default=2000)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--work", type=Path, default=Path("/tmp/userlm-versions"))
    ap.add_argument("--out", type=Path, default=RESULTS / "default_userlm_versions.json")
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)

    bundles = {"old": old_bundle(args.old_commit, args.work / args.old_commit), "new": BUNDLE}
    builds = {k: build(b, args.work) for k, b in bundles.items()}
    convs = short_held_out(BUNDLE, args.conversations, args.max_len)
    from userlm_local.data import load_dialogues

    firsts = load_dialogues("heldout", limit=args.first_turns)
    res = {k: cached_score(p, convs, firsts, args) for k, p in builds.items()}
    out = {"what": __doc__.split("\n\n")[0], "old": {"commit": args.old_commit, "build": str(builds["old"]),
                                                      "key": build_key(bundles["old"])},
           "new": {"build": str(builds["new"]), "key": build_key(bundles["new"])},
           "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
           "seconds": {k: {"score": r["score_seconds"], "first_turns": r["first_turn_seconds"]} for k, r in res.items()},
           **compare(res["old"], res["new"], [d.messages[0]["content"] for d in firsts], args),
           "machine": machine_facts()}
    rows = [[m, f"{r['old']:.3f}", f"{r['new']:.3f}", f"[{r['ci95'][0]:+.3f}, {r['ci95'][1]:+.3f}]",
             f"{r['human']:.1f}" if "human" in r else ""] for m, r in out["metrics"].items()]
    print(table(["metric", "old", "new", "new - old (95% paired)", "human"], rows))
    print(f"{out['n_conversations']} conversations ({out['n_probes']} P(end) probes, {out['n_true_ends']} true ends), "
          f"{out['n_first_turns']} first turns")
    save_results(args.out.stem, out, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())

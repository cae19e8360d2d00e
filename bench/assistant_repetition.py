"""Does the default assistant loop?  SmolLM2-135M-Instruct under several sampling settings, side
by side in one run, against the same simulated user (the default UserLM, paper sampling, seeded)
on the 5 intents of the default job and the next 50 held-out intents.

For each setting: the share of assistant replies that repeat an earlier reply of the same
conversation, the share that loop inside themselves (``userlm_local.evaluation.metrics.repetition`` defines
both), conversations whose every reply after the first is a repeat, and the user's turns.

    python bench/assistant_repetition.py [--settings greedy,card,card+rp1.1] [--out ...]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, machine_facts, save_results, table  # noqa: E402

from userlm_local.defaults import default_assistant_model, resolve_user_model  # noqa: E402
from userlm_local.evaluation.metrics.repetition import assistant_repetition  # noqa: E402

SETTINGS = {
    "greedy": {"temperature": 0.0, "top_p": 1.0, "repeat_penalty": 1.0},       # before: the old default
    "card": {"temperature": 0.2, "top_p": 0.9, "repeat_penalty": 1.0},         # SmolLM2's card
    "card+rp1.1": {"temperature": 0.2, "top_p": 0.9, "repeat_penalty": 1.1},
    "card+rp1.2": {"temperature": 0.2, "top_p": 0.9, "repeat_penalty": 1.2},
    "greedy+rp1.1": {"temperature": 0.0, "top_p": 1.0, "repeat_penalty": 1.1},
}


def campaign(backend, assistant, intents, args) -> list[dict]:
    from userlm_local.simulation.campaign import Campaign, CampaignConfig

    with tempfile.TemporaryDirectory() as d:
        out = Path(d) / "t.jsonl"
        Campaign(backend, assistant, CampaignConfig(max_turns=args.max_turns, seed=args.seed),
                 {"path": str(backend.path)}).run(intents, out)
        return [json.loads(line) for line in out.read_text().splitlines()]


def replies(records: list[dict]) -> list[list[str]]:
    return [[m["content"] for m in r["messages"] if m["role"] == "assistant"] for r in records]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--settings", default="greedy,card,card+rp1.1,card+rp1.2")
    ap.add_argument("--user", default=None, help="the simulated user (default: the default UserLM)")
    ap.add_argument("--more", type=int, default=50, help="held-out intents after the default 5")
    ap.add_argument("--max-turns", type=int, default=6)
    ap.add_argument("--max-tokens", type=int, default=256, help="tokens per assistant reply (simulate's default)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", type=Path, default=RESULTS / "assistant_repetition.json")
    args = ap.parse_args()

    from userlm_local.assistants.local import LocalAssistant
    from userlm_local.runtime.backends import load_backend
    from userlm_local.data import load_dialogues
    from userlm_local.simulation.intent_sets import load_intents

    intents = load_intents("heldout", 5 + args.more)
    sets = {"default 5": intents[:5], f"next {args.more}": intents[5:]}
    user_path = resolve_user_model(args.user)
    backend = load_backend(user_path, n_ctx=4096, threads=args.threads)
    res: dict = {"user": str(user_path), "assistant": str(default_assistant_model()), "settings": {},
                 "max_turns": args.max_turns, "max_tokens": args.max_tokens, "seed": args.seed}
    human = [[m["content"] for m in d.messages if m["role"] == "assistant"]
             for d in load_dialogues("heldout", limit=500)]
    res["human_sharegpt_500"] = assistant_repetition(human)
    rows = []
    for name in args.settings.split(","):
        opts = SETTINGS[name]
        asst = LocalAssistant.load(str(default_assistant_model()), n_ctx=8192, threads=args.threads,
                                   max_tokens=args.max_tokens, seed=args.seed, **opts)
        t0 = time.perf_counter()
        out = {"sampling": opts}
        for label, its in sets.items():
            recs = campaign(backend, asst, its, args)
            m = assistant_repetition(replies(recs))
            m["user_turns"] = sum(sum(1 for x in r["messages"] if x["role"] == "user") for r in recs) / len(recs)
            m["ended_by_user"] = sum(r["ended_by"] == "user" for r in recs)
            m["examples"] = [replies(recs)[i][:3] for i in range(min(2, len(recs)))]
            out[label] = m
            rows.append([name, label, m["replies"], f"{m['share_repeat_earlier']:.1%}", f"{m['share_loop_inside']:.1%}",
                         f"{m['conversations_all_repeats']}/{m['conversations_with_2_plus_replies']}",
                         f"{m['user_turns']:.2f}"])
        out["seconds"] = round(time.perf_counter() - t0, 1)
        asst.close()
        res["settings"][name] = out
        print(rows[-2], rows[-1], flush=True)
    h = res["human_sharegpt_500"]
    rows.append(["ShareGPT (human)", "500 held-out", h["replies"], f"{h['share_repeat_earlier']:.1%}",
                 f"{h['share_loop_inside']:.1%}", f"{h['conversations_all_repeats']}/{h['conversations_with_2_plus_replies']}", ""])
    print(table(["setting", "intents", "replies", "repeat earlier", "loop inside", "all repeats", "user turns"], rows))
    res["machine"] = machine_facts()
    save_results(args.out.stem, res, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())

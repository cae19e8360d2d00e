"""Does the default UserLM behave like a user?  Three simulators side by side, one run.

(a) ``tiny``: the bundled 6.8 M UserLM trained from scratch (torch);
(b) ``prompted``: SmolLM2-135M-Instruct *prompted* to play the user (the paper's baseline prompt,
    ``userlm_local.simulation.prompted``), GGUF on llama.cpp;
(c) ``default``: the SmolLM2-135M UserLM (base + bundled adapter, built GGUF) on llama.cpp.

On the same held-out conversations and intents:
* ``--conversations N`` held-out conversations: user-turn perplexity with / without intent (for
  (b): its perplexity of the real user turns under its own prompt), termination AUC / best F1;
* ``--first-turns M`` held-out intents: first-turn diversity vs the human first turns;
* ``--intents K`` held-out intents: a campaign against SmolLM2-135M-Instruct as the assistant
  (greedy, ``--assistant-tokens`` per reply, ``--max-turns``): mean user turns, share ended by
  the user, words per turn, first turns that answer instead of ask, intent decomposition.

    python bench/userlm_behaviour.py [--only a,b,c] [--out bench/results/userlm_behaviour.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, machine_facts, save_results, table  # noqa: E402

from userlm_local.defaults import default_assistant_model, default_user_model, tiny_user_model  # noqa: E402
from userlm_local.evaluation.scoring import campaign_behaviour, first_turn_report, score_dialogues  # noqa: E402


def held_out(n: int):
    from userlm_local.data import load_dialogues

    return load_dialogues("heldout", limit=n)


def short_held_out(n: int, max_len: int):
    """The first ``n`` held-out conversations whose flipped end sample fits in ``max_len`` tokens
    of the default UserLM's tokenizer (one scoring pass each: a CPU budget, said in the results)."""
    from userlm_local.text.prompt_format import ChatFormat
    from userlm_local.data import flip, load_dialogues
    from userlm_local.defaults.model import BUNDLE
    from userlm_local.text.tokenizer import Tokenizer

    fmt = ChatFormat(Tokenizer.from_dir(BUNDLE))
    out = []
    for d in load_dialogues("heldout"):
        samples = flip(fmt, d, max_len=None)
        if samples and len(samples[-1].input_ids) <= max_len:
            out.append(d)
        if len(out) == n:
            break
    return out


def assistant_under_test(args, seed: int = 0):
    from userlm_local.assistants.local import LocalAssistant

    return LocalAssistant.load(str(default_assistant_model()), n_ctx=4096, threads=args.threads,
                               max_tokens=args.assistant_tokens, seed=seed)


def userlm_campaign(backend, assistant, intents, args) -> list[dict]:
    from userlm_local.simulation.campaign import Campaign, CampaignConfig
    from userlm_local.simulation.transcripts import MemorySink

    sink = MemorySink()
    Campaign(backend, assistant, CampaignConfig(max_turns=args.max_turns, seed=args.seed),
             {"path": str(backend.path)}).run(intents, sink)
    return sink.records


def prompted_campaign(user, assistant, intents, args) -> list[dict]:
    from userlm_local.simulation.converse import converse

    records = []
    for it in intents:
        conv = user.start(it.text, key=("user", it.id))
        ended_by, _ = converse(conv, lambda turn_no: assistant.reply(conv.history, key=("asst", it.id)),
                               max_turns=args.max_turns)
        conv.forget()
        assistant.forget(("asst", it.id))
        records.append({"intent": it.text, "messages": [{"role": "system", "content": it.text}, *conv.history],
                        "ended_by": ended_by.value})
    return records


def prompted_first_turns(user, dialogues) -> dict:
    from userlm_local.evaluation.metrics import first_turn_diversity

    texts = []
    for d in dialogues:
        text, ended = user.next_turn(d.intent, [], key=("first", d.id))
        user.assistant.forget(("first", d.id))
        texts.append("" if ended else text)
    return {"n_first_turns": len(texts), "first_turn_diversity": first_turn_diversity(texts),
            "first_turn_ended": sum(1 for t in texts if not t), "first_turn_examples": texts[:5]}


def run_model(name: str, args, convs, firsts, intents) -> dict:
    from userlm_local.runtime.backends import load_backend

    t0 = time.perf_counter()
    res: dict = {"model": name}
    assistant = assistant_under_test(args)
    if name == "prompted":
        from userlm_local.assistants.local import LocalAssistant
        from userlm_local.evaluation.prompted import score_prompted
        from userlm_local.simulation.prompted import PromptedUser

        me = LocalAssistant.load(str(default_assistant_model()), n_ctx=8192, threads=args.threads,
                                 temperature=1.0, top_p=0.8, max_tokens=96, seed=args.seed)
        res["path"] = str(me.backend.path)
        res["score"] = score_prompted(me, convs, progress=not args.quiet)
        res["first_turns"] = prompted_first_turns(PromptedUser(me), firsts)
        records = prompted_campaign(PromptedUser(me), assistant, intents, args)
    else:
        path = tiny_user_model() if name == "tiny" else default_user_model()
        opts = {"threads": args.threads} if args.threads else {}
        backend = load_backend(path, **({"n_ctx": 4096, **opts} if path.is_file() else opts))
        res["path"] = str(path)
        res["score"] = score_dialogues(backend, convs, max_len=args.max_len, progress=not args.quiet)
        res["first_turns"] = first_turn_report(backend, firsts, seed=args.seed, progress=not args.quiet)
        records = userlm_campaign(backend, assistant, intents, args)
    res["campaign"] = campaign_behaviour(records)
    res["campaign_examples"] = [[(m["role"], m["content"]) for m in r["messages"]] for r in records[:3]]
    res["seconds"] = round(time.perf_counter() - t0, 1)
    print(f"{name}: done in {res['seconds']} s", file=sys.stderr, flush=True)
    return res


def rows(results: dict, human_div: float) -> list[list]:
    def g(r, *keys):
        v = r
        for k in keys:
            v = v.get(k) if isinstance(v, dict) else None
        return v

    def f(v, nd=3):
        return "-" if v is None else (f"{v:.{nd}f}" if isinstance(v, float) else str(v))

    out = []
    for name, r in results.items():
        s = r["score"]
        out.append([name,
                    f(s.get("ppl_with_intent", s.get("ppl_real_user_turns")), 1),
                    f(s.get("ppl_without_intent"), 1),
                    f(s.get("termination_auc")), f(s.get("termination_f1")),
                    f(g(r, "first_turns", "first_turn_diversity"), 1) + f" (human {human_div:.1f})",
                    f(g(r, "campaign", "intent_decomposition"), 1),
                    f(g(r, "campaign", "mean_user_turns"), 2), f(g(r, "campaign", "share_ended_by_user"), 2),
                    f(g(r, "campaign", "mean_words_per_turn"), 1),
                    f(g(r, "campaign", "share_first_turns_answering"), 2)])
    return out


HEADER = ["simulator", "PPL intent", "PPL no intent", "term. AUC", "term. F1", "1st-turn div.",
          "intent decomp.", "user turns", "ended by user", "words/turn", "1st turn answers"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", default="tiny,prompted,default")
    ap.add_argument("--conversations", type=int, default=40)
    ap.add_argument("--max-len", type=int, default=1024, help="scored conversations fit in this many tokens")
    ap.add_argument("--first-turns", type=int, default=100)
    ap.add_argument("--intents", type=int, default=50)
    ap.add_argument("--max-turns", type=int, default=4)
    ap.add_argument("--assistant-tokens", type=int, default=96)
    ap.add_argument("--combine", nargs="+", metavar="JSON", help="only merge earlier result files and print the table")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--quiet", action="store_true")
    ap.add_argument("--out", default=str(RESULTS / "userlm_behaviour.json"))
    ap.add_argument("--card-version", default=None, help="with --card: the bundle's version name (default: kept)")
    ap.add_argument("--card", action="store_true",
                    help="also write the default model's numbers to its bundle's metrics.json (what `info` shows)")
    args = ap.parse_args()
    from userlm_local.simulation.intent_sets import load_intents
    from userlm_local.evaluation.metrics import first_turn_diversity

    firsts = held_out(args.first_turns)
    human = first_turn_diversity([d.messages[0]["content"] for d in firsts])
    results = {}
    if args.combine:
        for f in args.combine:
            results.update(json.loads(Path(f).read_text())["results"])
    else:
        convs = short_held_out(args.conversations, args.max_len)
        intents = load_intents("heldout", args.intents)
        for name in args.only.split(","):
            results[name] = run_model(name, args, convs, firsts, intents)
    print(table(HEADER, rows(results, human)))
    save_results("userlm_behaviour", {"machine": machine_facts(), "args": vars(args), "human_first_turn_diversity": human,
                                  "results": results}, Path(args.out))
    if args.card and "default" in results:
        write_card(results["default"], human, args)
    return 0


def write_card(r: dict, human: float, args) -> None:
    from userlm_local.defaults.model import BUNDLE

    s, f, c = r["score"], r["first_turns"], r["campaign"]
    old = json.loads((BUNDLE / "metrics.json").read_text()) if (BUNDLE / "metrics.json").is_file() else {}
    card = {
        "version": args.card_version or old.get("version"),
        "ppl_with_intent": round(s["ppl_with_intent"], 2), "ppl_without_intent": round(s["ppl_without_intent"], 2),
        "termination_auc": round(s["termination_auc"], 3), "termination_best_f1": round(s["termination_f1"], 3),
        "first_turn_diversity": round(f["first_turn_diversity"], 1), "human_first_turn_diversity": round(human, 1),
        "mean_user_turns": round(c["mean_user_turns"], 2), "share_ended_by_user": round(c["share_ended_by_user"], 2),
        "mean_words_per_turn": round(c["mean_words_per_turn"], 1),
        "share_first_turns_answering": round(c["share_first_turns_answering"], 2),
        "intent_decomposition": round(c["intent_decomposition"], 1),
        "measured_on": (f"{args.conversations} held-out ShareGPT conversations (perplexity, termination), "
                        f"{args.first_turns} held-out intents (first turns), a {args.intents}-intent campaign against "
                        f"SmolLM2-135M-Instruct (max {args.max_turns} user turns); bench/userlm_behaviour.py"),
    }
    (BUNDLE / "metrics.json").write_text(json.dumps(card, indent=2) + "\n")


if __name__ == "__main__":
    sys.exit(main())

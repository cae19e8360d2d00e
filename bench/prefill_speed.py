#!/usr/bin/env python
"""How fast the default UserLM prefills and decodes through our backend, against the same engine
at the best configuration found on the same file, side by side in one run (issue 28).

    python bench/prefill_speed.py --f16 DIR/smollm2-userlm-F16.gguf --onnx DIR/smollm2-userlm-FP32
    python bench/prefill_speed.py --rounds 3 --tokens 512          # a quicker look

For each GGUF (the default Q8_0, and an F16 made with ``userlm-local convert default --quant f16
--out DIR --no-logit-check`` when ``--f16`` is given):

* ``ours``: ``runtime/backends/llama_cpp.load`` with its defaults; prefill = a session's
  ``extend`` of ``--tokens`` ids of a real held-out conversation (logits of the last position),
  decode = ``extend`` of one token at a time (``--decode`` of them);
* ``ours scoring``: the same ids scored as ``score`` scores them: ``backend.logits`` at the
  user-turn target and P(end) probe positions only, then the log-softmax rows; its tokens/s
  counts the same ids as the prefill, so ``scoring / prefill`` is what reading the targets costs;
* ``bare ...``: llama-cpp-python's low-level API on the same file (``llama_decode`` on a
  ``llama_batch``, logits of the last position), one factor at a time away from llama.cpp's
  defaults: threads, n_batch/n_ubatch, flash attention (auto/on/off), extra buffer types
  (repacked CPU weights, and AMX where present).  On a CPU with AMX, extra buffer types crash
  ``llama_decode`` on quantized GGUFs (llama-cpp-python 0.3.36, the reason ``use_extra_bufts()``
  exists): those configurations are only run in a child process, and a crash is recorded as one.

``--onnx DIR`` adds the ONNX backend (``convert default --to onnx --quant fp32`` or ``int8``):
prefill = ``backend.logits`` of the ids (ONNX Runtime GenAI returns every position's logits),
decode = a session's ``extend``.

Every configuration is measured once per round, in an order that rotates each round, so all see
the same machine load; the table gives the median over rounds and the best round, and each
one's median as a ratio of the best bare configuration's median on the same file.  The machine
is read before the run (other busy processes) and the load average after every round.  Writes
bench/results/prefill_speed.json with the CPU model.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine_facts, save_results, table  # noqa: E402

FA = {"auto": -1, "off": 0, "on": 1}


def conversation_ids(path: Path, n: int) -> tuple[list[int], list[int]]:
    """The first ``n`` ids of the first held-out conversation with enough of them (with its
    intent), and the positions ``score`` reads logits at (targets and probes, minus one)."""
    from userlm_local.data.flip import IGNORE, flip
    from userlm_local.data.sharegpt import load_dialogues
    from userlm_local.runtime.backends import load_tokenizer
    from userlm_local.text.prompt_format import chat_format

    fmt = chat_format(load_tokenizer(path))
    for d in load_dialogues("heldout", limit=200):
        samples = flip(fmt, d, max_len=None)
        if samples and len(samples[-1].input_ids) > n:
            ids = samples[-1].input_ids[:n]
            need = {i for s in samples for i, t in enumerate(s.labels) if t != IGNORE}
            need |= {next(i for i, t in enumerate(s.labels) if t != IGNORE) + 1 for s in samples}
            return ids, sorted(i - 1 for i in need if 1 <= i < n)
    raise SystemExit(f"no held-out conversation has {n} tokens")


class Bare:
    """llama-cpp-python's low-level API with one configuration: its own model and context."""

    def __init__(self, path: Path, *, threads: int, n_batch: int, n_ubatch: int, fa: str, extra_bufts: bool,
                 n_ctx: int, models: dict | None = None):
        from userlm_local.runtime.backends.llama_cpp import _llama

        ll = self.ll = _llama()
        models = {} if models is None else models  # one model per (file, extra buffer types), shared
        if (path, extra_bufts) not in models:
            mp = ll.llama_model_default_params()
            mp.use_extra_bufts, mp.n_gpu_layers = extra_bufts, 0
            models[(path, extra_bufts)] = ll.llama_model_load_from_file(str(path).encode(), mp)
        self.model = models[(path, extra_bufts)]
        cp = ll.llama_context_default_params()
        cp.n_ctx, cp.n_batch, cp.n_ubatch, cp.n_seq_max = n_ctx, n_batch, n_ubatch, 1
        cp.n_threads = cp.n_threads_batch = threads
        cp.flash_attn_type = FA[fa]
        self.ctx = ll.llama_init_from_model(self.model, cp)
        if not self.model or not self.ctx:
            raise RuntimeError(f"llama.cpp could not load {path} with this configuration")
        self.n_batch = n_batch
        self.batch = ll.llama_batch_init(n_batch, 0, 1)

    def _decode(self, ids: list[int], pos0: int, last_logits: bool = True) -> None:
        b = self.batch
        for s in range(0, len(ids), self.n_batch):
            chunk = ids[s:s + self.n_batch]
            b.n_tokens = len(chunk)
            for i, tok in enumerate(chunk):
                b.token[i], b.pos[i], b.n_seq_id[i] = tok, pos0 + s + i, 1
                b.seq_id[i][0] = 0
                b.logits[i] = last_logits and s + i == len(ids) - 1
            if self.ll.llama_decode(self.ctx, b) != 0:
                raise RuntimeError("llama_decode failed")

    def measure(self, ids: list[int], n_decode: int) -> tuple[float, float]:
        self.ll.llama_memory_clear(self.ll.llama_get_memory(self.ctx), True)
        t0 = time.perf_counter()
        self._decode(ids, 0)
        t1 = time.perf_counter()
        for k in range(n_decode):
            self._decode([ids[k % len(ids)]], len(ids) + k)
        t2 = time.perf_counter()
        return len(ids) / (t1 - t0), n_decode / (t2 - t1)


class Ours:
    """``runtime/backends/llama_cpp.load`` with its defaults (or an ONNX directory's backend)."""

    def __init__(self, path: Path, n_ctx: int, scoring: list[int] | None = None):
        from userlm_local.runtime.backends import load_backend, load_options

        self.backend = load_backend(path, **load_options(path, n_ctx=n_ctx))
        self.scoring = scoring

    def measure(self, ids: list[int], n_decode: int) -> tuple[float, float | None]:
        b = self.backend
        if self.scoring is not None:  # score's work on these ids: logits at the targets and probes, log-softmax
            from userlm_local.evaluation.scoring import read_positions

            need = [i + 1 for i in self.scoring if i + 1 < len(ids)] + [len(ids)]
            t0 = time.perf_counter()
            *_, fed, _ = read_positions(b, ids + [0], need, 0)
            return fed / (time.perf_counter() - t0), None
        if b.name == "onnx":  # the whole prefill is one logits() call (every position's logits)
            t0 = time.perf_counter()
            b.logits(ids, positions=[len(ids) - 1])
            prefill = len(ids) / (time.perf_counter() - t0)
            s = b.new_session()
            s.extend(ids)
        else:
            s = b.new_session()
            t0 = time.perf_counter()
            s.extend(ids)
            prefill = len(ids) / (time.perf_counter() - t0)
        t1 = time.perf_counter()
        for k in range(n_decode):
            s.extend([ids[k % len(ids)]])
        decode = n_decode / (time.perf_counter() - t1)
        s.close()
        return prefill, decode


def bare_grid(cores: int) -> list[dict]:
    """llama.cpp's defaults (as our backend sets them), then one factor at a time."""
    base = {"threads": cores, "n_batch": 512, "n_ubatch": 512, "fa": "auto", "extra_bufts": True}
    grid = [base]
    for key, values in (("threads", sorted({1, max(1, cores // 2), cores}) if cores > 1 else [1]),
                        ("n_batch", [256, 1024, 2048]), ("fa", ["on", "off"]), ("extra_bufts", [False])):
        for v in values:
            if v != base[key]:
                c = {**base, key: v}
                if key == "n_batch":
                    c["n_ubatch"] = v
                grid.append(c)
    grid.append({**base, "n_batch": 2048, "n_ubatch": 512})
    return grid


def label(c: dict) -> str:
    return (f"bare t{c['threads']} b{c['n_batch']}/u{c['n_ubatch']} fa-{c['fa']} "
            f"xbufts-{'on' if c['extra_bufts'] else 'off'}")


def crashes(path: Path, c: dict) -> str | None:
    """Run one decode of ``c`` in a child process: None when it works, else how it ended."""
    code = (f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); import prefill_speed as p; "
            f"b = p.Bare(__import__('pathlib').Path({str(path)!r}), n_ctx=256, **{c!r}); "
            f"b.measure(list(range(100, 164)), 2)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    return None if r.returncode == 0 else f"exit {r.returncode}: {(r.stderr.strip().splitlines() or [''])[-1][:120]}"


POLICIES = {  # libgomp's barrier wait: the environment of the worker process that runs a configuration
    "omp-default": {},  # libgomp's own default (a long spin, then sleep): our backend before issue 28
    "omp-passive": {"OMP_WAIT_POLICY": "PASSIVE"},  # sleep at once
    "spin-10k": {"GOMP_SPINCOUNT": "10000"},  # a short spin, then sleep: our backend's default now
}


def plan(files: dict[str, Path], onnx: list[str], cores: int, policy: str) -> list[tuple]:
    """The configurations a worker of ``policy`` runs: every one under the policy our backend
    uses; ours and llama.cpp's defaults under the others (one thread has no barrier to wait at)."""
    keys = []
    for name in files:
        keys += [(policy, name, "ours"), (policy, name, "ours scoring")]
        grid = bare_grid(cores) if policy == "omp-passive" else bare_grid(cores)[:1]
        keys += [(policy, name, label(c)) for c in grid]
    if policy == "omp-passive":
        for d in onnx:
            keys += [(policy, onnx_name(d), "ours"), (policy, onnx_name(d), "ours scoring")]
    return keys


def onnx_name(d: str) -> str:
    return "ONNX " + Path(d).name.rsplit("-", 1)[-1]


def worker(args, files: dict[str, Path], cores: int) -> None:
    """Serve measurements over stdin/stdout: one JSON key in, one JSON result out."""
    import json

    import userlm_local.runtime.backends.llama_cpp as lc

    lc.SPIN_COUNT = None  # the worker's environment decides
    ids, positions = conversation_ids(files["Q8_0"], args.tokens)
    n_ctx = args.tokens + args.decode + 64
    amx = lc.cpu_has_amx()
    runners, skipped = {}, {}
    models: dict = {}
    grid = {label(c): c for c in bare_grid(cores)}
    for key in plan(files, args.onnx, cores, args.worker):
        _, name, config = key
        path = files.get(name) or Path(next(d for d in args.onnx if onnx_name(d) == name))
        if config == "ours":
            runners[key] = Ours(path, n_ctx)
        elif config == "ours scoring":
            runners[key] = Ours(path, n_ctx, scoring=positions)
        else:
            c = grid[config]
            if amx and c["extra_bufts"] and name != "F16" and (why := crashes(path, c)):
                skipped[f"{name} {config}"] = why
                continue
            runners[key] = Bare(path, n_ctx=n_ctx, models=models, **c)
        runners[key].measure(ids[:64], 2)  # warm-up: the first decodes allocate the compute graphs
    print(json.dumps({"keys": [list(k) for k in runners], "skipped": skipped}), flush=True)
    for line in sys.stdin:
        key = tuple(json.loads(line))
        p, d = runners[key].measure(ids, args.decode)
        print(json.dumps([p, d]), flush=True)


def main() -> None:
    import json

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--q8", default=None, help="the Q8_0 GGUF (default: the default UserLM)")
    ap.add_argument("--f16", default=None, help="an F16 GGUF of the same model")
    ap.add_argument("--onnx", action="append", default=[], help="an ONNX model directory of the same model (repeatable)")
    ap.add_argument("--tokens", type=int, default=1024, help="prefill length (default 1024)")
    ap.add_argument("--decode", type=int, default=32, help="decoded tokens after the prefill (default 32)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--policies", default=",".join(POLICIES), help="libgomp wait policies, from " + ", ".join(POLICIES))
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()

    from userlm_local.defaults import resolve_user_model
    from userlm_local.util.machine import cpu_has_amx

    cores = os.cpu_count() or 1
    files = {"Q8_0": Path(args.q8) if args.q8 else resolve_user_model(None)}
    if args.f16:
        files["F16"] = Path(args.f16)
    if args.worker:
        return worker(args, files, cores)
    facts = machine_facts()
    amx = cpu_has_amx()
    policies = [p.strip() for p in args.policies.split(",")]
    workers, keys, skipped = {}, [], {}
    for pol in policies:
        env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
        cmd = [sys.executable, __file__, "--worker", pol, "--tokens", str(args.tokens), "--decode", str(args.decode),
               "--q8", str(files["Q8_0"])] + (["--f16", args.f16] if args.f16 else [])
        for d in args.onnx:
            cmd += ["--onnx", d]
        w = subprocess.Popen(cmd, env={**env, **POLICIES[pol]}, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             text=True)
        hello = json.loads(w.stdout.readline())
        workers[pol] = w
        keys += [tuple(k) for k in hello["keys"]]
        skipped.update({f"{pol} {k}": v for k, v in hello["skipped"].items()})
        print(f"worker {pol}: {len(hello['keys'])} configurations loaded", file=sys.stderr, flush=True)

    got: dict = {k: ([], []) for k in keys}
    loads = []
    for r in range(args.rounds):
        for k in keys[r % len(keys):] + keys[:r % len(keys)]:
            w = workers[k[0]]
            w.stdin.write(json.dumps(list(k)) + "\n")
            w.stdin.flush()
            p, d = json.loads(w.stdout.readline())
            got[k][0].append(p)
            got[k][1].append(d)
        loads.append(os.getloadavg()[0])
        print(f"round {r + 1}/{args.rounds} done (load average {loads[-1]:.2f})", file=sys.stderr, flush=True)
    for w in workers.values():
        w.stdin.close()
        w.wait()

    med = lambda xs: statistics.median(xs) if xs and xs[0] is not None else None  # noqa: E731
    results, rows = [], []
    for name in list(files) + [onnx_name(d) for d in args.onnx]:
        mine = [k for k in keys if k[1] == name]
        bare = [k for k in mine if k[2].startswith("bare")]
        best = max(bare, key=lambda k: med(got[k][0])) if bare else None
        best_decode = max(bare, key=lambda k: med(got[k][1])) if bare else None
        for k in mine:
            p, d = got[k]
            row = {"file": name, "policy": k[0], "config": k[2], "prefill_tok_s_median": med(p),
                   "prefill_tok_s_best": max(p), "prefill_tok_s_rounds": [round(x, 1) for x in p],
                   "decode_tok_s_median": med(d), "decode_tok_s_best": max(d) if d[0] is not None else None,
                   "prefill_vs_best_bare": med(p) / med(got[best][0]) if best else None,
                   "decode_vs_best_bare": (med(d) / med(got[best_decode][1]) if best_decode and d[0] is not None
                                           else None),
                   "best_bare_prefill": k == best, "best_bare_decode": k == best_decode}
            results.append(row)
            rows.append([name, k[0], k[2] + (" *" if k == best else "") + (" +" if k == best_decode else ""),
                         f"{row['prefill_tok_s_median']:.0f}", f"{row['prefill_tok_s_best']:.0f}",
                         "-" if row["prefill_vs_best_bare"] is None else f"{row['prefill_vs_best_bare']:.2f}",
                         "-" if d[0] is None else f"{row['decode_tok_s_median']:.1f}",
                         "-" if row["decode_vs_best_bare"] is None else f"{row['decode_vs_best_bare']:.2f}"])
    print(table(["file", "libgomp wait", "configuration (* best bare prefill, + decode)", "prefill tok/s median",
                 "best round", "x best bare", "decode tok/s median", "x best bare"], rows,
                title=f"{facts['cpu_model']}, {cores} cores, AMX {'yes' if amx else 'no'}; {args.tokens}-token "
                      f"prefill, {args.decode} decoded tokens; {args.rounds} rounds; load average after each "
                      f"round {', '.join(f'{x:.1f}' for x in loads)}"))
    for k, why in skipped.items():
        print(f"skipped (crashes): {k}: {why}")
    save_results("prefill_speed", {
        "machine": facts, "amx": amx, "args": vars(args),
        "files": {k: Path(v).name for k, v in files.items()}, "onnx": [Path(d).name for d in args.onnx],
        "scoring_positions": "user-turn targets and P(end) probes of the same ids, minus one",
        "load_average_after_each_round": loads, "results": results, "crashed": skipped,
    }, Path(args.json) if args.json else None)


if __name__ == "__main__":
    main()

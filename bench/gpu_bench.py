#!/usr/bin/env python
"""The GPU benchmarks of ``bench/gpu_check.sh``, side by side in one run, one table at the end.

1. **Sampler**: ms per token at 32k, 128k and 256k vocabularies, flat and peaked logits
   (temperature 1, top-p 0.8): ``torch_sample`` on the logits where they are (the device) vs
   copying them to the host and running the C kernel (and the numpy reference).
2. **Turn latency**: a user turn of 48 tokens after a 200-token history, for the bundled tiny
   UserLM and a random 1B-shaped UserLM (Llama-3.2-1B's layer sizes, the tiny model's tokenizer),
   on the device and on the CPU (the 1B on the CPU only with ``--cpu-1b``).
3. **Campaign throughput** on the device: the random 1B-shaped UserLM against a random
   1B-shaped assistant, ``simulate`` at concurrency 1 and 8 (batched decode on the device).

Runs without a GPU too (``--device cpu``: a check of the script itself).

    python bench/gpu_bench.py                 # on the GPU machine (bench/gpu_check.sh runs it)
    python bench/gpu_bench.py --device cpu --quick
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path


sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, machine_facts, save_results, table  # noqa: E402

BUNDLED = ROOT / "src" / "userlm_local" / "bundled"
SHAPE_1B = dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
                num_key_value_heads=8, head_dim=64)


def sync(torch, device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def sampler_rows(torch, device: str, reps: int) -> list[dict]:
    from userlm_local.runtime.sampling import SamplingParams, backend, make_sampler, rng_for, torch_sample

    params = SamplingParams(1.0, 0.8)
    host = make_sampler(params)
    numpy_ref = make_sampler(params, impl="numpy")
    rows = []
    for vocab in (32000, 128257, 256000):
        for kind, scale in (("flat", 0.5), ("peaked", 4.0)):
            g = torch.Generator(device="cpu").manual_seed(vocab)
            x = (torch.randn(8, vocab, generator=g) * scale).to(device)
            rng = rng_for(0, vocab, kind)
            times = {}
            for name, fn in (("device", lambda r: torch_sample(r, params, rng)),
                             ("copy + " + backend(), lambda r: host(r.cpu().numpy(), rng)),
                             ("copy + numpy", lambda r: numpy_ref(r.cpu().numpy(), rng))):
                fn(x[0])
                sync(torch, device)
                t0 = time.perf_counter()
                for i in range(reps):
                    fn(x[i % 8])
                sync(torch, device)
                times[name] = (time.perf_counter() - t0) / reps * 1e3
            rows.append({"vocab": vocab, "logits": kind, **{k + " ms": round(v, 4) for k, v in times.items()}})
    return rows


def random_model(dest: Path, like: Path, shape: dict, torch) -> Path:
    """A random-weight Llama of ``shape`` with ``like``'s tokenizer, config and template."""
    from transformers import LlamaConfig, LlamaForCausalLM

    dest.mkdir(parents=True)
    for f in like.iterdir():
        if f.is_file() and not f.name.endswith(".safetensors") and f.name != "config.json":
            shutil.copy(f, dest / f.name)
    cfg = json.loads((like / "config.json").read_text())
    cfg.update(shape, dtype="float32")
    config = LlamaConfig(**{k: v for k, v in cfg.items() if k not in ("architectures", "transformers_version")})
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(dest, safe_serialization=True)
    (dest / "config.json").write_text(json.dumps({**json.loads((dest / "config.json").read_text()), **shape}))
    return dest


def turn_latency(path: Path, device: str, dtype: str) -> float:
    """Seconds for a 48-token user turn after a ~200-token history (greedy, no early stop)."""
    from userlm_local.runtime.backends import load_backend
    from userlm_local.runtime.sampling import PRESETS
    from userlm_local.simulation.user import UserSimulator

    opts = {"dtype": dtype} | ({"device": device} if device != "cpu" else {})
    backend = load_backend(path, **opts)
    sim = UserSimulator(backend, sampling=PRESETS["greedy"], max_new_tokens=48)
    best = None
    for _ in range(3):
        user = sim.start("You want to plan a three-day trip to Kyoto in autumn, on a budget.")
        user.conversation.add_user("Hi! Can you help me plan a trip to Kyoto?")
        user.add_assistant("Of course. " + "Kyoto has many temples and gardens worth seeing in autumn. " * 8)
        t0 = time.perf_counter()
        user.next_turn()
        dt = time.perf_counter() - t0
        best = dt if best is None else min(best, dt)
        user.session.close()
    return best


def campaign(user: Path, assistant: Path, device: str, conc: int, limit: int) -> dict:
    from userlm_local import cli
    from userlm_local.simulation.campaign import Campaign

    seen = {}
    orig = Campaign.run

    def run(self, *a, **k):
        t0 = time.perf_counter()
        stats = orig(self, *a, **k)
        seen["seconds"], seen["stats"] = time.perf_counter() - t0, stats
        return stats

    Campaign.run = run
    try:
        with tempfile.TemporaryDirectory() as tmp, contextlib.redirect_stdout(io.StringIO()):
            argv = ["simulate", "--user", str(user), "--assistant", str(assistant), "--limit", str(limit),
                    "--concurrency", str(conc), "--max-turns", "3", "--max-new-tokens", "48",
                    "--assistant-max-tokens", "64", "--out", str(Path(tmp) / "t.jsonl"), "--quiet"]
            if device != "cpu":
                argv += ["--device", device]
            rc = cli.main(argv)
    finally:
        Campaign.run = orig
    if rc != 0:
        raise SystemExit(f"simulate failed at concurrency {conc} (rc {rc})")
    s = seen["stats"]
    return {"concurrency": conc, "seconds": round(seen["seconds"], 2), "conversations": s.done,
            "conv_per_s": s.done / seen["seconds"], "user_tok_per_s": s.user_tokens / seen["seconds"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--quick", action="store_true", help="fewer repetitions, no 1B model (a script check)")
    ap.add_argument("--cpu-1b", action="store_true", help="also time the 1B-shaped model's turn on the CPU")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    import torch

    facts = machine_facts()
    if args.device != "cpu":
        facts["gpu"] = torch.cuda.get_device_name(0)
    result = {"machine": facts, "device": args.device}
    t0 = time.perf_counter()
    result["sampler"] = sampler_rows(torch, args.device, 20 if args.quick else 200)
    print(table(list(result["sampler"][0]), [list(r.values()) for r in result["sampler"]],
                f"sampler, ms per token ({args.device} vs the host)"), flush=True)
    with tempfile.TemporaryDirectory(prefix="gpu_bench-") as tmp:
        tiny_user, tiny_asst = BUNDLED / "tiny-userlm", BUNDLED / "tiny-assistant"
        lat = [{"model": "tiny (6.8M)", "device": d, "turn_s": round(turn_latency(tiny_user, d, "float32"), 4)}
               for d in dict.fromkeys([args.device, "cpu"])]
        camp = []
        if not args.quick:
            big_user = random_model(Path(tmp) / "user-1b", tiny_user, SHAPE_1B, torch)
            big_asst = random_model(Path(tmp) / "assistant-1b", tiny_asst, SHAPE_1B, torch)
            for d in [args.device] + (["cpu"] if args.cpu_1b else []):
                lat.append({"model": "1B-shaped", "device": d, "turn_s": round(turn_latency(big_user, d, "bfloat16"), 4)})
            camp = [campaign(big_user, big_asst, args.device, c, 16) for c in (1, 8)]
        else:
            camp = [campaign(tiny_user, tiny_asst, args.device, c, 4) for c in (1, 4)]
    result["turn_latency"], result["campaign"] = lat, camp
    for r in camp:
        r["x_c1"] = r["conv_per_s"] / camp[0]["conv_per_s"]
    print(table(["model", "device", "48-token turn s"], [list(r.values()) for r in lat], "user-turn latency"))
    print(table(["concurrency", "seconds", "conversations", "conv/s", "user tok/s", "x c1"],
                [[r["concurrency"], r["seconds"], r["conversations"], f"{r['conv_per_s']:.3f}",
                  f"{r['user_tok_per_s']:.1f}", f"{r['x_c1']:.2f}"] for r in camp],
                f"campaign on {args.device} ({'tiny' if args.quick else '1B-shaped'} user and assistant)"))
    result["seconds"] = round(time.perf_counter() - t0, 1)
    save_results("gpu_check", result, Path(args.json) if args.json else None)
    print(f"done in {result['seconds']} s")


if __name__ == "__main__":
    main()

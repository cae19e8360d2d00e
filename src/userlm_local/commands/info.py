"""``userlm-local info``: what a model is, and whether it is a UserLM."""

from __future__ import annotations

import json

from ..backends import inspect_model
from ._common import add_model_arguments, model_path

HELP = "show what a model is (format, dims, special-token ids, template hash) and check it is a UserLM"


def add_arguments(p) -> None:
    add_model_arguments(p)
    p.add_argument("--json", action="store_true", help="print one JSON object")


def run(args) -> int:
    info = inspect_model(model_path(args), allow_non_userlm=args.allow_non_userlm,
                         allow_pickle=args.allow_pickle)
    origin = None
    if args.model in (None, "default"):
        from ..default_model import describe

        origin = describe()
    if args.json:
        print(json.dumps({**info.to_dict(), **({"default_model": origin} if origin else {})}, indent=2))
        return 0
    if origin:
        for k in ("name", "what", "base", "adapter", "built"):
            print(f"{k:<11}  {origin[k]}")
        for k, v in origin["card"].items():
            print(f"{'card':<11}  {k}: {v}")
        print()
    s = info.special
    rows = [
        ("path", info.path),
        ("format", f"{info.format} ({info.architecture}, weights: {', '.join(info.weights)})"),
        ("userlm", "yes (has <|endconversation|>)" if info.is_userlm else "NO: no <|endconversation|> token"),
        ("dims", f"hidden {info.hidden_size}, layers {info.num_layers}, heads {info.num_heads}/"
                 f"{info.num_kv_heads} kv, ffn {info.intermediate_size}"),
        ("vocab", f"{info.vocab_size} (tokenizer {info.tokenizer_size})"),
        ("context", f"{info.context_length} positions, rope {info.rope.get('type')} theta {info.rope.get('theta')}"),
        ("dtype", info.dtype or "unknown"),
        ("special ids", f"eot {s.eot}, end_of_text {s.end_of_text}, endconversation {s.end_conversation}, "
                        f"headers {s.start_header}/{s.end_header}, bos {s.bos}, newline {s.newline}"
         if s else "no Llama-3 header tokens: the UserLM format cannot be rendered"),
        ("stop ids", ", ".join(map(str, sorted(s.stop_ids))) if s else "-"),
        ("bos", "added" if info.add_bos_token else "not added (UserLM default)"),
        ("template", f"sha256 {info.template_sha256} "
                     f"({'UserLM-8b template' if info.template_is_userlm else 'not the UserLM-8b template'})"
         if info.template_sha256 else "none in checkpoint"),
        ("eos", ", ".join(f"{k} {v}" for k, v in info.eos.items())),
        ("sampling", ", ".join(f"{k} {v}" for k, v in info.sampling.items()) or "none in generation_config"),
    ]
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"{k:<{width}}  {v}")
    for w in info.warnings:
        print(f"{'warning':<{width}}  {w}")
    return 0

"""``userlm-local convert``: a Hugging Face Llama checkpoint to GGUF files or ONNX directories + manifest.json."""

from __future__ import annotations

import json

from ..util.errors import UserError
from ._common import check_name, not_empty

HELP = ("convert a Hugging Face Llama/UserLM checkpoint to GGUF (f16, bf16, llama.cpp quantizations) "
        "or ONNX (fp32, fp16, int8, int4, int4_mixed for onnxruntime-genai)")


def add_arguments(p) -> None:
    p.add_argument("src", help="checkpoint directory (config.json, tokenizer.json, *.safetensors), or 'default': "
                               "the default UserLM, from its full-precision merge (built for the conversion, "
                               "then removed; --keep-merge DIR keeps it), or 'tiny': the bundled 6.8M test "
                               "UserLM, as every other verb reads the name (./tiny for a directory of that name)")
    p.add_argument("--to", default="gguf", metavar="FORMAT", help="output format: gguf (default) or onnx")
    p.add_argument("--quant", default=None,
                   help="comma-separated types; gguf: f16, bf16, q8_0, q6_k, q5_k_m, q4_k_m, iq4_xs (default f16); "
                        "onnx: fp32, fp16, int8, int4, int4_mixed (default int4)")
    p.add_argument("--out", required=True, help="output directory (files <name>-<QUANT>.gguf, or directories "
                                                "<name>-<TYPE> for onnx, + manifest.json)")
    p.add_argument("--name", default=None, help="model name in file names and metadata (default: SRC's name)")
    p.add_argument("--imatrix", nargs="?", const="compute", default=None, metavar="FILE",
                   help="use an importance matrix for the quantized types: computed from calibration "
                        "conversations (no FILE; saved as imatrix.gguf) or read from a llama.cpp imatrix FILE")
    p.add_argument("--calibration", default="auto", choices=("auto", "train", "builtin", "generic"),
                   help="imatrix conversations: the training split of userlm_local.data when installed "
                        "(auto, train), the small built-in set, or generic text (Python's library "
                        "documentation, no chat template; to compare against)")
    p.add_argument("--calibration-conversations", type=int, default=64, metavar="N")
    p.add_argument("--calibration-tokens", type=int, default=512, metavar="N",
                   help="tokens per calibration conversation (default 512)")
    p.add_argument("--imatrix-dtype", default="float32", choices=("float32", "bfloat16"),
                   help="torch precision for computing the imatrix, one layer at a time (default float32)")
    p.add_argument("--force", action="store_true", help="overwrite existing outputs")
    p.add_argument("--no-validate", action="store_true", help="skip the conversion-time checks")
    p.add_argument("--no-logit-check", action="store_true",
                   help="skip the torch float32 logits comparison (needs RAM for the fp32 model)")
    p.add_argument("--allow-non-userlm", action="store_true",
                   help="accept a Llama without <|endconversation|>")
    p.add_argument("--threads", type=int, default=None, metavar="N",
                   help="CPU threads for writing, quantizing and validating (default: every core)")
    p.add_argument("--keep-merge", default=None, metavar="DIR",
                   help="with SRC 'default': also keep the full-precision merge in DIR (a new directory)")
    p.add_argument("--quiet", action="store_true", help="no progress bars or step messages")
    p.add_argument("--json", action="store_true", help="print the manifest as JSON")


def _convert(to: str, src, args, options):
    if to == "onnx":
        from ..convert.onnx_pipeline import to_onnx

        return to_onnx(src, args.out, args.quant or "int4", **options)
    from ..convert import to_gguf

    return to_gguf(src, args.out, args.quant or "f16", **options)


def run(args) -> int:
    to = args.to.lower()
    if to not in ("gguf", "onnx"):
        raise UserError(f"unsupported output format {args.to!r} (choose gguf or onnx)")
    if args.calibration_conversations < 1 or args.calibration_tokens < 16:
        raise UserError("--calibration-conversations must be >= 1 and --calibration-tokens >= 16")
    if args.threads is not None and args.threads < 1:
        raise UserError("--threads must be >= 1")
    for flag, value in (("--out", args.out), ("--quant", args.quant)):
        not_empty(flag, value)
    check_name("--name", args.name)
    options = dict(
        force=args.force, name=args.name, allow_non_userlm=args.allow_non_userlm, imatrix=args.imatrix,
        calibration=args.calibration, calibration_conversations=args.calibration_conversations,
        calibration_tokens=args.calibration_tokens, imatrix_dtype=args.imatrix_dtype,
        validate=not args.no_validate, logit_check=not args.no_logit_check, threads=args.threads,
        progress=not args.quiet,
    )
    if args.quiet:
        options["log"] = lambda msg: None
    if args.keep_merge is not None and args.src != "default":
        raise UserError("--keep-merge goes with SRC 'default'")
    if args.src == "default":
        from ..defaults.model import BUNDLE, full_precision

        options["name"] = args.name or BUNDLE.name
        with full_precision(keep=args.keep_merge) as src:
            result = _convert(to, src, args, options)
    else:
        from ..defaults import resolve_user_model

        # 'tiny' is the bundled tiny UserLM here too: info, simulate and score read the name so, while
        # convert took it as ./tiny (issue 29); 'default' has its own branch above (the merge, not the GGUF)
        result = _convert(to, resolve_user_model(args.src) if args.src == "tiny" else args.src, args, options)
    if args.json:
        print(json.dumps(result.manifest, indent=2, ensure_ascii=False))
    else:
        for art in result.manifest["artifacts"]:
            if art["file"] in {p.name for p in result.files}:
                v = art.get("validation")
                status = v if isinstance(v, str) else ("ok" if v.get("passed") else "FAILED")
                print(f"{art['file']}{'/' if art.get('kind') == 'directory' else ''}\t{art['quant']}\t"
                      f"{art['bytes'] / 2**20:.1f} MiB\tvalidation {status}")
    if result.failed:
        print(f"userlm-local convert: validation failed for {', '.join(result.failed)} "
              "(kept, marked in manifest.json)", file=__import__("sys").stderr)
        return 1
    return 0

"""``userlm-local info``: what a model is, and whether it is a UserLM."""

from __future__ import annotations

import json

from ..runtime.backends import inspect_model
from ..artifacts.model_files import check_listed_files, failed_warning, is_output_directory, listing, model_format, pick_artifact
from ._common import add_model_arguments, model_path

HELP = "show what a model is (format, dims, special-token ids, template hash) and check it is a UserLM"


def add_arguments(p) -> None:
    add_model_arguments(p)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--verify", action="store_true",
                   help="also check every file of a converted artifact against the sha256 its manifest recorded "
                        "(reads every byte: seconds per GB; without it, the files' presence and sizes are checked)")


def _artifacts(manifest: dict, directory) -> list[dict]:
    out = []
    for a in manifest.get("artifacts", []):
        if isinstance(a, dict) and a.get("file"):
            lst = listing(directory / a["file"], manifest.get("format", "gguf"))
            out.append({"file": a["file"], "quant": a.get("quant"), "exists": lst.path.exists(),
                        "validation": lst.validation})
    return out


def run(args) -> int:
    path = model_path(args)
    picked = None
    if is_output_directory(path):
        # a convert output directory: its manifest lists the artifacts; describe the one a loader picks
        manifest, entry, target, why = pick_artifact(path)
        picked = {"directory": str(path), "format": manifest.get("format", "gguf"), "file": entry["file"],
                  "why": why, "artifacts": _artifacts(manifest, path)}
        path = target
    fmt = model_format(path)
    lst = listing(path, fmt) if fmt in ("gguf", "onnx") else None
    # a damaged artifact (files missing, truncated, or with --verify changed): one line, exit 2; an ONNX
    # directory's own inspection checks its graph's weights against model.onnx.data first (names the file)
    if lst is not None and fmt == "gguf":
        check_listed_files(lst, hashes=args.verify)
    info = inspect_model(path, allow_non_userlm=args.allow_non_userlm, allow_pickle=args.allow_pickle)
    if lst is not None and fmt == "onnx" and args.verify:
        check_listed_files(lst, hashes=True)
    if fmt == "gguf" and lst is not None and lst.manifest is not None:
        # (the ONNX backend's inspect says the same; a GGUF without a manifest is common and says nothing)
        info.warnings[:0] = ([lst.note] if lst.note else []) + (
            [failed_warning(lst)] if lst.failed else [])
    artifact = None
    if lst is not None and (lst.manifest is not None or fmt == "onnx"):
        artifact = {"manifest": str(lst.manifest_path) if lst.manifest is not None else None,
                    "listed": lst.entry is not None, "quant": (lst.entry or {}).get("quant"),
                    "validation": lst.validation, "passed": None if lst.entry is None else lst.validation == "passed",
                    "files_checked": None if lst.entry is None else ("sha256" if args.verify else "sizes")}
    origin = None
    if args.model in (None, "default"):
        from ..defaults.model import describe

        origin = describe()
    if args.json:
        extra = {**({"artifact": artifact} if artifact else {}), **({"output_directory": picked} if picked else {}),
                 **({"default_model": origin} if origin else {})}
        print(json.dumps({**info.to_dict(), **extra}, indent=2))
        return 0
    if origin:
        for k in ("name", "version", "what", "base", "adapter", "built"):
            print(f"{k:<11}  {origin[k]}")
        for k, v in origin["card"].items():
            print(f"{'card':<11}  {k}: {v}")
        print()
    s = info.special
    rows = []
    if picked:
        arts = picked["artifacts"]
        rows += [("artifacts", f"{len(arts)} in {picked['directory']}/manifest.json: " + ", ".join(
                     f"{a['file']} ({a['quant']}, {_short(a['validation'])}{'' if a['exists'] else ', MISSING'})"
                     for a in arts)),
                 ("showing", f"{picked['file']}: {picked['why']}")]
    rope = (f"rope {info.rope.get('type')} theta {info.rope.get('theta')}" if info.rope
            else "rope unknown (not recorded in these files)")
    rows += [
        ("path", info.path),
        ("format", f"{info.format} ({info.architecture}, weights: {', '.join(info.weights)})"),
        ("userlm", "yes (has <|endconversation|>)" if info.is_userlm else "NO: no <|endconversation|> token"),
        ("dims", f"hidden {info.hidden_size}, layers {info.num_layers}, heads {info.num_heads}/"
                 f"{info.num_kv_heads} kv, ffn {info.intermediate_size or 'unknown'}"),
        ("vocab", f"{info.vocab_size} (tokenizer {info.tokenizer_size})"),
        ("context", f"{info.context_length} positions, {rope}"),
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
    if artifact and artifact["listed"]:
        rows += [("manifest", f"{artifact['manifest']} (lists it as {artifact['quant']}); files: "
                              + ("sizes and sha256 match it" if args.verify else "sizes match it (--verify: sha256 too)")),
                 ("validation", artifact["validation"])]
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"{k:<{width}}  {v}")
    for w in info.warnings:
        print(f"{'warning':<{width}}  {w}")
    return 0


def _short(validation: str) -> str:
    """'passed', 'validation FAILED', 'not validated', 'validation unknown'."""
    if validation.startswith("FAILED"):
        return "validation FAILED"
    first = validation.split(" (")[0]
    return first if first in ("passed", "not validated") else f"validation {first}"

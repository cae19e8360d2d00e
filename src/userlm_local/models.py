"""What a model path is, checked without loading any weights.

``inspect_model`` reads ``config.json``, ``generation_config.json`` and the
tokenizer files of a Hugging Face checkpoint directory and reports the facts a
UserLM runtime depends on (special-token ids, template hash, EOS disagreements).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

from .chat import USERLM_TEMPLATE, SpecialIds, chat_format, template_sha256
from .errors import UserError
from .tokenizer import Tokenizer, read_json

LLAMA_ARCHS = {"LlamaForCausalLM"}


def model_format(path: str | Path) -> str:
    """'hf' for a checkpoint directory (read from its files, never from its name)."""
    p = Path(path)
    if not p.exists():
        raise UserError(f"{path}: no such file or directory")
    if p.is_dir():
        manifest = read_json(p / "manifest.json", missing_ok=True)
        if isinstance(manifest, dict) and isinstance(manifest.get("format"), str):
            return manifest["format"]
        if (p / "config.json").is_file():
            return "hf"
        raise UserError(f"{path}: not a model directory (no config.json)")
    with open(p, "rb") as f:
        magic = f.read(4)
    if magic == b"GGUF":
        return "gguf"
    raise UserError(f"{path}: not a model (expected a checkpoint directory or a GGUF file)")


@dataclass
class ModelInfo:
    path: str
    format: str
    architecture: str
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    intermediate_size: int
    vocab_size: int
    tokenizer_size: int
    context_length: int
    rope: dict
    dtype: str | None
    weights: list[str]
    special: SpecialIds | None
    is_userlm: bool
    template_sha256: str | None
    template_is_userlm: bool
    add_bos_token: bool
    eos: dict
    warnings: list[str] = field(default_factory=list)
    sampling: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


def weight_files(path: Path, allow_pickle: bool) -> list[str]:
    st = sorted(p.name for p in path.glob("*.safetensors"))
    if st:
        return st
    pickled = sorted(p.name for p in path.glob("*.bin"))
    if pickled and not allow_pickle:
        raise UserError(
            f"{path}: weights are pickled .bin files, which can run code when loaded; "
            "convert them to safetensors, or pass --allow-pickle if you trust them"
        )
    if pickled:
        return pickled
    raise UserError(f"{path}: no weights (*.safetensors) in the checkpoint directory")


def rope_facts(config: dict) -> dict:
    params = config.get("rope_parameters") or config.get("rope_scaling") or {}
    return {
        "type": params.get("rope_type") or params.get("type") or "default",
        "theta": params.get("rope_theta", config.get("rope_theta", 10000.0)),
        **{k: v for k, v in params.items() if k not in ("rope_type", "type", "rope_theta")},
    }


def inspect_model(path: str | Path, *, allow_non_userlm: bool = False,
                  allow_pickle: bool = False) -> ModelInfo:
    p = Path(path)
    fmt = model_format(p)
    if fmt == "gguf":
        return inspect_gguf(p, allow_non_userlm=allow_non_userlm)
    if fmt != "hf":
        raise UserError(f"{path}: format {fmt!r} is not supported (Hugging Face directories and GGUF files)")
    config = read_json(p / "config.json")
    archs = config.get("architectures") or []
    if config.get("model_type") != "llama" or not LLAMA_ARCHS.intersection(archs):
        raise UserError(
            f"{path}: not a Llama checkpoint (model_type={config.get('model_type')!r}, "
            f"architectures={archs}); UserLM runtimes need LlamaForCausalLM"
        )
    weights = weight_files(p, allow_pickle)
    tok = Tokenizer.from_dir(p)
    fmt_ = chat_format(tok, allow_non_userlm=allow_non_userlm)
    ids = fmt_.ids if fmt_ is not None else None
    gen = read_json(p / "generation_config.json", missing_ok=True) or {}
    eos = {
        "config": config.get("eos_token_id"),
        "generation_config": gen.get("eos_token_id"),
        "tokenizer": tok.token_id(tok.eos_token) if tok.eos_token else None,
    }
    warnings = []
    known = {k: v for k, v in eos.items() if v is not None}
    if len({str(v) for v in known.values()}) > 1:
        warnings.append(
            "EOS ids disagree (" + ", ".join(f"{k}={v}" for k, v in known.items())
            + (f"); generation stops on all of {sorted(ids.stop_ids)}" if ids else ")")
        )
    vocab = int(config.get("vocab_size", 0))
    if vocab < tok.vocab_size:
        raise UserError(f"{path}: config vocab_size {vocab} is smaller than the tokenizer ({tok.vocab_size})")
    template_hash = template_sha256(tok.chat_template)
    if tok.chat_template is None:
        warnings.append("no chat template in the checkpoint; the UserLM format is rendered by userlm-local")
    elif tok.chat_template.strip() != USERLM_TEMPLATE.strip():
        warnings.append("the checkpoint's chat template differs from UserLM-8b's; userlm-local renders the UserLM format itself")
    heads = int(config["num_attention_heads"])
    return ModelInfo(
        path=str(p),
        format=fmt,
        architecture=archs[0],
        hidden_size=int(config["hidden_size"]),
        num_layers=int(config["num_hidden_layers"]),
        num_heads=heads,
        num_kv_heads=int(config.get("num_key_value_heads", heads)),
        intermediate_size=int(config["intermediate_size"]),
        vocab_size=vocab,
        tokenizer_size=tok.vocab_size,
        context_length=int(config.get("max_position_embeddings", 2048)),
        rope=rope_facts(config),
        dtype=config.get("dtype") or config.get("torch_dtype"),
        weights=weights,
        special=ids,
        is_userlm=ids is not None and ids.end_conversation is not None,
        template_sha256=template_hash,
        template_is_userlm=tok.chat_template is not None and tok.chat_template.strip() == USERLM_TEMPLATE.strip(),
        add_bos_token=tok.add_bos_token,
        eos=eos,
        warnings=warnings,
        sampling={k: gen[k] for k in ("temperature", "top_p", "top_k", "do_sample", "max_length") if k in gen},
    )


def load_tokenizer(path: str | Path):
    """The tokenizer of a checkpoint directory, or the one inside a GGUF file."""
    if model_format(path) == "gguf":
        from .backends.llama_cpp import VocabOnly

        return VocabOnly(path).tokenizer
    return Tokenizer.from_dir(path)


def inspect_gguf(p: Path, *, allow_non_userlm: bool = False) -> ModelInfo:
    from .backends.llama_cpp import VocabOnly

    v = VocabOnly(p)
    meta, tok = v.meta, v.tokenizer
    arch = meta.get("general.architecture")
    if arch != "llama":
        raise UserError(f"{p}: not a Llama GGUF (general.architecture = {arch!r})")
    fmt_ = chat_format(tok, allow_non_userlm=allow_non_userlm)
    ids = fmt_.ids if fmt_ is not None else None
    num = lambda key, default=0: int(float(meta.get(f"llama.{key}", default)))  # noqa: E731
    template = tok.chat_template
    warnings = []
    if template is None:
        warnings.append("no chat template in the GGUF; the UserLM format is rendered by userlm-local")
    elif template.strip() != USERLM_TEMPLATE.strip():
        warnings.append("the GGUF's chat template differs from UserLM-8b's; userlm-local renders the UserLM format itself")
    eos = {"gguf eos": meta.get("tokenizer.ggml.eos_token_id"), "gguf eot": meta.get("tokenizer.ggml.eot_token_id")}
    heads = num("attention.head_count")
    return ModelInfo(
        path=str(p), format="gguf", architecture="llama",
        hidden_size=num("embedding_length"), num_layers=num("block_count"), num_heads=heads,
        num_kv_heads=num("attention.head_count_kv", heads), intermediate_size=num("feed_forward_length"),
        vocab_size=tok.vocab_size, tokenizer_size=tok.vocab_size, context_length=num("context_length", 2048),
        rope={"type": "llama3" if "llama.rope.dimension_count" in meta else "default",
              "theta": float(meta.get("llama.rope.freq_base", 10000.0))},
        dtype=FILE_TYPES.get(meta.get("general.file_type"), meta.get("general.file_type")),
        weights=[p.name], special=ids, is_userlm=ids is not None and ids.end_conversation is not None,
        template_sha256=template_sha256(template),
        template_is_userlm=template is not None and template.strip() == USERLM_TEMPLATE.strip(),
        add_bos_token=tok.add_bos_token, eos={k: v for k, v in eos.items() if v is not None},
        warnings=warnings,
        sampling={k.split(".")[-1]: meta[k] for k in meta if k.startswith("general.sampling.")},
    )


# llama_ftype values of the types we write (gguf's LlamaFileType)
FILE_TYPES = {"0": "F32", "1": "F16", "7": "Q8_0", "18": "Q6_K", "17": "Q5_K_M", "15": "Q4_K_M",
              "30": "IQ4_XS", "32": "BF16"}

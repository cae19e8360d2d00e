"""What a model path is, read from its files without loading any weights: its format, and
the facts every format reports (``ModelInfo``).  Each backend inspects its own format
(``backends.torch.inspect``, ``backends.llama_cpp.inspect``); ``backends.inspect_model``
dispatches.  Nothing here imports a backend.
"""

from __future__ import annotations

import functools
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..text.prompt_format import SpecialIds
from ..text.tokenizer import read_json
from ..util.errors import UserError
from ..util.files import hash_file
from .manifest import MANIFEST, find_artifact, precision_rank, read_manifest
from .safetensors import read_header

LLAMA_ARCHS = {"LlamaForCausalLM"}


def model_format(path: str | Path) -> str:
    """'hf' for a checkpoint directory, 'gguf' for a GGUF file, 'onnx' for an ONNX Runtime GenAI
    directory (``genai_config.json``); a conversion's output directory says in its manifest (read
    from its files, never from its name).  A path is read once per process while it is unchanged: commands ask for the
    format of the same path several times (options, backend choice, inspection)."""
    p = Path(path)
    try:
        st = p.stat()
    except OSError:
        raise UserError(f"{path}: no such file or directory") from None
    return _format(str(p.resolve()), st.st_mtime_ns, st.st_size, str(path))


@functools.lru_cache(maxsize=64)
def _format(resolved: str, mtime_ns: int, size: int, shown: str) -> str:
    p, path = Path(resolved), shown
    if p.is_dir():
        manifest = read_json(p / "manifest.json", missing_ok=True)
        if isinstance(manifest, dict) and isinstance(manifest.get("format"), str):
            return manifest["format"]
        if (p / "genai_config.json").is_file():
            return "onnx"
        if (p / "config.json").is_file():
            return "hf"
        raise UserError(f"{path}: not a model directory (no config.json)")
    with open(p, "rb") as f:
        magic = f.read(4)
    if magic == b"GGUF":
        return "gguf"
    raise UserError(f"{path}: not a model (expected a checkpoint directory, a GGUF file or an ONNX model directory)")


@dataclass
class ModelInfo:
    path: str
    format: str
    architecture: str
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    intermediate_size: int | None  # None: not recorded where it was read
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
        for name in st:
            check_complete(path / name)
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


def check_complete(path: Path) -> None:
    """A safetensors file holds every byte its header promises (an interrupted download does not);
    reads only the header."""
    header, data_start = read_header(path)
    try:
        end = max((int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"), default=0)
    except (KeyError, TypeError, ValueError, IndexError):
        raise UserError(f"{path}: corrupt safetensors header") from None
    size = path.stat().st_size
    if data_start + end > size:
        raise UserError(f"{path}: truncated: its tensors end at byte {data_start + end} but the file has {size} "
                        "bytes (incomplete download?)")


def rope_facts(config: dict) -> dict:
    params = config.get("rope_parameters") or config.get("rope_scaling") or {}
    return {
        "type": params.get("rope_type") or params.get("type") or "default",
        "theta": params.get("rope_theta", config.get("rope_theta", 10000.0)),
        **{k: v for k, v in params.items() if k not in ("rope_type", "type", "rope_theta")},
    }


def check_llama_config(config: dict, path: str | Path, need: str) -> list[str]:
    """The architectures of a Llama config; a clear error for anything else."""
    if not isinstance(config, dict):
        raise UserError(f"{path}/config.json: not a JSON object")
    archs = config.get("architectures") or []
    if config.get("model_type") != "llama" or not LLAMA_ARCHS.intersection(archs):
        raise UserError(f"{path}: not a Llama checkpoint (model_type={config.get('model_type')!r}, "
                        f"architectures={archs}); {need}")
    return archs


# The longest context a config may claim: 16M positions (Llama 3.1 says 131,072).  It is not held in
# the weight files, so it cannot be checked against them; GGUF stores it as a u32.
MAX_CONTEXT = 2**24
# Bytes a parameter takes at the least in the weight files: 4 bits (a packed-int4 checkpoint); F16/BF16
# take 2.  A config that implies more parameters than the files can hold at this rate lies.
MIN_BYTES_PER_PARAM = 0.5


def _positive_int(config: dict, key: str, default=None) -> int:
    value = config.get(key, default)
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise UserError(f"config.json: {key} must be a positive integer (got {str(value)[:40]})")
    return value


def bound_llama_config(config: dict, path: str | Path, weight_paths) -> None:
    """A Llama ``config.json`` whose sizes the weight files on disk can hold, checked before anything
    is allocated from it (issue 29: ``num_hidden_layers`` 1e9 made ``convert`` plan tensors for
    minutes, ``vocab_size`` 1e12 was a MemoryError, ``max_position_embeddings`` 2**62 a struct
    error).  Exact integer arithmetic; one ``UserError`` naming the value that cannot be."""
    where = f"{path}/config.json"
    try:
        hidden = _positive_int(config, "hidden_size")
        n_layer = _positive_int(config, "num_hidden_layers")
        n_head = _positive_int(config, "num_attention_heads")
        n_kv = _positive_int(config, "num_key_value_heads", n_head) if config.get("num_key_value_heads") \
            else n_head
        ffn = _positive_int(config, "intermediate_size")
        vocab = _positive_int(config, "vocab_size")
        head_dim = _positive_int(config, "head_dim") if config.get("head_dim") else max(1, hidden // n_head)
        context = _positive_int(config, "max_position_embeddings", 2048)
    except UserError as exc:
        raise UserError(f"{path}/{exc}") from None
    if context > MAX_CONTEXT:
        raise UserError(f"{where}: max_position_embeddings {context:,} is past the {MAX_CONTEXT:,} positions "
                        "any model has")
    on_disk = 0
    for w in weight_paths:
        try:
            on_disk += Path(w).stat().st_size
        except OSError:
            pass  # a missing file is reported by whoever reads it, with its name
    embed = vocab * hidden * (1 if config.get("tie_word_embeddings") else 2)
    per_layer = 2 * hidden + hidden * head_dim * (2 * n_head + 2 * n_kv) + 3 * hidden * ffn
    implied = embed + n_layer * per_layer + hidden
    if implied * MIN_BYTES_PER_PARAM > on_disk:
        raise UserError(f"{where}: its sizes (num_hidden_layers {_n(n_layer)}, hidden_size {_n(hidden)}, "
                        f"intermediate_size {_n(ffn)}, vocab_size {_n(vocab)}) need at least {_n(implied)} "
                        f"parameters, more than the weight files' {on_disk:,} bytes can hold")


def check_config_matches_weights(config: dict, path: str | Path, safetensors_paths) -> None:
    """The sizes ``config.json`` states against the tensors the safetensors headers list (headers
    only): the embedding's shape and the number of layers.  A config that does not describe its
    weights was reported healthy by ``info`` and failed only when a backend loaded it."""
    import re

    layers, embed = set(), None
    for f in safetensors_paths:
        header, _ = read_header(Path(f))
        for name, entry in header.items():
            m = re.match(r"model\.layers\.(\d+)\.", name)
            if m:
                layers.add(int(m.group(1)))
            elif name == "model.embed_tokens.weight" and isinstance(entry, dict):
                embed = entry.get("shape")
    where = f"{path}/config.json"
    stated = [config.get("vocab_size"), config.get("hidden_size")]
    if embed is not None and list(embed) != stated:
        raise UserError(f"{where}: vocab_size {stated[0]} and hidden_size {stated[1]} do not match the weights' "
                        f"embedding, of shape {list(embed)}")
    if layers and len(layers) != config.get("num_hidden_layers"):
        raise UserError(f"{where}: num_hidden_layers {config.get('num_hidden_layers')} does not match the "
                        f"{len(layers)} layers in the weights")


def _n(n: int) -> str:
    digits = len(str(n))
    return f"{n:,}" if digits <= 15 else f"about 10^{digits - 1}"


# ---------------------------------------------------------------- a converted artifact and its manifest

@dataclass
class Listing:
    """What the ``manifest.json`` beside an artifact (a GGUF file, an ONNX directory) says of it."""

    path: Path
    manifest_path: Path
    manifest: dict | None  # None: no manifest.json there
    entry: dict | None  # None: the manifest does not list this artifact

    @property
    def note(self) -> str | None:
        """Why the artifact cannot be checked against a manifest (None when it is listed)."""
        if self.manifest is None:
            return ("no manifest.json beside it (not written by userlm-local convert, or copied away from its "
                    "output directory): its files and conversion-time validation cannot be checked")
        if self.entry is None:
            return (f"{self.manifest_path} does not list it (left from an earlier conversion into that directory, "
                    "or copied in): its files and conversion-time validation cannot be checked")
        return None

    @property
    def validation(self) -> str:
        """'passed', 'FAILED ...' (why), 'not validated ...' or 'unknown ...', in one line."""
        if self.entry is None:
            return "unknown (not listed in a manifest)"
        v = self.entry.get("validation")
        if isinstance(v, str):
            return f"not validated ({v})"
        if not isinstance(v, dict):
            return "unknown (the manifest records none)"
        if v.get("passed"):
            return "passed"
        return "FAILED at convert time: " + "; ".join(_failures(v))

    @property
    def failed(self) -> bool:
        v = (self.entry or {}).get("validation")
        return isinstance(v, dict) and not v.get("passed")


def _failures(v: dict) -> list[str]:
    """The failed checks of a manifest's validation record, each in a few words."""
    out = []
    for key, c in v.items():
        if key == "runtime_tokenizer" or not isinstance(c, dict) or c.get("ok") is not False:
            continue  # (onnxruntime-genai's own tokenizer is recorded, not gated)
        if "mean_kld" in c:
            gates = c.get("gates") or {}
            kld_gate = c.get("gate_mean_kld", gates.get("mean_kld_max"))
            top1_gate = c.get("gate_top1", gates.get("top1_min"))
            out.append(f"{key}: mean KLD {c['mean_kld']:.3g}" + (f" (gate {kld_gate:g})" if kld_gate is not None else "")
                       + f", top-1 {c.get('top1_agreement', 0):.1%}" + (f" (gate {top1_gate:.0%})" if top1_gate else ""))
        elif c.get("error"):
            out.append(f"{key}: {str(c['error']).splitlines()[0]}")
        else:
            out.append(f"{key} check failed")
    return out or ["see the manifest"]


def listing(path: str | Path, fmt: str) -> Listing:
    """The manifest beside ``path`` (a GGUF file or an ONNX directory) and its entry for it; an entry
    counts only in a manifest of the same format."""
    p = Path(path)
    named = p if p.name not in ("", ".", "..") else p.resolve()
    directory = named.parent
    try:
        manifest = read_manifest(directory)
    except UserError:  # someone else's manifest.json beside a bare model file: not ours, so none
        manifest = None
    if manifest is not None and "artifacts" not in manifest:
        manifest = None
    entry = None
    if manifest is not None and manifest.get("format", "gguf") == fmt:
        entry = next((a for a in manifest.get("artifacts", []) if isinstance(a, dict) and a.get("file") == named.name),
                     None)
    return Listing(p, directory / MANIFEST, manifest, entry)


def is_output_directory(path: str | Path) -> bool:
    """A ``convert`` output directory (a manifest of artifacts), not a model directory itself."""
    p = Path(path)
    return (p.is_dir() and (p / "manifest.json").is_file() and not (p / "genai_config.json").is_file()
            and not (p / "config.json").is_file())


def pick_artifact(directory: str | Path, quant: str | None = None) -> tuple[dict, dict, Path, str]:
    """(manifest, entry, path, why) of a ``convert`` output directory's artifact: ``quant``'s, else the
    highest-precision one that passed its validation (the highest-precision one, said so, when none did)."""
    directory = Path(directory)
    if quant is not None:
        manifest, art, where = find_artifact(directory, quant)
        return manifest, art, where, f"--quant {quant}"
    manifest = read_manifest(directory)
    if manifest is None:
        raise UserError(f"{directory}: no {MANIFEST} (convert with 'userlm-local convert')")
    arts = [a for a in manifest.get("artifacts", []) if isinstance(a, dict) and a.get("file")]
    if not arts:
        raise UserError(f"{directory}: the manifest lists no artifacts")

    def failed(a):
        v = a.get("validation")
        return isinstance(v, dict) and not v.get("passed")

    def rank(a):
        return (not (directory / a["file"]).exists(), failed(a),
                precision_rank(a.get("quant")))

    art = sorted(arts, key=rank)[0]
    if len(arts) == 1:
        why = "the only artifact in the manifest"
    elif failed(art):
        why = "no artifact in the manifest passed its validation: the highest-precision one"
    elif any(failed(a) for a in arts):
        why = "the highest-precision artifact that passed its validation"
    else:
        why = "the highest-precision artifact"
    return manifest, art, directory / art["file"], why


def check_listed_files(lst: Listing, *, hashes: bool = False) -> None:
    """The artifact's files against its manifest entry: every file there, of the recorded size (cheap),
    and with ``hashes`` of the recorded sha256 (reads every byte).  One line (UserError) when damaged."""
    if lst.entry is None:
        return
    p, entry = lst.path, lst.entry
    if p.is_dir():
        files = entry.get("files") if isinstance(entry.get("files"), dict) else {}
        missing = [n for n in files if not (p / n).is_file()]
        if missing:
            raise UserError(f"{p}: damaged: {', '.join(missing)} missing (listed in {lst.manifest_path}); "
                            "convert it again")
        size = sum((p / n).stat().st_size for n in files)
    else:
        files = {p.name: entry.get("sha256")}
        size = p.stat().st_size
        p = p.parent
    want = entry.get("bytes")
    if isinstance(want, int) and size != want:
        raise UserError(f"{lst.path}: damaged: {size} bytes where {lst.manifest_path} recorded {want} "
                        "(truncated or changed since conversion); convert it again")
    if hashes:
        bad = [n for n, h in files.items() if isinstance(h, str) and hash_file(p / n).hexdigest() != h]
        if bad:
            raise UserError(f"{lst.path}: damaged: the sha256 of {', '.join(bad)} differs from {lst.manifest_path}; "
                            "convert it again")


def failed_warning(lst: Listing) -> str:
    return (f"this artifact failed its validation at convert time: it may not behave like its source "
            f"(see {lst.manifest_path}; convert it again, or use a type that passed)")


_WARNED: set[str] = set()


def warn_failed_validation(lst: Listing) -> None:
    """One line on stderr (once per artifact and process) when a loaded artifact failed its validation."""
    import sys

    key = str(lst.path.resolve())
    if lst.failed and key not in _WARNED:
        _WARNED.add(key)
        print(f"warning: {lst.path}: {lst.validation} (see {lst.manifest_path}); it may not behave like its source",
              file=sys.stderr)

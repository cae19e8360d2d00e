"""``to_gguf``: a Hugging Face Llama checkpoint -> a set of GGUF files + ``manifest.json``.

Order of work (every input problem is found before the first byte is written):
1. read and check the source (config, tokenizer, safetensors headers), the quant list,
   the output paths (no overwrite without ``force``) and the free disk space;
2. write the F16/BF16 files with our streaming writer (it hashes what it writes; the source's
   sha256 is computed on a thread alongside, or first when ``out`` already has a manifest);
3. if any quantized type is asked for: the F16 (BF16 for a BF16 checkpoint) file is the
   input of ``llama_model_quantize`` — kept when it was asked for, else a temporary file;
4. the importance matrix (computed with torch, or read from a file) when asked for;
5. each artifact is validated while still a temporary file, renamed into place, and
   recorded in the manifest; the manifest is rewritten after every artifact.
"""

from __future__ import annotations

import functools
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..text.prompt_format import ChatFormat
from ..text.tokenizer import Tokenizer
from ..util.errors import UserError
from ..util.files import Staged, disk_errors, free_bytes
from ..util.machine import meminfo
from . import manifest as mf
from .calibration import calibration_ids
from .gguf_writer import _gguf, write_gguf
from .imatrix import ImatrixResult, compute_imatrix, load_imatrix, save_imatrix
from .layerwise import memory_needed
from .quantize import QUANTS, QuantType, llama_cpp_module, parse_quants, quantize
from .source import BackgroundHashes, Source, open_source
from .validate import llama_logits, logit_conversations, torch_references, validate_artifact

IMATRIX_FILE = "imatrix.gguf"


@dataclass
class Result:
    manifest: dict
    files: list[Path]
    failed: list[str]  # artifacts whose validation failed (they are kept, marked in the manifest)
    seconds: float


@dataclass
class Options:
    force: bool = False
    name: str | None = None
    allow_non_userlm: bool = False
    imatrix: str | None = None  # None | "compute" | path of a GGUF imatrix
    calibration: str = "auto"
    calibration_conversations: int = 64
    calibration_tokens: int = 512
    imatrix_dtype: str = "float32"
    validate: bool = True
    logit_check: bool = True
    threads: int | None = None
    progress: bool = True
    log: object = field(default=None)

    def say(self, msg: str) -> None:
        (self.log or (lambda m: print(m, file=sys.stderr, flush=True)))(msg)


def available_memory() -> int | None:
    return meminfo("MemAvailable")


def artifact_path(out: Path, source: Source, q: QuantType) -> Path:
    return out / f"{source.name}-{q.label}.gguf"


def _check_outputs(out: Path, source: Source, quants: list[QuantType], opts: Options) -> dict[str, Path]:
    targets = {q.name: artifact_path(out, source, q) for q in quants}
    if opts.imatrix == "compute":
        targets["imatrix"] = out / IMATRIX_FILE
    if not opts.force:
        existing = [p.name for p in targets.values() if p.exists()]
        if existing:
            raise UserError(f"{out}: {', '.join(existing)} already exist{'s' if len(existing) == 1 else ''} "
                            "(pass --force to overwrite)")
    for p in targets.values():
        if p.exists() and p.is_dir():
            raise UserError(f"{p}: is a directory")
    return targets


def _check_space(out: Path, source: Source, quants: list[QuantType], base_is_temp: bool) -> None:
    n = source.n_params
    need = sum(n * q.bpw / 8 for q in quants) + (2 * n if base_is_temp else 0)
    free = free_bytes(out)
    if free < need * 1.02 + (16 << 20):
        raise UserError(f"{out}: not enough free disk space: about {need / 2**30:.1f} GiB needed, "
                        f"{free / 2**30:.1f} GiB free")


def to_gguf(src: str | Path, out: str | Path, quants: str | list[QuantType], **options) -> "Result":
    """Convert ``src`` to every type in ``quants`` under ``out`` (see ``Options`` for the options)."""
    return Conversion(src, out, quants, Options(**options)).run()


class Conversion:
    """One ``to_gguf`` call: ``__init__`` checks every input (nothing is written before it
    returns), ``run`` does the module docstring's steps 2 to 5 as ``write_floats``,
    ``importance_matrix`` and ``write_quantized``; ``commit`` validates and records one artifact."""

    def __init__(self, src: str | Path, out: str | Path, quants: str | list[QuantType], opts: Options):
        self.opts, self.t_start = opts, time.perf_counter()
        self.quants = parse_quants(quants) if isinstance(quants, str) else quants
        self.source = source = open_source(src, require_userlm=not opts.allow_non_userlm, name=opts.name)
        self.quantized = [q for q in self.quants if not q.ours]
        needs_im = [q.label for q in self.quantized if q.needs_imatrix]
        if needs_im and not opts.imatrix:
            raise UserError(f"{', '.join(needs_im)} needs an importance matrix: add --imatrix")
        if opts.imatrix and not self.quantized:
            raise UserError("--imatrix only applies to quantized types (q8_0, q6_k, q5_k_m, q4_k_m, iq4_xs)")
        _gguf()
        if self.quantized:
            llama_cpp_module()
        self.loaded_imatrix: ImatrixResult | None = None
        if opts.imatrix and opts.imatrix != "compute":
            path = Path(opts.imatrix)
            if not path.is_file():
                raise UserError(f"{path}: no such imatrix file")
            self.loaded_imatrix = load_imatrix(path)
        self.out = out = Path(out)
        if out.exists() and not out.is_dir():
            raise UserError(f"{out}: exists and is not a directory")
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UserError(f"{out}: cannot create the output directory ({exc.strerror or exc})") from None
        self.targets = _check_outputs(out, source, self.quants, opts)
        # the input of llama_model_quantize: F16 (BF16 for a BF16 checkpoint), or whichever float was asked for
        preferred = QUANTS["bf16"] if source.dtype == "BF16" else QUANTS["f16"]
        other = QUANTS["f16"] if preferred.name == "bf16" else QUANTS["bf16"]
        self.base_q = other if (preferred not in self.quants and other in self.quants) else preferred
        opts.say(f"source: {source.path} ({source.dtype}, {source.n_params / 1e6:.1f}M parameters, "
                 f"{len(source.tensors)} tensors)")
        # The source's checksum decides whether ``out`` may be written to (another source's artifacts
        # are there) and whether an F16 there can be reused: needed first only when ``out`` has a
        # manifest.  Otherwise it is computed on a thread while the first file is written.
        self.background: BackgroundHashes | None = None
        self.hash_alongside = mf.read_manifest(out) is None
        self._hashes = None
        if not self.hash_alongside:
            opts.say("hashing source files")
            self._hashes = source.file_hashes(progress=opts.progress)
            mf.check_compatible(out, self.common()["source"]["sha256"], opts.force)
        self.reused = None
        if self.quantized and self.base_q not in self.quants and not self.hash_alongside:
            self.reused = _reusable_base(out, self.common()["source"]["sha256"], [preferred, other])
            if self.reused is not None:
                self.base_q = self.reused[0]
                opts.say(f"quantizing from the existing {self.reused[1].name} (same source, checksum verified)")
        self.base_is_temp = bool(self.quantized) and self.base_q not in self.quants and self.reused is None
        _check_space(out, source, self.quants, self.base_is_temp)
        self.fmt = ChatFormat(Tokenizer.from_dir(source.path), require_userlm=not opts.allow_non_userlm)
        self.references = None  # torch logits on the check conversations, computed once
        self.manifest, self.failed = None, []
        self.base_path = self.reused[1] if self.reused else None
        self.base_logits, self.base_stage = None, None

    @functools.cached_property
    def _common(self) -> dict:
        hashes = self._hashes if self._hashes is not None else self.background.result()
        return mf.common_section(self.source, hashes)

    def common(self) -> dict:
        return self._common

    def run(self) -> Result:
        if self.hash_alongside:
            self.background = BackgroundHashes(self.source)
        try:
            self.write_floats()
            means, info = self.importance_matrix()
            self.write_quantized(means, info)
        finally:
            if self.base_stage is not None:
                self.base_stage.discard()
            if self.background is not None:
                self.background.stop()
        self.opts.say(f"done in {time.perf_counter() - self.t_start:.1f} s; manifest: {self.out / mf.MANIFEST}")
        return Result(self.manifest, [self.targets[q.name] for q in self.quants], self.failed,
                      time.perf_counter() - self.t_start)

    def torch_refs(self):
        if self.references is None:
            self.references = reference_logits(self.source, self.fmt, [q.label for q in self.quants if q.ours],
                                               self.opts)
        return self.references

    def float_refs(self, q: QuantType):
        refs = self.torch_refs()
        pick = (lambda k: refs) if isinstance(refs, str) else refs.get
        return [("logits", f"torch emulating {q.label} (matrices and matmul inputs rounded)", pick(q.label), True),
                ("logits_vs_fp32", "torch float32 on the checkpoint's weights", pick("F32"), False)]

    def commit(self, staged: Staged, q: QuantType, made_from: str, seconds: float, imatrix_info, refs,
               sha256: str | None = None):
        """Validate a staged artifact, rename it into place and record it in the manifest."""
        opts = self.opts
        entry = {"file": staged.dest.name, "quant": q.label, "ftype": q.ftype, "made_from": made_from,
                 "imatrix": imatrix_info, "seconds": round(seconds, 2)}
        logits = None
        if opts.validate:
            opts.say(f"validating {staged.dest.name}")
            entry["validation"], logits = validate_artifact(
                staged.tmp, self.source, references=refs() if callable(refs) else refs,
                allow_non_userlm=opts.allow_non_userlm, threads=opts.threads)
            if not entry["validation"]["passed"]:
                self.failed.append(staged.dest.name)
        else:
            entry["validation"] = "skipped: --no-validate"
        entry["bytes"] = staged.tmp.stat().st_size
        entry["sha256"] = sha256 or mf.sha256_file(staged.tmp)
        entry["created"] = mf.now()
        common = self.common()
        with disk_errors(staged.dest):
            staged.commit()
            self.manifest = mf.update(self.out, common, entry)
        opts.say(f"wrote {staged.dest} ({entry['bytes'] / 2**20:.1f} MiB)" + _summary(entry["validation"]))
        return logits

    def write_floats(self) -> None:
        """Step 2: the float files written by us (and the temporary input of quantization)."""
        opts, source = self.opts, self.source
        floats = [q for q in self.quants if q.ours]
        if self.base_is_temp:
            floats.append(self.base_q)
        for q in floats:
            keep = q in self.quants
            dest = self.targets[q.name] if keep else self.out / f"{source.name}-{q.label}.base.gguf"
            with disk_errors(dest):
                st = Staged(dest)
            try:
                opts.say(f"writing {q.label}{'' if keep else ' (temporary input for quantization)'}")
                t0 = time.perf_counter()
                with disk_errors(dest):
                    written = write_gguf(source, st.tmp, q.label, progress=opts.progress, threads=opts.threads)
                seconds = time.perf_counter() - t0
                if keep:
                    logits = self.commit(st, q, "source", seconds, None, lambda q=q: self.float_refs(q),
                                         written["sha256"])
                    if q == self.base_q:
                        self.base_path, self.base_logits = st.dest, logits
                else:
                    self.base_stage, self.base_path = st, st.tmp
                    st = None
            finally:
                if st is not None:
                    st.discard()

    def importance_matrix(self):
        """Step 4: (means per tensor, manifest entry) of the importance matrix, or (None, None)."""
        opts = self.opts
        if not (self.quantized and opts.imatrix):
            return None, None
        if self.loaded_imatrix is not None:
            result = self.loaded_imatrix
            info = {"file": str(Path(opts.imatrix).resolve()), "sha256": mf.sha256_file(Path(opts.imatrix)),
                    **result.describe()}
            return result.means(), info
        ids, origin = _calibration(self.fmt, opts)
        opts.say(f"computing the importance matrix on {len(ids)} conversations ({origin})")
        result = compute_imatrix(self.source, ids, origin=origin, dtype=opts.imatrix_dtype,
                                 chunk_size=opts.calibration_tokens, threads=opts.threads, progress=opts.progress)
        dest = self.targets["imatrix"]
        with disk_errors(dest), Staged(dest) as st:
            save_imatrix(result, st.tmp)
            st.commit()
        return result.means(), {"file": dest.name, "sha256": mf.sha256_file(dest), **result.describe()}

    def write_quantized(self, imatrix_means, imatrix_info) -> None:
        """Steps 3 and 5: each quantized type from the float base, validated against it."""
        opts = self.opts
        if not self.quantized:
            return
        base_name = self.reused[1].name if self.reused else (
            f"temporary {self.source.name}-{self.base_q.label}.gguf (deleted)" if self.base_is_temp
            else f"{self.source.name}-{self.base_q.label}.gguf")
        if opts.validate and self.base_logits is None:
            try:
                self.base_logits = llama_logits(self.base_path, logit_conversations(self.fmt),
                                                allow_non_userlm=opts.allow_non_userlm, threads=opts.threads)
            except ImportError:
                self.base_logits = None
        for q in self.quantized:
            dest = self.targets[q.name]
            with disk_errors(dest):
                st = Staged(dest)
            try:
                opts.say(f"quantizing to {q.label}{' with the importance matrix' if imatrix_means else ''}")
                t0 = time.perf_counter()
                with disk_errors(dest):
                    quantize(self.base_path, st.tmp, q, imatrix=imatrix_means, threads=opts.threads)
                self.commit(st, q, base_name, time.perf_counter() - t0, imatrix_info,
                            [("logits", f"{self.base_q.label} GGUF (llama.cpp)", self.base_logits, False)])
            finally:
                st.discard()


def reference_logits(source: Source, fmt: ChatFormat, roundings: list[str], opts: Options) -> dict | str:
    """The torch logits on the check conversations (``"F32"`` and each of ``roundings``), computed
    one layer at a time, or why they were skipped (``--no-logit-check``, not enough memory, no torch)."""
    need, avail = memory_needed(source), available_memory()
    if not opts.logit_check:
        return "skipped: --no-logit-check"
    if avail is not None and need > avail:
        reason = (f"skipped: the torch float32 reference needs ~{need / 2**30:.1f} GiB, "
                  f"{avail / 2**30:.1f} GiB available")
        opts.say(f"logit check {reason}")
        return reason
    opts.say("computing the torch float32 reference logits, one layer at a time")
    return torch_references(source, logit_conversations(fmt), roundings, threads=opts.threads, progress=opts.progress)


def _reusable_base(out: Path, source_sha: str, prefer: list[QuantType]):
    """An F16/BF16 artifact of the same source already in ``out`` (checksum verified), or None."""
    old = mf.read_manifest(out)
    if old is None or (old.get("source") or {}).get("sha256") != source_sha:
        return None
    for q in prefer:
        for a in old.get("artifacts", []):
            path = out / a.get("file", "")
            if a.get("quant") == q.label and path.is_file() and path.stat().st_size == a.get("bytes") \
                    and mf.sha256_file(path) == a.get("sha256"):
                return q, path
    return None


def _calibration(fmt: ChatFormat, opts: Options):
    return calibration_ids(fmt, source=opts.calibration, n=opts.calibration_conversations,
                           max_tokens=opts.calibration_tokens)


def _summary(v) -> str:
    if not isinstance(v, dict):
        return f"; validation {v}"
    parts = ["validation " + ("passed" if v.get("passed") else "FAILED")]
    tk = v.get("tokenization")
    if isinstance(tk, dict):
        parts.append(f"tokenization {tk['equal']}/{tk['cases']}")
    lg = v.get("logits")
    if isinstance(lg, dict):
        parts.append(f"KLD {lg['mean_kld']:.2e} top-1 {lg['top1_agreement']:.1%} vs {lg['reference']}")
    return "; " + ", ".join(parts)

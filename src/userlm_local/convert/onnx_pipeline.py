"""``to_onnx``: a Hugging Face Llama checkpoint -> one ONNX Runtime GenAI directory per type
(fp32, fp16, int8, int4) + ``manifest.json``, with the same contract as ``to_gguf``:
1. every input is checked before anything is written (source, types, outputs, free disk);
2. each type is written by ``onnx_export.write_onnx`` into a hidden temporary directory,
   streamed tensor by tensor;
3. it is validated there (``onnx_validate``): our tokenizer on its files against the source's,
   onnxruntime-genai's own tokenizer recorded beside it, a greedy decode, and its logits
   against the torch float32 reference with per-type KLD / same-top-1 gates;
4. it is renamed into place and recorded in the manifest (rewritten after every artifact).

A failed step removes the temporary directory; artifacts already committed stay, listed.
"""

from __future__ import annotations

import functools
import os
import shutil
import tempfile
import time
from pathlib import Path

from ..text.prompt_format import ChatFormat
from ..text.tokenizer import Tokenizer
from ..util.errors import UserError
from ..util.files import disk_errors, free_bytes
from . import manifest as mf
from .onnx_export import check_exportable, write_onnx
from .onnx_quant import ONNX_QUANTS, OnnxQuant
from .onnx_validate import validate_onnx
from .pipeline import Options, Result, _summary, reference_logits
from .source import BackgroundHashes, open_source


def parse_onnx_quants(spec: str) -> list[OnnxQuant]:
    names = [s.strip().lower() for s in spec.split(",") if s.strip()]
    if not names:
        raise UserError("--quant is empty")
    bad = [n for n in names if n not in ONNX_QUANTS]
    if bad:
        raise UserError(f"unknown ONNX type {bad[0]!r} (choose from {', '.join(ONNX_QUANTS)})")
    return [ONNX_QUANTS[n] for n in dict.fromkeys(names)]


def size_text(n: float) -> str:
    """Bytes in GiB from 1 GiB on, else in MiB ("0.0 GiB" said nothing on a nearly full disk)."""
    return f"{n / 2**30:.1f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"


def artifact_dir(out: Path, name: str, q: OnnxQuant) -> Path:
    return out / f"{name}-{q.label}"


def _imports(validate: bool) -> None:
    try:
        import onnx  # noqa: F401
    except ImportError:
        raise UserError("converting to ONNX needs the 'onnx' extra: pip install 'userlm-local[onnx]'") from None
    if validate:
        try:
            import onnxruntime_genai  # noqa: F401
        except ImportError:
            raise UserError("validating the ONNX files needs onnxruntime-genai: pip install 'userlm-local[onnx]' "
                            "(or pass --no-validate)") from None


def to_onnx(src: str | Path, out: str | Path, quants: str | list[OnnxQuant], **options) -> Result:
    return OnnxConversion(src, out, quants, Options(**options)).run()


class OnnxConversion:
    def __init__(self, src, out, quants, opts: Options):
        self.opts, self.t_start = opts, time.perf_counter()
        if opts.imatrix:
            raise UserError("--imatrix applies to GGUF quantization; the ONNX types are blockwise without one")
        self.quants = parse_onnx_quants(quants) if isinstance(quants, str) else quants
        _imports(opts.validate)
        self.source = source = open_source(src, require_userlm=not opts.allow_non_userlm, name=opts.name)
        check_exportable(source)
        self.out = out = Path(out)
        if out.exists() and not out.is_dir():
            raise UserError(f"{out}: exists and is not a directory")
        created = out  # the topmost directory this conversion creates (none when ``out`` exists)
        while not created.parent.exists():
            created = created.parent
        created = None if out.exists() else created
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UserError(f"{out}: cannot create the output directory ({exc.strerror or exc})") from None
        try:
            self._check_out(source, opts)
        except BaseException:
            if created is not None:  # a refusal leaves behind no directory it created (only empty ones go)
                for d in (out, *out.parents):
                    try:
                        d.rmdir()
                    except OSError:
                        break
                    if d == created:
                        break
            raise

    def _check_out(self, source, opts: Options) -> None:
        out = self.out
        old = mf.read_manifest(out)
        if old is not None and old.get("format", "gguf") != "onnx":
            raise UserError(f"{out}: holds {old.get('format', 'gguf').upper()} artifacts; write ONNX to another --out")
        self.targets = {q.name: artifact_dir(out, source.name, q) for q in self.quants}
        existing = [p.name for p in self.targets.values() if p.exists()]
        if existing and not opts.force:
            raise UserError(f"{out}: {', '.join(existing)} already exist{'s' if len(existing) == 1 else ''} "
                            "(pass --force to overwrite)")
        need = sum(source.n_params * q.bpw / 8 for q in self.quants) + sum(
            source.params.context_length * source.params.head_dim * 4 for _ in self.quants)
        free = free_bytes(out)
        if free < need * 1.05 + (16 << 20):
            raise UserError(f"{out}: not enough free disk space: about {size_text(need * 1.05 + (16 << 20))} "
                            f"needed, {size_text(free)} free")
        opts.say(f"source: {source.path} ({source.dtype}, {source.n_params / 1e6:.1f}M parameters, "
                 f"{len(source.ckpt.tensors)} tensors)")
        self.hashes: BackgroundHashes | None = None
        if old is not None:
            opts.say("hashing source files")
            self._files = source.file_hashes(progress=opts.progress)
            mf.check_compatible(out, mf.combined_sha256(self._files), opts.force)
        else:
            self._files = None
        self.manifest, self.failed, self._refs = None, [], None

    @functools.cached_property
    def common(self) -> dict:
        files = self._files if self._files is not None else self.hashes.result()
        return mf.common_section(self.source, files, fmt="onnx")

    def references(self):
        """The torch float32 logits on the check conversations (once), or why they were skipped."""
        if self._refs is None:
            fmt = ChatFormat(Tokenizer.from_dir(self.source.path), require_userlm=not self.opts.allow_non_userlm)
            refs = reference_logits(self.source, fmt, [], self.opts)
            self._refs = refs if isinstance(refs, str) else refs["F32"]
        return self._refs

    def run(self) -> Result:
        if self._files is None:
            self.hashes = BackgroundHashes(self.source)
        try:
            for q in self.quants:
                self.write_one(q)
        finally:
            if self.hashes is not None:
                self.hashes.stop()
        self.opts.say(f"done in {time.perf_counter() - self.t_start:.1f} s; manifest: {self.out / mf.MANIFEST}")
        return Result(self.manifest, list(self.targets.values()), self.failed, time.perf_counter() - self.t_start)

    def write_one(self, q: OnnxQuant) -> None:
        opts, dest = self.opts, self.targets[q.name]
        with disk_errors(dest):
            tmp = Path(tempfile.mkdtemp(dir=self.out, prefix=f".{dest.name}.", suffix=".tmp"))
        try:
            opts.say(f"writing {q.label}")
            t0 = time.perf_counter()
            with disk_errors(dest), _bar(self.source.n_params, q.label, opts.progress) as tick:
                write_onnx(self.source, tmp, q, progress=tick)
            seconds = time.perf_counter() - t0
            entry = {"file": dest.name, "quant": q.label, "kind": "directory", "made_from": "source",
                     "seconds": round(seconds, 2)}
            if opts.validate:
                opts.say(f"validating {dest.name}")
                entry["validation"] = validate_onnx(tmp, self.source, q, self.references(),
                                                    allow_non_userlm=opts.allow_non_userlm, threads=opts.threads)
                if not entry["validation"]["passed"]:
                    self.failed.append(dest.name)
            else:
                entry["validation"] = "skipped: --no-validate"
            files = {f.name: mf.sha256_file(f) for f in sorted(tmp.iterdir())}
            entry.update(files=files, sha256=mf.combined_sha256(files),
                         bytes=sum(f.stat().st_size for f in tmp.iterdir()), created=mf.now())
            with disk_errors(dest):
                if dest.exists():
                    shutil.rmtree(dest)
                umask = os.umask(0)
                os.umask(umask)
                tmp.chmod(0o777 & ~umask)  # mkdtemp made it private
                tmp.rename(dest)
                self.manifest = mf.update(self.out, self.common, entry)
            opts.say(f"wrote {dest} ({entry['bytes'] / 2**20:.1f} MiB)" + _summary(entry["validation"]))
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)


class _bar:
    def __init__(self, total: int, label: str, progress: bool):
        self.total, self.label, self.progress = total, label, progress

    def __enter__(self):
        from tqdm import tqdm

        self.bar = tqdm(total=self.total, unit="param", unit_scale=True, desc=f"ONNX {self.label}",
                        disable=None if self.progress else True, leave=False)
        return self.bar.update

    def __exit__(self, *exc):
        self.bar.close()


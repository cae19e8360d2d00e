"""Our F16/BF16 GGUF writer, on ``gguf.GGUFWriter``, streaming tensor by tensor.

``GGUFWriter`` writes the header, the key/value metadata and the tensor-info table
(all small); the tensor data are then streamed by us, in row chunks read from the
memory-mapped safetensors, converted and written at the offsets the table promised.
Chunks are converted by a small thread pool (numpy releases the GIL) and written in
order; at most ``2 × threads`` chunks (~64 MiB of source each) are held in memory.
The file's sha256 is computed from the bytes as they are written, so the manifest
needs no second pass over a 16 GB output.

Tensor types follow llama.cpp's converter: 1-D tensors, norms and ``rope_freqs`` are
F32; every matrix is F16 (or BF16).  BF16 → BF16 and F16 → F16 copy the bits.
"""

from __future__ import annotations

import collections
import os
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from .. import __version__
from ..artifacts.quant_types import FLOAT_LABELS, file_type
from ..util.errors import UserError
from ..util.files import hash_file
from .llama_arch import permute_rows
from ..artifacts.safetensors import bf16_to_f32
from .source import PlannedTensor, Source

CHUNK_BYTES = 64 << 20
F16_MAX = 65504.0


def _gguf():
    try:
        import gguf
    except ImportError:
        raise UserError("GGUF conversion needs the 'gguf' package: pip install 'userlm-local[llama]'") from None
    return gguf


def f32_to_bf16_bits(x: np.ndarray) -> np.ndarray:
    """float32 -> bfloat16 bits with round-to-nearest-even, NaN kept quiet (as gguf-py does)."""
    n = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    rounded = ((n + (np.uint32(0x7FFF) + ((n >> np.uint32(16)) & np.uint32(1)))) >> np.uint32(16)).astype(np.uint16)
    nan = (n & np.uint32(0x7FFFFFFF)) > np.uint32(0x7F800000)
    if nan.any():
        rounded[nan] = ((n[nan] >> np.uint32(16)) | np.uint32(64)).astype(np.uint16)
    return rounded


def tensor_type(t: PlannedTensor, out: str) -> str:
    return "F32" if t.float_only else out


def _convert(t: PlannedTensor, raw: np.ndarray, src_dtype: str, out: str) -> np.ndarray:
    """Raw checkpoint values (uint16 bits for BF16) -> the bytes GGUF stores."""
    if out == src_dtype and out in ("F16", "BF16", "F32"):
        return np.ascontiguousarray(raw)
    if src_dtype == "BF16":
        f32 = bf16_to_f32(np.asarray(raw))
    else:
        f32 = np.asarray(raw, dtype=np.float32)
    if out == "F32":
        return np.ascontiguousarray(f32, dtype=np.float32)
    if out == "BF16":
        return f32_to_bf16_bits(f32)
    with np.errstate(over="ignore"):  # reported below, as one line
        half = f32.astype(np.float16)
    if not np.isfinite(half).all() and np.isfinite(f32).all():
        big = float(np.abs(f32).max())
        raise UserError(f"tensor {t.name} has values up to {big:.4g}, beyond float16's {F16_MAX:g}: "
                        "convert to bf16 instead")
    return half


def _chunk_jobs(source: Source, t: PlannedTensor, out: str) -> Iterator[Callable[[], np.ndarray]]:
    """One job per chunk of a tensor, in file order; each job returns the converted bytes."""
    if t.ref is None:
        yield lambda: _convert(t, t.data, "F32", out)
        return
    ref = t.ref
    row_bytes = max(1, ref.row_numel) * 4
    rows = max(1, CHUNK_BYTES // row_bytes)
    if t.permute:  # whole heads per chunk
        hd = source.params.head_dim
        rows = max(hd, rows // hd * hd)

    def job(raw) -> np.ndarray:
        if t.permute:
            raw = permute_rows(np.asarray(raw), source.params.head_dim)
        return _convert(t, raw, ref.dtype, out)

    for _, raw in source.ckpt.row_chunks(ref, rows):
        yield lambda raw=raw: job(raw)


def in_order(jobs: Iterable[Callable[[], np.ndarray]], threads: int) -> Iterator[np.ndarray]:
    """Run ``jobs`` on ``threads`` threads, yielding results in job order, ``2 × threads`` ahead at most."""
    if threads <= 1:
        for job in jobs:
            yield job()
        return
    pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="gguf-convert")
    pending: collections.deque = collections.deque()
    try:
        for job in jobs:
            pending.append(pool.submit(job))
            if len(pending) >= 2 * threads:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _add_metadata(w, gguf, source: Source, out: str) -> None:
    p, tok = source.params, source.tokenizer
    w.add_type(gguf.GGUFType.MODEL)
    w.add_name(source.name)
    w.add_block_count(p.n_layer)
    w.add_context_length(p.context_length)
    w.add_embedding_length(p.hidden)
    w.add_feed_forward_length(p.ffn)
    w.add_head_count(p.n_head)
    w.add_head_count_kv(p.n_kv_head)
    w.add_rope_freq_base(float(p.rope.get("theta", 10000.0)))
    w.add_layer_norm_rms_eps(p.rms_eps)
    if p.head_dim_explicit:
        w.add_key_length(p.head_dim)
        w.add_value_length(p.head_dim)
    if p.rope_type == "linear":
        w.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        w.add_rope_scaling_factor(float(p.rope["factor"]))
    w.add_file_type(file_type(out))
    w.add_vocab_size(p.vocab_size)
    w.add_rope_dimension_count(p.head_dim)
    w.add_quantization_version(gguf.GGML_QUANT_VERSION)
    # tokenizer
    w.add_tokenizer_model(tok.model)
    w.add_tokenizer_pre(tok.pre)
    w.add_token_list(tok.tokens)
    w.add_token_types(tok.token_types)
    w.add_token_merges(tok.merges)
    if tok.bos_id is not None:
        w.add_bos_token_id(tok.bos_id)
    w.add_eos_token_id(tok.eos_id)
    w.add_eot_token_id(tok.eot_id)
    w.add_add_bos_token(False)
    w.add_add_eos_token(False)
    if tok.chat_template is not None:
        w.add_chat_template(tok.chat_template)
    # sampling defaults from generation_config.json
    s = source.sampling()
    for key, method, value in (("temperature", "add_sampling_temp", s.get("temperature")),
                               ("top_p", "add_sampling_top_p", s.get("top_p")),
                               ("top_k", "add_sampling_top_k", s.get("top_k"))):
        if value is None:
            continue
        if hasattr(w, method):
            getattr(w, method)(int(value) if key == "top_k" else float(value))
        elif key == "top_k":
            w.add_int32(f"general.sampling.{key}", int(value))
        else:
            w.add_float32(f"general.sampling.{'temp' if key == 'temperature' else key}", float(value))
    w.add_string("userlm_local.version", __version__)


def write_gguf(source: Source, path: Path, out: str, *, progress: bool = True,
               threads: int | None = None) -> dict:
    """Write ``source`` as an ``out`` ("F16" | "BF16") GGUF file at ``path``.

    Returns ``{"tensors", "bytes", "sha256"}``; the checksum is of the bytes written."""
    if out not in FLOAT_LABELS:
        raise ValueError(out)
    gguf = _gguf()
    qt = gguf.GGMLQuantizationType
    np_types = {"F32": (np.float32, qt.F32), "F16": (np.float16, qt.F16), "BF16": (np.uint16, qt.BF16)}
    w = gguf.GGUFWriter(path=None, arch="llama")
    _add_metadata(w, gguf, source, out)
    plan = []
    for t in source.tensors:
        ttype = tensor_type(t, out)
        np_type, raw_type = np_types[ttype]
        nbytes = t.numel * np.dtype(np_type).itemsize
        w.add_tensor_info(t.name, t.shape, np.dtype(np_type), nbytes, raw_dtype=raw_type)
        plan.append((t, ttype, nbytes))
    w.write_header_to_file(path=path)
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    fout = w.fout[0]
    fout.flush()
    digest = hash_file(path, limit=fout.tell())  # the header GGUFWriter wrote
    align = w.data_alignment
    threads = threads or os.cpu_count() or 1

    def pad(n: int) -> None:
        extra = (-n) % align
        if extra:
            fout.write(b"\0" * extra)
            digest.update(b"\0" * extra)

    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=sum(n for _, _, n in plan), unit="B", unit_scale=True, disable=None,
                   desc=f"writing {path.name.split('.tmp')[0].lstrip('.')}", leave=False)
    try:
        pad(fout.tell())
        results = in_order((job for t, ttype, _ in plan for job in _chunk_jobs(source, t, ttype)), threads)
        try:
            for t, _, nbytes in plan:
                written = 0
                while written < nbytes:
                    data = next(results)
                    write_chunk(fout, data, digest)
                    written += data.nbytes
                    if bar is not None:
                        bar.update(data.nbytes)
                if written != nbytes:
                    raise RuntimeError(f"tensor {t.name}: wrote {written} bytes, expected {nbytes}")
                pad(nbytes)
                if bar is not None:
                    bar.set_postfix_str(t.name, refresh=False)
        finally:
            results.close()  # stops the conversion threads, also on failure
        fout.flush()
    finally:
        if bar is not None:
            bar.close()
        w.close()
    return {"tensors": len(plan), "bytes": path.stat().st_size, "sha256": digest.hexdigest()}


def write_chunk(fout, data: np.ndarray, digest=None) -> None:
    """One write of tensor bytes (a seam for tests that simulate a full disk)."""
    view = memoryview(np.ascontiguousarray(data)).cast("B")
    fout.write(view)
    if digest is not None:
        digest.update(view)

"""Memory-mapped, streaming reader of safetensors checkpoints (no torch).

A safetensors file is ``u64 little-endian header length`` + ``JSON header`` + raw data.
The header maps each tensor name to ``{"dtype", "shape", "data_offsets": [begin, end]}``
(offsets relative to the end of the header).  Sharded checkpoints list
``weight_map: {tensor name: file}`` in ``model.safetensors.index.json``.

Every tensor is checked against the file size when the checkpoint is opened, so a
truncated download is a one-line ``UserError`` before anything is written.  Data are
read through a per-tensor ``numpy.memmap`` in row chunks that is dropped after use, so
the resident set stays near one chunk, however large the model.
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from ..util import jsonio
from ..util.errors import UserError

INDEX_FILE = "model.safetensors.index.json"
MAX_HEADER = 100 * 1024 * 1024  # the format's own limit

# safetensors dtype -> (numpy dtype used to read the raw bytes, item size)
RAW_DTYPES = {"F32": np.dtype("<f4"), "F16": np.dtype("<f2"), "BF16": np.dtype("<u2")}


@dataclass(frozen=True)
class TensorRef:
    """Where one tensor's bytes live."""

    name: str
    dtype: str  # "F32" | "F16" | "BF16"
    shape: tuple[int, ...]
    file: Path
    offset: int  # absolute byte offset in ``file``
    nbytes: int

    @property
    def n_rows(self) -> int:
        return self.shape[0] if self.shape else 1

    @property
    def row_numel(self) -> int:
        return int(np.prod(self.shape[1:], dtype=np.int64)) if len(self.shape) > 1 else 1


def bf16_to_f32(raw: np.ndarray) -> np.ndarray:
    """bfloat16 bits (uint16) to float32: the high half of the float32 bit pattern."""
    out = np.empty(np.shape(raw), dtype=np.uint32)
    np.left_shift(raw, 16, out=out, dtype=np.uint32)  # one pass, no uint32 temporary
    return out.view(np.float32)


def read_header(path: Path) -> tuple[dict, int]:
    """The JSON header of one safetensors file and the absolute offset of its data."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise UserError(f"{path}: truncated safetensors file (no header)")
            (n,) = struct.unpack("<Q", head)
            if n > MAX_HEADER or 8 + n > size:
                raise UserError(f"{path}: not a safetensors file or truncated (header of {n} bytes)")
            raw = f.read(n)
    except OSError as exc:
        raise UserError(f"{path}: cannot read ({exc.strerror or exc})") from None
    try:
        header = jsonio.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, jsonio.TooDeep) as exc:
        raise UserError(f"{path}: corrupt safetensors header ({exc})") from None
    if not isinstance(header, dict):
        raise UserError(f"{path}: corrupt safetensors header (not an object)")
    return header, 8 + n


def _dim(d) -> int:
    """One dimension of a tensor's shape: a non-negative integer (bools and floats are not)."""
    if isinstance(d, bool) or not isinstance(d, int) or d < 0:
        raise ValueError(d)
    return d


def _refs_of_file(path: Path) -> dict[str, TensorRef]:
    header, data_start = read_header(path)
    size = path.stat().st_size
    refs = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype, shape = info["dtype"], tuple(_dim(d) for d in info["shape"])
            begin, end = (int(x) for x in info["data_offsets"])
        except (KeyError, TypeError, ValueError):
            raise UserError(f"{path}: corrupt safetensors header entry for {name!r}") from None
        if dtype not in RAW_DTYPES:
            raise UserError(f"{path}: tensor {name} has dtype {dtype}; only F32, BF16 and F16 checkpoints "
                            "can be converted")
        # exact integers: a 2**70 dimension must not wrap around in int64 and match a small size
        nbytes = math.prod(shape) * RAW_DTYPES[dtype].itemsize
        if end - begin != nbytes or begin < 0:
            raise UserError(f"{path}: corrupt safetensors header: {name} has {end - begin} bytes for shape {list(shape)}")
        if data_start + end > size:
            raise UserError(f"{path}: truncated: tensor {name} ends at byte {data_start + end} but the file "
                            f"has {size} bytes (incomplete download?)")
        refs[name] = TensorRef(name, dtype, shape, path, data_start + begin, nbytes)
    return refs


class Checkpoint:
    """All tensors of a checkpoint directory: one file, several files, or an indexed set of shards."""

    def __init__(self, directory: str | Path):
        self.dir = Path(directory)
        index = self.dir / INDEX_FILE
        if index.is_file():
            try:
                weight_map = jsonio.loads(index.read_text(encoding="utf-8"))["weight_map"]
                files = sorted(set(weight_map.values()))
            except (OSError, KeyError, TypeError, AttributeError, UnicodeDecodeError, json.JSONDecodeError,
                    jsonio.TooDeep) as exc:
                raise UserError(f"{index}: not a valid safetensors index ({exc})") from None
            # a shard is a file beside the index: never another type, a path elsewhere, or a directory
            bad = [f for f in files if not (isinstance(f, str) and f.endswith(".safetensors") and Path(f).name == f)]
            if bad:
                raise UserError(f"{index}: shard {bad[0]!r} is not a .safetensors file name beside the index")
        else:
            weight_map = None
            files = sorted(p.name for p in self.dir.glob("*.safetensors"))
        if not files:
            raise UserError(f"{self.dir}: no *.safetensors weights")
        self.files = [self.dir / f for f in files]
        self.tensors: dict[str, TensorRef] = {}
        for path in self.files:
            if not path.is_file():
                raise UserError(f"{path}: shard listed in {INDEX_FILE} is missing")
            for name, ref in _refs_of_file(path).items():
                if name in self.tensors:
                    raise UserError(f"{path}: tensor {name} is also in {self.tensors[name].file.name}")
                self.tensors[name] = ref
        if weight_map is not None:
            missing = [n for n in weight_map if n not in self.tensors]
            if missing:
                raise UserError(f"{index}: lists {len(missing)} tensors the shards lack (first: {missing[0]})")

    @property
    def dtypes(self) -> set[str]:
        return {r.dtype for r in self.tensors.values()}

    def __contains__(self, name: str) -> bool:
        return name in self.tensors

    def raw(self, ref: TensorRef) -> np.memmap:
        """A read-only memory map of the tensor's raw values (uint16 bits for BF16)."""
        shape = ref.shape if ref.shape else (1,)
        return np.memmap(ref.file, dtype=RAW_DTYPES[ref.dtype], mode="r", offset=ref.offset, shape=shape)

    def row_chunks(self, ref: TensorRef, rows_per_chunk: int) -> Iterator[tuple[int, np.ndarray]]:
        """Yield ``(first_row, raw rows)`` of a tensor.  Each chunk is its own small memory map,
        unmapped once the caller drops it, so resident memory stays near one chunk."""
        shape = ref.shape if ref.shape else (1,)
        dtype = RAW_DTYPES[ref.dtype]
        row_bytes = int(np.prod(shape[1:], dtype=np.int64)) * dtype.itemsize
        n = shape[0]
        step = max(1, rows_per_chunk)
        for start in range(0, n, step):
            rows = min(step, n - start)
            yield start, np.memmap(ref.file, dtype=dtype, mode="r", offset=ref.offset + start * row_bytes,
                                   shape=(rows, *shape[1:]))

    def to_f32(self, ref: TensorRef, raw: np.ndarray) -> np.ndarray:
        """Raw values of ``ref`` as float32 (a copy)."""
        if ref.dtype == "BF16":
            return bf16_to_f32(np.asarray(raw))
        return np.asarray(raw, dtype=np.float32).copy() if ref.dtype == "F32" else np.asarray(raw).astype(np.float32)

    def load_f32(self, ref: TensorRef) -> np.ndarray:
        """A whole (small) tensor as float32."""
        mm = self.raw(ref)
        try:
            return self.to_f32(ref, mm).reshape(ref.shape)
        finally:
            del mm

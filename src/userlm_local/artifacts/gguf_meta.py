"""A fast, read-only GGUF parser: key/values, tensor infos, tensor data as memory maps.

``gguf.GGUFReader`` builds a numpy view per array element, which takes ~15 s for a
Llama-3 vocabulary (128k tokens + 280k merges) and ~2 s for SmolLM2's 49k; this reader
decodes the same header in well under a second.  It is how we read GGUF metadata everywhere
(the conversion-time checks, a GGUF as a training base, the llama.cpp backend's inspection,
the tests).  Parsing needs only numpy; tensor types, sizes and dequantizing come from
gguf-py (``quant_types``), imported when a tensor is read.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..util.errors import UserError
from .quant_types import ggml_type, ggml_type_size

_SCALARS = {0: ("<B", 1), 1: ("<b", 1), 2: ("<H", 2), 3: ("<h", 2), 4: ("<I", 4), 5: ("<i", 4),
            6: ("<f", 4), 7: ("<?", 1), 10: ("<Q", 8), 11: ("<q", 8), 12: ("<d", 8)}
_NP = {0: "<u1", 1: "<i1", 2: "<u2", 3: "<i2", 4: "<u4", 5: "<i4", 6: "<f4", 7: "?", 10: "<u8", 11: "<i8",
       12: "<f8"}
STRING, ARRAY = 8, 9
# ggml type name -> numpy dtype of the float types read back as arrays (BF16 as its uint16 bits)
_FLOAT_DTYPES = {"F32": "<f4", "F16": "<f2", "BF16": "<u2"}


@dataclass
class TensorInfo:
    name: str
    shape: tuple[int, ...]  # numpy order (slowest dimension first)
    type: int  # ggml type
    offset: int  # absolute


class GGUFFile:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        try:
            self.buf = np.memmap(self.path, dtype=np.uint8, mode="r")
        except (OSError, ValueError) as exc:
            raise UserError(f"{path}: cannot read ({exc})") from None
        self.mv = memoryview(self.buf)  # header parsing on a memoryview: slicing a memmap is ~10x slower
        self.pos = 0
        if bytes(self.mv[:4]) != b"GGUF":
            raise UserError(f"{path}: not a GGUF file")
        self.pos = 4
        try:
            self._parse()
        except (struct.error, ValueError, OverflowError, MemoryError) as exc:  # truncated or damaged
            raise UserError(f"{path}: not a readable GGUF file (truncated or damaged: {exc})") from None

    def _parse(self) -> None:
        self.version = self._u("<I", 4)
        n_tensors, n_kv = self._u("<Q", 8), self._u("<Q", 8)
        self.kv: dict = {}
        for _ in range(n_kv):
            key = self._str()
            self.kv[key] = self._value(self._u("<I", 4))
        infos = []
        for _ in range(n_tensors):
            name = self._str()
            dims = [self._u("<Q", 8) for _ in range(self._u("<I", 4))]
            ttype, off = self._u("<I", 4), self._u("<Q", 8)
            infos.append((name, tuple(reversed(dims)), ttype, off))
        align = int(self.kv.get("general.alignment", 32))
        start = (self.pos + align - 1) // align * align
        self.tensors = {n: TensorInfo(n, s, t, start + o) for n, s, t, o in infos}
        if any(t.offset > len(self.buf) for t in self.tensors.values()):
            raise ValueError("tensor data past the end of the file")

    def _u(self, fmt: str, size: int):
        (v,) = struct.unpack_from(fmt, self.mv, self.pos)
        self.pos += size
        return v

    def _str(self) -> str:
        n = self._u("<Q", 8)
        s = str(self.mv[self.pos:self.pos + n], "utf-8", "replace")
        self.pos += n
        return s

    def _strings(self, count: int) -> list[str]:
        """``count`` strings in a row (a vocabulary): the hot loop of a header."""
        mv, pos, unpack, out = self.mv, self.pos, struct.unpack_from, []
        for _ in range(count):
            (n,) = unpack("<Q", mv, pos)
            pos += 8
            out.append(str(mv[pos:pos + n], "utf-8", "replace"))
            pos += n
        self.pos = pos
        return out

    def _value(self, vtype: int):
        if vtype == STRING:
            return self._str()
        if vtype == ARRAY:
            etype, n = self._u("<I", 4), self._u("<Q", 8)
            if etype in _NP:
                size = np.dtype(_NP[etype]).itemsize
                arr = np.frombuffer(self.buf, dtype=_NP[etype], count=n, offset=self.pos).copy()
                self.pos += n * size
                return arr.tolist()
            if etype == STRING:
                return self._strings(n)
            return [self._value(etype) for _ in range(n)]
        if vtype in _SCALARS:
            return self._u(*_SCALARS[vtype])
        raise UserError(f"{self.path}: unknown GGUF value type {vtype}")

    def tensor(self, name: str) -> np.ndarray:
        """A float tensor (F32/F16/BF16 as uint16 bits) as a read-only array in numpy order."""
        t = self.tensors[name]
        kind = ggml_type(t.type).name
        if kind not in _FLOAT_DTYPES:
            raise ValueError(f"{name}: ggml type {kind} is not a float type")
        n = int(np.prod(t.shape, dtype=np.int64))
        self._check_end(t, n * np.dtype(_FLOAT_DTYPES[kind]).itemsize)
        return np.frombuffer(self.buf, dtype=_FLOAT_DTYPES[kind], count=n, offset=t.offset).reshape(t.shape)

    def raw(self, name: str) -> np.ndarray:
        """A tensor's stored bytes (any ggml type), one row per row of the tensor: uint8 of shape
        ``(*shape[:-1], bytes per row)``, as gguf-py's ``dequantize`` takes them."""
        t = self.tensors[name]
        block, size = ggml_type_size(t.type)
        rows = int(np.prod(t.shape[:-1], dtype=np.int64))
        row_bytes = t.shape[-1] // block * size
        self._check_end(t, rows * row_bytes)
        return self.buf[t.offset:t.offset + rows * row_bytes].reshape(*t.shape[:-1], row_bytes)

    def dequantized(self, name: str) -> np.ndarray:
        """A tensor of any type gguf-py can dequantize, as float32 in numpy order."""
        from gguf.quants import dequantize

        t = self.tensors[name]
        return np.asarray(dequantize(self.raw(name), ggml_type(t.type)), dtype=np.float32).reshape(t.shape)

    def _check_end(self, t: TensorInfo, nbytes: int) -> None:
        if t.offset + nbytes > len(self.buf):
            raise UserError(f"{self.path}: truncated: tensor {t.name} ends at byte {t.offset + nbytes} but the file "
                            f"has {len(self.buf)} bytes")

    def tensor_bytes(self, name: str, nbytes: int) -> np.ndarray:
        t = self.tensors[name]
        return self.buf[t.offset:t.offset + nbytes]

"""A fast, read-only GGUF parser: key/values, tensor infos, tensor data as memory maps.

``gguf.GGUFReader`` builds a numpy view per array element, which takes ~15 s for a
Llama-3 vocabulary (128k tokens + 280k merges); this reader decodes the same header in
well under a second.  Used by the conversion-time checks and the tests.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..util.errors import UserError

_SCALARS = {0: ("<B", 1), 1: ("<b", 1), 2: ("<H", 2), 3: ("<h", 2), 4: ("<I", 4), 5: ("<i", 4),
            6: ("<f", 4), 7: ("<?", 1), 10: ("<Q", 8), 11: ("<q", 8), 12: ("<d", 8)}
_NP = {0: "<u1", 1: "<i1", 2: "<u2", 3: "<i2", 4: "<u4", 5: "<i4", 6: "<f4", 7: "?", 10: "<u8", 11: "<i8",
       12: "<f8"}
STRING, ARRAY = 8, 9
# ggml type -> (block size, bytes per block) for the types we read back
_TYPE_SIZES = {0: (1, 4), 1: (1, 2), 30: (1, 2)}


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
        self.pos = 0
        if bytes(self.buf[:4]) != b"GGUF":
            raise UserError(f"{path}: not a GGUF file")
        self.pos = 4
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

    def _u(self, fmt: str, size: int):
        (v,) = struct.unpack_from(fmt, self.buf, self.pos)
        self.pos += size
        return v

    def _str(self) -> str:
        n = self._u("<Q", 8)
        s = bytes(self.buf[self.pos:self.pos + n]).decode("utf-8", errors="replace")
        self.pos += n
        return s

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
            return [self._value(etype) for _ in range(n)]
        if vtype in _SCALARS:
            return self._u(*_SCALARS[vtype])
        raise UserError(f"{self.path}: unknown GGUF value type {vtype}")

    def tensor(self, name: str) -> np.ndarray:
        """A float tensor (F32/F16/BF16 as uint16 bits) as a read-only array in numpy order."""
        t = self.tensors[name]
        if t.type not in _TYPE_SIZES:
            raise ValueError(f"{name}: ggml type {t.type} is not a float type")
        dtype = {0: "<f4", 1: "<f2", 30: "<u2"}[t.type]
        n = int(np.prod(t.shape, dtype=np.int64))
        return np.frombuffer(self.buf, dtype=dtype, count=n, offset=t.offset).reshape(t.shape)

    def tensor_bytes(self, name: str, nbytes: int) -> np.ndarray:
        t = self.tensors[name]
        return self.buf[t.offset:t.offset + nbytes]

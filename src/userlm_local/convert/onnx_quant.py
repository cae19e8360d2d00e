"""Block quantization for ONNX Runtime's ``MatMulNBits`` and ``GatherBlockQuantized`` (numpy).

A weight ``W`` of shape [N, K] (Hugging Face's [out, in]) is cut along K into blocks of
``block`` values; each block gets one float scale and is stored symmetric, without zero points
(the operators then take the midpoint, 8 for 4 bits and 128 for 8 bits):

    m     = the block's value of largest magnitude (with its sign)
    scale = m / -2**(bits-1)
    q     = clip(round(v / scale) + 2**(bits-1), 0, 2**bits - 1)
    v'    = (q - 2**(bits-1)) * scale

Layouts: ``packed`` [N, K/block, block*bits/8] uint8 (4 bits: two values a byte, the first in the
low nibble), ``scales`` [N, K/block] float32.  K is zero-padded to a whole block.  This is
MLAS's symmetric blockwise quantizer (``quantize_matmul_4bits`` / ``_8bits`` in onnxruntime),
tested byte for byte against it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

BLOCK = 32


@dataclass(frozen=True)
class OnnxQuant:
    """One ``--quant`` type of the ONNX writer."""

    name: str  # fp32 | fp16 | int8 | int4
    bits: int | None  # None for float types
    float_dtype: str  # the dtype of activations, norms and the KV cache

    @property
    def label(self) -> str:
        return self.name.upper()

    @property
    def bpw(self) -> float:
        return {"fp32": 32, "fp16": 16, "int8": 9, "int4": 5}[self.name]


ONNX_QUANTS = {q.name: q for q in (OnnxQuant("fp32", None, "float32"), OnnxQuant("fp16", None, "float16"),
                                   OnnxQuant("int8", 8, "float32"), OnnxQuant("int4", 4, "float32"))}


def blocks_of(k: int, block: int = BLOCK) -> int:
    return (k + block - 1) // block


def quantize_rows(w: np.ndarray, bits: int, block: int = BLOCK) -> tuple[np.ndarray, np.ndarray]:
    """(packed uint8 [N, K/block, block*bits/8], scales float32 [N, K/block]) of float rows ``w``."""
    if bits not in (4, 8):
        raise ValueError(f"bits must be 4 or 8, not {bits}")
    w = np.asarray(w, dtype=np.float32)
    n, k = w.shape
    nb = blocks_of(k, block)
    if nb * block != k:
        w = np.pad(w, ((0, 0), (0, nb * block - k)))
    b = w.reshape(n, nb, block)
    idx = np.abs(b).argmax(axis=2)
    m = np.take_along_axis(b, idx[..., None], axis=2)[..., 0]
    mid = 1 << (bits - 1)
    scales = (m / -mid).astype(np.float32)
    inv = np.where(scales != 0, np.float32(1.0) / np.where(scales != 0, scales, 1), 0).astype(np.float32)
    q = np.clip(np.rint(b * inv[..., None]) + mid, 0, (1 << bits) - 1).astype(np.uint8)
    if nb * block != k:
        q.reshape(n, -1)[:, k:] = 0  # the padding is stored as zero bytes, as MLAS leaves it
    if bits == 4:
        q = q[..., 0::2] | (q[..., 1::2] << 4)
    return np.ascontiguousarray(q), scales


def dequantize_rows(packed: np.ndarray, scales: np.ndarray, bits: int, k: int, block: int = BLOCK) -> np.ndarray:
    """float32 [N, K] back from ``quantize_rows``'s output (the reference the operators compute)."""
    if bits == 4:
        q = np.empty(packed.shape[:2] + (packed.shape[2] * 2,), dtype=np.uint8)
        q[..., 0::2] = packed & 0x0F
        q[..., 1::2] = packed >> 4
    else:
        q = packed
    v = (q.astype(np.float32) - (1 << (bits - 1))) * scales[..., None]
    return v.reshape(packed.shape[0], -1)[:, :k]

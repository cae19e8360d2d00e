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

    name: str  # fp32 | fp16 | int8 | int4 | int4_mixed
    bits: int | None  # None for float types
    float_dtype: str  # the dtype of activations, norms and the KV cache
    bpw: float  # bits per weight, for the free-disk check
    symmetric: bool = True
    head_bits: int | None = None  # lm_head (default: ``bits``)
    wider: tuple[tuple[str, int], ...] = ()  # ("qkv" | "down", bits): those projections in more bits

    @property
    def label(self) -> str:
        return self.name.upper()


ONNX_QUANTS = {q.name: q for q in (
    OnnxQuant("fp32", None, "float32", 32), OnnxQuant("fp16", None, "float16", 16),
    OnnxQuant("int8", 8, "float32", 9), OnnxQuant("int4", 4, "float32", 5),
    # int4 where it costs little, 8 bits where 4 hurts most (as llama.cpp's Q4_K_M keeps attn_v, ffn_down and
    # the output in more bits): asymmetric 4-bit blocks, QKV, down_proj and lm_head in 8 bits
    OnnxQuant("int4_mixed", 4, "float32", 7, symmetric=False, head_bits=8, wider=(("qkv", 8), ("down", 8))),
)}


def blocks_of(k: int, block: int = BLOCK) -> int:
    return (k + block - 1) // block


def quantize_rows(w: np.ndarray, bits: int, block: int = BLOCK) -> tuple[np.ndarray, np.ndarray]:
    """(packed uint8 [N, K/block, block*bits/8], scales float32 [N, K/block]) of float rows ``w``."""
    n, k, nb, b = _blocks(w, bits, block)
    idx = np.abs(b).argmax(axis=2)
    m = np.take_along_axis(b, idx[..., None], axis=2)[..., 0]
    mid = 1 << (bits - 1)
    scales = (m / -mid).astype(np.float32)
    inv = np.where(scales != 0, np.float32(1.0) / np.where(scales != 0, scales, 1), 0).astype(np.float32)
    q = np.clip(np.rint(b * inv[..., None]) + mid, 0, (1 << bits) - 1).astype(np.uint8)
    if nb * block != k:
        q.reshape(n, -1)[:, k:] = 0  # the padding is stored as zero bytes, as MLAS leaves it
    return _pack(q, bits), scales


def quantize_rows_asym(w: np.ndarray, bits: int, block: int = BLOCK) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Asymmetric blocks: (packed, scales, zero points [N, ceil(K/block * bits / 8)] uint8).

    The block's range is widened to include 0 (so 0 is exact), ``scale = (max - min) / (2**bits - 1)``,
    ``zp = clip(round(-min / scale))``, ``q = clip(round(v / scale + zp))``, ``v' = (q - zp) * scale``:
    MLAS's ``range2scalezp``; 4-bit zero points are packed two a byte like the values."""
    n, k, nb, b = _blocks(w, bits, block)
    top = (1 << bits) - 1
    lo, hi = np.minimum(b.min(axis=2), 0), np.maximum(b.max(axis=2), 0)
    scales = ((hi - lo) / np.float32(top)).astype(np.float32)
    nz = scales != 0
    safe = np.where(nz, scales, 1).astype(np.float32)
    zp = np.clip(np.rint(np.where(nz, np.float32(0) - lo / safe, lo)), 0, top).astype(np.uint8)
    inv = np.where(nz, np.float32(1.0) / safe, 0).astype(np.float32)
    q = np.clip(np.rint(b * inv[..., None] + zp[..., None]), 0, top).astype(np.uint8)
    if nb * block != k:
        q.reshape(n, -1)[:, k:] = 0
    if bits == 4:
        zp = np.pad(zp, ((0, 0), (0, nb % 2)))
        zp = zp[:, 0::2] | (zp[:, 1::2] << 4)
    return _pack(q, bits), scales, np.ascontiguousarray(zp)


def _blocks(w: np.ndarray, bits: int, block: int):
    if bits not in (4, 8):
        raise ValueError(f"bits must be 4 or 8, not {bits}")
    w = np.asarray(w, dtype=np.float32)
    n, k = w.shape
    nb = blocks_of(k, block)
    if nb * block != k:
        w = np.pad(w, ((0, 0), (0, nb * block - k)))
    return n, k, nb, w.reshape(n, nb, block)


def _pack(q: np.ndarray, bits: int) -> np.ndarray:
    if bits == 4:
        q = q[..., 0::2] | (q[..., 1::2] << 4)
    return np.ascontiguousarray(q)


def dequantize_rows(packed: np.ndarray, scales: np.ndarray, bits: int, k: int, block: int = BLOCK,
                    zero_points: np.ndarray | None = None) -> np.ndarray:
    """float32 [N, K] back from ``quantize_rows``'s (or ``_asym``'s) output (what the operators compute)."""
    if bits == 4:
        q = np.empty(packed.shape[:2] + (packed.shape[2] * 2,), dtype=np.uint8)
        q[..., 0::2] = packed & 0x0F
        q[..., 1::2] = packed >> 4
    else:
        q = packed
    zp = np.float32(1 << (bits - 1))
    if zero_points is not None:
        zp = zero_points
        if bits == 4:
            zp = np.stack([zero_points & 0x0F, zero_points >> 4], axis=2).reshape(len(zero_points), -1)
        zp = zp[:, :packed.shape[1], None].astype(np.float32)
    v = (q.astype(np.float32) - zp) * scales[..., None]
    return v.reshape(packed.shape[0], -1)[:, :k]

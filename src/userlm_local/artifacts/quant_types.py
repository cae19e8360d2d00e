"""GGUF quant and file types: the ones we offer, named and numbered by gguf-py's enums (one table).

``QUANTS`` is what ``convert --quant`` takes.  A type's label ("Q4_K_M") is the name of its
``gguf.LlamaFileType`` member without the ``MOSTLY_``/``ALL_`` prefix, and its ``llama_ftype``
number (what ``general.file_type`` and our manifests record) is that member's value; the ggml
tensor types and their block sizes are ``gguf.GGMLQuantizationType`` and ``gguf.GGML_QUANT_SIZES``.

``gguf`` is the optional 'llama' extra and this module is imported without it (``convert``'s
ONNX path, ``--help``), so gguf-py is imported on first use, never at import time.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

from ..util.errors import UserError


def gguf_module():
    try:
        import gguf
    except ImportError:
        raise UserError("GGUF files need the 'gguf' package: pip install 'userlm-local[llama]'") from None
    return gguf


@dataclass(frozen=True)
class QuantType:
    name: str  # CLI spelling
    label: str  # file-name and manifest spelling: gguf.LlamaFileType's name without MOSTLY_/ALL_
    bpw: float  # rough bits per weight, for the free-space check
    ours: bool = False  # written by our own writer (no llama.cpp needed)
    needs_imatrix: bool = False

    @property
    def ftype(self) -> int:
        """llama_ftype (``gguf.LlamaFileType``): ``general.file_type`` and the manifest's ``ftype``."""
        return file_type(self.label)


QUANTS = {q.name: q for q in (
    QuantType("f16", "F16", 16.0, ours=True),
    QuantType("bf16", "BF16", 16.0, ours=True),
    QuantType("q8_0", "Q8_0", 8.5),
    QuantType("q6_k", "Q6_K", 6.6),
    QuantType("q5_k_m", "Q5_K_M", 5.7),
    QuantType("q4_k_m", "Q4_K_M", 4.9),
    QuantType("iq4_xs", "IQ4_XS", 4.6, needs_imatrix=True),
)}

# the labels our own GGUF writer produces (the rest are llama.cpp's quantizer's)
FLOAT_LABELS = tuple(q.label for q in QUANTS.values() if q.ours)


@functools.cache
def _file_types() -> dict[str, int]:
    """"F32" -> 0, "F16" -> 1, "Q4_K_M" -> 15, ... for every llama_ftype gguf-py knows."""
    gguf = gguf_module()
    return {m.name.split("_", 1)[1]: int(m) for m in gguf.LlamaFileType
            if m.name.startswith(("ALL_", "MOSTLY_"))}


def file_type(label: str) -> int:
    """The llama_ftype number of a label ("Q4_K_M" -> 15)."""
    try:
        return _file_types()[label]
    except KeyError:
        raise ValueError(f"{label!r} is not a GGUF file type gguf-py knows") from None


class _FileTypeNames(Mapping):
    """llama_ftype as GGUF metadata text ("15") -> its label ("Q4_K_M"), read from gguf-py on first use;
    empty without gguf (callers show the number then)."""

    @functools.cached_property
    def _names(self) -> dict[str, str]:
        try:
            types = _file_types()
        except UserError:
            return {}
        return {str(n): label for label, n in types.items()}

    def __getitem__(self, key) -> str:
        return self._names[str(key)]

    def __contains__(self, key) -> bool:
        return str(key) in self._names

    def __iter__(self) -> Iterator[str]:
        return iter(self._names)

    def __len__(self) -> int:
        return len(self._names)


FILE_TYPE_NAMES: Mapping[str, str] = _FileTypeNames()


def file_type_name(value) -> str | None:
    """The label of a llama_ftype (15 or "15" -> "Q4_K_M"); None when unknown."""
    return FILE_TYPE_NAMES.get(str(value))


def ggml_type(value: int):
    """A ggml tensor type number as ``gguf.GGMLQuantizationType`` (ValueError when unknown)."""
    return gguf_module().GGMLQuantizationType(value)


def ggml_type_size(value: int) -> tuple[int, int]:
    """(elements per block, bytes per block) of a ggml tensor type (``gguf.GGML_QUANT_SIZES``)."""
    gguf = gguf_module()
    return gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType(value)]

"""Checkpoint conversion: Hugging Face Llama safetensors -> GGUF (+ quantization, imatrix) or
ONNX directories for onnxruntime-genai (fp32, fp16, int8, int4).

Public entry points::

    from userlm_local.convert import to_gguf, to_onnx, QUANTS, find_artifact
    result = to_gguf("UserLM-8b/", "out/", "bf16,q8_0,q4_k_m", imatrix="compute")
    result = to_onnx("UserLM-8b/", "onnx/", "int4")

Modules: ``safetensors_reader`` (memory-mapped headers and row chunks, no torch),
``llama_arch`` (hyper-parameters, tensor names, Q/K permutation, llama3 RoPE factors),
``tokenizer_meta`` (vocab, types, merges, pre-tokenizer, special ids), ``source`` (the
checked input), ``gguf_writer`` (our streaming F16/BF16 writer), ``quantize``
(``llama_model_quantize``), ``imatrix`` (mean x² per input column with torch hooks),
``calibration`` (rendered conversations), ``validate`` (checks recorded in the manifest),
``manifest`` (what each artifact is), ``pipeline`` (``to_gguf``); atomic outputs are ``userlm_local.util.files``.
ONNX: ``onnx_quant`` (MatMulNBits blocks), ``onnx_writer`` (the streaming external-data writer),
``onnx_export`` (the graph, tensor by tensor), ``onnx_validate``, ``onnx_pipeline`` (``to_onnx``).
"""

from __future__ import annotations

from ..artifacts.manifest import MANIFEST, find_artifact, read_manifest
from .onnx_pipeline import to_onnx
from .pipeline import Result, to_gguf
from .quantize import QUANTS, QuantType, parse_quants

__all__ = ["MANIFEST", "QUANTS", "QuantType", "Result", "find_artifact", "parse_quants", "read_manifest", "to_gguf",
           "to_onnx"]

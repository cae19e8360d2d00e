"""What a model path is, read from its files without loading weights: ``model_files`` (format, ``ModelInfo``,
the artifact of an output directory), ``manifest`` (reading ``manifest.json``), ``gguf_meta`` and
``safetensors`` (file readers), ``gguf_source`` (a Llama GGUF read back as a source), ``adapter`` (a LoRA
bundle and its numpy merge), ``quant_types`` (quantization types, from gguf-py)."""

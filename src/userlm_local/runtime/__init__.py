"""Running a model: ``backends/`` (torch, llama.cpp, ONNX Runtime GenAI behind one session protocol),
``decode`` (the one decode loop, as a coroutine), ``sampling`` (the C kernel or the numpy reference) and
``scheduler`` (many coroutines, one engine: their decode steps batched)."""

"""What the tests and the benchmarks build from a checkout, shared by both (neither imports the
other): the real Llama-3.1 tokenizer with ``<|endconversation|>`` (``assets``), llama.cpp's own
converter from the llama-cpp-python sdist (``assets``), and random-weight checkpoints of the
UserLM-8b shape or smaller, written shard by shard (``checkpoints``).  Nothing here is used by a
command; everything is fetched or generated into a cache directory the caller names."""

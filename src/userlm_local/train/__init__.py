"""Training of tiny UserLMs (and their tiny assistants): tokenizer, configs, loop, export.

``bpe``: byte-level BPE with Llama-3's pre-tokenizer and special tokens;
``config``: small Llama configs; ``windows``: dialogues -> token windows -> batches;
``assistant``: the assistant model's chat format; ``spec``: what defines a run;
``data``: splits, the run's tokenizer, windows; ``model``: the model, its loss and evaluation;
``lora``: adapters; ``base``: pretrained bases; ``loop``: the training run;
``export``: the Hugging Face directory, model card and loss curve.
Heavy imports (torch, transformers) happen inside the functions.
"""

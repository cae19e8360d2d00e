"""Text as the models see it: ``prompt_format`` (the UserLM format rendered as token ids, never
re-tokenized), ``conversation`` (one conversation's ids and turns), ``tokenizer`` and ``detokenize``."""

"""GPT-2 byte-level BPE: the tokenizer, its pre-tokenizer, and tokenizer.json files."""

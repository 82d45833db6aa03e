"""Readers and dataset adapters: r2m's JSONL schemas, public RLHF formats, chat rendering."""

"""prepare: validate, normalise, redact, deduplicate and split chat JSONL (see ``__main__`` for the CLI)."""

"""The bodies of ilf's commands: each reads its inputs, calls the steps (sample, feedback, refine,
finetune, evaluate, report) and writes its outputs. `ilf.cli` holds the flags and calls these; the
steps know nothing of either (docs/internals.md, the import-linter contracts in pyproject.toml)."""

"""Feedback f on failing programs: the human annotation app and its SQLite store, LLM feedback,
execution-trace feedback, the authors' annotations, statistics (docs/feedback.md).

Submodules are imported on use (the app pulls in FastAPI, LLM feedback an engine)."""

"""ilf: Imitation learning from Language Feedback (Chen et al. 2023) for code-generating models."""

__version__ = "0.1.0"

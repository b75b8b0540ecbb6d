"""Weight formats a sampling engine can run a model at (light: no engine import).

OpenVINO runs the matrices of a converted GGUF: q8_0 (int8, one scale per 32 values; fastest) or
f16. Re-quantizing a fine-tuned model to q8_0 moves its block scales, and the resulting error is
larger than a small fine-tuning update, so what is sampled is not what FINETUNE made; f16 rounds
each weight on its own (2^-11 relative) and keeps the update (benchmarks/bench_finetuned_precision.py).
OpenVINO GenAI's GGUF reader takes F16, Q8_0 and Q4 matrices, not F32.
"""

from ilf.errors import IlfError

WEIGHT_FORMATS = ("f16", "q8_0")
DEFAULT_WEIGHTS = "f16"  # everywhere: commands, the pipeline (ModelConfig.weights) and get_engine


def check_weights(weights: str, what: str = "weights") -> str:
    """`weights` if it is a known format, else one clear error naming `what` (a flag or a key)."""
    if weights not in WEIGHT_FORMATS:
        raise IlfError(f"{what} must be one of {', '.join(WEIGHT_FORMATS)}, got {weights!r}")
    return weights


def engine_label(engine: str, weights: str | None) -> str:
    """The engine as recorded in sample records and reports: 'openvino/f16', or the name alone."""
    return f"{engine}/{weights}" if engine == "openvino" and weights else engine

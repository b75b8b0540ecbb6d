"""A tiny Qwen2 model with the bundled model's real Qwen2.5 tokenizer (151,936-token vocabulary) and
random weights, so every engine (including the OpenVINO conversion, which needs that tokenizer)
runs for real in seconds. Text is gibberish; tests pick stop strings from what it generates."""

from __future__ import annotations

from pathlib import Path


def build_qwen_tiny(out_dir: Path, seed: int = 0) -> Path:
    import torch
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    from ilf.models import ENDOFTEXT_ID, IM_END_ID, bundled_tokenizer_dir

    out_dir = Path(out_dir)
    tok = AutoTokenizer.from_pretrained(bundled_tokenizer_dir())
    cfg = Qwen2Config(
        vocab_size=151936,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=1024,
        tie_word_embeddings=False,
        bos_token_id=ENDOFTEXT_ID,
        eos_token_id=IM_END_ID,
        pad_token_id=ENDOFTEXT_ID,
    )
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(cfg)
    with torch.no_grad():
        # Peaked, non-uniform next-token distributions (like a real model), and never an end token,
        # so completions run until a stop string or the token limit.
        model.lm_head.weight.normal_(0.0, 1.0)
        for t in (ENDOFTEXT_ID, IM_END_ID):
            model.lm_head.weight[t].zero_()
    model.save_pretrained(out_dir)
    tok.save_pretrained(out_dir)
    return out_dir

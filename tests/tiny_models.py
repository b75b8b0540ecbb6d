"""The one factory of tiny models every test module builds instead of loading the 0.5B model.

A tiny Qwen2-architecture model with random weights, saved with `save_pretrained` in about a second,
with either a byte-level BPE tokenizer trained on a small corpus (`build_tiny_model`) or the bundled
model's real Qwen2.5 tokenizer (`build_qwen_tiny`, which the OpenVINO conversion needs). Its text is
gibberish, but sampling, seeds, stop strings, end tokens, token counts and training are all real;
tests pick stop strings from what a model actually generates.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

CORPUS = [
    "def add(a, b):\n    return a + b\n",
    "def is_even(n):\n    return n % 2 == 0\n",
    "for i in range(10):\n    print(i)\n",
    "class Stack:\n    def __init__(self):\n        self.items = []\n",
    'def greet(name):\n    """Say hello."""\n    return "Hello, " + name\n',
    "assert add(1, 2) == 3\n",
    "while x > 0:\n    x -= 1\n",
]
SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")


def build_tiny_model(
    out_dir: Path,
    *,
    corpus: Sequence[str] = tuple(CORPUS * 20),
    vocab_size: int = 400,
    special_tokens: Sequence[str] = SPECIAL_TOKENS,
    byte_alphabet: bool = False,
    eos: str = "<|endoftext|>",
    hidden_size: int = 64,
    intermediate_size: int | None = None,
    layers: int = 2,
    num_heads: int = 2,
    kv_heads: int = 1,
    max_positions: int = 512,
    tie_word_embeddings: bool = False,
    initializer_range: float | None = None,
    peaked_head: bool = True,
    pad_in_config: bool = True,
    model_max_length: int | None = 512,
    seed: int = 0,
) -> Path:
    """Save a tiny Qwen2ForCausalLM and its BPE tokenizer to out_dir and return it.

    byte_alphabet: start the BPE from all 256 byte symbols (any text encodes), else from the corpus's
    characters only (every token decodes to clean text). peaked_head: an output layer of N(0, 1) rows
    (peaked, non-uniform next-token distributions like a real model's) with zero rows for the special
    tokens, so completions run until a stop string or the token limit. pad_in_config: the pad token
    is the embedding's padding_idx (a zero row that never trains). head_dim = hidden_size /
    num_heads; vLLM's CPU attention wants 32, 64, 128...
    """
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    extra = {"initial_alphabet": pre_tokenizers.ByteLevel.alphabet()} if byte_alphabet else {}
    tok.train_from_iterator(list(corpus), trainer=trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(special_tokens), **extra))
    kw = {"model_max_length": model_max_length} if model_max_length else {}
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=eos, pad_token="<|endoftext|>", **kw)
    fast.save_pretrained(out_dir)

    eos_id, pad_id = tok.token_to_id(eos), tok.token_to_id("<|endoftext|>")
    torch.manual_seed(seed)
    cfg = Qwen2Config(
        vocab_size=tok.get_vocab_size(),
        hidden_size=hidden_size,
        intermediate_size=intermediate_size or hidden_size * 2,
        num_hidden_layers=layers,
        num_attention_heads=num_heads,
        num_key_value_heads=kv_heads,
        max_position_embeddings=max_positions,
        eos_token_id=eos_id,
        bos_token_id=pad_id,
        tie_word_embeddings=tie_word_embeddings,
        **({"pad_token_id": pad_id} if pad_in_config else {}),
        **({"initializer_range": initializer_range} if initializer_range else {}),
    )
    model = Qwen2ForCausalLM(cfg)
    if peaked_head:
        with torch.no_grad():
            model.lm_head.weight.normal_(0.0, 1.0)
            for special in special_tokens:
                model.lm_head.weight[tok.token_to_id(special)].zero_()
    # Like the bundled model: the generation config lists only the end token.
    model.generation_config.eos_token_id = eos_id
    model.save_pretrained(out_dir)
    return out_dir


def build_qwen_tiny(out_dir: Path, seed: int = 0) -> Path:
    """A tiny Qwen2 with the bundled model's real Qwen2.5 tokenizer (151,936-token vocabulary)."""
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
        model.lm_head.weight.normal_(0.0, 1.0)
        for t in (ENDOFTEXT_ID, IM_END_ID):
            model.lm_head.weight[t].zero_()
    model.save_pretrained(out_dir)
    tok.save_pretrained(out_dir)
    return out_dir

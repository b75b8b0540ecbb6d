"""A tiny Qwen2-architecture model with random weights and a real byte-level BPE tokenizer, built in
a directory in about a second: what the engine/server tests load instead of a 0.5B model.

Its text is gibberish, but sampling, seeds, stop strings, eos handling and token counts are all
real; tests pick stop strings from what the model actually generates.
"""

from __future__ import annotations

from pathlib import Path

CORPUS = [
    "def add(a, b):\n    return a + b\n",
    "def is_even(n):\n    return n % 2 == 0\n",
    "for i in range(10):\n    print(i)\n",
    "class Stack:\n    def __init__(self):\n        self.items = []\n",
    'def greet(name):\n    """Say hello."""\n    return "Hello, " + name\n',
    "assert add(1, 2) == 3\n",
    "while x > 0:\n    x -= 1\n",
]
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def build_tiny_model(out_dir: Path, *, hidden_size: int = 64, num_heads: int = 2, layers: int = 2, seed: int = 0) -> Path:
    """Save a tiny Qwen2ForCausalLM + tokenizer to out_dir (save_pretrained) and return it.
    head_dim = hidden_size / num_heads; vLLM's CPU attention wants a head_dim of 32, 64, 128..."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    # Alphabet = the corpus's ASCII characters only, so every token decodes to clean text.
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=SPECIAL_TOKENS)
    tok.train_from_iterator(CORPUS * 20, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|endoftext|>", pad_token="<|endoftext|>", model_max_length=512
    )
    fast.save_pretrained(out_dir)

    vocab = tok.get_vocab_size()
    eos = tok.token_to_id("<|endoftext|>")
    torch.manual_seed(seed)
    config = Qwen2Config(
        vocab_size=vocab,
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 2,
        num_hidden_layers=layers,
        num_attention_heads=num_heads,
        num_key_value_heads=1,
        max_position_embeddings=512,
        eos_token_id=eos,
        bos_token_id=eos,
        pad_token_id=eos,
        tie_word_embeddings=False,
    )
    model = Qwen2ForCausalLM(config)
    # A wider random output layer so sampling is far from uniform noise; eos gets a zero row, so
    # completions run long enough to contain the stop strings the tests pick.
    with torch.no_grad():
        model.lm_head.weight.normal_(0.0, 1.0)
        for special in SPECIAL_TOKENS:
            model.lm_head.weight[tok.token_to_id(special)].zero_()
    model.generation_config.eos_token_id = eos
    model.save_pretrained(out_dir)
    return out_dir

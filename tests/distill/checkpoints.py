"""Tiny random GPT-2 and Llama checkpoints with their own tokenizers, saved as a user would (save_pretrained)."""

from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from distill.textdata import public_corpus

# family -> (special tokens in id order, bos, eos, unk); neither family defines a padding token.
SPECIALS = {"gpt2": (["<|endoftext|>"], "<|endoftext|>", "<|endoftext|>", "<|endoftext|>"),
            "llama": (["<unk>", "<s>", "</s>"], "<s>", "</s>", "<unk>")}


def tiny_tokenizer(family: str, vocab_size: int = 400, lines: int = 200) -> PreTrainedTokenizerFast:
    """A byte-level BPE trained offline on a few public lines, with the family's special tokens."""
    specials, bos, eos, unk = SPECIALS[family]
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    backend.train_from_iterator(list(public_corpus(0, lines)), trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=backend, bos_token=bos, eos_token=eos, unk_token=unk)


def tiny_model(family: str, vocab_size: int, *, width: int = 32, layers: int = 2, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    if family == "gpt2":
        return GPT2LMHeadModel(GPT2Config(vocab_size=vocab_size, n_positions=128, n_embd=width, n_layer=layers,
                                          n_head=2, bos_token_id=0, eos_token_id=0))
    return LlamaForCausalLM(LlamaConfig(vocab_size=vocab_size, hidden_size=width, intermediate_size=2 * width,
                                        num_hidden_layers=layers, num_attention_heads=2, num_key_value_heads=2,
                                        max_position_embeddings=128, bos_token_id=1, eos_token_id=2))


def save_tiny(directory: Path, family: str, *, width: int = 32, layers: int = 2, seed: int = 0,
              tokenizer: PreTrainedTokenizerFast | None = None) -> Path:
    """Save a tiny random ``family`` model and its tokenizer into ``directory``; returns it."""
    tok = tokenizer or tiny_tokenizer(family)
    tiny_model(family, len(tok), width=width, layers=layers, seed=seed).save_pretrained(directory)
    tok.save_pretrained(str(directory))
    return directory

"""Shared fixtures: tiny random-weight models saved as Hugging Face directories."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

torch.set_num_threads(min(2, os.cpu_count() or 1))


def make_tiny_model(kind: str, out_dir: Path, seed: int = 0, max_positions: int = 512) -> Path:
    """Saves a random tiny ``llama`` or ``qwen2`` model (no tokenizer) and returns its dir."""
    from transformers import (
        LlamaConfig,
        LlamaForCausalLM,
        MistralConfig,
        MistralForCausalLM,
        Qwen2Config,
        Qwen2ForCausalLM,
    )

    common = dict(
        vocab_size=320,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=max_positions,
        rms_norm_eps=1e-5,
        initializer_range=0.2,
        bos_token_id=1,
        eos_token_id=2,
    )
    torch.manual_seed(seed)
    if kind == "llama":
        cfg = LlamaConfig(**common, tie_word_embeddings=False, rope_theta=10000.0)
        model = LlamaForCausalLM(cfg)
    elif kind == "llama-tied":
        cfg = LlamaConfig(**common, tie_word_embeddings=True, rope_theta=500000.0)
        model = LlamaForCausalLM(cfg)
    elif kind == "llama-hd64":  # head_dim 64 (SmolLM2's), 5 query heads on one KV head
        wide = {**common, "hidden_size": 320, "num_attention_heads": 5, "num_key_value_heads": 1}
        cfg = LlamaConfig(**wide, tie_word_embeddings=False, rope_theta=10000.0)
        model = LlamaForCausalLM(cfg)
    elif kind in ("llama-hd128", "llama-hd256"):  # the fused step's other unrolled head sizes
        heads, kv, hidden = (3, 1, 384) if kind == "llama-hd128" else (2, 2, 512)
        wide = {**common, "hidden_size": hidden, "num_attention_heads": heads,
                "num_key_value_heads": kv}  # fmt: skip
        cfg = LlamaConfig(**wide, tie_word_embeddings=False, rope_theta=10000.0)
        model = LlamaForCausalLM(cfg)
    elif kind == "llama3-rope":
        rope = {
            "rope_type": "llama3",
            "rope_theta": 500000.0,
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 64,
        }
        cfg = LlamaConfig(**common, tie_word_embeddings=False, rope_parameters=rope)
        model = LlamaForCausalLM(cfg)
    elif kind == "linear-rope":
        rope = {"rope_type": "linear", "rope_theta": 10000.0, "factor": 4.0}
        cfg = LlamaConfig(**common, tie_word_embeddings=False, rope_parameters=rope)
        model = LlamaForCausalLM(cfg)
    elif kind == "mistral":
        cfg = MistralConfig(**common, tie_word_embeddings=False, sliding_window=None)
        model = MistralForCausalLM(cfg)
    elif kind == "qwen2":
        cfg = Qwen2Config(**common, tie_word_embeddings=False, rope_theta=1000000.0)
        model = Qwen2ForCausalLM(cfg)
        with torch.no_grad():  # HF initialises biases to zero; make them matter
            for layer in model.model.layers:
                for proj in (
                    layer.self_attn.q_proj,
                    layer.self_attn.k_proj,
                    layer.self_attn.v_proj,
                ):
                    proj.bias.normal_(0, 0.2)
    else:
        raise ValueError(kind)
    model.eval()
    model.save_pretrained(out_dir, safe_serialization=True)
    return out_dir


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    cache: dict[str, Path] = {}

    def get(kind: str = "llama") -> Path:
        if kind not in cache:
            cache[kind] = make_tiny_model(kind, tmp_path_factory.mktemp(f"tiny-{kind}"))
        return cache[kind]

    return get


# words the tiny tokenizer keeps whole (with their leading space), so that "Answer: " + "yes"
# re-tokenizes the space into " yes" as a real BPE vocabulary does
TINY_WORDS = [" yes", " no", " maybe", "Answer", " Paris", " London", " is", " the", " degrees"]


def save_tiny_tokenizer(out_dir: Path, vocab_size: int = 320) -> None:
    """Saves a byte-level BPE tokenizer of exactly ``vocab_size`` tokens (``<unk>``, ``<s>``,
    ``</s>``, the 256 bytes, then merges spelling ``TINY_WORDS`` and three-letter fillers)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False)
    vocab = {t: i for i, t in enumerate(["<unk>", "<s>", "</s>"])}
    for ch in sorted(pre_tokenizers.ByteLevel.alphabet()):
        vocab[ch] = len(vocab)
    fillers = (" " + a + b + c for a in "abcdefghij" for b in "klmnopqrst" for c in "uvwxyz")
    words = iter([*TINY_WORDS, *fillers])
    merges: list[tuple[str, str]] = []
    while len(vocab) < vocab_size:
        (word, _), *_ = byte_level.pre_tokenize_str(next(words))
        for k in range(2, len(word) + 1):
            if word[:k] not in vocab and len(vocab) < vocab_size:
                merges.append((word[: k - 1], word[k - 1]))
                vocab[word[:k]] = len(vocab)
    backend = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    backend.pre_tokenizer = byte_level
    backend.decoder = decoders.ByteLevel()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, unk_token="<unk>", bos_token="<s>", eos_token="</s>"
    )
    tokenizer.save_pretrained(out_dir)


@pytest.fixture(scope="session")
def tiny_lm_dir(tmp_path_factory) -> Path:
    """A tiny random ``llama`` with a tokenizer: enough to run text programs, fast."""
    out_dir = make_tiny_model("llama", tmp_path_factory.mktemp("tiny-lm"))
    save_tiny_tokenizer(out_dir)
    return out_dir


@pytest.fixture
def procs():
    """``procs.children(pid)``, ``procs.alive(pid)``, ``procs.cpu_ticks(pid)``,
    ``procs.rss(pid)``: process checks by pid, from /proc (``bench/proc_tree.py``)."""
    from plait.bench import proc_tree

    return proc_tree

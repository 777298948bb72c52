"""Random weights for a model shape with no checkpoint (vLLM's ``load_format="dummy"``).

Used to run and time real architectures (a Llama-3-8B-shaped model on one GPU) where the
weights do not matter: generation with ``ignore_eos`` costs the same whatever they are.
"""

from __future__ import annotations

import torch

from plait.runtime.model.models.llama import LlamaForCausalLM

INIT_STD = 0.02


@torch.no_grad()
def init_dummy_weights(model: LlamaForCausalLM, seed: int = 0) -> None:
    """Fills every parameter in place: norms with ones, biases with zeros, the rest with
    N(0, INIT_STD); deterministic for a given seed and device."""
    gen = torch.Generator(device=next(model.parameters()).device).manual_seed(seed)
    for name, param in model.named_parameters():
        if name.endswith("norm.weight"):
            param.fill_(1.0)
        elif name.endswith(".bias"):
            param.zero_()
        else:
            param.normal_(0.0, INIT_STD, generator=gen)
    model.tie_weights()

"""The naive baseline of the program benchmark: what a program does by hand over transformers.

Every ``gen`` re-encodes the whole prompt and calls ``model.generate`` at batch size 1; every
``select`` runs one forward over ``prompt + choice`` per choice. Nothing is reused between calls.
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from plait.runtime.chat_template import chat_template_of


class NaiveLM:
    def __init__(self, path: Path, dtype: torch.dtype = torch.float32) -> None:
        self.model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype).eval()
        self.tok = AutoTokenizer.from_pretrained(path)
        self.template = chat_template_of(self.tok)

    def role(self, role: str, content: str) -> str:
        prefix, suffix = self.template.markers[role]
        return prefix + content + suffix

    @torch.no_grad()
    def gen(self, prompt: str, max_new_tokens: int, stop: list[str] | None = None) -> str:
        enc = self.tok(prompt, return_tensors="pt", add_special_tokens=False)
        out = self.model.generate(
            **enc,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            stop_strings=stop,
            tokenizer=self.tok,
            pad_token_id=self.tok.eos_token_id,
        )
        text = self.tok.decode(out[0, enc.input_ids.shape[1] :], skip_special_tokens=True)
        for s in stop or []:
            text = text.split(s)[0]
        return text

    @torch.no_grad()
    def select(self, prompt: str, choices: list[str]) -> str:
        """The choice with the highest mean logprob of its tokens (those past the prompt's)."""
        prompt_ids = self.tok.encode(prompt, add_special_tokens=False)
        scores = []
        for c in choices:
            ids = self.tok.encode(prompt + c, add_special_tokens=False)
            start = 0
            while start < min(len(ids), len(prompt_ids)) and ids[start] == prompt_ids[start]:
                start += 1
            start = max(start, 1)
            logits = self.model(torch.tensor([ids])).logits[0]
            logprobs = torch.log_softmax(logits[start - 1 : -1].float(), dim=-1)
            target = torch.tensor(ids[start:])
            scores.append(logprobs.gather(1, target[:, None]).mean().item())
        return choices[max(range(len(choices)), key=lambda i: scores[i])]

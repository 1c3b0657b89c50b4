"""How much the spaCy model changes the target noun phrase, on refcoco-mini's expressions.

    python benchmarks/parser_agreement.py --data ../shared/data/refcoco-mini [--models a b ...]

Parses every expression of the dataset (all splits) with each model (default: every model of
zsris's preference list that is installed, plus any given with --models, names or folders), and
prints per model how often the noun phrase falls back to the whole sentence, then for every pair
of models how often their target noun phrases differ, with examples. Different phrases mean
different text features, and so possibly different answers.
"""
from __future__ import annotations

import argparse
import itertools
import random
import time

import spacy

from zsris.datasets import ReferDataset
from zsris.text import SPACY_MODELS, ExpressionParser

from common import add_data_flag, require_data


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_data_flag(parser)
    parser.add_argument("--dataset", default="refcoco")
    parser.add_argument("--models", nargs="*", default=[], help="more spaCy pipelines (names or folders)")
    parser.add_argument("--limit", type=int, default=None, help="only the first N expressions")
    parser.add_argument("--examples", type=int, default=5)
    args = parser.parse_args()
    require_data(args.data, args.dataset)
    expressions = list(dict.fromkeys(s.text for ref in ReferDataset(args.data, args.dataset).refs
                                     for s in ref.sentences))[: args.limit]
    models = [m for m in SPACY_MODELS if spacy.util.is_package(m)] + args.models
    phrases: dict[str, list[str]] = {}
    print(f"{len(expressions)} expressions of {args.dataset}, spaCy {spacy.__version__}")
    for model in models:
        expression_parser = ExpressionParser(model=model)
        start = time.perf_counter()
        parsed = [expression_parser(e) for e in expressions]
        seconds = time.perf_counter() - start
        phrases[model] = [p.noun_phrase for p in parsed]
        whole = [p for p in parsed if p.noun_phrase == p.sentence]
        # "the man" is one noun chunk: the whole sentence by right; "second from bottom" has none: a fallback
        fallback = sum([c.text for c in expression_parser.nlp(p.sentence).noun_chunks] != [p.sentence] for p in whole)
        info = expression_parser.info
        print(f"  {model} ({info['name']} {info['version']}): noun phrase = whole sentence for {len(whole)} "
              f"({100 * len(whole) / len(parsed):.1f}%), of which {fallback} ({100 * fallback / len(parsed):.1f}%) "
              f"because no noun chunk holds the root; {1000 * seconds / len(parsed):.1f} ms per expression")
        for p in random.Random(0).sample(parsed, min(args.examples, len(parsed))):
            print(f"      {p.raw!r} -> {p.noun_phrase!r}")
    for first, second in itertools.combinations(models, 2):
        differ = [i for i, (a, b) in enumerate(zip(phrases[first], phrases[second])) if a != b]
        print(f"  {first} vs {second}: target noun phrase differs for {len(differ)} of {len(expressions)} "
              f"({100 * len(differ) / len(expressions):.1f}%)")
        for i in differ[: args.examples]:
            print(f"      {expressions[i]!r}: {phrases[first][i]!r} vs {phrases[second][i]!r}")
    if len(models) < 2:
        print("  (one model installed: install another, e.g. python -m spacy download en_core_web_lg, or pass "
              "--models DIR, to compare)")


if __name__ == "__main__":
    main()

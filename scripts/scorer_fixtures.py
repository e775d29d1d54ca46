#!/usr/bin/env python3
"""Writes tests/fixtures/scorers/cases.json: inputs for every accuracy scorer with the score the
reference implementations give, for tests/unit/scorers_test.cpp.

The references are Python: LongBench's metrics (restated below from their definitions, on
Python's own str.lower, str.split, re and collections), fuzzywuzzy's fuzz.ratio (the package
itself, over difflib as LongBench's requirements install it) and the `rouge` package 1.0.1
(the package itself). Neither package ships with Debian; run with them importable, e.g.

    PYTHONPATH=/path/to/rouge:/path/to/fuzzywuzzy python3 scripts/scorer_fixtures.py

(sources of pltrdy/rouge at tag 1.0.1 and seatgeek/fuzzywuzzy at 0.18.0; rouge needs `six`).
The file records the versions it was made with.
"""
import collections
import difflib
import json
import random
import re
import string
import sys
import warnings
from pathlib import Path

warnings.simplefilter("ignore")  # fuzzywuzzy's note that it runs on difflib
from fuzzywuzzy import fuzz  # noqa: E402
import fuzzywuzzy  # noqa: E402
import rouge  # noqa: E402

# Without python-Levenshtein (not in LongBench's requirements) fuzz.ratio runs on difflib.
assert fuzz.SequenceMatcher is difflib.SequenceMatcher, "uninstall python-Levenshtein first"

OUT = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "scorers" / "cases.json"


def normalize_answer(s):
    s = "".join(ch for ch in s.lower() if ch not in set(string.punctuation))
    s = re.sub(r"\b(a|an|the)\b", " ", s)
    return " ".join(s.split())


def token_f1(prediction, reference):
    p, r = normalize_answer(prediction).split(), normalize_answer(reference).split()
    same = sum((collections.Counter(p) & collections.Counter(r)).values())
    if same == 0:
        return 0.0
    precision, recall = same / len(p), same / len(r)
    return 2 * precision * recall / (precision + recall)


def rouge_l(prediction, reference):
    try:
        return rouge.Rouge().get_scores([prediction], [reference], avg=True)["rouge-l"]["f"]
    except Exception:  # as LongBench: no sentence on a side scores 0
        return 0.0


def edit_similarity(prediction, reference):
    line = ""
    for candidate in prediction.lstrip("\n").split("\n"):
        if "`" not in candidate and "#" not in candidate and "//" not in candidate:
            line = candidate
            break
    return fuzz.ratio(line, reference) / 100


def classification(prediction, reference, all_classes):
    named = [c for c in all_classes if c in prediction]
    for term in named:  # removing while walking the list, as the reference does
        if term in reference and term != reference:
            named.remove(term)
    return 1.0 / len(named) if reference in named else 0.0


def count_score(prediction, reference):
    numbers = re.findall(r"\d+", prediction)
    return 0.0 if not numbers else sum(n == reference for n in numbers) / len(numbers)


def retrieval_score(prediction, reference):
    wanted = re.findall(r"Paragraph (\d+)", reference)[0]
    numbers = re.findall(r"\d+", prediction)
    return 0.0 if not numbers else sum(n == wanted for n in numbers) / len(numbers)


def string_match(prediction, references, part):
    found = [1.0 if r.lower() in prediction.lower() else 0.0 for r in references]
    return max(found) if part else sum(found) / len(found)


WORDS = ["the", "The", "a", "an", "An", "cat", "Cat", "sat", "on", "mat", "mat.", "dog", "Émile",
         "ÉMILE", "straße", "ΟΔΟΣ", "naïve", "café", "x_1", "2024", "٣", "—", "don’t", "it's",
         "U.S.", "3.5", "(paris)", "Paris,", "theater", "anthem", "a-b", "élan", "ǅ", "İstanbul",
         # Words whose article run depends on Unicode word characters (\w).
         "théa", "aé", "the٣", "ǅa", "ań", "a²", "the_"]
SPACES = [" ", " ", " ", "  ", "\t", "\n", "\u00a0", "\u2009", "\u3000", "\x1c", " . ", ". "]
CODE = ["return x + 1", "x = 1  # init", "y = 2", "```python", "// note", "    if a < b:",
        "print(f'{a}')", "z = [i for i in range(10)]", "", "\tpass", "s = \"#\"", "w = 'é'"]


def text(rng, n):
    out = ""
    for _ in range(n):
        out += rng.choice(WORDS) + rng.choice(SPACES)
    return out.strip(" ") if rng.random() < 0.5 else out


def code(rng, n):
    return "\n" * rng.randint(0, 2) + "\n".join(rng.choice(CODE) for _ in range(n))


def long_code(rng, n):  # past difflib's 200 characters, where frequent characters start no match
    return "".join(rng.choice("aaaaaaaabbbcde =+()é") for _ in range(n))


def repeats(rng, n):  # few distinct words, many repeats: the LCS rebuild's ties decide
    return " ".join(rng.choice(["a", "b", "c", "d", "b."]) for _ in range(n))


def main():
    rng = random.Random(20261206)
    cases = []

    def add(metric, prediction, references, expected, all_classes=None):
        case = {"metric": metric, "prediction": prediction, "references": references,
                "expected": expected}
        if all_classes is not None:
            case["all_classes"] = all_classes
        cases.append(case)

    fixed = [("the cat sat on the mat", "the cat is on the mat"), ("The Cat", "the cat"),
             ("the cat sat.", "the cat sat"), ("...", "x"), ("a. b. a", "a b"),
             ("Émile went home. He slept", "émile went home"), (" . ", "x y")]
    for p, r in fixed:
        add("rouge_l", p, [r], rouge_l(p, r))
        add("token_f1", p, [r], token_f1(p, r))
    for _ in range(60):
        p, r = text(rng, rng.randint(1, 25)), text(rng, rng.randint(1, 12))
        add("rouge_l", p, [r], rouge_l(p, r))
        add("token_f1", p, [r], token_f1(p, r))
        add("normalize_answer", p, [], normalize_answer(p))
        refs = [text(rng, rng.randint(1, 2)) for _ in range(rng.randint(1, 3))]
        add("string_match_all", p, refs, string_match(p, refs, False))
        add("string_match_part", p, refs, string_match(p, refs, True))
    for p, r in [("\nreturn x + 1", "return x + 1"), ("x = 1  # init\ny = 2", "y = 2"),
                 ("kitten", "sitting"), ("", ""), ("abc", "")]:
        add("edit_similarity", p, [r], edit_similarity(p, r))
    for _ in range(40):
        p, r = code(rng, rng.randint(1, 4)), rng.choice(CODE[:3] + CODE[5:8])
        add("edit_similarity", p, [r], edit_similarity(p, r))
    for _ in range(20):
        a, b = long_code(rng, rng.randint(150, 400)), long_code(rng, rng.randint(200, 400))
        add("edit_similarity", a, [b], edit_similarity(a, b))
    for _ in range(40):
        a, b = long_code(rng, rng.randint(1, 300)), long_code(rng, rng.randint(1, 300))
        add("sequence_ratio", a, [b], difflib.SequenceMatcher(None, a, b).ratio())
    for _ in range(40):
        p, r = repeats(rng, rng.randint(1, 30)), repeats(rng, rng.randint(1, 30))
        add("rouge_l", p, [r], rouge_l(p, r))
    # The package's LCS rebuild recurses once per step (here m + 1 of them): 990 steps pass, 991
    # raise (score 0) under LongBench's call chain, which this one matches frame for frame
    # (module, main as eval.py's scorer, rouge_l as its rouge_score).
    for m in (989, 990):
        p = "zz " + " ".join("w%d" % i for i in range(m))
        add("rouge_l", p, ["zz"], rouge_l(p, "zz"))
    classes = ["a", "ab", "abc", "location", "location city", "person", "number"]
    for _ in range(30):
        named = rng.sample(classes, rng.randint(0, 4))
        p, r = "Answer: " + " or ".join(named), rng.choice(classes)
        add("classification", p, [r], classification(p, r, classes), classes)
    for p, r in [("I count 3, maybe 4, so 3", "3"), ("٣ or 3", "3"), ("none", "3")]:
        add("count", p, [r], count_score(p, r))
    for p, r in [("Paragraph 12", "Paragraph 12"), ("12 or 7", "Paragraph 12"),
                 ("3", "Page 3, Paragraph 3")]:
        add("retrieval", p, [r], retrieval_score(p, r))

    OUT.parent.mkdir(parents=True, exist_ok=True)
    doc = {"made_by": "scripts/scorer_fixtures.py",
           "python": sys.version.split()[0],
           "rouge": getattr(rouge, "__version__", "?"),
           "fuzzywuzzy": fuzzywuzzy.__version__,
           "sequence_matcher": "difflib",
           "cases": cases}
    OUT.write_text(json.dumps(doc, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    print(f"{len(cases)} cases -> {OUT}")


if __name__ == "__main__":
    main()

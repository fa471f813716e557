"""The COCO caption evaluation's tokenisation, in pure Python.

pycocoevalcap (the COCO caption evaluation) runs every caption through Stanford CoreNLP 3.4.1's
`PTBTokenizer` (Java, options `-preserveLines -lowerCase`) and then drops the tokens in its
`PUNCTUATIONS` list. BLEU, METEOR, ROUGE-L and CIDEr all count the tokens that come out, so a
different tokenisation gives different scores. What PTB does to captions:

- contractions split off: "doesn't" -> "does n't", "can't" -> "ca n't", "cat's" -> "cat 's",
  "they're" -> "they 're", "kids'" -> "kids '"; "cannot" -> "can not", "gonna" -> "gon na";
- words with inner hyphens, slashes, ampersands or dots stay whole: "t-shirt", "double-decker",
  "road/street", "at&t", "u.s.", and so do numbers: "3.5", "30,000", "5:30", "-5";
- currency and percent signs are tokens of their own: "$ 100", "50 %";
- quotes become `` / '' (double) and ` / ' (single), brackets -LRB- -RRB- -LSB- -RSB- -LCB- -RCB-,
  runs of ? and ! one token ("?!"), "..." and "--" one token each.

pycocoevalcap lower-cases *before* it compares with its list, which is written in upper case:
so "-lrb-" and "-rrb-" (brackets) survive the punctuation filter, as do "?!", "$", "%", "&" and
"#". `coco_tokenize` below reproduces that exactly (the course does not correct the reference
implementation: scores must stay comparable with published ones).

`ptb_tokenize(text)` gives the PTB tokens, `coco_tokenize(text)` the space-joined tokens that
pycocoevalcap's pipeline gives. Both are tested token for token against the Java tokenizer on
a set of COCO-style captions (`tests/fixtures/ptb_captions.json`): contractions, hyphens,
possessives, decimals, times, quotes, brackets, currency. This is a re-implementation of the
rules that occur in captions, not of the whole lexer (whether a lone single quote is read as
opening ` or closing ' can differ; both are dropped from the COCO tokens): on text far from captions (e-mail
addresses with unusual characters, emoticons, SGML) the two may differ, and the course then uses
the Java tokenizer whenever `java` is on the PATH (`mmcourse.caption_metrics`).

Source: Stanford CoreNLP `PTBLexer` (Manning et al. 2014) as shipped in pycocoevalcap
(`pycocoevalcap/tokenizer/ptbtokenizer.py`).
"""
from __future__ import annotations

import re

__all__ = ["PUNCTUATIONS", "ptb_tokenize", "coco_tokenize"]

# pycocoevalcap/tokenizer/ptbtokenizer.py's list, as it is (upper-case bracket names included)
PUNCTUATIONS = frozenset(["''", "'", "``", "`", "-LRB-", "-RRB-", "-LCB-", "-RCB-", ".", "?", "!", ",", ":", "-",
                          "--", "...", ";"])

_BRACKETS = {"(": "-LRB-", ")": "-RRB-", "[": "-LSB-", "]": "-RSB-", "{": "-LCB-", "}": "-RCB-"}
_UNICODE = {"\u201c": '"', "\u201d": '"', "\u201e": '"', "\u2018": "'", "\u2019": "'", "\u2013": "--",
            "\u2014": "--", "\u2026": "...", "\u00a0": " "}
# abbreviations that keep their final period (CoreNLP's list, the part captions use)
_ABBREVIATIONS = frozenset("""mr mrs ms dr st jr sr prof gen gov sen rep rev capt col lt sgt mt ft vs etc inc co
corp ltd bros jan feb mar apr jun jul aug sep sept oct nov dec mon tue wed thu fri sat sun ave blvd rd""".split())
# of those, the ones that add a "." token when they end the caption ("etc." -> "etc. .")
_ABBREVIATIONS_ENDING = frozenset("etc inc co corp ltd jr sr bros".split())
# whole words PTB splits in two
_SPLIT_WORDS = {"cannot": ("can", "not"), "gonna": ("gon", "na"), "gotta": ("got", "ta"), "wanna": ("wan", "na"),
                "lemme": ("lem", "me"), "gimme": ("gim", "me"), "'tis": ("'t", "is"), "'twas": ("'t", "was"),
                "y'all": ("y'", "all")}

_A = r"[^\W_]"  # a letter or a digit
_WORD = (r"(?:[-+](?=\d))?" + _A + r"+(?:"  # an optional sign before a number, then parts joined by
         r"[-/&@.]" + _A +                   # - / & @ . (t-shirt, road/street, at&t, 3.5, dog.the)
         r"|(?<=\d)[,:](?=\d)"               # , or : between digits (30,000, 5:30)
         r"|(?<!" + _A + _A + r")(?<=[a-hj-xzA-HJ-XZ])'(?=[^\W\d_]{2})"  # one letter, ' (o'clock, d'oeuvres)
         r"|" + _A + r")*")
_TOKEN = re.compile("|".join([
    r"(?P<special>(?:'tis|'twas|y'all)(?!" + _A + "))",
    r"(?P<abbrev>(?:[^\W\d_]\.){2,}(?!" + _A + "))",   # u.s. a.m. e.g.
    r"(?P<suffix>(?:n't|'s|'re|'ve|'ll|'d|'m)(?!" + _A + "))",  # a contraction written apart: cat 's
    r"(?P<decade>'\d0s)",                               # '90s
    r"(?P<nwords>'n')",                                 # rock 'n' roll
    r"(?P<word>" + _WORD + ")",
    r"(?P<emoticon>(?<!\S)[:;]-?[()dDpP](?!" + _A + "))",  # :) ;-D
    r"(?P<punct>\.{3,}|--+|[?!]+|''+|``+|\S)",
]), re.IGNORECASE)
_SUFFIX = re.compile(r"(n't|'s|'re|'ve|'ll|'d|'m)(?!" + _A + ")", re.IGNORECASE)


def _tokens_of_chunk(chunk: str) -> list[str]:
    """PTB tokens of one whitespace-free piece of a caption (PTB never joins across spaces)."""
    out: list[str] = []
    pos = 0
    while pos < len(chunk):
        m = _TOKEN.match(chunk, pos)
        kind, text, pos = m.lastgroup, m.group(), m.end()
        if kind == "special":
            out += _SPLIT_WORDS[text.lower()]
        elif kind == "word":
            if text[-1] in "nN" and len(text) > 1 and re.match(r"'t(?!" + _A + ")", chunk[pos:], re.IGNORECASE):
                out += [text[:-1], text[-1] + chunk[pos:pos + 2]]  # doesn't -> does n't, can't -> ca n't
                pos += 2
            elif suffix := _SUFFIX.match(chunk, pos):
                out += [text, suffix.group()]  # cat's -> cat 's, they're -> they 're
                pos = suffix.end()
            elif chunk[pos:pos + 1] == "." and text.lower() in _ABBREVIATIONS:
                out.append(text + ".")  # Mr. St. etc.: the period is part of the word
                pos += 1
            else:
                out += list(_SPLIT_WORDS.get(text.lower(), (text,)))
        elif kind == "emoticon":
            out.append("".join(_BRACKETS.get(c, c) for c in text))
        elif text == '"':
            out.append("``" if pos == 1 else "''")  # opening at the start of a word, else closing
        elif text == "'":
            out.append("`" if pos == 1 and pos < len(chunk) else "'")
        elif text.startswith("''"):
            out.append("''")
        elif text.startswith("``"):
            out.append("``")
        elif text.startswith("--"):
            out.append("--")
        else:
            out.append(_BRACKETS.get(text, text))
    return out


def ptb_tokenize(text: str) -> list[str]:
    """The tokens Stanford's `PTBTokenizer -preserveLines -lowerCase` gives for one caption.

    Args:
        text: one caption (line breaks count as spaces).

    Returns:
        list of lower-case tokens, punctuation included ("." "," "``" "-lrb-" ...).

    Raises:
        ValueError: `text` is not a str.
    """
    if not isinstance(text, str):
        raise ValueError(f"a caption must be a str, got {type(text).__name__}")
    for a, b in _UNICODE.items():
        text = text.replace(a, b)
    tokens = [t for chunk in text.split() for t in _tokens_of_chunk(chunk)]
    if tokens and tokens[-1].endswith(".") and tokens[-1][:-1].lower() in _ABBREVIATIONS_ENDING:
        tokens.append(".")  # a caption ending in "etc.": PTB adds the sentence's own period
    return [t.lower() for t in tokens]


def coco_tokenize(text: str) -> str:
    """A caption as pycocoevalcap's `PTBTokenizer` leaves it: PTB tokens, lower case, the tokens
    in `PUNCTUATIONS` dropped, joined by single spaces.

    "A man in a t-shirt doesn't smile." -> "a man in a t-shirt does n't smile".

    Raises:
        ValueError: `text` is not a str.
    """
    return " ".join(t for t in ptb_tokenize(text) if t not in PUNCTUATIONS)

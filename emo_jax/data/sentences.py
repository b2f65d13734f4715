"""Varied English sentences from a small grammar and word list, deterministic per generator,
and the training / held-out split of sentences.

The split is by the sentence's text: a sentence is held out when crc32(text) % HELDOUT_MOD == 0
(one in HELDOUT_MOD of all sentences). `sentence(rng, "train")` draws again until it gets a
training sentence, `sentence(rng, "heldout")` until it gets a held-out one, so no held-out
sentence is ever spoken in training, whatever the seeds.
"""

from __future__ import annotations

import zlib

import numpy as np

SPLITS = ("train", "heldout")
HELDOUT_MOD = 5

NAMES = (
    "Anna", "Bob", "Maria", "Peter", "Fiona", "Victor", "Sam", "Olivia", "Thomas", "Ruth",
    "Jack", "Lucy", "Martin", "Zoe", "Oscar", "Beth", "Hugo", "Wendy", "David", "Emma",
)  # fmt: skip
NOUNS = (
    "apple", "bridge", "window", "garden", "river", "mountain", "teacher", "doctor", "market",
    "bottle", "pencil", "butterfly", "village", "movie", "book", "computer", "phone", "table",
    "forest", "ocean", "planet", "bicycle", "violin", "mirror", "kitchen", "basket", "coffee",
    "letter", "puzzle", "museum", "photo", "rabbit", "whale", "shoe", "boat", "moon", "umbrella",
    "piano", "map", "fish", "cup", "road", "yellow house", "summer", "winter", "machine",
    "story", "song", "dinner", "ticket", "wallet", "pumpkin", "office", "button", "feather",
)  # fmt: skip
ADJECTIVES = (
    "big", "small", "happy", "quiet", "bright", "old", "new", "funny", "blue", "purple",
    "warm", "cold", "smooth", "heavy", "lovely", "famous", "wooden", "broken", "fresh",
    "busy", "shiny", "tiny", "wide", "strange", "beautiful", "empty", "soft", "thick",
)  # fmt: skip
VERBS_PAST = (
    "found", "bought", "opened", "moved", "watched", "painted", "fixed", "borrowed", "carried",
    "pushed", "visited", "showed", "measured", "washed", "loved", "forgot", "threw", "wrote",
    "played", "followed", "mapped", "weighed", "booked", "shared", "built", "chose",
)  # fmt: skip
VERBS_BASE = (
    "find", "buy", "open", "move", "watch", "paint", "fix", "borrow", "carry", "push", "visit",
    "show", "measure", "wash", "love", "throw", "write", "play", "follow", "share", "build",
)  # fmt: skip
ADVERBS = (
    "quickly", "slowly", "yesterday", "today", "again", "never", "always", "often", "maybe",
    "very carefully", "right away", "at home", "in the morning", "after lunch", "on Friday",
)  # fmt: skip
PLACES = (
    "the park", "the station", "the beach", "the library", "the zoo", "the city", "school",
    "the office", "the hotel", "the farm", "the harbour", "the theatre",
)  # fmt: skip
STARTS = ("Well,", "Oh,", "So,", "Look,", "Yes,", "You know,", "By the way,", "Honestly,")
NUMBERS = (
    "two", "three", "four", "five", "seven", "nine", "ten", "twelve", "fifteen", "twenty",
    "forty", "a hundred",
)  # fmt: skip


def _pick(rng: np.random.Generator, words: tuple[str, ...]) -> str:
    return words[int(rng.integers(len(words)))]


def _plural(noun: str) -> str:
    if noun.endswith("fish"):
        return noun
    if noun.endswith(("sh", "ch", "s", "x")):
        return noun + "es"
    if noun.endswith("y") and noun[-2] not in "aeiou":
        return noun[:-1] + "ies"
    return noun + "s"


def _noun_phrase(rng: np.random.Generator) -> str:
    det = _pick(rng, ("the", "a", "my", "your", "this", "that", "our"))
    adj = f"{_pick(rng, ADJECTIVES)} " if rng.random() < 0.6 else ""
    noun = f"{adj}{_pick(rng, NOUNS)}"
    if det == "a" and noun[0] in "aeiou":
        det = "an"
    return f"{det} {noun}"


def _any_sentence(rng: np.random.Generator) -> str:
    """One sentence from the grammar (not yet split-checked)."""
    kind = int(rng.integers(7))
    who = _pick(rng, NAMES + ("I", "we", "they", "she", "he"))
    if kind == 0:
        text = f"{who} {_pick(rng, VERBS_PAST)} {_noun_phrase(rng)} {_pick(rng, ADVERBS)}."
    elif kind == 1:
        text = f"Did you {_pick(rng, VERBS_BASE)} {_noun_phrase(rng)} at {_pick(rng, PLACES)}?"
    elif kind == 2:
        things = f"{_pick(rng, ADJECTIVES)} {_plural(_pick(rng, NOUNS))}"
        text = f"{who} saw {_pick(rng, NUMBERS)} {things} near {_pick(rng, PLACES)}."
    elif kind == 3:
        text = (
            f"{_pick(rng, STARTS)} {_noun_phrase(rng)} is "
            f"{_pick(rng, ('really', 'quite', 'so', 'not very'))} {_pick(rng, ADJECTIVES)}."
        )
    elif kind == 4:
        text = (
            f"Please {_pick(rng, VERBS_BASE)} {_noun_phrase(rng)} and "
            f"{_pick(rng, VERBS_BASE)} {_noun_phrase(rng)}."
        )
    elif kind == 5:
        text = (
            f"When {who} {_pick(rng, VERBS_PAST)} {_noun_phrase(rng)}, "
            f"{_pick(rng, NAMES)} went to {_pick(rng, PLACES)}."
        )
    else:
        text = f"Where is {_noun_phrase(rng)} that {who} {_pick(rng, VERBS_PAST)}?"
    return text[0].upper() + text[1:]


def split_of(text: str) -> str:
    """Which split a sentence belongs to (see the module doc)."""
    return "heldout" if zlib.crc32(text.encode()) % HELDOUT_MOD == 0 else "train"


def sentence(rng: np.random.Generator, split: str = "train") -> str:
    """A sentence of `split`, drawn from `rng`."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r} (known: {', '.join(SPLITS)})")
    while True:
        text = _any_sentence(rng)
        if split_of(text) == split:
            return text

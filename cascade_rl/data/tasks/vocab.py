"""Small shared vocabularies.

Kept deliberately small (a dozen or so entries each) so a byte-level BPE tokenizer trained on
this text gives every word one or two tokens and a tiny model sees each many times.
"""

from __future__ import annotations

NAMES = ("Ann", "Bob", "Cy", "Dan", "Eve", "Fay", "Gus", "Hal", "Ida", "Jo", "Kim", "Lee", "Max", "Ned")

# Plural count nouns for word problems.
NOUNS = (
    "apples", "pens", "cups", "books", "eggs", "hats", "keys", "toys",
    "cards", "rocks", "coins", "shells", "stamps", "balls",
)  # fmt: skip

# Short lowercase words for copying tasks.
WORDS = (
    "lamp", "cup", "pen", "sun", "tree", "fish", "book", "star",
    "door", "hat", "milk", "rain", "bird", "cake", "moon", "ship",
)  # fmt: skip

DAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
COLORS = ("red", "blue", "green", "black", "white", "pink", "gray")
CITIES = ("paris", "rome", "oslo", "lima", "cairo", "tokyo", "delhi", "berlin")

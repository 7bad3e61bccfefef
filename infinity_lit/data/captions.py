"""English captions for emoji, from their CLDR short names.

The CLDR short name of an emoji ("woman bowing: medium-dark skin tone", "flag: Greece",
"family: man, woman, girl") is the caption a person would write for it. The `emoji` package carries these
names in its ``EMOJI_DATA[...]["en"]`` field as GitHub-style aliases, with the punctuation flattened to
underscores and the "flag:" prefix dropped (``:woman_bowing_medium-dark_skin_tone:``, ``:Greece:``,
``:family_man_woman_girl:``). This module undoes that flattening for the patterns that occur in the
Unicode emoji set, joining the parts with commas instead of CLDR's colon ("woman bowing, medium-dark skin
tone"), which reads as an ordinary caption. Emoji the `emoji` package does not know but that are a single
Unicode character fall back to the lower-cased Unicode character name (U+2B1F → "black pentagon").
"""

from __future__ import annotations

import re
import unicodedata

__all__ = ["caption_from_cldr_alias", "emoji_caption", "is_flag_sequence"]

_SKIN_TONE = re.compile(r"\b((?:medium-light|medium-dark|light|medium|dark) skin tone)\b")
# CLDR lists the people of a group emoji after a colon ("kiss: woman, man"); the alias runs them on.
_GROUP_PREFIX = re.compile(
    r"^(family|kiss|couple with heart) ((?:(?:man|woman|person|girl|boy|adult|child|baby)\b ?)+)"
)
# "woman: red hair", "man: beard", "person: blond hair": an attribute after a bare person word.
_PERSON_ATTRIBUTE = re.compile(r"^(man|woman|person) (red hair|curly hair|white hair|blond hair|bald|beard)$")
_KEYCAP = re.compile(r"^keycap (\S+)$")
_VARIATION_SELECTOR_16 = "\ufe0f"


def is_flag_sequence(sequence: str) -> bool:
    """Whether ``sequence`` is a country flag (two regional indicators) or a subdivision flag (tag sequence).

    These are the emoji whose CLDR name starts with "flag:", a prefix the `emoji` package drops.
    """
    cps = [ord(c) for c in sequence]
    if len(cps) == 2 and all(0x1F1E6 <= cp <= 0x1F1FF for cp in cps):
        return True
    return (
        len(cps) >= 3
        and cps[0] == 0x1F3F4
        and cps[-1] == 0xE007F
        and all(0xE0020 <= cp <= 0xE007E for cp in cps[1:-1])
    )


def caption_from_cldr_alias(alias: str, *, flag: bool = False) -> str:
    """Turn an `emoji`-package name (``:woman_bowing_medium-dark_skin_tone:``) into a caption.

    Args:
        alias: the ``EMOJI_DATA[emoji]["en"]`` name, with or without the surrounding colons.
        flag: the emoji is a flag (see ``is_flag_sequence``); its caption gets the CLDR "flag" prefix.

    Returns:
        A caption such as "woman bowing, medium-dark skin tone", "flag, Greece", "family, man, woman,
        girl", "kiss, woman, man, dark skin tone, light skin tone", "woman, red hair", "keycap, #".
        Typographic apostrophes become ASCII ("man's shoe").

    Raises:
        ValueError: ``alias`` is empty.
    """
    name = alias.strip().strip(":").replace("_", " ").replace("’", "'")
    name = " ".join(name.split())
    if not name:
        raise ValueError(f"empty emoji name {alias!r}")
    if flag:
        return f"flag, {name}"
    name = _KEYCAP.sub(r"keycap, \1", name)
    name = _PERSON_ATTRIBUTE.sub(r"\1, \2", name)
    group = _GROUP_PREFIX.match(name)
    if group:
        people = ", ".join(group.group(2).split())
        rest = name[group.end() :].strip()
        name = f"{group.group(1)}, {people}" + (f" {rest}" if rest else "")
    # Skin tones (one or two of them) and anything after them become comma-separated parts.
    parts = [p.strip() for p in _SKIN_TONE.split(name)]
    return ", ".join(p.strip(" ,") for p in parts if p.strip(" ,"))


def emoji_caption(sequence: str) -> str | None:
    """Caption of an emoji given as its code point sequence, or ``None`` if it has no Unicode/CLDR name.

    Looks the sequence up in the `emoji` package (also with U+FE0F added or removed, since fonts and
    Unicode disagree on where the variation selector goes); a single code point the package does not know
    falls back to ``unicodedata.name`` (lower-cased). Private-use code points (OpenMoji's own extras) and
    unknown multi-code-point sequences have no name.

    Args:
        sequence: the emoji as a Python string, e.g. "\\U0001f647\\U0001f3fe\\u200d\\u2640\\ufe0f".

    Returns:
        The caption (see ``caption_from_cldr_alias``) or ``None``.
    """
    import emoji  # imported here: only the builders need it

    data = emoji.EMOJI_DATA
    bare = sequence.replace(_VARIATION_SELECTOR_16, "")
    for candidate in (sequence, bare, sequence + _VARIATION_SELECTOR_16):
        entry = data.get(candidate)
        if entry is not None and entry.get("en"):
            return caption_from_cldr_alias(entry["en"], flag=is_flag_sequence(bare))
    if len(bare) == 1:
        name = unicodedata.name(bare, "")
        if name:
            return name.lower()
    return None

"""The pronunciation dictionary: exactly the model's words, as the CMU dictionary says them."""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Iterable, Mapping
from pathlib import Path

from tools.receptionist_lm.arpa import BOS, EOS


def cmudict_path() -> Path:
    """The CMU dictionary inside the pocketsphinx wheel."""
    import pocketsphinx

    return Path(pocketsphinx.get_model_path()) / "en-us" / "cmudict-en-us.dict"


def write_dict(
    path: Path,
    words: Iterable[str],
    source: Path,
    extra_pronunciations: Mapping[str, list[str]],
) -> None:
    """Every pronunciation `source` (a CMU-format dictionary) has for each of `words`; one it
    lacks comes from `extra_pronunciations`, and a word in neither stops the build."""
    wanted = set(words) - {BOS, EOS}
    entries: dict[str, list[str]] = defaultdict(list)
    with source.open(encoding="utf-8") as f:
        for line in f:
            head, _, phones = line.strip().partition(" ")
            base = re.sub(r"\(\d+\)$", "", head)
            if base in wanted:
                # Drop trailing "#" comments some CMUdict entries carry.
                entries[base].append(phones.split("#")[0].strip())
    for word, prons in extra_pronunciations.items():
        if word in wanted and word not in entries:
            entries[word].extend(prons)
    missing = sorted(wanted - entries.keys())
    if missing:
        raise SystemExit(
            f"not in {source.name}: {' '.join(missing)} "
            "(add their pronunciations to extra_pronunciations in corpus.toml)"
        )
    lines = []
    for word in sorted(entries):
        for i, phones in enumerate(entries[word]):
            lines.append(f"{word} {phones}" if i == 0 else f"{word}({i + 1}) {phones}")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")

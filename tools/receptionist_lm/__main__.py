"""python -m tools.receptionist_lm [--out DIR]: rebuild the receptionist's LM and dictionary."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from sipagent.providers.offline_stt import DEFAULT_DICT, DEFAULT_LM
from tools.receptionist_lm.arpa import estimate, write_arpa
from tools.receptionist_lm.corpus import load_corpus
from tools.receptionist_lm.dictionary import cmudict_path, write_dict


def build(out_dir: Path) -> str:
    """Write receptionist.lm and receptionist.dict into `out_dir`; returns a summary line."""
    grammar, data = load_corpus()
    sentences = list(grammar.sentences(data["seed"]))
    unigrams, higher = estimate(sentences)
    lm_path, dict_path = out_dir / DEFAULT_LM.name, out_dir / DEFAULT_DICT.name
    write_arpa(lm_path, unigrams, higher)
    write_dict(dict_path, unigrams.keys(), cmudict_path(), data.get("extra_pronunciations", {}))
    return (
        f"{len(sentences)} sentences, {len(unigrams) - 1} words, "
        f"{len(higher[0]['probs'])} bigrams, {len(higher[1]['probs'])} trigrams -> "
        f"{lm_path} ({lm_path.stat().st_size // 1024} KiB), {dict_path}"
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tools.receptionist_lm", description=(__doc__ or "").split(": ", 1)[-1]
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=DEFAULT_LM.parent,
        help="output directory (default: where the agent reads them, %(default)s)",
    )
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    print(build(args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Builds the offline recogniser's language model and dictionary from `corpus.toml`:

    python -m tools.receptionist_lm

writes, where the runtime reads them (`sipagent/providers/receptionist_lm/`):
  receptionist.lm    a trigram ARPA model (interpolated absolute discounting, written in
                     back-off form) estimated on the corpus's sentences (`arpa.py`);
  receptionist.dict  pronunciations for exactly the model's words, taken from the CMU
                     dictionary inside the pocketsphinx wheel (`dictionary.py`).

Why a generated n-gram model rather than the wheel's general English model: on 8 kHz phone
audio (upsampled) the general model is slow (RTF ~0.5) and its 130k-word vocabulary turns
short answers into look-alike words. This ~530-word model of what callers say to a dental
receptionist decodes ~10x faster (RTF ~0.05) and gets most slot words (services, days, dates,
times, digits, names) right; a JSGF grammar would be faster still, but an n-gram model
tolerates sentences that no template wrote out word for word.

The output is deterministic (seeded sampling, sorted output), so a rebuild with unchanged
inputs leaves the shipped files byte-identical (tests/unit/test_receptionist_lm_build.py).
"""

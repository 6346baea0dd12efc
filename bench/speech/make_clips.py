"""Regenerate the evaluation clips in bench/speech/clips/ and their manifest.json.

Needs the Debian packages espeak-ng, flite, festival, festvox-kallpc16k, festvox-kdlpc16k,
festvox-us-slt-hts, pocketsphinx-testdata and sox. Every clip goes through what a phone call
does to a voice: 8 kHz, mu-law (sox's band-limiting resampler), peak level -6 dBFS.

    python bench/speech/make_clips.py
"""

from __future__ import annotations

import json
import subprocess
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
CLIPS = HERE / "clips"
TESTDATA = Path("/usr/share/pocketsphinx/test/data")

# What a caller says when booking, and the slots each sentence carries (normalised words as the
# benchmark compares them; digits as a digit string).
SENTENCES: list[tuple[str, dict[str, str]]] = [
    ("I'd like to book a cleaning for next Tuesday at three pm.",
     {"date": "next tuesday", "time": "three pm"}),
    ("My name is David Miller.", {"name": "david miller"}),
    ("My phone number is five five five, zero one two, three four five six.",
     {"digits": "5550123456"}),
    ("Do you have anything on Monday morning?", {"date": "monday"}),
    ("The fifteenth of March at ten thirty.", {"date": "fifteenth of march", "time": "ten thirty"}),
    ("Can I get a checkup tomorrow in the afternoon?", {"date": "tomorrow"}),
    ("Can I talk to a human please?", {}),
    ("This is Sarah Johnson, I need to cancel my appointment on Friday.",
     {"name": "sarah johnson", "date": "friday"}),
    ("Call me back at four one five, eight two two, nine one zero seven.",
     {"digits": "4158229107"}),
    ("How about Wednesday at eleven a.m.?", {"date": "wednesday", "time": "eleven am"}),
    ("I have a toothache and it's an emergency.", {}),
    ("Yes, that works. Thank you, goodbye.", {}),
]  # fmt: skip

# (voice id, family, command that writes a WAV to {out} saying {text}); speeds vary per voice.
VOICES: list[tuple[str, str, list[str]]] = [
    ("espeak-en-us-165", "espeak-ng", ["espeak-ng", "-v", "en-us", "-s", "165", "-w", "{out}"]),
    ("espeak-en-gb-rp-140", "espeak-ng",
     ["espeak-ng", "-v", "en-gb-x-rp", "-s", "140", "-w", "{out}"]),
    ("espeak-en-us-f3-200", "espeak-ng",
     ["espeak-ng", "-v", "en-us+f3", "-s", "200", "-w", "{out}"]),
    ("flite-slt-100", "flite", ["flite", "-voice", "slt", "-o", "{out}"]),
    ("flite-rms-085", "flite",
     ["flite", "-voice", "rms", "--setf", "duration_stretch=0.85", "-o", "{out}"]),
    ("flite-awb-115", "flite",
     ["flite", "-voice", "awb", "--setf", "duration_stretch=1.15", "-o", "{out}"]),
    ("festival-kal-100", "festival", ["festival:voice_kal_diphone:1.0", "{out}"]),
    ("festival-ked-085", "festival", ["festival:voice_ked_diphone:0.85", "{out}"]),
    ("festival-slt-hts-115", "festival", ["festival:voice_cmu_us_slt_arctic_hts:1.15", "{out}"]),
]  # fmt: skip

# Human read speech shipped in Debian's pocketsphinx-testdata (BSD-2, CMU): LibriVox readings
# (public domain), card names, a command and a digit string (z = zero in its name).
HUMAN: list[tuple[str, str, dict[str, str]]] = [
    ("goforward.raw", "go forward ten meters", {}),
    ("tidigits/dhd.2934z.raw", "two nine three four zero", {"digits": "29340"}),
]


def synthesize(command: list[str], text: str, out: Path) -> None:
    if command[0].startswith("festival:"):
        _, voice, stretch = command[0].split(":")
        script = f"(Parameter.set 'Duration_Stretch {stretch})"
        subprocess.run(
            ["text2wave", "-eval", f"({voice})", "-eval", script, "-o", str(out)],
            input=text, text=True, check=True, capture_output=True,
        )  # fmt: skip
        return
    args = [str(out) if a == "{out}" else a for a in command]
    if args[0] == "flite":
        args += ["-t", text]
    else:
        args.append(text)
    subprocess.run(args, check=True, capture_output=True)


def to_phone(source: list[str], out: Path) -> None:
    """Anything sox reads -> 8 kHz mu-law raw, peak -6 dBFS."""
    subprocess.run(
        ["sox", *source, "-r", "8000", "-c", "1", "-e", "mu-law", "-t", "raw", str(out),
         "norm", "-6"],
        check=True, capture_output=True,
    )  # fmt: skip


def human_clips() -> list[tuple[str, str, dict[str, str]]]:
    clips = [(TESTDATA / p, t, s) for p, t, s in HUMAN]
    for folder, pattern in (("librivox", "*.wav"), ("cards", "*.wav")):
        transcripts = {}
        for line in (TESTDATA / folder).glob("*transcription"):
            for row in line.read_text().splitlines():
                text, _, ident = row.rpartition("(")
                words = text.replace("<s>", "").replace("</s>", "").split()
                transcripts[ident.strip(") ")] = " ".join(words)
        for wav in sorted((TESTDATA / folder).glob(pattern)):
            clips.append((wav, transcripts[wav.stem], {}))
    return [(str(p), t, s) for p, t, s in clips]


def main() -> None:
    CLIPS.mkdir(exist_ok=True)
    manifest = []
    with tempfile.TemporaryDirectory() as tmp:
        wav = Path(tmp) / "clip.wav"
        for voice, family, command in VOICES:
            (CLIPS / voice).mkdir(exist_ok=True)
            for n, (text, slots) in enumerate(SENTENCES):
                synthesize(command, text, wav)
                name = f"{voice}/{n:02d}.ul"
                to_phone([str(wav)], CLIPS / name)
                manifest.append(
                    {"file": name, "voice": voice, "family": family, "text": text, "slots": slots}
                )
    (CLIPS / "human").mkdir(exist_ok=True)
    for source, text, slots in human_clips():
        path = Path(source)
        name = f"human/{path.parent.name}-{path.stem}.ul"
        raw = ["-t", "raw", "-r", "16000", "-e", "signed", "-b", "16", "-c", "1"]
        to_phone([*raw, source] if path.suffix == ".raw" else [source], CLIPS / name)
        manifest.append({"file": name, "voice": "human", "family": "human (read speech)",
                         "text": text, "slots": slots})  # fmt: skip
    (HERE / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    size = sum(f.stat().st_size for f in CLIPS.rglob("*.ul"))
    print(f"{len(manifest)} clips, {size / 1e6:.2f} MB")


if __name__ == "__main__":
    main()

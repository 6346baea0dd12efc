"""Offline recognisers on the evaluation clips: WER, slot accuracy, end of speech -> final.

    nice -n 10 python bench/offline_stt_eval.py                  # both recognisers, ~6 min
    nice -n 10 python bench/offline_stt_eval.py --only whisper --voices flite-slt-100

Each voice is one "call": one provider instance hears that voice's clips in turn, each clip
preceded by 0.3 s and followed by up to 2 s of line silence, through the provider's own
streaming interface (send_audio / events), so its VAD, endpointing (300 ms) and turn-taking are
what is measured. The speech of a clip is fed as fast as the recogniser keeps up (it would
arrive over its own duration on a call; neither recogniser does heavy work during it) and the
silence after it in real time, 20 ms frames every 20 ms, so "end of speech -> final" is the
wall time from feeding the clip's last voiced frame (webrtcvad, mode 3) to the last FINAL of
the turn: the 300 ms endpointing window plus the recogniser's own time at the end of the turn.
"""

from __future__ import annotations

import argparse
import asyncio
import audioop
import os
import shlex
import statistics
import sys
import time
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench" / "speech"))

from benchlib import machine_info, run_benchmark  # noqa: E402
from scoring import Clip, edit_distance, load_clips, normalise, slot_heard  # noqa: E402

from sipagent.providers.base import SttEvent, SttEventKind  # noqa: E402

DEFAULT_OUT = REPO / "bench" / "results" / "offline_stt_eval.json"
RECOGNISERS = ("pocketsphinx", "whisper")
FRAME = 160
LEAD_S = 0.3
TAIL_S = 2.0


def new_recogniser(name: str) -> Any:
    if name == "pocketsphinx":
        from sipagent.providers.offline_stt import PocketsphinxSpeechToText

        return PocketsphinxSpeechToText()
    from sipagent.providers.whisper_stt import WhisperSpeechToText

    # Partials (pocketsphinx beside it) only serve barge-in; they cost time, not accuracy.
    return WhisperSpeechToText(partials=False)


def last_voiced_frame(mulaw: bytes) -> int:
    import webrtcvad

    vad = webrtcvad.Vad(3)
    last = 0
    for n in range(len(mulaw) // FRAME):
        if vad.is_speech(audioop.ulaw2lin(mulaw[n * FRAME : (n + 1) * FRAME], 2), 8000):
            last = n
    return last


async def run_voice(name: str, clips: list[Clip]) -> list[dict[str, Any]]:
    stt = new_recogniser(name)
    await stt.start()
    events: list[tuple[float, SttEvent]] = []

    async def listen() -> None:
        async for event in stt.events():
            events.append((time.perf_counter(), event))

    listener = asyncio.create_task(listen())
    rows = []
    silence = b"\xff" * FRAME
    for clip in clips:
        audio = silence * int(LEAD_S * 50) + clip.mulaw()
        audio += b"\xff" * (-len(audio) % FRAME)
        cut = (last_voiced_frame(audio) + 1) * FRAME
        events.clear()
        for i in range(0, cut, FRAME):
            stt.send_audio(audio[i : i + FRAME])
        while getattr(stt, "queued_bytes", 0) > 0:  # pocketsphinx decodes while audio arrives
            await asyncio.sleep(0.005)
        speech_end = time.perf_counter()
        tail = audio[cut:] + silence * int(TAIL_S * 50)
        start = time.perf_counter()
        for n, i in enumerate(range(0, len(tail), FRAME)):
            if any(e.kind == SttEventKind.UTTERANCE_END for _, e in events):
                break
            stt.send_audio(tail[i : i + FRAME])
            await asyncio.sleep(max(0.0, start + (n + 1) * 0.02 - time.perf_counter()))
        await stt.finalize()
        finals = [(t, e) for t, e in events if e.kind == SttEventKind.FINAL]
        heard = " ".join(e.text for _, e in finals).strip()
        ref, hyp = normalise(clip.text), normalise(heard)
        rows.append({
            "file": clip.file, "voice": clip.voice, "family": clip.family, "text": clip.text,
            "heard": heard, "ref_words": len(ref), "errors": edit_distance(ref, hyp),
            "slots": {kind: slot_heard(kind, value, hyp) for kind, value in clip.slots.items()},
            "final_after_speech_s": round(finals[-1][0] - speech_end, 3) if finals else None,
        })  # fmt: skip
    await stt.close()
    await listener
    return rows


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def summarise(rows: list[dict[str, Any]]) -> dict[str, Any]:
    errors = sum(r["errors"] for r in rows)
    words = sum(r["ref_words"] for r in rows)
    slots: dict[str, list[bool]] = defaultdict(list)
    for r in rows:
        for kind, ok in r["slots"].items():
            slots[kind].append(ok)
    all_slots = [ok for oks in slots.values() for ok in oks]
    latency = [r["final_after_speech_s"] for r in rows if r["final_after_speech_s"] is not None]
    return {
        "clips": len(rows),
        "words": words,
        "word_errors": errors,
        "wer": round(errors / words, 4) if words else None,
        "slot_accuracy": {k: round(sum(v) / len(v), 3) for k, v in sorted(slots.items())},
        "slots_right": f"{sum(all_slots)}/{len(all_slots)}",
        "clips_with_all_slots": sum(bool(r["slots"]) and all(r["slots"].values()) for r in rows),
        "clips_with_slots": sum(bool(r["slots"]) for r in rows),
        "final_after_speech_p50_s": percentile(latency, 0.5),
        "final_after_speech_p95_s": percentile(latency, 0.95),
        "final_after_speech_mean_s": round(statistics.fmean(latency), 3) if latency else None,
    }


async def amain(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    clips = [c for c in load_clips() if not args.voices or c.voice in args.voices]
    by_voice: dict[str, list[Clip]] = defaultdict(list)
    for clip in clips:
        by_voice[clip.voice].append(clip)
    started = time.time()
    report: dict[str, Any] = {
        "benchmark": "offline_stt_eval",
        "command": shlex.join(["python", os.path.relpath(sys.argv[0], Path.cwd()), *sys.argv[1:]]),
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
        "machine": machine_info(),
        "settings": {
            "recognisers": args.only,
            "voices": sorted(by_voice),
            "lead_s": LEAD_S,
            "tail_s": TAIL_S,
            "endpointing_ms": 300,
        },
        "anomalies": [],
        "results": {},
    }
    for name in args.only:
        rows: list[dict[str, Any]] = []
        for voice, voice_clips in by_voice.items():
            print(f"{name}: {voice}", file=sys.stderr, flush=True)
            rows += await run_voice(name, voice_clips)
        families: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for row in rows:
            families[row["family"]].append(row)
        report["results"][name] = {
            "all": summarise(rows),
            "synthetic": summarise([r for r in rows if r["voice"] != "human"]),
            "families": {f: summarise(r) for f, r in sorted(families.items())},
            "clips": rows,
        }
    report["machine"]["loadavg_end"] = list(os.getloadavg())
    report["duration_s"] = round(time.time() - started, 1)
    return report


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f} %"


def _s(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f} s"


def markdown(report: dict[str, Any]) -> str:
    lines = [
        "| recogniser | voices | clips | WER | date | time | name | digits | all slots in clip "
        "| speech end -> final p50 / p95 |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, result in report["results"].items():
        groups = [("all", result["all"]), ("synthetic", result["synthetic"])]
        groups += list(result["families"].items())
        for group, s in groups:
            acc = s["slot_accuracy"]
            lines.append(
                f"| {name} | {group} | {s['clips']} | {_pct(s['wer'])} | "
                + " | ".join(_pct(acc.get(k)) for k in ("date", "time", "name", "digits"))
                + f" | {s['clips_with_all_slots']}/{s['clips_with_slots']} | "
                f"{_s(s['final_after_speech_p50_s'])} / {_s(s['final_after_speech_p95_s'])} |"
            )
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--only", nargs="+", choices=RECOGNISERS, default=list(RECOGNISERS))
    p.add_argument("--voices", nargs="+", help="only these voice ids (see manifest.json)")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON output file")
    p.add_argument("--workdir", type=Path, help="artifacts directory (default: a temp dir)")
    p.add_argument("--keep", action="store_true", help="keep the artifacts directory")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    return run_benchmark(parse_args(argv), amain, markdown, workdir_prefix="sipagent-stteval-")


if __name__ == "__main__":
    sys.exit(main())

"""The report as markdown tables, and what the JSON report needs to serialise."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from .scenarios import CallerScript


def _f(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.1f}"
    return str(value)


def _row(label: str, s: dict[str, Any], target: str = "", verdict: str = "") -> str:
    return (
        f"| {label} | {s['n']} | {_f(s['p50'])} | {_f(s['p95'])} | {_f(s['max'])} | "
        f"{target} | {verdict} |"
    )


def _verdict(flag: bool | None) -> str:
    return "-" if flag is None else ("PASS" if flag else "FAIL")


INBOUND_LABELS = {
    "total": "inbound: wire -> fake STT",
    "buffer": "inbound: wire -> jitter-buffer due time",
    "tick_wait": "inbound: due time -> media tick",
    "to_stt": "inbound: media tick -> fake STT",
}


def markdown(report: dict[str, Any]) -> str:
    out: list[str] = []
    head = ["| metric | n | p50 ms | p95 ms | max ms | target | result |",
            "|---|---:|---:|---:|---:|---|---|"]  # fmt: skip
    r = report["results"].get("v2v")
    if r and "error" not in r:
        m = r["meets"]
        out += [f"### Voice-to-voice ({r['turns_measured']}/{r['turns_planned']} turns, capture "
                "on lo; providers STT 300 + LLM 300 + TTS 100 ms)", "", *head]  # fmt: skip
        out.append(_row("voice-to-voice", r["v2v_ms"], "p50 <= 720", _verdict(m["v2v_p50"])))
        for key, label in (("stt", "STT"), ("llm", "LLM"), ("tts", "TTS"), ("sum", "sum")):
            out.append(_row(f"provider time, measured: {label}", r["provider_ms_measured"][key]))
        out.append(
            _row("agent overhead = v2v - measured providers", r["overhead_measured_ms"],
                 "p50 <= 10, p95 <= 25",
                 "/".join(_verdict(m[f"overhead_{p} (measured)"]) for p in ("p50", "p95")))
        )  # fmt: skip
        out.append(
            _row("agent overhead = v2v - 700 ms nominal", r["overhead_nominal_ms"],
                 "p50 <= 10, p95 <= 25",
                 "/".join(_verdict(m[f"overhead_{p} (nominal)"]) for p in ("p50", "p95")))
        )  # fmt: skip
        out += ["", "Where the measured overhead goes (segments add up to it):", "", *head]
        for key, stats in r["overhead_segments_ms"].items():
            out.append(_row(key.replace("_", " "), stats))
        for key, label in INBOUND_LABELS.items():
            if r["inbound_path_ms"][key]["n"]:
                out.append(_row(f"(every caller frame) {label}", r["inbound_path_ms"][key]))
        anchors = [c.get("jitter_buffer_anchor") or {} for c in r["calls"]]
        if all(a.get("delivery", "").startswith("after") for a in anchors):
            late = [a.get("agent_anchor_minus_first_packet_ms") for a in anchors]
            out.append(
                "| (per call) jitter-buffer anchor minus first caller packet's arrival | "
                + f"{len(late)} | {', '.join(_f(x) for x in late)} | | | | |"
            )
        for key, stats in r["overhead_detail_ms"].items():
            out.append(_row(f"(detail) {key.replace('_', ' ')}", stats))
        for key, stats in r["agent_recorded_ms"].items():
            out.append(_row(f"(agent stamps) {key.replace('_', ' ')}", stats))
    elif r:
        out.append(f"v2v: ERROR {r['error']}")
    b = report["results"].get("barge-in")
    if b and "error" not in b:
        m = b["meets"]
        out += ["", f"### Barge-in ({b['barge_ins_measured']}/{b['barge_ins_planned']} "
                "interruptions; the first of each call over the greeting)", "", *head]  # fmt: skip
        rows = (
            ("caller onset -> agent's last voiced packet (silence, PAUSE step)",
             "onset_to_silence_ms", "p50 <= 200", _verdict(m["onset_to_silence_p50"])),
            ("caller onset -> first silent agent packet", "onset_to_first_silent_packet_ms",
             "", ""),
            ("caller onset -> PAUSE decision (agent)", "onset_to_pause_decision_ms", "", ""),
            ("caller onset -> INTERRUPT decision (agent)", "onset_to_interrupt_decision_ms",
             "", ""),
            ("PAUSE decision -> silence (end of the last voiced frame's audio)",
             "decision_to_silence_ms", "<= 20",
             f"p50 {_verdict(m['decision_to_silence_p50'])}, "
             f"max {_verdict(m['decision_to_silence_max'])}"),
            ("PAUSE decision -> first silent packet on the wire",
             "decision_to_first_silent_packet_ms", "<= 20",
             _verdict(m["decision_to_first_silent_packet_p50"])),
            ("PAUSE decision -> last voiced packet", "decision_to_last_voiced_ms", "", ""),
            ("caller onset -> fake STT onset (audio reached it)", "onset_to_stt_onset_ms", "",
             ""),
            ("caller onset -> first interim words sent", "onset_to_stt_first_words_ms", "", ""),
            ("(agent stamps) INTERRUPT decision -> last voiced packet sent",
             "agent_recorded_interrupt_decision_to_last_voiced_ms", "", ""),
        )  # fmt: skip
        for label, key, target, verdict in rows:
            out.append(_row(label, b[key], target, verdict))
        out.append("")
        out.append(
            f"voiced agent packets after the PAUSE decision: "
            f"{_f(b['voiced_packets_after_decision_total'])}; resumes: {b['resumes']}"
        )
    elif b:
        out.append(f"barge-in: ERROR {b['error']}")
    mach = report["machine"]
    out += [
        "",
        f"machine: nproc={mach['nproc']} ({mach['cpu_model']}), Python {mach['python']}, "
        f"{mach['sipp']}; loadavg start {mach['loadavg_start']} end {mach.get('loadavg_end')}",
        f"command: `{report['command']}`",
        f"agent: `{report['agent_commands'][0] if report['agent_commands'] else '-'}`",
    ]
    if report["anomalies"]:
        out += ["", "anomalies:"] + [f"- {a}" for a in report["anomalies"]]
    return "\n".join(out)


def jsonable(value: Any) -> Any:
    """`json.dumps` default for what the report holds beyond plain data."""
    if isinstance(value, CallerScript):
        return {"path": str(value.path), "frames": value.frames,
                "utterances": [dataclasses.asdict(u) for u in value.utterances]}  # fmt: skip
    if isinstance(value, Path):
        return str(value)
    raise TypeError(type(value).__name__)

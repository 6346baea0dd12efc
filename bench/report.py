"""Print the README's benchmark tables from bench/results/*.json (no measuring here)."""

from __future__ import annotations

import json
from pathlib import Path

RESULTS = Path(__file__).parent / "results"


def _ms(stats: dict, key: str) -> str:
    value = stats.get(key)
    if value is None:
        return "-"
    return f"{value:.2f}" if abs(value) < 10 else f"{value:.1f}"


def media() -> list[str]:
    data = json.loads((RESULTS / "media_timing.json").read_text())
    lines = [
        f"`{data['command']}` ({data['started_at']}, {data['machine']['nproc']} CPUs, "
        f"Python {data['machine']['python']}); from a tcpdump capture at the receiver:",
        "",
        "| sender | calls | intervals | interval error p50 ms | p99 ms | max ms | drift ms "
        "| target p99 |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for row in data["results"]["media"]:
        error = row["error_ms"]
        target = f"<= {row['target_p99_ms']:g} ms" if row.get("target_p99_ms") else "(reference)"
        lines.append(
            f"| {row['sender']} | {row['calls']} | {row['intervals']} | {_ms(error, 'p50')} | "
            f"{_ms(error, 'p99')} | {_ms(error, 'max')} | {row['drift_ms_max_abs']:.1f} | "
            f"{target} |"
        )
    lines += [
        "",
        "| INVITE-to-200 | INVITEs | p50 ms | p99 ms | max ms | target |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for row in data["results"]["invite"]:
        stats = row["ms"]
        lines.append(
            f"| {row['scenario']} | {row['invites']} | {_ms(stats, 'p50')} | {_ms(stats, 'p99')} | "
            f"{_ms(stats, 'max')} | < 50 ms |"
        )
    if data.get("anomalies"):
        lines += ["", "Anomalies flagged by the run: " + "; ".join(data["anomalies"])]
    return lines


def conversation() -> list[str]:
    data = json.loads((RESULTS / "conversation_latency.json").read_text())
    v2v, barge = data["results"]["v2v"], data["results"]["barge-in"]
    segments = v2v["overhead_segments_ms"]
    lines = [
        f"`{data['command']}` ({data['started_at']}): fake providers at the reference design's "
        "latencies (STT final 300 ms after speech end, LLM first token 300 ms, TTS first byte "
        "100 ms), measured on the wire:",
        "",
        "| measure | n | p50 ms | p95 ms | max ms | target |",
        "|---|---:|---:|---:|---:|---|",
        f"| voice-to-voice | {v2v['v2v_ms']['n']} | {_ms(v2v['v2v_ms'], 'p50')} | "
        f"{_ms(v2v['v2v_ms'], 'p95')} | {_ms(v2v['v2v_ms'], 'max')} | p50 <= 720 |",
        f"| providers' own time (measured) | {v2v['provider_ms_measured']['sum']['n']} | "
        f"{_ms(v2v['provider_ms_measured']['sum'], 'p50')} | "
        f"{_ms(v2v['provider_ms_measured']['sum'], 'p95')} | "
        f"{_ms(v2v['provider_ms_measured']['sum'], 'max')} | |",
        f"| agent overhead (v2v - measured providers) | {v2v['overhead_measured_ms']['n']} | "
        f"{_ms(v2v['overhead_measured_ms'], 'p50')} | {_ms(v2v['overhead_measured_ms'], 'p95')} | "
        f"{_ms(v2v['overhead_measured_ms'], 'max')} | p50 <= 10, p95 <= 25 |",
    ]
    for name, stats in segments.items():
        lines.append(
            f"| ... of which {name.replace('_', ' ')} | {stats['n']} | {_ms(stats, 'p50')} | "
            f"{_ms(stats, 'p95')} | {_ms(stats, 'max')} | |"
        )
    lines += [
        f"| barge-in: caller onset to silence | {barge['onset_to_silence_ms']['n']} | "
        f"{_ms(barge['onset_to_silence_ms'], 'p50')} | "
        f"{_ms(barge['onset_to_silence_ms'], 'p95')} | "
        f"{_ms(barge['onset_to_silence_ms'], 'max')} | p50 <= 200 |",
        f"| barge-in: decision to silence | {barge['decision_to_silence_ms']['n']} | "
        f"{_ms(barge['decision_to_silence_ms'], 'p50')} | "
        f"{_ms(barge['decision_to_silence_ms'], 'p95')} | "
        f"{_ms(barge['decision_to_silence_ms'], 'max')} | <= 20 |",
        "| barge-in: caller onset to interrupt (words) | "
        f"{barge['onset_to_interrupt_decision_ms']['n']} | "
        f"{_ms(barge['onset_to_interrupt_decision_ms'], 'p50')} | "
        f"{_ms(barge['onset_to_interrupt_decision_ms'], 'p95')} | "
        f"{_ms(barge['onset_to_interrupt_decision_ms'], 'max')} | |",
    ]
    if data.get("anomalies"):
        lines += ["", "Anomalies flagged by the run: " + "; ".join(data["anomalies"])]
    return lines


if __name__ == "__main__":
    print(
        "\n".join(
            [
                "### RTP pacing and answer time",
                "",
                *media(),
                "",
                "### Conversation",
                "",
                *conversation(),
            ]
        )
    )

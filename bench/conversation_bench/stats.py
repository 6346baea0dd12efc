"""From a scenario's captures and the fakes' and agent's stamps to per-turn rows and their
percentiles (everything the report shows)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from tests.kit.fakes.elevenlabs_server import expected_audio

from .capture import FRAME_BYTES, FRAME_S, CallCapture, analyse_capture, inbound_path
from .fakes import NOMINAL_PROVIDER_S, TimedRecogniser
from .scenarios import TARGETS, CallerScript, ScenarioRun, Utterance


def ok(stats: dict[str, Any], key: str, target: float) -> bool | None:
    """Whether stats[key] meets `target`; None when there is nothing to judge."""
    return None if stats[key] is None else bool(stats[key] <= target)


def pct(values: Sequence[float | None]) -> dict[str, Any]:
    arr = np.asarray([v for v in values if v is not None], dtype=float)
    if arr.size == 0:
        return {"n": 0, "p50": None, "p95": None, "max": None, "min": None, "mean": None}
    return {
        "n": int(arr.size),
        "p50": round(float(np.percentile(arr, 50)), 2),
        "p95": round(float(np.percentile(arr, 95)), 2),
        "max": round(float(arr.max()), 2),
        "min": round(float(arr.min()), 2),
        "mean": round(float(arr.mean()), 2),
    }


def ms(a: float | None, b: float | None) -> float | None:
    """(b - a) in ms, or None."""
    return None if a is None or b is None else round((b - a) * 1000, 2)


def first_in(items: Sequence[Any], key: Callable[[Any], float], lo: float, hi: float) -> Any:
    candidates = [x for x in items if lo <= key(x) < hi]
    return min(candidates, key=key) if candidates else None


def fake_frame_arrivals(run: ScenarioRun, cap: CallCapture) -> dict[int, float]:
    """Frame index -> realtime at which the fake Deepgram received that frame, for the STT
    connection of this call (the one whose audio arrived while the call's audio was flowing).
    The agent streams every inbound frame in order from the start of the call, so frame n of
    the connection is frame n of the caller's file."""
    if not cap.caller_at:
        return {}
    lo, hi = min(cap.caller_at.values()), max(cap.caller_at.values()) + 1.0
    for log in TimedRecogniser.arrivals.values():
        first = run.real(log[0][1])
        if first is None or not lo <= first <= hi:
            continue
        frames: dict[int, float] = {}
        done = 0
        for received, arrival in log:
            while (done + 1) * FRAME_BYTES <= received:
                frames[done] = run.real(arrival) or 0.0
                done += 1
        return frames
    return {}


class ScenarioAnalysis:
    """Turns one scenario run into its summary; what looks wrong goes to `anomalies`."""

    def __init__(self, anomalies: list[str]) -> None:
        self.anomalies = anomalies

    def analyse_v2v(self, run: ScenarioRun) -> dict[str, Any]:
        real = run.real
        finals = [e for e in TimedRecogniser.log if e["kind"] == "final"]
        for e in finals:
            e["sent"] = real(run.deepgram.sent_at.get(id(e["message"])))
            e["speech_end_arrival_real"] = real(e["speech_end_arrival"])
        oa = [
            {"received": real(r.received_at), "first": real(r.first_chunk_at),
             "done": real(run.openai.done_at.get(id(r))),
             "text": run.openai.reply_text.get(id(r), "")}
            for r in run.openai.requests
        ]  # fmt: skip
        tts = [
            {"received": real(run.elevenlabs.received_at.get(id(r))),
             "first": real(getattr(r.first_chunk_sent, "at", None)), "text": r.text}
            for r in run.elevenlabs.requests
        ]  # fmt: skip
        agent_turns = self.agent_user_turns(run)
        turns: list[dict[str, Any]] = []
        calls_out = []
        inbound: dict[str, list[float]] = {}
        for call in run.calls:
            script, cap = self.analyse_call("v2v", run, call, inbound)
            for k, utt in enumerate(script.utterances):
                row = self.v2v_turn(run, call, cap, script, k, utt, finals, oa, tts, agent_turns)
                turns.append(row)
            calls_out.append(self._call_info(call, cap))
        summary = self.summarise_v2v(run, turns, calls_out)
        summary["inbound_path_ms"] = {k: pct(v) for k, v in inbound.items()}
        return summary

    def analyse_call(
        self, name: str, run: ScenarioRun, call: dict[str, Any], inbound: dict[str, list[float]]
    ) -> tuple[CallerScript, CallCapture]:
        """Read one call's capture, check the caller's stream, add its inbound-path samples to
        `inbound` and note where its jitter buffer anchored (in `call`)."""
        script: CallerScript = call["script"]
        cap = analyse_capture(Path(call["pcap"]), call["media_port"], script.path.read_bytes())
        self.check_caller_stream(name, call, cap)
        fake = fake_frame_arrivals(run, cap)
        recorded = self.recorded_anchor(run, cap)
        path, anchor = inbound_path(
            cap, fake, self.target_delay(run), recorded.pop("arrival", None)
        )
        for key, values in path.items():
            inbound.setdefault(key, []).extend(values)
        anchor.update(recorded)
        call["jitter_buffer_anchor"] = anchor
        return script, cap

    def check_caller_stream(self, name: str, call: dict[str, Any], cap: CallCapture) -> None:
        if cap.caller_mismatch:
            self.anomalies.append(
                f"{name} call {call['call']}: {cap.caller_mismatch} caller packets differ "
                "from the file"
            )
        expected = call["script"].frames
        if len(cap.caller_at) != expected:
            self.anomalies.append(
                f"{name} call {call['call']}: {len(cap.caller_at)} of {expected} caller "
                "packets captured"
            )

    def recorded_anchor(self, run: ScenarioRun, cap: CallCapture) -> dict[str, Any]:
        """The agent's own record of where this call's jitter buffer anchored (recording mode):
        its read time of that packet minus the packet's capture time."""
        if not cap.caller_at:
            return {}
        lo, hi = min(cap.caller_at.values()), max(cap.caller_at.values())
        for a in run.agent_dump.get("jitter_buffer_anchors", []):
            arrival = run.real(a["arrival"])
            if arrival is None or not lo - 0.5 <= arrival <= hi + 0.5:
                continue
            index = ((a["timestamp"] - cap.caller_ts0) % 2**32) // FRAME_BYTES
            if index in cap.caller_at:
                return {
                    "arrival": arrival - index * FRAME_S,  # as the time base of frame 0
                    "agent_recorded_anchor_frame": index,
                    "agent_recorded_anchor_minus_capture_ms": ms(cap.caller_at[index], arrival),
                }
        return {}

    def target_delay(self, run: ScenarioRun) -> float:
        """The agent's inbound jitter-buffer delay (its stats when recorded; 40 ms default)."""
        stats = [s["jitter"] for s in (run.agent_dump.get("rtp") or {}).values()]
        for s in stats:
            if s["reanchors"] != 1:
                self.anomalies.append(
                    f"{run.name}: the agent's jitter buffer re-anchored {s['reanchors']} times "
                    "in a call (the inbound-path split assumes one anchor)"
                )
        delays = {round(s["target_delay_ms"], 3) for s in stats}
        if len(delays) == 1:
            return delays.pop() / 1000
        return 0.040

    def agent_user_turns(self, run: ScenarioRun) -> list[dict[str, Any]]:
        out = []
        for session in run.agent_dump.get("sessions", {}).values():
            for turn in session["turns"]:
                if turn["role"] == "user":
                    t = {k: run.real(v) for k, v in turn["timings"].items()}
                    out.append(t)
        return out

    def v2v_turn(
        self,
        run: ScenarioRun,
        call: dict[str, Any],
        cap: CallCapture,
        script: CallerScript,
        k: int,
        utt: Utterance,
        finals: list[dict[str, Any]],
        oa: list[dict[str, Any]],
        tts: list[dict[str, Any]],
        agent_turns: list[dict[str, Any]],
    ) -> dict[str, Any]:
        row: dict[str, Any] = {"call": call["call"], "turn": k + 1, "utterance": utt.text}
        end = cap.caller_at.get(utt.voiced_last)
        nxt = script.utterances[k + 1] if k + 1 < len(script.utterances) else None
        horizon = cap.caller_at.get(nxt.voiced_first, float("inf")) if nxt else float("inf")
        if end is None:
            row["error"] = "the caller's last voiced packet is not in the capture"
            self.anomalies.append(f"v2v call {call['call']} turn {k + 1}: {row['error']}")
            return row
        i = cap.agent_index_after(end)
        reply = next((p for p in cap.agent[i:] if p.voiced), None)
        if reply is None or reply.time >= horizon:
            row["error"] = "no agent reply before the next utterance"
            self.anomalies.append(f"v2v call {call['call']} turn {k + 1}: {row['error']}")
            return row
        row["v2v_ms"] = ms(end, reply.time)
        row["overhead_nominal_ms"] = round(row["v2v_ms"] - NOMINAL_PROVIDER_S * 1000, 2)
        final = first_in(finals, lambda e: e["sent"] or 0.0, end, reply.time)
        llm = first_in(oa, lambda r: r["received"] or 0.0, end, reply.time)
        synth = first_in(tts, lambda r: r["received"] or 0.0, end, reply.time)
        if final is None or llm is None or synth is None:
            row["error"] = "provider records for this turn not found"
            self.anomalies.append(f"v2v call {call['call']} turn {k + 1}: {row['error']}")
            return row
        # The fake's VAD found the same last speech frame as this analysis (same VAD, frames
        # aligned): otherwise STT time and the wire speech end would refer to different audio.
        fake_end_frame = round(final["speech_end_audio_t"] / FRAME_S) - 1
        row["fake_speech_end_frame_offset"] = fake_end_frame - utt.voiced_last
        if fake_end_frame != utt.voiced_last:
            self.anomalies.append(
                f"v2v call {call['call']} turn {k + 1}: the fake STT's last speech frame is "
                f"{fake_end_frame}, the file's {utt.voiced_last}"
            )
        expected = expected_audio(synth["text"])[:FRAME_BYTES]
        row["reply"] = llm["text"]
        row["first_packet_is_reply_audio"] = reply.payload[: len(expected)] == expected
        if not row["first_packet_is_reply_audio"]:
            self.anomalies.append(
                f"v2v call {call['call']} turn {k + 1}: the first voiced agent packet is not "
                f"the start of the fake TTS audio for {synth['text']!r}"
            )
        stt_s = final["sent"] - final["speech_end_arrival_real"]
        llm_s = llm["first"] - llm["received"]
        tts_s = synth["first"] - synth["received"]
        row["provider_ms"] = {
            "stt": round(stt_s * 1000, 2),
            "llm": round(llm_s * 1000, 2),
            "tts": round(tts_s * 1000, 2),
            "sum": round((stt_s + llm_s + tts_s) * 1000, 2),
        }
        row["overhead_measured_ms"] = round(row["v2v_ms"] - row["provider_ms"]["sum"], 2)
        # Where the agent's part goes (these four add up to overhead_measured_ms).
        row["segments_ms"] = {
            "inbound_audio": ms(end, final["speech_end_arrival_real"]),
            "stt_final_to_llm_request": ms(final["sent"], llm["received"]),
            "llm_first_chunk_to_tts_request": ms(llm["first"], synth["received"]),
            "tts_first_chunk_to_wire": ms(synth["first"], reply.time),
        }
        row["detail_ms"] = {
            "llm_first_chunk_to_llm_done": ms(llm["first"], llm["done"]),
            "llm_done_to_tts_request": ms(llm["done"], synth["received"]),
            "fake_final_due_to_sent": ms(run.real(final["due"]), final["sent"]),
        }
        # The agent's own stamps, where recorded (agent clock -> realtime).
        at = first_in(agent_turns, lambda t: t.get("stt_final") or 0.0, end, reply.time)
        if at is not None:
            row["agent_ms"] = {
                "final_sent_to_agent_stt_final": ms(final["sent"], at["stt_final"]),
                "agent_stt_final_to_llm_request": ms(at["stt_final"], llm["received"]),
                "llm_first_chunk_to_agent_first_token": ms(llm["first"], at["llm_first_token"]),
                "tts_first_chunk_to_agent_first_byte": ms(synth["first"], at["tts_first_byte"]),
                "agent_first_byte_to_first_packet_sent": ms(
                    at["tts_first_byte"], at["first_reply_packet"]
                ),
                "agent_packet_sent_to_wire": ms(at["first_reply_packet"], reply.time),
                "wire_speech_end_to_agent_vad_speech_end": ms(end, at["caller_speech_end"]),
            }
        return row

    def summarise_v2v(
        self, run: ScenarioRun, turns: list[dict[str, Any]], calls: list[dict[str, Any]]
    ) -> dict[str, Any]:
        good = [t for t in turns if "error" not in t]

        def col(key: str, sub: str | None = None) -> list[float | None]:
            return [(t[key][sub] if sub else t[key]) for t in good if key in t]

        v2v = pct(col("v2v_ms"))
        over_nom = pct(col("overhead_nominal_ms"))
        over_meas = pct(col("overhead_measured_ms"))
        segments = {k: pct(col("segments_ms", k)) for k in good[0]["segments_ms"]} if good else {}
        details = {k: pct(col("detail_ms", k)) for k in good[0]["detail_ms"]} if good else {}
        with_agent = [t for t in good if "agent_ms" in t]
        agent = (
            {k: pct([t["agent_ms"][k] for t in with_agent]) for k in with_agent[0]["agent_ms"]}
            if with_agent
            else {}
        )
        providers = {k: pct(col("provider_ms", k)) for k in ("stt", "llm", "tts", "sum")}

        return {
            "scenario": "v2v",
            "turns_planned": len(turns),
            "turns_measured": len(good),
            "v2v_ms": v2v,
            "provider_ms_measured": providers,
            "provider_ms_nominal": NOMINAL_PROVIDER_S * 1000,
            "overhead_nominal_ms": over_nom,
            "overhead_measured_ms": over_meas,
            "overhead_segments_ms": segments,
            "overhead_detail_ms": details,
            "agent_recorded_ms": agent,
            "meets": {
                "v2v_p50": ok(v2v, "p50", TARGETS["v2v_p50_ms"]),
                "overhead_p50 (measured)": ok(over_meas, "p50", TARGETS["overhead_p50_ms"]),
                "overhead_p95 (measured)": ok(over_meas, "p95", TARGETS["overhead_p95_ms"]),
                "overhead_p50 (nominal)": ok(over_nom, "p50", TARGETS["overhead_p50_ms"]),
                "overhead_p95 (nominal)": ok(over_nom, "p95", TARGETS["overhead_p95_ms"]),
            },
            "calls": calls,
            "agent": {
                "log": run.agent_dump.get("log"),
                "log_problems": run.agent_dump.get("log_problems"),
                "rtp": run.agent_dump.get("rtp"),
            },
            "clock_offsets_s": run.offsets,
            "turns": turns,
        }

    def analyse_barge_in(self, run: ScenarioRun) -> dict[str, Any]:
        real = run.real
        events: list[dict[str, Any]] = []
        interrupted_turns: list[dict[str, Any]] = []
        for session in run.agent_dump.get("sessions", {}).values():
            for e in session["barge_in_events"]:
                events.append({**e, "at": real(e["at"]), "caller_onset": real(e["caller_onset"])})
            for turn in session["turns"]:
                if turn["role"] == "assistant" and turn["interrupted"]:
                    timings = {k: real(v) for k, v in turn["timings"].items()}
                    interrupted_turns.append({**turn, "timings": timings})
        pauses = [e for e in events if e["action"] == "pause"]
        interrupts = [e for e in events if e["action"] == "interrupt"]
        resumes = [e for e in events if e["action"] == "resume"]
        fake_onsets = [
            {**e, "arrival": real(e["arrival"])}
            for e in TimedRecogniser.log
            if e["kind"] == "onset"
        ]
        interims = [(real(t), text) for t, text in run.deepgram.interims()]
        rows: list[dict[str, Any]] = []
        calls_out = []
        inbound: dict[str, list[float]] = {}
        for call in run.calls:
            script, cap = self.analyse_call("barge-in", run, call, inbound)
            calls_out.append(self._call_info(call, cap))
            for k, utt in enumerate(script.utterances):
                row: dict[str, Any] = {"call": call["call"], "utterance": k + 1, "text": utt.text}
                rows.append(row)
                onset = cap.caller_at.get(utt.voiced_first)
                voiced_end = cap.caller_at.get(utt.voiced_last)
                if onset is None or voiced_end is None:
                    row["error"] = "utterance not in the capture"
                    continue
                i = cap.agent_index_after(onset)
                before = cap.agent[i - 1] if i > 0 else None
                if before is None or not before.voiced:
                    row["error"] = "the agent was not speaking at the caller's onset"
                    continue
                j = next((n for n in range(i, len(cap.agent)) if not cap.agent[n].voiced), None)
                if j is None:
                    row["error"] = "the agent never went quiet"
                    continue
                last_voiced, first_silent = cap.agent[j - 1], cap.agent[j]
                row["what_was_talked_over"] = "greeting" if k == 0 else "reply"
                row["onset_to_silence_ms"] = ms(onset, last_voiced.time)
                row["onset_to_first_silent_packet_ms"] = ms(onset, first_silent.time)
                resumed = [p for p in cap.agent[j:] if p.voiced and p.time < voiced_end]
                row["agent_voiced_again_while_caller_spoke"] = len(resumed)
                fake_onset = first_in(fake_onsets, lambda e: e["arrival"], onset, onset + 1.0)
                words = first_in(interims, lambda x: x[0], onset, onset + 2.0)
                row["onset_to_stt_onset_ms"] = ms(onset, fake_onset and fake_onset["arrival"])
                row["onset_to_stt_first_words_ms"] = ms(onset, words and words[0])
                pause = first_in(pauses, lambda e: e["at"], onset - 0.05, onset + 1.0)
                if pause is None:
                    if run.agent_dump.get("sessions") is not None:
                        row["note"] = "no PAUSE event recorded by the agent"
                    continue
                interrupt = first_in(interrupts, lambda e: e["at"], pause["at"], onset + 2.5)
                row["onset_to_pause_decision_ms"] = ms(onset, pause["at"])
                row["agent_onset_minus_wire_onset_ms"] = ms(onset, pause["caller_onset"])
                after = [p for p in cap.agent if p.time > pause["at"]]
                silent_after = next((p for p in after if not p.voiced), None)
                # Silence starts where the last voiced frame's 20 ms of audio ends; the first
                # silent packet carries that moment onto the wire (one tick later).
                row["decision_to_silence_ms"] = ms(pause["at"], last_voiced.time + FRAME_S)
                row["decision_to_first_silent_packet_ms"] = ms(
                    pause["at"], silent_after and silent_after.time
                )
                row["decision_to_last_voiced_ms"] = ms(pause["at"], last_voiced.time)
                limit = interrupt["at"] + 0.1 if interrupt else voiced_end
                row["voiced_packets_after_decision"] = sum(
                    1 for p in after if p.voiced and p.time <= limit
                )
                row["resumed"] = any(pause["at"] < e["at"] < voiced_end for e in resumes)
                if interrupt is None:
                    row["note"] = "paused but no INTERRUPT recorded"
                    continue
                row["onset_to_interrupt_decision_ms"] = ms(onset, interrupt["at"])
                row["interrupt_transcript"] = interrupt["transcript"]
                turn = first_in(
                    interrupted_turns,
                    lambda t: t["timings"].get("barge_in_decision") or 0.0,
                    interrupt["at"] - 0.001,
                    interrupt["at"] + 0.001,
                )
                if turn is not None:
                    tm = turn["timings"]
                    row["agent_recorded_interrupt_decision_to_last_voiced_ms"] = ms(
                        tm["barge_in_decision"], tm["last_voiced_packet"]
                    )
                    row["heard_text"] = turn["heard_text"]
        for row in rows:
            if "error" in row:
                self.anomalies.append(
                    f"barge-in call {row['call']} utterance {row['utterance']}: {row['error']}"
                )
            if row.get("agent_voiced_again_while_caller_spoke"):
                self.anomalies.append(
                    f"barge-in call {row['call']} utterance {row['utterance']}: the agent spoke "
                    f"again ({row['agent_voiced_again_while_caller_spoke']} packets) before the "
                    "caller finished"
                )
        good = [r for r in rows if "error" not in r]

        def col(key: str) -> list[float | None]:
            return [r.get(key) for r in good]

        stats = {
            key: pct(col(key))
            for key in (
                "onset_to_silence_ms", "onset_to_first_silent_packet_ms",
                "onset_to_pause_decision_ms", "onset_to_interrupt_decision_ms",
                "decision_to_silence_ms", "decision_to_first_silent_packet_ms",
                "decision_to_last_voiced_ms",
                "onset_to_stt_onset_ms", "onset_to_stt_first_words_ms",
                "agent_onset_minus_wire_onset_ms",
                "agent_recorded_interrupt_decision_to_last_voiced_ms",
            )
        }  # fmt: skip
        voiced_after = [
            r["voiced_packets_after_decision"] for r in good if "voiced_packets_after_decision" in r
        ]
        d2s = stats["decision_to_silence_ms"]
        d2p = stats["decision_to_first_silent_packet_ms"]
        return {
            "scenario": "barge-in",
            "barge_ins_planned": len(rows),
            "barge_ins_measured": len(good),
            **stats,
            "voiced_packets_after_decision_total": sum(voiced_after) if voiced_after else None,
            "resumes": sum(1 for r in good if r.get("resumed")),
            "meets": {
                "onset_to_silence_p50": ok(
                    stats["onset_to_silence_ms"], "p50", TARGETS["onset_to_silence_p50_ms"]
                ),
                "decision_to_silence_p50": ok(d2s, "p50", TARGETS["decision_to_silence_ms"]),
                "decision_to_silence_max": ok(d2s, "max", TARGETS["decision_to_silence_ms"]),
                "decision_to_first_silent_packet_p50": ok(
                    d2p, "p50", TARGETS["decision_to_silence_ms"]
                ),
            },
            "inbound_path_ms": {k: pct(v) for k, v in inbound.items()},
            "calls": calls_out,
            "agent": {
                "log": run.agent_dump.get("log"),
                "log_problems": run.agent_dump.get("log_problems"),
                "rtp": run.agent_dump.get("rtp"),
            },
            "clock_offsets_s": run.offsets,
            "rows": rows,
        }

    @staticmethod
    def _call_info(call: dict[str, Any], cap: CallCapture) -> dict[str, Any]:
        info = {k: v for k, v in call.items() if k not in ("script",)}
        info["utterances"] = len(call["script"].utterances)
        info["caller_packets"] = len(cap.caller_at)
        info["caller_packets_not_matching_file"] = cap.caller_mismatch
        info["agent_packets"] = len(cap.agent)
        info["agent_voiced_packets"] = sum(1 for p in cap.agent if p.voiced)
        return info

import pytest

from sipagent.conversation.barge_in import (
    BargeInAction,
    BargeInPolicy,
    BargeInSettings,
    is_backchannel,
)


def feed(policy: BargeInPolicy, start: float, frames: str) -> list[tuple[float, BargeInAction]]:
    """frames: 'v' voiced / '.' silent, 20 ms each, first frame arriving at start + 0.02."""
    events = []
    for index, kind in enumerate(frames):
        now = start + 0.02 * (index + 1)
        event = policy.on_frame(kind == "v", now)
        if event.action != BargeInAction.NONE:
            events.append((round(now, 3), event.action))
    return events


def test_no_decisions_while_the_agent_is_silent():
    policy = BargeInPolicy()
    assert feed(policy, 0.0, "vvvvvvvvvv") == []
    assert policy.on_transcript("book an appointment", 0.3).action == BargeInAction.NONE


def test_voice_pauses_after_onset_then_words_interrupt():
    policy = BargeInPolicy(BargeInSettings(onset_ms=100))
    policy.set_agent_speaking(True)
    assert feed(policy, 0.0, "vvvvv") == [(0.1, BargeInAction.PAUSE)]
    event = policy.on_transcript("wait, actually", 0.35)
    assert event.action == BargeInAction.INTERRUPT
    assert event.caller_onset == pytest.approx(0.0)  # the first voiced frame started at 0
    assert not policy.agent_speaking


def test_a_cough_pauses_then_resumes():
    policy = BargeInPolicy(BargeInSettings(onset_ms=100, confirm_ms=500))
    policy.set_agent_speaking(True)
    events = feed(policy, 0.0, "vvvvvv" + "." * 30)
    assert events[0] == (0.1, BargeInAction.PAUSE)
    assert events[1][1] == BargeInAction.RESUME and events[1][0] >= 0.6
    assert policy.agent_speaking


def test_backchannels_never_interrupt():
    policy = BargeInPolicy()
    policy.set_agent_speaking(True)
    feed(policy, 0.0, "vvvvvv")
    assert policy.on_transcript("mhm", 0.3).action == BargeInAction.RESUME
    for text in ("uh-huh", "Okay.", "yeah", "ok"):
        assert policy.on_transcript(text, 0.4).action == BargeInAction.NONE
    assert policy.agent_speaking


def test_short_transcripts_do_not_count():
    policy = BargeInPolicy(BargeInSettings(min_chars=3))
    policy.set_agent_speaking(True)
    assert policy.on_transcript("no", 0.1).action == BargeInAction.NONE
    assert policy.on_transcript("no, Friday", 0.2).action == BargeInAction.INTERRUPT


def test_long_voice_interrupts_even_without_words():
    policy = BargeInPolicy(BargeInSettings(onset_ms=100, interrupt_on_vad_ms=600))
    policy.set_agent_speaking(True)
    events = feed(policy, 0.0, "v" * 40)
    assert [action for _, action in events] == [BargeInAction.PAUSE, BargeInAction.INTERRUPT]


def test_sensitivity_presets():
    assert BargeInSettings.for_sensitivity("high").onset_ms < BargeInSettings().onset_ms
    assert BargeInSettings.for_sensitivity("low").min_chars > BargeInSettings().min_chars
    with pytest.raises(ValueError):
        BargeInSettings.for_sensitivity("extreme")


@pytest.mark.parametrize(
    ("text", "expected"),
    [("Mhm.", True), ("uh huh", True), ("okay book it", False), ("Yeah!", True)],
)
def test_backchannel_detection(text, expected):
    assert is_backchannel(text) is expected

"""TurnTaking: when the Whisper provider starts, cancels and commits a turn's transcription."""

from __future__ import annotations

from sipagent.providers.whisper_stt import TurnAction, TurnTaking

A = TurnAction


def feed(policy: TurnTaking, pattern: str) -> list[TurnAction]:
    """'v' a voiced frame, '.' a silent one; the actions other than NONE, in order."""
    actions = [policy.on_frame(frame == "v") for frame in pattern]
    return [a for a in actions if a != A.NONE]


def make() -> TurnTaking:
    return TurnTaking(speech_start_frames=3, endpoint_frames=5, max_utterance_frames=40)


def test_speech_starts_after_a_voiced_run_and_is_transcribed_after_the_endpoint_silence():
    policy = make()
    assert feed(policy, "..v.vv") == []  # runs of 1 and 2 voiced frames: a click, not speech
    assert feed(policy, "v") == [A.SPEECH_STARTED]
    assert feed(policy, "vvvv....") == []
    assert feed(policy, ".") == [A.TRANSCRIBE]
    job = policy.job
    assert job and feed(policy, "........") == []  # silence while it runs: nothing more
    assert policy.on_transcribed(job) is True
    assert not policy.in_utterance and policy.job == 0


def test_voice_before_the_text_lands_cancels_and_the_utterance_goes_on():
    policy = make()
    feed(policy, "vvvvv.....")
    first = policy.job
    assert feed(policy, "vv") == []  # a click or two does not reopen the turn
    assert feed(policy, "v") == [A.CANCEL]
    assert policy.on_transcribed(first) is False  # stale: the caller kept talking
    assert policy.in_utterance
    assert feed(policy, "vv.....") == [A.TRANSCRIBE]
    second = policy.job
    assert second != first
    assert policy.on_transcribed(second) is True


def test_a_pause_shorter_than_the_endpoint_does_not_transcribe():
    policy = make()
    assert feed(policy, "vvv....vvv....vv") == [A.SPEECH_STARTED]
    assert policy.job == 0


def test_flush_transcribes_an_open_utterance_once():
    policy = make()
    assert policy.flush() == A.NONE  # nothing said
    feed(policy, "vvvvv")
    assert policy.flush() == A.TRANSCRIBE
    assert policy.flush() == A.NONE  # already pending
    assert policy.on_transcribed(policy.job) is True


def test_a_long_monologue_is_cut_once_at_the_maximum_length():
    policy = make()
    assert feed(policy, "v" * 60) == [A.SPEECH_STARTED, A.TRANSCRIBE]  # never cancelled
    job = policy.job
    assert policy.on_transcribed(job) is True
    # Still talking: the next voiced frame opens the next utterance at once.
    assert feed(policy, "v") == [A.SPEECH_STARTED]

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


def make_speculating() -> TurnTaking:
    return TurnTaking(
        speech_start_frames=3, endpoint_frames=5, speculate_frames=2, max_utterance_frames=40
    )


def test_transcription_starts_early_and_its_text_waits_for_the_endpoint():
    policy = make_speculating()
    assert feed(policy, "vvvv.") == [A.SPEECH_STARTED]
    assert feed(policy, ".") == [A.TRANSCRIBE]  # 2 frames of silence: speculate
    job = policy.job
    assert policy.silence_to_endpoint() == 3
    assert policy.on_transcribed(job) is False  # back after 2 of the 5 frames: not yet
    assert policy.landed and policy.in_utterance
    assert feed(policy, "..") == []
    assert feed(policy, ".") == [A.COMMIT]  # the 5th frame of silence
    policy.commit()
    assert not policy.in_utterance and policy.job == 0 and not policy.landed


def test_text_back_after_the_endpoint_commits_at_once():
    policy = make_speculating()
    feed(policy, "vvvv..")
    job = policy.job
    assert feed(policy, "......") == []  # the endpoint passes while Whisper still works
    assert policy.on_transcribed(job) is True


def test_any_voice_before_the_endpoint_cancels_the_speculation():
    policy = make_speculating()
    feed(policy, "vvvv..")
    job = policy.job
    assert policy.on_transcribed(job) is False
    # One voiced frame inside the endpoint window: the endpoint alone would not have cut here.
    assert feed(policy, "v") == [A.CANCEL]
    assert policy.job == 0 and not policy.landed and policy.in_utterance
    assert feed(policy, "vvv..") == [A.TRANSCRIBE]
    assert policy.job != job


def test_after_the_endpoint_only_a_voice_run_reopens_the_turn():
    policy = make_speculating()
    feed(policy, "vvvv.......")  # speculated at 2, endpoint passed at 5, text not back
    assert feed(policy, "vv") == []  # a click
    assert feed(policy, "v") == [A.CANCEL]


def test_flush_commits_text_already_back():
    policy = make_speculating()
    feed(policy, "vvvv..")
    assert policy.on_transcribed(policy.job) is False
    assert policy.flush() == A.COMMIT


def test_flush_makes_a_pending_speculation_final_whatever_the_silence():
    policy = make_speculating()
    feed(policy, "vvvv..")
    job = policy.job
    assert policy.flush() == A.NONE  # already out: wait for it
    assert feed(policy, "vvv") == []  # the turn is being closed: voice does not reopen it
    assert policy.on_transcribed(job) is True

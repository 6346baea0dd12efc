import logging

import pytest

from sipagent.conversation.turns import Turn, TurnLog


def test_turns_go_to_the_recorder_in_order_at_once() -> None:
    recorded: list[tuple[int, str]] = []
    log = TurnLog("c1", lambda index, turn: recorded.append((index, turn.text)))
    log.add(Turn("assistant", "Hello."))
    log.add(Turn("user", "Hi."))
    assert recorded == [(0, "Hello."), (1, "Hi.")]


def test_held_turns_wait_for_the_release() -> None:
    recorded: list[int] = []
    log = TurnLog("c1", lambda index, turn: recorded.append(index))
    log.add(Turn("assistant", "Hello."))
    log.hold()  # a reply is being prepared
    log.add(Turn("user", "I need a cleaning."))
    assert recorded == [0] and len(log.turns) == 2
    log.release()  # the reply speaks
    assert recorded == [0, 1]
    log.add(Turn("assistant", "Sure."))  # not held any more
    assert recorded == [0, 1, 2]


def test_a_recorder_failure_is_logged_and_the_other_turns_still_go(
    caplog: pytest.LogCaptureFixture,
) -> None:
    recorded: list[int] = []

    def on_turn(index: int, turn: Turn) -> None:
        if index == 0:
            raise RuntimeError("database gone")
        recorded.append(index)

    log = TurnLog("c1", on_turn)
    log.hold()
    log.add(Turn("assistant", "Hello."))
    log.add(Turn("user", "Hi."))
    log.release()
    assert recorded == [1]
    assert any(r.levelno == logging.ERROR and "[c1]" in r.getMessage() for r in caplog.records)


def test_without_a_recorder_the_turns_are_still_kept() -> None:
    log = TurnLog("c1")
    log.add(Turn("user", "Hi."))
    log.release()
    assert [t.text for t in log.turns] == ["Hi."]

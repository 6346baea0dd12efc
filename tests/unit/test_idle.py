from sipagent.conversation.idle import IdleAction, IdlePolicy


def policy() -> IdlePolicy:
    return IdlePolicy(0.0, reprompt_after=8.0, max_reprompts=2, max_call=600.0)


def run(idle: IdlePolicy, until: float, step: float = 0.25) -> list[tuple[float, IdleAction]]:
    actions, now = [], 0.0
    while now < until:
        now += step
        action = idle.tick(now)
        if action != IdleAction.NONE:
            actions.append((now, action))
    return actions


def run_by_deadline(idle: IdlePolicy, until: float) -> list[tuple[float, IdleAction]]:
    """As the session runs it: asleep until each deadline, one tick there."""
    actions = []
    while (deadline := idle.deadline) is not None and deadline <= until:
        actions.append((deadline, idle.tick(deadline)))
    return actions


def test_silence_reprompts_twice_then_hangs_up():
    assert run(policy(), 40.0) == [
        (8.0, IdleAction.REPROMPT), (16.0, IdleAction.REPROMPT), (24.0, IdleAction.HANG_UP),
    ]  # fmt: skip


def test_the_deadlines_are_the_moments_a_poll_would_act():
    assert run_by_deadline(policy(), 40.0) == run(policy(), 40.0)
    assert policy().deadline == 8.0


def test_a_tick_at_its_deadline_always_acts_so_a_runner_cannot_spin():
    idle = IdlePolicy(0.1, reprompt_after=0.2, max_reprompts=50, max_call=1e6)
    for _ in range(40):
        deadline = idle.deadline
        assert deadline is not None
        assert idle.tick(deadline) == IdleAction.REPROMPT
        assert idle.deadline is not None and idle.deadline > deadline


def test_the_caller_speaking_resets_the_count():
    idle = policy()
    assert idle.tick(8.0) == IdleAction.REPROMPT
    idle.caller_active(9.0)
    assert idle.deadline == 17.0
    assert idle.tick(16.5) == IdleAction.NONE
    assert idle.tick(17.0) == IdleAction.REPROMPT and idle.reprompts == 1


def test_agent_talking_is_not_silence():
    idle = policy()
    idle.pause("reply")
    assert idle.tick(30.0) == IdleAction.NONE
    assert idle.deadline == 600.0  # only the time limit while we talk
    idle.resume("reply", 31.0)  # silence counts from the end of the reply
    assert idle.deadline == 39.0
    assert idle.tick(38.0) == IdleAction.NONE and idle.tick(39.0) == IdleAction.REPROMPT


def test_silence_counts_only_once_every_pause_is_over():
    idle = policy()
    idle.pause("reply")
    idle.pause("hold")
    idle.resume("reply", 10.0)
    assert idle.tick(50.0) == IdleAction.NONE  # still on hold
    idle.resume("hold", 60.0)
    assert idle.deadline == 68.0 and idle.tick(68.0) == IdleAction.REPROMPT


def test_resuming_what_was_not_paused_changes_nothing():
    idle = policy()
    idle.resume("hold", 5.0)
    assert idle.deadline == 8.0 and not idle.paused


def test_maximum_call_length():
    idle = IdlePolicy(0.0, reprompt_after=8.0, max_reprompts=2, max_call=30.0)
    idle.caller_active(29.0)
    assert idle.deadline == 30.0
    assert idle.tick(30.0) == IdleAction.TIME_LIMIT
    assert idle.tick(100.0) == IdleAction.NONE  # once
    assert idle.deadline is None


def test_the_time_limit_applies_while_paused():
    idle = IdlePolicy(0.0, reprompt_after=8.0, max_reprompts=2, max_call=30.0)
    idle.pause("reply")
    assert idle.deadline == 30.0 and idle.tick(30.0) == IdleAction.TIME_LIMIT

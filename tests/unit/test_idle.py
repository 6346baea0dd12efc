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


def test_silence_reprompts_twice_then_hangs_up():
    assert run(policy(), 40.0) == [
        (8.0, IdleAction.REPROMPT), (16.0, IdleAction.REPROMPT), (24.0, IdleAction.HANG_UP),
    ]  # fmt: skip


def test_the_caller_speaking_resets_the_count():
    idle = policy()
    assert idle.tick(8.0) == IdleAction.REPROMPT
    idle.caller_active(9.0)
    assert idle.tick(16.5) == IdleAction.NONE
    assert idle.tick(17.0) == IdleAction.REPROMPT and idle.reprompts == 1


def test_agent_talking_is_not_silence():
    idle = policy()
    idle.agent_active(7.0)
    assert idle.tick(14.0) == IdleAction.NONE and idle.tick(15.0) == IdleAction.REPROMPT


def test_maximum_call_length():
    idle = IdlePolicy(0.0, reprompt_after=8.0, max_reprompts=2, max_call=30.0)
    idle.caller_active(29.0)
    assert idle.tick(30.0) == IdleAction.TIME_LIMIT
    assert idle.tick(100.0) == IdleAction.NONE  # once

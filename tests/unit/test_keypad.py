from sipagent.conversation.keypad import KeypadEntry


def test_hash_ends_the_entry():
    keypad = KeypadEntry(interdigit_seconds=2.0)
    assert [keypad.press(d, 0.1 * i) for i, d in enumerate("555")] == [None, None, None]
    assert keypad.press("#", 0.5) == "555"
    assert keypad.deadline is None and keypad.digits == ""


def test_a_pause_ends_the_entry_counted_from_the_last_key():
    keypad = KeypadEntry(interdigit_seconds=2.0)
    assert keypad.deadline is None
    keypad.press("1", 0.0)
    keypad.press("2", 1.5)
    assert keypad.deadline == 3.5
    assert keypad.expire(3.4) is None
    assert keypad.expire(3.5) == "12"
    assert keypad.deadline is None and keypad.expire(10.0) is None


def test_a_lone_hash_is_no_entry():
    keypad = KeypadEntry(interdigit_seconds=2.0)
    assert keypad.press("#", 0.0) is None


def test_star_and_zero_are_digits_like_any_other():
    keypad = KeypadEntry(interdigit_seconds=2.0)
    keypad.press("*", 0.0)
    keypad.press("0", 0.1)
    assert keypad.press("#", 0.2) == "*0"

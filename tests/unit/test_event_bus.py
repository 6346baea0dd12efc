"""The event bus: fan-out in subscription order, an observer that raises is contained (and
logged once), unsubscribing, and one bus per endpoint."""

from __future__ import annotations

import logging

import pytest

from sipagent.config import AgentSettings
from sipagent.observability.events import (
    CallStarted,
    Event,
    EventBus,
    ProviderFailure,
    ProviderStage,
)
from sipagent.sip.endpoint import SipEndpoint


def test_every_observer_gets_every_event_in_subscription_order():
    bus = EventBus()
    seen: list[tuple[str, Event]] = []
    bus.subscribe(lambda event: seen.append(("first", event)))
    bus.subscribe(lambda event: seen.append(("second", event)))
    started, failed = CallStarted("c1", "alice"), ProviderFailure("c1", ProviderStage.TTS, "500")
    bus.emit(started)
    bus.emit(failed)
    assert seen == [("first", started), ("second", started), ("first", failed), ("second", failed)]


def test_a_failing_observer_is_logged_once_and_never_stops_the_others(caplog):
    bus = EventBus()
    seen: list[Event] = []

    def broken(event: Event) -> None:
        raise RuntimeError("observer bug")

    bus.subscribe(broken)
    bus.subscribe(seen.append)
    with caplog.at_level(logging.ERROR, logger="sipagent.events"):
        for number in range(3):
            bus.emit(CallStarted(f"c{number}", "alice"))  # does not raise into the emitter
    assert [event.call_id for event in seen] == ["c0", "c1", "c2"]  # type: ignore[union-attr]
    failures = [r for r in caplog.records if "observer" in r.getMessage()]
    assert len(failures) == 1 and failures[0].exc_info is not None


def test_unsubscribed_observers_hear_nothing_more():
    bus = EventBus()
    seen: list[Event] = []
    unsubscribe = bus.subscribe(seen.append)
    assert bus.observed
    bus.emit(CallStarted("c1", "alice"))
    unsubscribe()
    unsubscribe()  # twice is harmless
    bus.emit(CallStarted("c2", "alice"))
    assert [event.call_id for event in seen] == ["c1"]  # type: ignore[union-attr]
    assert not bus.observed


def test_an_observer_may_unsubscribe_while_being_called():
    bus = EventBus()
    seen: list[str] = []

    def once(event: Event) -> None:
        seen.append("once")
        bus.unsubscribe(once)

    bus.subscribe(once)
    bus.subscribe(lambda event: seen.append("always"))
    bus.emit(CallStarted("c1", "alice"))
    bus.emit(CallStarted("c2", "alice"))
    assert seen == ["once", "always", "always"]


def test_events_are_frozen_and_the_provider_stage_is_typed():
    failure = ProviderFailure("c1", ProviderStage.FALLBACK_TTS, "offline voice missing")
    assert failure.stage is ProviderStage.FALLBACK_TTS and failure.stage == "fallback_tts"
    assert str(failure) == "fallback_tts: offline voice missing"
    with pytest.raises(AttributeError):
        failure.stage = ProviderStage.TTS  # type: ignore[misc]


def test_each_endpoint_has_its_own_bus():
    settings = AgentSettings(_env_file=None)  # type: ignore[call-arg]
    first = SipEndpoint(settings, app=None)  # type: ignore[arg-type]
    second = SipEndpoint(settings, app=None)  # type: ignore[arg-type]
    assert first.events is not second.events


def test_an_unhashable_failing_observer_is_contained_too():
    class Unhashable:
        __hash__ = None  # type: ignore[assignment]

        def __call__(self, event: Event) -> None:
            raise RuntimeError("observer bug")

    bus = EventBus()
    bus.subscribe(Unhashable())
    bus.emit(CallStarted("c1", "alice"))
    bus.emit(CallStarted("c2", "alice"))

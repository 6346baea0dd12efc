"""The receptionist: each answered call gets a ConversationSession over the chosen providers,
with the dental receptionist's toolset and prompt (sipagent/tools/receptionist.py)."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
from collections.abc import Callable
from datetime import datetime

from sipagent.booking.rules import ClinicHours
from sipagent.booking.store import BookingStore, InMemoryBookingStore
from sipagent.channel import CallChannel
from sipagent.config import AgentSettings
from sipagent.conversation.barge_in import BargeInSettings
from sipagent.conversation.session import ConversationSession, ConversationSettings
from sipagent.conversation.turns import Turn
from sipagent.providers.factory import Providers, build_providers
from sipagent.storage import CallRecorder, SqlBookingStore, make_engine, upgrade
from sipagent.tools.receptionist import ReceptionistTools, receptionist_prompt

log = logging.getLogger("sipagent.receptionist")


class ReceptionistApp:
    def __init__(
        self,
        providers: Providers,
        conversation: ConversationSettings,
        hours: ClinicHours,
        store: BookingStore | None = None,
        recorder: CallRecorder | None = None,
        clock: Callable[[], datetime] | None = None,
        region: str = "US",
        persona: str = "Sarah",
        clinic: str = "Sunrise Dental",
        keep_ended: int = 100,
    ) -> None:
        self.providers = providers
        self.persona = persona
        self.clinic = clinic
        self.conversation = conversation
        self.hours = hours
        self.store = store or InMemoryBookingStore()
        self.recorder = recorder
        self.clock = clock or (lambda: datetime.now(hours.zone))
        self.region = region
        # Calls in progress and the last `keep_ended` finished ones (for /status, /metrics and
        # the demo's report): a busy agent must not keep every call it ever had.
        self.sessions: dict[str, ConversationSession] = {}
        self.keep_ended = keep_ended
        self._ended: collections.deque[str] = collections.deque()

    @classmethod
    def from_settings(cls, settings: AgentSettings) -> ReceptionistApp:
        profile = settings.clinic_profile()
        conversation = ConversationSettings(
            greeting=profile.greeting,
            barge_in=BargeInSettings.for_sensitivity(settings.barge_in_sensitivity),
            idle_reprompt_seconds=settings.idle_reprompt_seconds,
            max_call_seconds=settings.max_call_seconds,
            transfer_uri=profile.transfer_uri,
        )
        hours = profile.hours
        # Schema first (automatic upgrade at start), then the store and the call records.
        upgrade(settings.database_url)
        engine = make_engine(settings.database_url)
        store = SqlBookingStore(engine, hours.slot_minutes, timezone=hours.timezone)
        providers = build_providers(settings, clinic_name=profile.name)
        return cls(
            providers,
            conversation,
            hours,
            store,
            CallRecorder(engine),
            region=profile.region,
            persona=profile.persona,
            clinic=profile.name,
        )

    async def farewell(self, call: CallChannel) -> None:
        """The agent is shutting down: say goodbye on this call (the endpoint then hangs up)."""
        session = self.sessions.get(call.call_id)
        if session is not None:
            await session.say_and_wait(
                "I'm sorry, I have to end this call now. Please call us back. Goodbye!"
            )

    async def handle(self, call: CallChannel) -> None:
        now = self.clock()
        recorder = self.recorder
        on_turn: Callable[[int, Turn], None] | None = None
        if recorder is not None:

            def on_turn(index: int, turn: Turn) -> None:
                recorder.spawn(recorder.record_turn(call.call_id, index, turn))

        session = ConversationSession(
            call,
            stt=self.providers.new_stt(),
            llm=self.providers.llm,
            tts=self.providers.tts,
            fallback_tts=self.providers.fallback_tts,
            tts_slots=self.providers.tts_slots,
            toolset=ReceptionistTools(self.store, self.hours, self.clock, self.region),
            system_prompt=receptionist_prompt(
                self.persona, self.clinic, today=now.strftime("%A %B %-d, %Y, %-I:%M %p %Z")
            ),
            settings=self.conversation,
            transfer=call.transfer,
            on_turn=on_turn,
        )
        self.sessions[call.call_id] = session
        try:
            await self._run(call, session)
        finally:
            self._retire(call.call_id)

    def _retire(self, call_id: str) -> None:
        """The call's conversation is over: keep it among the last `keep_ended` only."""
        self._ended.append(call_id)
        while len(self._ended) > self.keep_ended:
            self.sessions.pop(self._ended.popleft(), None)

    async def _run(self, call: CallChannel, session: ConversationSession) -> None:
        recorder = self.recorder
        if recorder is None:
            await session.run()
            return
        info = call.info
        recorder.spawn(
            recorder.record_call_start(
                call.call_id,
                from_uri=info.from_uri,
                to_uri=info.to_uri,
                started_at=info.started_at,
                answered_at=info.answered_at,
                offline_mode=self.providers.choice.offline,
            )
        )
        try:
            await session.run()
        finally:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(call.ended.wait(), 5)
            end = call.end
            recorder.spawn(
                recorder.record_call_end(
                    call.call_id,
                    ended_at=end.ended_at,
                    end_reason=end.end_reason,
                    recording_path=end.recording_path,
                )
            )

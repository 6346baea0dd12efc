"""The receptionist: each answered call gets a ConversationSession over the chosen providers."""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime

from sipagent.apps.base import CallChannel
from sipagent.booking.rules import ClinicHours
from sipagent.booking.store import BookingStore, InMemoryBookingStore
from sipagent.config import AgentSettings
from sipagent.conversation.barge_in import BargeInSettings
from sipagent.conversation.session import ConversationSession, ConversationSettings
from sipagent.providers.factory import Providers, build_providers
from sipagent.tools.receptionist import ReceptionistTools

log = logging.getLogger("sipagent.receptionist")


class ReceptionistApp:
    def __init__(
        self,
        providers: Providers,
        conversation: ConversationSettings,
        hours: ClinicHours,
        store: BookingStore | None = None,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        self.providers = providers
        self.conversation = conversation
        self.hours = hours
        self.store = store or InMemoryBookingStore()
        self.clock = clock or (lambda: datetime.now(hours.zone))
        self.sessions: dict[str, ConversationSession] = {}

    @classmethod
    def from_settings(cls, settings: AgentSettings) -> ReceptionistApp:
        greeting = (
            f"Thank you for calling {settings.clinic}, this is {settings.persona}. "
            "How can I help you?"
        )
        conversation = ConversationSettings(
            persona=settings.persona,
            clinic=settings.clinic,
            greeting=greeting,
            barge_in=BargeInSettings.for_sensitivity(settings.barge_in_sensitivity),
            idle_reprompt_seconds=settings.idle_reprompt_seconds,
            max_call_seconds=settings.max_call_seconds,
            transfer_uri=settings.transfer_uri,
        )
        return cls(build_providers(settings), conversation, ClinicHours(settings.clinic_timezone))

    async def handle(self, call: CallChannel) -> None:
        now = self.clock()
        session = ConversationSession(
            call,
            stt=self.providers.new_stt(),
            llm=self.providers.llm,
            tts=self.providers.tts,
            fallback_tts=self.providers.fallback_tts,
            tools=ReceptionistTools(self.store, self.hours, self.clock),
            settings=self.conversation,
            transfer=getattr(call, "transfer", None),
            today=now.strftime("%A %B %-d, %Y, %-I:%M %p %Z"),
        )
        self.sessions[call.call_id] = session
        await session.run()

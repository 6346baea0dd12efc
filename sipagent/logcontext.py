"""The Call-ID on every log line of a call: a context variable that asyncio tasks inherit."""

from __future__ import annotations

import logging
from contextvars import ContextVar

current_call_id: ContextVar[str] = ContextVar("current_call_id", default="-")


class CallIdFilter(logging.Filter):
    """Adds `record.call_id` (the Call-ID of the call this code runs for, or "-")."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "call_id"):
            record.call_id = current_call_id.get()
        return True

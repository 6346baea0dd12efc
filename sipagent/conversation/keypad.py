"""Keypad digits gathered into entries: "#" ends an entry, and so does a pause longer than the
inter-digit time. Pure: the caller of press()/expire() supplies the time."""

from __future__ import annotations


class KeypadEntry:
    def __init__(self, interdigit_seconds: float) -> None:
        self.interdigit_seconds = interdigit_seconds
        self.digits = ""
        self._last_press = 0.0

    @property
    def deadline(self) -> float | None:
        """When the entry being typed ends by itself; None while nothing is typed."""
        return self._last_press + self.interdigit_seconds if self.digits else None

    def press(self, digit: str, now: float) -> str | None:
        """A key was pressed; returns the finished entry when it was "#" (None if empty)."""
        if digit == "#":
            return self._take()
        self.digits += digit
        self._last_press = now
        return None

    def expire(self, now: float) -> str | None:
        """The entry, once its deadline has passed; else None."""
        deadline = self.deadline
        if deadline is None or now < deadline:
            return None
        return self._take()

    def _take(self) -> str | None:
        entry, self.digits = self.digits, ""
        return entry or None

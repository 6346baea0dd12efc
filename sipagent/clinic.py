"""The clinic profile (persona, hours, time zone, services, transfer URI, greeting) from TOML."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from datetime import time
from importlib import resources
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import phonenumbers

from sipagent.booking.rules import REASONS, WEEKDAYS, ClinicHours


class ClinicConfigError(ValueError):
    """The clinic file is unreadable or inconsistent; the message says where."""


@dataclass(frozen=True, slots=True)
class ClinicProfile:
    name: str
    persona: str
    greeting_template: str
    timezone: str
    transfer_uri: str
    hours: ClinicHours = field(default_factory=ClinicHours)
    region: str = "US"  # ISO country: how callers' national phone numbers are read

    @property
    def greeting(self) -> str:
        return self.greeting_template.format(clinic=self.name, persona=self.persona)


def _time(value: Any, where: str) -> time:
    try:
        return time.fromisoformat(str(value))
    except ValueError as error:
        raise ClinicConfigError(f"{where}: {value!r} is not a time like 09:00") from error


def parse_clinic(data: dict[str, Any], source: str = "clinic file") -> ClinicProfile:
    try:
        timezone = str(data.get("timezone", "America/New_York"))
        ZoneInfo(timezone)
    except ZoneInfoNotFoundError as error:
        raise ClinicConfigError(f"{source}: unknown time zone {timezone!r}") from error
    hours_table = data.get("hours", {})
    days = [str(day).lower() for day in hours_table.get("days", WEEKDAYS[:5])]
    unknown_days = [day for day in days if day not in WEEKDAYS]
    if unknown_days:
        raise ClinicConfigError(f"{source}: [hours] days has {unknown_days}")
    opens = _time(hours_table.get("opens", "09:00"), f"{source} [hours] opens")
    closes = _time(hours_table.get("closes", "17:00"), f"{source} [hours] closes")
    if closes <= opens:
        raise ClinicConfigError(f"{source}: [hours] closes must be after opens")
    slot_minutes = int(hours_table.get("slot_minutes", 30))
    if slot_minutes <= 0 or (24 * 60) % slot_minutes:
        raise ClinicConfigError(f"{source}: [hours] slot_minutes must divide a day")
    services = {str(k): int(v) for k, v in data.get("services", {}).items()}
    unsupported = sorted(set(services) - set(REASONS))
    if unsupported:
        raise ClinicConfigError(
            f"{source}: [services] {unsupported} not bookable (use {', '.join(REASONS)})"
        )
    durations = {reason: services.get(reason, slot_minutes) for reason in REASONS}
    region = str(data.get("region", "US")).upper()
    if region not in phonenumbers.SUPPORTED_REGIONS:
        raise ClinicConfigError(f"{source}: region {region!r} is not an ISO country code")
    hours = ClinicHours(
        timezone=timezone,
        open_days=tuple(WEEKDAYS.index(day) for day in days),
        opens=opens,
        closes=closes,
        slot_minutes=slot_minutes,
        durations=durations,
    )
    return ClinicProfile(
        name=str(data.get("name", "Sunrise Dental")),
        persona=str(data.get("persona", "Sarah")),
        greeting_template=str(
            data.get("greeting", "Thank you for calling {clinic}, this is {persona}.")
        ),
        timezone=timezone,
        transfer_uri=str(data.get("transfer_uri", "")),
        hours=hours,
        region=region,
    )


def load_clinic(path: str | Path | None = None) -> ClinicProfile:
    """The clinic file at `path`, or the packaged Sunrise Dental default."""
    if path:
        source = str(path)
        try:
            text = Path(path).read_text()
        except OSError as error:
            raise ClinicConfigError(f"cannot read clinic file {source}: {error}") from error
    else:
        source = "sipagent/clinic_default.toml"
        text = resources.files("sipagent").joinpath("clinic_default.toml").read_text()
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise ClinicConfigError(f"{source}: {error}") from error
    return parse_clinic(data, source)

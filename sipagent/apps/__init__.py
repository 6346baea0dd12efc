"""What answers a call ("apps"), chosen by name. Their contract is sipagent/channel.py."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sipagent.channel import CallApp
    from sipagent.config import AgentSettings


def build_app(name: str, settings: AgentSettings) -> CallApp:
    # Imported here: the receptionist pulls in the providers and the database.
    if name == "echo":
        from sipagent.apps.echo import EchoApp

        return EchoApp()
    if name == "player":
        from sipagent.apps.player import PlayerApp

        return PlayerApp.from_settings(settings)
    if name == "receptionist":
        from sipagent.apps.receptionist import ReceptionistApp

        return ReceptionistApp.from_settings(settings)
    raise ValueError(f"unknown app {name!r}: choose echo, player or receptionist")

"""A dialog's state (RFC 3261 12): what in-dialog requests need, for both UAS and UAC."""

from __future__ import annotations

from dataclasses import dataclass, field

from sipagent.sip.uri import name_addr_uri


@dataclass(slots=True)
class DialogState:
    """Call-ID, tags, parties, remote target and route set of one dialog (RFC 3261 12.1)."""

    call_id: str
    local_tag: str
    remote_tag: str
    local_party: str  # our From value in requests we send, without tag
    remote_party: str  # their address, with its tag
    remote_target: str
    route_set: list[str] = field(default_factory=list)
    local_cseq: int = 0

    @property
    def next_hop_uri(self) -> str:
        """Loose routing (RFC 3261 16.12): first Route if any, else the remote target."""
        return name_addr_uri(self.route_set[0]) if self.route_set else self.remote_target

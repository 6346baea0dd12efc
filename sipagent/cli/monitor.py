"""`sipagent monitor`: a live terminal dashboard of a running agent's `/status`.

`render()` is a pure function of the status document (times are shown relative to the
document's own "now", never the local clock), so a frame can be tested without an agent.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from typing import Annotated, Any
from urllib.parse import urlsplit, urlunsplit

import typer
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

DEFAULT_URL = "http://127.0.0.1:8089"
FETCH_TIMEOUT = 2.0
REFRESH_SECONDS = 0.5
DASH = "—"
# The latency stages a turn row shows, in pipeline order, with their column titles.
TURN_COLUMNS = (
    ("stt_final", "STT"),
    ("llm_first_token", "LLM"),
    ("tts_first_byte", "TTS"),
    ("first_packet", "1st pkt"),
    ("voice_to_voice", "voice→voice"),
    ("barge_in_onset_to_silence", "barge→quiet"),
)
_REGISTRATION_STYLES = {
    "registered": "bold green",
    "registering": "yellow",
    "unregistered": "yellow",
    "failed": "bold red",
    "peer-to-peer": "cyan",
}
_CONVERSATION_STYLES = {"listening": "green", "thinking": "yellow", "speaking": "cyan"}


class StatusUnavailable(Exception):
    """The agent's status endpoint could not be read."""


# -- fetching -------------------------------------------------------------------------------
def status_url(url: str) -> str:
    """The /status URL for a base URL ("http://host:port") or a full one; "host:port" works."""
    if "://" not in url:
        url = f"http://{url}"
    parts = urlsplit(url)
    path = parts.path.rstrip("/")
    if not path.endswith("/status"):
        path += "/status"
    return urlunsplit((parts.scheme, parts.netloc, path, parts.query, ""))


# No proxies: the agent is normally on this host, and an http_proxy from the environment
# would otherwise swallow requests to 127.0.0.1.
_opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def fetch_status(url: str, timeout: float = FETCH_TIMEOUT) -> dict[str, Any]:
    request = urllib.request.Request(status_url(url), headers={"Accept": "application/json"})
    try:
        with _opener.open(request, timeout=timeout) as response:
            document = json.loads(response.read())
    except urllib.error.HTTPError as error:
        raise StatusUnavailable(f"HTTP {error.code} {error.reason}") from error
    except urllib.error.URLError as error:
        raise StatusUnavailable(str(error.reason)) from error
    except (OSError, ValueError) as error:  # timeouts, resets, a non-JSON answer
        raise StatusUnavailable(str(error) or type(error).__name__) from error
    if not isinstance(document, dict) or "calls" not in document:
        raise StatusUnavailable("the answer is not a sipagent status document")
    return document


# -- formatting -----------------------------------------------------------------------------
def _dim(text: str = DASH) -> Text:
    return Text(text, style="dim")


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return DASH
    total = int(seconds)
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def _graded(value: float | None, fmt: str, warn: float, bad: float) -> Text:
    """A number coloured green / yellow / red by thresholds (higher is worse)."""
    if value is None:
        return _dim()
    style = "green" if value < warn else "yellow" if value < bad else "bold red"
    return Text(fmt.format(value), style=style)


def _latency(ms: float | None, warn: float = 800.0, bad: float = 1500.0) -> Text:
    return _graded(ms, "{:.0f} ms", warn, bad)


def _get(mapping: Any, *keys: str) -> Any:
    """Nested lookup that tolerates missing keys (older or newer agents' documents)."""
    for key in keys:
        if not isinstance(mapping, Mapping):
            return None
        mapping = mapping.get(key)
    return mapping


# -- panels ---------------------------------------------------------------------------------
def _header(status: Mapping[str, Any]) -> Text:
    agent = status.get("agent") or {}
    totals = status.get("totals") or {}
    text = Text.assemble(
        ("sipagent", "bold"),
        f"  app {agent.get('app', '?')}  ·  SIP {agent.get('sip') or DASH}",
        f"  ·  up {_duration(agent.get('uptime_s'))}",
        f"  ·  calls {totals.get('calls_active', 0)} active / {totals.get('calls', 0)} total",
    )
    return text


def _registration(status: Mapping[str, Any]) -> Panel:
    registration = status.get("registration") or {}
    state = str(registration.get("state") or "unknown")
    grid = Table.grid(padding=(0, 1))
    grid.add_column(style="dim")
    grid.add_column()
    grid.add_row("state", Text(state, style=_REGISTRATION_STYLES.get(state, "bold")))
    if registration.get("mode") == "registrar":
        grid.add_row("registrar", str(registration.get("registrar") or DASH))
        expires = registration.get("expires_in")
        grid.add_row("expires in", _dim() if expires is None else Text(f"{expires:.0f} s"))
        grid.add_row(
            "ok / failed",
            f"{registration.get('successes', 0)} / {registration.get('failures', 0)}",
        )
    else:
        grid.add_row("mode", "peer-to-peer (no registrar)")
    if registration.get("reason"):
        grid.add_row("reason", Text(str(registration["reason"]), style="red"))
    return Panel(grid, title="Registration", title_align="left")


def _totals(status: Mapping[str, Any]) -> Panel:
    totals = status.get("totals") or {}
    barge = status.get("barge_ins") or {}
    grid = Table.grid(padding=(0, 1))
    grid.add_column(style="dim")
    grid.add_column()
    grid.add_row("turns", str(totals.get("turns", 0)))
    grid.add_row(
        "barge-ins",
        f"{barge.get('total', 0)} ({barge.get('false_alarms', 0)} false alarms)",
    )
    grid.add_row(
        "RTP in / out", f"{totals.get('rtp_packets_in', 0)} / {totals.get('rtp_packets_out', 0)}"
    )
    grid.add_row("lost / late", f"{totals.get('jitter_lost', 0)} / {totals.get('jitter_late', 0)}")
    grid.add_row("provider errors", str(totals.get("provider_errors", 0)))
    grid.add_row("malformed SIP", str(totals.get("sip_malformed", 0)))
    return Panel(grid, title="Totals", title_align="left")


def _calls(status: Mapping[str, Any]) -> Table:
    table = Table(title="Active calls", title_justify="left", expand=True)
    table.add_column("Caller", overflow="fold")
    table.add_column("Duration", justify="right")
    table.add_column("State")
    table.add_column("Last v→v", justify="right")
    table.add_column("Jitter", justify="right")
    table.add_column("Loss", justify="right")
    table.add_column("Pkts in/out", justify="right")
    calls: Sequence[Mapping[str, Any]] = status.get("calls") or []
    for call in calls:
        media = call.get("media") or {}
        state = str(call.get("state") or DASH)
        answered = call.get("answered_at") is not None
        loss = media.get("loss_pct")
        table.add_row(
            str(call.get("caller") or "unknown"),
            _duration(call.get("duration_s")) if answered else "ringing",
            Text(state, style=_CONVERSATION_STYLES.get(state, "")),
            _latency(_get(call, "conversation", "last_voice_to_voice_ms")),
            _graded(media.get("jitter_ms"), "{:.1f} ms", 30.0, 60.0),
            _dim()
            if loss is None
            else _graded(loss, "{:.1f}%", 1.0, 5.0).append(f" ({media.get('lost', 0)})", "dim"),
            f"{media.get('packets_in', 0)}/{media.get('packets_out', 0)}" if media else DASH,
        )
    if not calls:
        table.add_row(_dim("no calls"), "", "", "", "", "", "")
    return table


def _turns(status: Mapping[str, Any]) -> Table:
    now = _get(status, "agent", "now")
    table = Table(
        title="Recent turns (agent replies; stage latencies in ms)",
        title_justify="left",
        expand=True,
    )
    table.add_column("When", justify="right")
    table.add_column("Caller", overflow="fold")
    for _, title in TURN_COLUMNS:
        table.add_column(title, justify="right")
    table.add_column("Barge-in")
    turns: Sequence[Mapping[str, Any]] = status.get("recent_turns") or []
    for turn in reversed(turns):  # newest first
        at = turn.get("at")
        when = f"{max(0.0, now - at):.0f}s ago" if now is not None and at is not None else DASH
        latency = turn.get("latency_ms") or {}
        cells: list[RenderableType] = [when, str(turn.get("caller") or "")]
        for stage, _ in TURN_COLUMNS:
            if stage == "voice_to_voice":
                cells.append(_latency(latency.get(stage)))
            elif stage == "barge_in_onset_to_silence":
                cells.append(_latency(latency.get(stage), warn=300.0, bad=800.0))
            else:
                value = latency.get(stage)
                cells.append(_dim() if value is None else f"{value:.0f}")
        cells.append(Text("interrupted", style="yellow") if turn.get("interrupted") else "")
        table.add_row(*cells)
    if not turns:
        table.add_row(_dim("none yet"), *[""] * (len(TURN_COLUMNS) + 2))
    return table


def _barge_ins(status: Mapping[str, Any]) -> Text:
    barge = status.get("barge_ins") or {}
    text = Text.assemble(
        ("Barge-ins: ", "bold"),
        f"{barge.get('total', 0)} interrupted, {barge.get('false_alarms', 0)} false alarms",
    )
    for event in reversed(barge.get("recent") or []):
        decision = event.get("decision_ms")
        text.append(
            f"\n  {event.get('caller', '?')}: {event.get('ago_s', 0):.0f}s ago"
            + (f", decided in {decision:.0f} ms" if decision is not None else ""),
            style="dim",
        )
    return text


def _errors(status: Mapping[str, Any]) -> Panel:
    errors = status.get("errors") or {}
    lines = Text()
    for error in reversed(errors.get("provider") or []):
        lines.append(f"{error.get('caller', '?')} ", style="dim")
        lines.append(f"{error.get('message', '')}\n", style="red")
    malformed = errors.get("sip_malformed") or {}
    if malformed:
        counts = ", ".join(f"{kind}: {count}" for kind, count in sorted(malformed.items()))
        lines.append(f"malformed SIP: {counts}\n", style="yellow")
    dropped = errors.get("rtp_dropped") or {}
    if dropped:
        counts = ", ".join(f"{reason}: {count}" for reason, count in sorted(dropped.items()))
        lines.append(f"dropped RTP: {counts}\n", style="yellow")
    if not lines.plain:
        lines = _dim("no errors")
    else:
        lines.rstrip()
    return Panel(lines, title="Recent errors", title_align="left")


def render(status: Mapping[str, Any], *, problem: str | None = None) -> RenderableType:
    """One dashboard frame for a `/status` document; `problem` shows a red banner on top."""
    top = Table.grid(expand=True, padding=(0, 1))
    top.add_column(ratio=1)
    top.add_column(ratio=1)
    top.add_row(_registration(status), _totals(status))
    parts: list[RenderableType] = []
    if problem:
        parts.append(Text(problem, style="bold white on red"))
    parts += [_header(status), top, _calls(status), _turns(status), _barge_ins(status)]
    parts.append(_errors(status))
    return Group(*parts)


def status_line(status: Mapping[str, Any]) -> str:
    """The dashboard's essentials on one labelled line, for logs and pipes (no terminal)."""
    totals = status.get("totals") or {}
    barge = status.get("barge_ins") or {}
    turns: Sequence[Mapping[str, Any]] = status.get("recent_turns") or []
    last = _get(turns[-1], "latency_ms", "voice_to_voice") if turns else None
    calls: Sequence[Mapping[str, Any]] = status.get("calls") or []
    states = ",".join(f"{c.get('caller') or 'unknown'}:{c.get('state') or DASH}" for c in calls)
    fields = {
        "registration": _get(status, "registration", "state") or "unknown",
        "calls_active": totals.get("calls_active", 0),
        "calls_total": totals.get("calls", 0),
        "call_states": states or DASH,
        "turns": totals.get("turns", 0),
        "last_voice_to_voice_ms": DASH if last is None else f"{last:.0f}",
        "barge_ins": barge.get("total", 0),
        "provider_errors": totals.get("provider_errors", 0),
        "malformed_sip": totals.get("sip_malformed", 0),
    }
    return " ".join(f"{name}={value}" for name, value in fields.items())


def _print_lines(out: Console, url: str, status: Mapping[str, Any]) -> None:
    """Not on a terminal: one timestamped line whenever the essentials change."""
    previous = ""
    while True:
        line = status_line(status)
        if line != previous:
            out.print(f"{time.strftime('%H:%M:%S')} {line}", highlight=False, soft_wrap=True)
            previous = line
        time.sleep(REFRESH_SECONDS)
        try:
            status = fetch_status(url)
        except StatusUnavailable as error:
            problem = f"agent unreachable ({error}); retrying"
            if problem != previous:
                out.print(f"{time.strftime('%H:%M:%S')} {problem}", highlight=False)
                previous = problem


# -- the command ----------------------------------------------------------------------------
def monitor(
    url: Annotated[
        str, typer.Option(help="the agent's status server (sipagent serve --status-bind)")
    ] = DEFAULT_URL,
    once: Annotated[bool, typer.Option("--once", help="print one frame and exit")] = False,
) -> None:
    """Live dashboard of a running agent: registration, calls, latency, barge-ins, errors.

    Not on a terminal (a pipe, a log file): one labelled line whenever something changes."""
    out = Console()
    try:
        status = fetch_status(url)
    except StatusUnavailable as error:
        Console(stderr=True).print(
            f"[red]cannot reach the agent's status endpoint at {status_url(url)}:[/red] {error}\n"
            "Is `sipagent serve` running, with its status server on that address "
            "(--status-bind, default 127.0.0.1:8089)?",
            highlight=False,
        )
        raise typer.Exit(2) from error
    if once:
        out.print(render(status))
        return
    try:
        if not out.is_terminal:
            _print_lines(out, url, status)
        with Live(render(status), console=out, refresh_per_second=2, screen=True) as live:
            while True:
                time.sleep(REFRESH_SECONDS)
                try:
                    status = fetch_status(url)
                    live.update(render(status))
                except StatusUnavailable as error:
                    # Keep the last frame: a restarting agent should not blank the screen.
                    live.update(render(status, problem=f"agent unreachable ({error}); retrying"))
    except KeyboardInterrupt:
        pass

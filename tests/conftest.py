"""Shared pytest setup: the real-peer rig fixtures (Kamailio, SIPp, baresip, tcpdump, audio).

Tests that need the peers are marked ``@pytest.mark.peers``.  Without the peer binaries they
are skipped with the reason — except under CI (``CI=true``), where a missing binary is a hard
failure so CI can never silently skip them.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from tests.kit.peerlib.audio import AudioLibrary, build_standard_audio
from tests.kit.peerlib.baresip import BaresipResult, baresip_call
from tests.kit.peerlib.capture import Capture, udp_ports_filter
from tests.kit.peerlib.common import REQUIRED_BINARIES, missing_binaries
from tests.kit.peerlib.kamailio import Kamailio
from tests.kit.peerlib.sipp import Sipp

# `sipagent serve` runs one worker per CPU core by default; the tests that start it as a process
# expect one agent on one port, as before. Tests of --workers ask for their count explicitly.
os.environ.setdefault("SIPAGENT_WORKERS", "1")


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in {"1", "true", "yes", "on"}


def _peer_problem() -> str | None:
    missing = missing_binaries()
    if missing:
        pkgs = sorted({REQUIRED_BINARIES[m] for m in missing})
        return (
            f"real SIP peers not installed: missing {', '.join(missing)} "
            f"(apt-get install {' '.join(pkgs)})"
        )
    return None


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("peers") is None:
        return
    problem = _peer_problem()
    if problem is None:
        return
    if in_ci():
        pytest.fail(f"CI=true and {problem}", pytrace=False)
    pytest.skip(problem)


def _skip_or_fail(reason: str) -> None:
    if in_ci():
        pytest.fail(f"CI=true and {reason}", pytrace=False)
    pytest.skip(reason)


# ---------------------------------------------------------------------------------------------
# audio


def _audio_root(config: pytest.Config, tmp_path_factory: pytest.TempPathFactory) -> Path:
    override = os.environ.get("SIPAGENT_TEST_AUDIO_DIR")
    if override:
        return Path(override)
    cache = getattr(config, "cache", None)
    if cache is not None:
        return Path(cache.mkdir("sipagent-peer-audio"))
    return tmp_path_factory.mktemp("peer-audio")


@pytest.fixture(scope="session")
def audio_dir(pytestconfig: pytest.Config, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Directory with the standard generated audio (cached across sessions):
    caller.wav/.ulaw, caller_padded.wav, agent.wav/.ulaw, pattern.ulaw/.wav, tones.wav/.ulaw."""
    missing = missing_binaries(["espeak-ng", "sox"])
    if missing:
        _skip_or_fail(f"audio generation needs {', '.join(missing)}")
    return build_standard_audio(_audio_root(pytestconfig, tmp_path_factory))


@pytest.fixture(scope="session")
def audio(audio_dir: Path) -> AudioLibrary:
    """Generator/cache for more audio (speech for any text, padding, patterns, tones)."""
    return AudioLibrary(audio_dir / "cache")


# ---------------------------------------------------------------------------------------------
# peers

KamailioFactory = Callable[..., Awaitable[Kamailio]]


@pytest.fixture
async def kamailio(tmp_path: Path) -> AsyncIterator[KamailioFactory]:
    """Factory: ``kam = await kamailio(qop=True, record_route=False, proxy_auth=False)``
    starts a Kamailio on a free UDP port; all are stopped at teardown."""
    started: list[Kamailio] = []

    async def factory(
        *,
        qop: bool = True,
        record_route: bool = False,
        proxy_auth: bool = False,
        port: int | None = None,
        **options: bool,  # single_contact, invite_auth: see Kamailio
    ) -> Kamailio:
        kam = Kamailio(
            tmp_path / f"kamailio-{len(started) + 1}",
            qop=qop, record_route=record_route, proxy_auth=proxy_auth, port=port, **options,
        )  # fmt: skip
        started.append(kam)
        await kam.start()
        return kam

    try:
        yield factory
    finally:
        for kam in started:
            await kam.stop()


@pytest.fixture
async def sipp(tmp_path: Path) -> AsyncIterator[Callable[..., Sipp]]:
    """Factory: ``sipp("uas_call.xml", params={...})`` -> an unstarted :class:`Sipp` whose run
    dir is under ``tmp_path``; any still running at teardown are stopped."""
    made: list[Sipp] = []

    def factory(scenario: str | Path, **kwargs: Any) -> Sipp:
        runner = Sipp(tmp_path, scenario, **kwargs)
        made.append(runner)
        return runner

    try:
        yield factory
    finally:
        for runner in made:
            await runner.stop()


class _RigCapture(Capture):
    """A Capture that turns "tcpdump may not capture here" into a skip (a failure on CI)."""

    async def start(self) -> None:
        try:
            await super().start()
        except RuntimeError as exc:
            text = str(exc).lower()
            if "permission" in text or "not permitted" in text:
                _skip_or_fail(f"tcpdump cannot capture on lo (needs root/CAP_NET_RAW): {exc}")
            raise


@pytest.fixture
async def capture(tmp_path: Path) -> AsyncIterator[Callable[..., Capture]]:
    """Factory: ``async with capture(5060, 40000) as cap:`` captures UDP to/from those ports
    on lo (all UDP if none) into ``tmp_path/capture-N.pcap``; then ``cap.datagrams()``."""
    made: list[Capture] = []

    def factory(*ports: int, bpf_filter: str | None = None) -> Capture:
        cap = _RigCapture(
            tmp_path / f"capture-{len(made) + 1}.pcap",
            bpf_filter if bpf_filter is not None else udp_ports_filter(*ports),
        )
        made.append(cap)
        return cap

    try:
        yield factory
    finally:
        for cap in made:
            await cap.stop()


@pytest.fixture
def baresip(tmp_path: Path) -> Callable[..., Awaitable[BaresipResult]]:
    """``result = await baresip(uri, wav, duration=5, registrar=kam.address)``."""
    counter = iter(range(1, 1000))

    async def call(uri: str, wav: Path, **kwargs: Any) -> BaresipResult:
        return await baresip_call(tmp_path / f"baresip-{next(counter)}", uri, wav, **kwargs)

    return call


@pytest.fixture(autouse=True)
def _logging_left_as_found() -> Any:
    """CLI commands invoked in-process (CliRunner) configure logging for a whole process:
    `register` silences the sipagent logger, basicConfig installs handlers. Undo that after
    each test, or a later test's caplog sees nothing."""
    root = logging.getLogger()
    ours = logging.getLogger("sipagent")
    saved = (root.level, list(root.handlers), ours.level, ours.disabled)
    yield
    root.setLevel(saved[0])
    for handler in root.handlers[:]:
        if handler not in saved[1] and not type(handler).__module__.startswith("_pytest"):
            root.removeHandler(handler)
    ours.setLevel(saved[2])
    ours.disabled = saved[3]


# ---------------------------------------------------------------------------------------------
# event loop: SIPAGENT_TEST_LOOP=uvloop runs the async tests on uvloop (serve --loop uvloop)

if os.environ.get("SIPAGENT_TEST_LOOP", "asyncio") == "uvloop":

    def pytest_asyncio_loop_factories(
        config: pytest.Config, item: pytest.Item
    ) -> dict[str, Callable[[], asyncio.AbstractEventLoop]]:
        from sipagent.agent import loop_factory

        factory = loop_factory("uvloop")  # what serve --loop uvloop runs
        assert factory is not None
        return {"uvloop": factory}

"""Every provider SDK symbol the agent uses exists in the installed SDKs (the dependency floors
in pyproject.toml are the versions that have them): an SDK upgrade that drops or renames one
fails here, not on a caller's first turn."""

from __future__ import annotations

import ast
import importlib
import inspect
from pathlib import Path

import pytest

import sipagent

SDKS = ("openai", "elevenlabs", "deepgram", "httpx2", "httpx")
PACKAGE = Path(sipagent.__file__).parent


def sdk_imports() -> list[tuple[str, str | None]]:
    """(module, name) for every `from SDK... import name` and (module, None) for every
    `import SDK...` in sipagent/."""
    found: set[tuple[str, str | None]] = set()
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                if node.module.split(".")[0] in SDKS:
                    found.update((node.module, alias.name) for alias in node.names)
            elif isinstance(node, ast.Import):
                found.update(
                    (alias.name, None) for alias in node.names if alias.name.split(".")[0] in SDKS
                )
    return sorted(found, key=str)


def test_the_scan_sees_the_providers() -> None:
    modules = {module for module, _ in sdk_imports()}
    assert {"openai", "elevenlabs", "deepgram", "deepgram.listen.v2.types"} <= modules


@pytest.mark.parametrize(("module", "name"), sdk_imports())
def test_every_imported_sdk_symbol_exists(module: str, name: str | None) -> None:
    imported = importlib.import_module(module)
    if name is not None:
        assert hasattr(imported, name), f"{module} has no {name}"


# Attributes reached through SDK objects rather than imported by name.
USED_ATTRIBUTES = [
    ("openai", "DefaultAsyncHttpxClient"),
    ("openai", "APIStatusError"),
    ("openai", "APIConnectionError"),
    ("openai", "APITimeoutError"),
    ("openai", "OpenAIError"),
    ("openai", "AsyncOpenAI.post"),
    ("elevenlabs.text_to_speech.client", "AsyncTextToSpeechClient.stream"),
    ("deepgram.listen.v1.socket_client", "AsyncV1SocketClient.send_media"),
    ("deepgram.listen.v1.socket_client", "AsyncV1SocketClient.send_finalize"),
    ("deepgram.listen.v1.socket_client", "AsyncV1SocketClient.send_keep_alive"),
    ("deepgram.listen.v1.socket_client", "AsyncV1SocketClient.send_close_stream"),
    ("deepgram.listen.v2.socket_client", "AsyncV2SocketClient.send_media"),
    ("deepgram.listen.v2.socket_client", "AsyncV2SocketClient.send_force_end_turn"),
    ("deepgram.listen.v2.socket_client", "AsyncV2SocketClient.send_close_stream"),
    ("deepgram.listen.v1.raw_client", "AsyncRawV1Client.connect"),
    ("deepgram.listen.v2.raw_client", "AsyncRawV2Client.connect"),
    # connect_without_compression replaces this module-level name, looked up at each connect.
    ("deepgram.listen.v1.client", "websockets_client_connect"),
    ("deepgram.listen.v1.raw_client", "websockets_client_connect"),
    ("deepgram.listen.v2.client", "websockets_client_connect"),
    ("deepgram.listen.v2.raw_client", "websockets_client_connect"),
]


@pytest.mark.parametrize(("module", "path"), USED_ATTRIBUTES)
def test_every_sdk_attribute_used_exists(module: str, path: str) -> None:
    target: object = importlib.import_module(module)
    for part in path.split("."):
        assert hasattr(target, part), f"{module}.{path}: no {part}"
        target = getattr(target, part)


def test_the_sdk_parameters_used_exist() -> None:
    from deepgram import DeepgramClientEnvironment
    from elevenlabs.text_to_speech.client import AsyncTextToSpeechClient

    # deepgram-sdk >= 7.17: the environment override with its agent endpoints.
    DeepgramClientEnvironment(
        base="http://h", production="ws://h", agent="ws://h", agent_rest="http://h"
    )
    stream = inspect.signature(AsyncTextToSpeechClient.stream).parameters
    assert {"previous_text", "next_text", "output_format", "model_id", "request_options"} <= set(
        stream
    )

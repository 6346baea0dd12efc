"""`doctor`'s checks of the cloud services: one cheap authenticated request each.

A key that is set can still be wrong, revoked, or for another project; a model or voice name
can be misspelt. Each check makes the smallest request the service authenticates and that
touches what the agent will use, and reports the service's own reason when it refuses. A
service that cannot be reached is a warning (the key is then unverified), not a failure:
the machine running `doctor` may not be the one going live.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import urlencode

import httpx

from sipagent.cli.checks import Check, Status
from sipagent.config import AgentSettings

TIMEOUT = 5.0
OPENAI_BASE = "https://api.openai.com/v1"
ELEVENLABS_BASE = "https://api.elevenlabs.io"
DEEPGRAM_WS = "wss://api.deepgram.com"


def _reason(body: bytes, status: int) -> str:
    """The service's own words for a refusal, from the JSON error shapes these APIs use."""
    try:
        data: Any = json.loads(body)
    except ValueError:
        text = body.decode(errors="replace").strip()
        return text.splitlines()[0][:160] if text else f"HTTP {status}"
    if isinstance(data, dict):
        error = data.get("error") or data.get("detail") or data
        if isinstance(error, dict):
            message = error.get("message") or error.get("err_msg") or error.get("msg")
            if message:
                return f"{status} {message}"
        elif isinstance(error, str):
            return f"{status} {error}"
        if data.get("err_msg"):
            return f"{status} {data['err_msg']}"
    return f"HTTP {status}"


def _unreachable(name: str, where: str, error: Exception) -> Check:
    return Check(
        name,
        Status.WARN,
        f"cannot reach {where} ({type(error).__name__}: {error}); key not verified",
        "check the network, or the base URL setting",
    )


async def check_openai(settings: AgentSettings) -> Check:
    """GET /models/{model}: the key is accepted and the model exists at this base URL."""
    base = (settings.openai_base_url or OPENAI_BASE).rstrip("/")
    model = settings.openai_model
    key = settings.openai_api_key.get_secret_value()
    try:
        async with httpx.AsyncClient(timeout=TIMEOUT) as client:
            response = await client.get(
                f"{base}/models/{model}", headers={"Authorization": f"Bearer {key}"}
            )
    except httpx.HTTPError as error:
        return _unreachable("LLM service", base, error)
    if response.status_code == 200:
        return Check("LLM service", Status.PASS, f"{base}: key accepted, model {model} available")
    reason = _reason(response.content, response.status_code)
    if response.status_code == 404:
        return Check(
            "LLM service",
            Status.FAIL,
            f"{base}: model {model} not found ({reason})",
            "set --openai-model / SIPAGENT_OPENAI_MODEL to a model this server has",
        )
    return Check(
        "LLM service",
        Status.FAIL,
        f"{base} refused the key: {reason}",
        "check OPENAI_API_KEY (and OPENAI_BASE_URL for a compatible server)",
    )


async def check_elevenlabs(settings: AgentSettings) -> Check:
    """One streamed synthesis of a single word: key, voice and model in one request."""
    base = (settings.elevenlabs_base_url or ELEVENLABS_BASE).rstrip("/")
    url = f"{base}/v1/text-to-speech/{settings.elevenlabs_voice}/stream"
    try:
        async with (
            httpx.AsyncClient(timeout=TIMEOUT) as client,
            client.stream(
                "POST",
                url,
                params={"output_format": "ulaw_8000"},
                headers={"xi-api-key": settings.elevenlabs_api_key.get_secret_value()},
                json={"text": "Hi.", "model_id": settings.elevenlabs_model},
            ) as response,
        ):
            if response.status_code == 200:
                return Check(
                    "TTS service",
                    Status.PASS,
                    f"{base}: key accepted, voice {settings.elevenlabs_voice} with "
                    f"{settings.elevenlabs_model} speaks",
                )
            body = await response.aread()
    except httpx.HTTPError as error:
        return _unreachable("TTS service", base, error)
    return Check(
        "TTS service",
        Status.FAIL,
        f"{base} refused: {_reason(body, response.status_code)}",
        "check ELEVENLABS_API_KEY, --elevenlabs-voice and --elevenlabs-model",
    )


async def check_deepgram(settings: AgentSettings) -> Check:
    """Open the live-transcription socket the agent will use (handshake only), then close it."""
    from websockets.asyncio.client import connect
    from websockets.exceptions import InvalidStatus, WebSocketException

    base = settings.deepgram_url or DEEPGRAM_WS
    if base.startswith("http"):
        base = "ws" + base.removeprefix("http")
    flux = settings.deepgram_model.startswith("flux")
    params = {"model": settings.deepgram_model, "encoding": "mulaw", "sample_rate": 8000}
    if not flux:
        params.update(
            interim_results="true", endpointing=settings.endpointing_ms, vad_events="true",
            utterance_end_ms=1000, smart_format="true", channels=1,
        )  # fmt: skip
    url = f"{base.rstrip('/')}/{'v2' if flux else 'v1'}/listen?{urlencode(params)}"
    headers = {"Authorization": f"Token {settings.deepgram_api_key.get_secret_value()}"}
    try:
        async with connect(url, additional_headers=headers, open_timeout=TIMEOUT) as socket:
            await socket.send(json.dumps({"type": "CloseStream"}))
    except InvalidStatus as error:
        response = error.response
        return Check(
            "STT service",
            Status.FAIL,
            f"{base} refused: {_reason(response.body or b'', response.status_code)}",
            "check DEEPGRAM_API_KEY and --deepgram-model / SIPAGENT_DEEPGRAM_MODEL",
        )
    except (OSError, TimeoutError, WebSocketException) as error:
        return _unreachable("STT service", base, error)
    return Check(
        "STT service", Status.PASS, f"{base}: key accepted, {settings.deepgram_model} streams"
    )

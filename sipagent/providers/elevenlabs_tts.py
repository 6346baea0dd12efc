"""TextToSpeech over ElevenLabs' HTTP streaming endpoint, asking for `ulaw_8000`.

`ulaw_8000` is the call's own codec, so the bytes go to the RTP path untouched: no decoding,
resampling or buffering here. Each chunk is handed on the moment it arrives; the caller's
time-to-first-audio is then the service's first-byte latency plus one network hop.

The SDK's `text_to_speech.stream()` is used as is (real request building, error types), with
two deliberate settings: `chunk_size=None`, because the SDK otherwise re-chunks the body into
1024-byte pieces (128 ms of audio held back at the start of every reply); and our own
first-byte / idle deadlines, because one httpx timeout cannot tell "the service is still
thinking" from "the stream died mid-sentence". `previous_text` / `next_text` go with each
sentence so the service joins sentences of one reply with natural prosody.

Errors quote the service's own `detail.status` and message ("quota_exceeded: This request
exceeds your quota...", "voice_not_found: ...", "too_many_concurrent_requests: ..."), and say
whether asking again during this call can help (`heals`): a bad key, a used-up quota or a
voice that does not exist cannot.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from typing import Any, cast

import httpx
from elevenlabs import AsyncElevenLabs, VoiceSettings
from elevenlabs.core.api_error import ApiError
from elevenlabs.core.request_options import RequestOptions

from sipagent.providers.base import ProviderError

DEFAULT_MODEL = "eleven_turbo_v2_5"
OUTPUT_FORMAT = "ulaw_8000"
# Idle connections are kept this long (httpcore drops one the server has closed before reusing
# it); under the 60 s idle timeout common on load balancers, which may drop them silently.
DEFAULT_KEEPALIVE_SECONDS = 55.0
# Answers that asking again during the call cannot change.
_UNHEALING_STATUSES = frozenset({401, 402, 403, 404})


class ElevenLabsTextToSpeech:
    """`TextToSpeech` using `elevenlabs.AsyncElevenLabs`.

    One HTTP client (connection pool) per instance, so consecutive sentences of a reply reuse a
    warm connection; call `aclose()` at shutdown.
    """

    def __init__(
        self,
        *,
        voice_id: str,
        api_key: str | None = None,
        model_id: str = DEFAULT_MODEL,
        base_url: str | None = None,
        optimize_streaming_latency: int | None = None,
        voice_settings: VoiceSettings | Mapping[str, Any] | None = None,
        first_byte_timeout: float = 5.0,
        idle_timeout: float = 5.0,
        connect_timeout: float = 5.0,
        keepalive_seconds: float = DEFAULT_KEEPALIVE_SECONDS,
    ) -> None:
        # Read the environment now, not at import time (the SDK's own default is bound when
        # the elevenlabs module is imported, so a key set later would be missed).
        key = api_key or os.environ.get("ELEVENLABS_API_KEY") or ""
        if not key:
            raise ProviderError("ElevenLabs: no API key (pass api_key or set ELEVENLABS_API_KEY)")
        self._api_key = key
        self.voice_id = voice_id
        self.model_id = model_id
        self.optimize_streaming_latency = optimize_streaming_latency
        if voice_settings is None or isinstance(voice_settings, VoiceSettings):
            self.voice_settings = voice_settings
        else:
            self.voice_settings = VoiceSettings(**dict(voice_settings))
        self.first_byte_timeout = first_byte_timeout
        self.idle_timeout = idle_timeout
        # Our own httpx client so aclose() can release its connections; its timeouts are only
        # a backstop behind the first-byte / idle deadlines enforced in synthesize().
        backstop = max(first_byte_timeout, idle_timeout) + 5.0
        # Idle connections kept `keepalive_seconds`, not httpx's 5 s: the gap between two of
        # our replies (the caller's turn) is often longer, and each new connection is a TLS
        # handshake before the first audio byte.
        self._http = httpx.AsyncClient(
            timeout=httpx.Timeout(backstop, connect=connect_timeout),
            limits=httpx.Limits(
                max_connections=100,
                max_keepalive_connections=20,
                keepalive_expiry=keepalive_seconds,
            ),
        )
        self._client = AsyncElevenLabs(api_key=key, base_url=base_url, httpx_client=self._http)

    async def aclose(self) -> None:
        await self._http.aclose()

    def _redact(self, text: str) -> str:
        return text.replace(self._api_key, "***")

    async def synthesize(
        self, text: str, *, previous_text: str = "", next_text: str = ""
    ) -> AsyncIterator[bytes]:
        """8 kHz mu-law for `text`, chunk by chunk as the service produces it.

        Raises ProviderError on HTTP errors, dropped streams and timeouts. Closing the generator
        (or cancelling its consumer) closes the HTTP response, which ends the synthesis.
        """
        if not text.strip():
            return  # the service answers 400 for empty text; silence is the right audio
        options = cast(
            RequestOptions,
            # None: hand over bytes exactly as they arrive (see the module docstring). The SDK
            # never retries a streamed request, so there is no retry count to turn off.
            {"chunk_size": None},
        )
        kwargs: dict[str, Any] = {
            "text": text,
            "model_id": self.model_id,
            "output_format": OUTPUT_FORMAT,
            "request_options": options,
        }
        if previous_text:
            kwargs["previous_text"] = previous_text
        if next_text:
            kwargs["next_text"] = next_text
        if self.optimize_streaming_latency is not None:
            kwargs["optimize_streaming_latency"] = self.optimize_streaming_latency
        if self.voice_settings is not None:
            kwargs["voice_settings"] = self.voice_settings
        # The SDK method is an async generator (typed as AsyncIterator): aclose() is what
        # exits its `async with` around the HTTP response.
        audio = cast(
            AsyncGenerator[bytes, None], self._client.text_to_speech.stream(self.voice_id, **kwargs)
        )
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.first_byte_timeout
        got_audio = False
        try:
            while True:
                try:
                    async with asyncio.timeout_at(deadline):
                        chunk = await anext(audio)
                except StopAsyncIteration:
                    return
                except TimeoutError:
                    phase = "between chunks" if got_audio else "before the first audio"
                    limit = self.idle_timeout if got_audio else self.first_byte_timeout
                    raise ProviderError(
                        f"ElevenLabs: timed out {phase} (no data for {limit:g} s)"
                    ) from None
                except ApiError as exc:
                    # `from None`: the SDK error's str() dumps all response headers and body.
                    raise ProviderError(
                        self._describe_status(exc),
                        heals=exc.status_code not in _UNHEALING_STATUSES,
                    ) from None
                except httpx.HTTPError as exc:
                    # Connect failures, a dropped connection mid-body ("incomplete chunked
                    # read"), httpx-level timeouts; none of them carries the key.
                    raise ProviderError(
                        self._redact(f"ElevenLabs: stream failed: {type(exc).__name__}: {exc}")
                    ) from exc
                if chunk:
                    got_audio = True
                    deadline = loop.time() + self.idle_timeout
                    yield chunk
        finally:
            await audio.aclose()

    def _describe_status(self, exc: ApiError) -> str:
        """The service's own words: "HTTP 401: quota_exceeded: This request exceeds..."."""
        detail: Any = exc.body.get("detail") if isinstance(exc.body, dict) else exc.body
        if isinstance(detail, dict):
            parts = [str(detail[k]) for k in ("status", "message") if detail.get(k)]
            detail = ": ".join(parts) if parts else detail
        text = str(detail)[:300] if detail else ""
        if exc.status_code in (401, 403) and not text:
            text = "authentication failed (check the API key)"
        return self._redact(f"ElevenLabs: HTTP {exc.status_code}" + (f": {text}" if text else ""))

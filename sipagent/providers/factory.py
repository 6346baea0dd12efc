"""Choose each stage's provider from the settings: cloud when its key is set, else offline."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sipagent.config import AgentSettings
from sipagent.conversation.tts_slots import TtsSlots
from sipagent.providers.base import LanguageModel, SpeechToText, TextToSpeech

log = logging.getLogger("sipagent.providers")


@dataclass(frozen=True, slots=True)
class ProviderChoice:
    stt: str
    llm: str
    tts: str

    @property
    def offline(self) -> bool:
        return "offline" in (self.stt, self.llm, self.tts)


def choose(settings: AgentSettings) -> ProviderChoice:
    def pick(requested: str, cloud: str, key: str) -> str:
        if requested == "auto":
            return cloud if key else "offline"
        if requested not in (cloud, "offline"):
            raise ValueError(f"unknown provider {requested!r}: use auto, {cloud} or offline")
        if requested == cloud and not key:
            raise ValueError(f"{cloud} chosen but its API key is not set")
        return requested

    return ProviderChoice(
        stt=pick(settings.stt, "deepgram", settings.deepgram_api_key.get_secret_value()),
        llm=pick(settings.llm, "openai", settings.openai_api_key.get_secret_value()),
        tts=pick(settings.tts, "elevenlabs", settings.elevenlabs_api_key.get_secret_value()),
    )


def _deepgram_endpoint(url: str) -> dict[str, str]:
    if not url:
        return {}
    return {"ws_url": url} if url.startswith(("ws://", "wss://")) else {"base_url": url}


def _offline_stt(
    settings: AgentSettings, clinic_name: str
) -> tuple[Callable[[], SpeechToText], str]:
    """Whisper when its pinned weights are installed, else pocketsphinx (said once, here)."""
    if settings.offline_stt not in ("whisper", "pocketsphinx"):
        raise ValueError(f"unknown offline STT {settings.offline_stt!r}: whisper or pocketsphinx")
    if settings.offline_stt == "whisper":
        from sipagent.providers import whisper_stt

        try:
            weights = whisper_stt.check_weights(settings.whisper_model_dir or None)
        except whisper_stt.WeightsUnavailable as exc:
            log.warning("offline STT: Whisper unavailable (%s); using pocketsphinx instead", exc)
        else:
            prompt = whisper_stt.domain_prompt(clinic_name)
            log.info("offline STT: whisper %s (%s, sha256 verified)", weights.name, weights.path)
            whisper_stt.preload(weights)

            def new_whisper() -> SpeechToText:
                return whisper_stt.WhisperSpeechToText(
                    weights=weights, prompt=prompt, endpointing_ms=settings.endpointing_ms
                )

            return new_whisper, f"whisper {weights.name}"
    from sipagent.providers.offline_stt import PocketsphinxSpeechToText

    def new_pocketsphinx() -> SpeechToText:
        return PocketsphinxSpeechToText(endpointing_ms=settings.endpointing_ms)

    return new_pocketsphinx, "pocketsphinx"


@dataclass(frozen=True, slots=True)
class Providers:
    """Per-call factories (STT streams are per call) and shared LLM/TTS clients."""

    choice: ProviderChoice
    new_stt: Callable[[], SpeechToText]
    llm: LanguageModel
    tts: TextToSpeech
    fallback_tts: TextToSpeech | None
    tts_slots: TtsSlots | None = None  # the cloud TTS plan's concurrency, shared by all calls
    stt_engine: str = ""  # what actually listens, e.g. "whisper tiny.en" (after any fallback)


def build_providers(settings: AgentSettings, clinic_name: str = "Sunrise Dental") -> Providers:
    choice = choose(settings)
    offline_tts: TextToSpeech | None = None

    def espeak() -> TextToSpeech:
        nonlocal offline_tts
        if offline_tts is None:
            from sipagent.providers.offline_tts import EspeakTextToSpeech

            offline_tts = EspeakTextToSpeech()
        return offline_tts

    stt_engine = f"deepgram {settings.deepgram_model}"
    if choice.stt == "deepgram":
        from sipagent.providers.deepgram_flux_stt import DeepgramFluxSpeechToText
        from sipagent.providers.deepgram_stt import DeepgramSpeechToText

        flux = settings.deepgram_model.startswith("flux")
        # One SDK client for every call's stream (each call still has its own websocket).
        shared: list[Any] = []

        def new_stt() -> SpeechToText:
            options: dict[str, Any] = {
                "model": settings.deepgram_model,
                "client": shared[0] if shared else None,
                **_deepgram_endpoint(settings.deepgram_url),
            }
            stream: DeepgramSpeechToText
            if flux:  # Flux (/v2/listen) ends turns with its own model: no endpointing
                stream = DeepgramFluxSpeechToText(
                    settings.deepgram_api_key.get_secret_value(), **options
                )
            else:
                stream = DeepgramSpeechToText(
                    settings.deepgram_api_key.get_secret_value(),
                    endpointing_ms=settings.endpointing_ms,
                    audio_batch_ms=settings.stt_batch_ms,
                    **options,
                )
            if not shared:
                shared.append(stream.client)
            return stream
    else:
        new_stt, stt_engine = _offline_stt(settings, clinic_name)

    llm: LanguageModel
    if choice.llm == "openai":
        from sipagent.providers.openai_llm import (
            CLOUD_FIRST_TOKEN_TIMEOUT,
            LOCAL_FIRST_TOKEN_TIMEOUT,
            OpenAILanguageModel,
        )

        local = bool(settings.openai_base_url)
        llm = OpenAILanguageModel(
            api_key=settings.openai_api_key.get_secret_value(),
            model=settings.openai_model,
            base_url=settings.openai_base_url or None,
            # Past this we apologise and retry rather than leave the caller in silence.
            first_token_timeout=settings.llm_first_token_timeout
            or (LOCAL_FIRST_TOKEN_TIMEOUT if local else CLOUD_FIRST_TOKEN_TIMEOUT),
        )
    else:
        from sipagent.providers.scripted_llm import ScriptedReceptionist

        llm = ScriptedReceptionist(clinic_name=clinic_name)

    tts: TextToSpeech
    tts_slots: TtsSlots | None = None
    if choice.tts == "elevenlabs":
        from sipagent.providers.elevenlabs_tts import ElevenLabsTextToSpeech

        tts = ElevenLabsTextToSpeech(
            voice_id=settings.elevenlabs_voice,
            api_key=settings.elevenlabs_api_key.get_secret_value(),
            model_id=settings.elevenlabs_model,
            base_url=settings.elevenlabs_base_url or None,
            # Past this the sentence is spoken by the offline voice instead (no dead air).
            first_byte_timeout=1.5,
        )
        fallback = espeak()
        tts_slots = TtsSlots(settings.tts_max_concurrent)
    else:
        tts = espeak()
        fallback = None
    log.debug("providers: stt=%s llm=%s tts=%s", choice.stt, choice.llm, choice.tts)
    return Providers(choice, new_stt, llm, tts, fallback, tts_slots, stt_engine)

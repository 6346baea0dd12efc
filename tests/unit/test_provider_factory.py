"""build_providers: the settings that shape the cloud providers."""

from __future__ import annotations

import pytest

from sipagent.config import AgentSettings
from sipagent.providers.factory import build_providers
from sipagent.providers.openai_llm import OpenAILanguageModel


def settings(**values: object) -> AgentSettings:
    defaults: dict[str, object] = {
        "stt": "offline", "tts": "offline", "llm": "openai", "openai_api_key": "sk-x"
    }  # fmt: skip
    return AgentSettings(_env_file=None, **{**defaults, **values})  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("values", "timeout"),
    [
        ({}, 2.0),  # OpenAI's cloud: a first token later than 2 s means trouble
        ({"openai_base_url": "http://127.0.0.1:11434/v1"}, 8.0),  # a local model may be loading
        ({"openai_base_url": "http://127.0.0.1:11434/v1", "llm_first_token_timeout": 20.0}, 20.0),
        ({"llm_first_token_timeout": 3.5}, 3.5),
    ],
)
async def test_the_first_token_timeout_is_a_setting_larger_by_default_for_a_local_server(
    values: dict[str, object], timeout: float
) -> None:
    providers = build_providers(settings(**values))
    assert isinstance(providers.llm, OpenAILanguageModel)
    assert providers.llm.first_token_timeout == timeout
    await providers.llm.aclose()


async def test_the_cloud_tts_is_capped_process_wide_at_the_plans_concurrency() -> None:
    providers = build_providers(
        settings(tts="elevenlabs", elevenlabs_api_key="xi-x", tts_max_concurrent=3)
    )
    assert providers.tts_slots is not None and providers.tts_slots.limit == 3
    await providers.llm.aclose()  # type: ignore[attr-defined]
    await providers.tts.aclose()  # type: ignore[attr-defined]

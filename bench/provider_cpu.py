#!/usr/bin/env python3
"""CPU per streamed LLM reply on the agent's side: the real `openai` SDK through
`OpenAILanguageModel`, against the fake OpenAI server in a process of its own (so only the
client's work is counted).

    python bench/provider_cpu.py                 # 200 replies after 30 to warm up
    python bench/provider_cpu.py --replies 500

Each reply is the receptionist's usual length (one sentence and a question, streamed by the
fake in word-sized chunks) to a history of a system prompt and eight turns. What is measured
is this thread's CPU time (`time.thread_time`) over the replies, divided by their number; the
fake's work is in the other process. Every callback of a reply runs on the agent's event loop,
beside the media clock, so this is also how much of the loop a reply takes.
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from sipagent.providers.openai_llm import OpenAILanguageModel  # noqa: E402

REPLY = "Sure, what day works best for you? We have openings on Monday and Tuesday morning."
HISTORY = [
    {"role": "system", "content": "You are Sarah, the receptionist of a dental clinic. " * 20},
    *[
        message
        for _ in range(4)
        for message in (
            {"role": "user", "content": "I would like to book a cleaning, please."},
            {"role": "assistant", "content": "Of course. What day suits you?"},
        )
    ],
]
SERVER = f"""
import asyncio, sys
sys.path.insert(0, {str(REPO)!r})
from tests.kit.fakes.openai_server import FakeOpenAIServer

async def main() -> None:
    async with FakeOpenAIServer(lambda body: {REPLY!r}) as server:
        print(server.base_url, server.api_key, flush=True)
        await asyncio.sleep(3600)

asyncio.run(main())
"""


async def measure(base_url: str, api_key: str, warm_up: int, replies: int) -> dict[str, float]:
    llm = OpenAILanguageModel(api_key=api_key, base_url=base_url)
    chunks = 0

    async def one() -> None:
        nonlocal chunks
        async for chunk in llm.stream(HISTORY, []):
            chunks += bool(chunk.text)

    try:
        for _ in range(warm_up):
            await one()
        chunks = 0
        cpu, wall = time.thread_time(), time.perf_counter()
        for _ in range(replies):
            await one()
        cpu, wall = time.thread_time() - cpu, time.perf_counter() - wall
    finally:
        await llm.aclose()
    return {
        "replies": replies,
        "text_chunks_per_reply": chunks / replies,
        "cpu_ms_per_reply": 1000 * cpu / replies,
        "wall_ms_per_reply": 1000 * wall / replies,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--replies", type=int, default=200)
    parser.add_argument("--warm-up", type=int, default=30)
    args = parser.parse_args(argv)
    server = subprocess.Popen([sys.executable, "-c", SERVER], stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None
        base_url, api_key = server.stdout.readline().split()
        result = asyncio.run(measure(base_url, api_key, args.warm_up, args.replies))
    finally:
        server.kill()
        server.wait()
    print(
        f"{result['replies']} replies of {result['text_chunks_per_reply']:.0f} text chunks: "
        f"{result['cpu_ms_per_reply']:.2f} ms CPU per reply on the client's loop "
        f"({result['wall_ms_per_reply']:.2f} ms wall)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The GIL convoy on the media clock's thread: `socket.sendto` against a GIL-holding sendto(2).

The main thread computes (pure Python, as a provider SDK's step does) while a second thread,
every 20 ms, sends one frame on each of 50 UDP sockets, as the media clock's thread does for
50 calls. Printed: how long each pass took and how late it started, p50 / p99 / max.
`socket.sendto` releases the GIL around each system call; the main thread then runs again
and the sending thread waits a switch interval to get it back, once per frame.
`media/gil_send.py`'s send keeps the GIL. The agent's switch interval (1 ms) is used.

    python bench/gil_send.py [--seconds 3]
"""

from __future__ import annotations

import argparse
import contextlib
import socket
import sys
import threading
import time

from sipagent.agent import MEDIA_THREAD_SWITCH_INTERVAL
from sipagent.media.gil_send import GilHoldingSender

FRAME = b"\x80" + bytes(11) + b"\xff" * 160  # an RTP header and a 20 ms mu-law frame
STREAMS = 50


def run(mode: str, seconds: float) -> tuple[list[float], list[float]]:
    receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    receiver.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    receiver.bind(("127.0.0.1", 0))
    target = receiver.getsockname()
    senders = []
    for _ in range(STREAMS):
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind(("127.0.0.1", 0))
        sock.setblocking(False)
        senders.append(sock)
    holding = [GilHoldingSender(sock) for sock in senders]
    durations: list[float] = []
    lateness: list[float] = []
    stop = threading.Event()

    def media() -> None:
        wake = threading.Event()
        due = time.monotonic() + 0.02
        while not stop.is_set():
            wake.wait(max(due - time.monotonic(), 0))
            started = time.monotonic()
            lateness.append(started - due)
            if mode == "gil_holding":
                for sender in holding:
                    sender.send(FRAME, target)
            else:
                for sock in senders:
                    with contextlib.suppress(BlockingIOError):  # the receiver is not read
                        sock.sendto(FRAME, target)
            durations.append(time.monotonic() - started)
            due += 0.02

    thread = threading.Thread(target=media)
    thread.start()
    end = time.monotonic() + seconds
    total = 0
    while time.monotonic() < end:
        total += sum(range(100))  # the loop's thread, computing
    stop.set()
    thread.join()
    for sock in [receiver, *senders]:
        sock.close()
    return durations, lateness


def summary(values: list[float]) -> str:
    ordered = sorted(values)
    pick = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    return f"{ordered[len(ordered) // 2] * 1e3:.2f} / {pick * 1e3:.2f} / {ordered[-1] * 1e3:.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=3.0)
    args = parser.parse_args()
    sys.setswitchinterval(MEDIA_THREAD_SWITCH_INTERVAL)
    print(f"{STREAMS} sends per pass every 20 ms while the main thread computes")
    print("| send | pass took p50 / p99 / max ms | pass started late p50 / p99 / max ms |")
    print("|---|---|---|")
    for mode in ("socket.sendto", "gil_holding"):
        durations, lateness = run(mode, args.seconds)
        print(f"| {mode} | {summary(durations)} | {summary(lateness)} |")


if __name__ == "__main__":
    main()

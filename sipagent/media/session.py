"""One call's RTP media: the thin asyncio adapter around the sans-IO media classes.

The process's one MediaClock (media/clock.py) serves every open session on its own
absolute 20 ms deadlines: each pass sends the session's due outgoing frame(s) and hands
due inbound frames to `on_audio`. Inbound datagrams are handled as they arrive: parsed,
filtered, and fed to the jitter buffer or the DTMF detector. Waiting for playout state
(`drained`, `first_packet_sent`) is done with futures the pass resolves, not by polling.

With `media_thread` (the agent's default) the sending moves to the loop's
ThreadedMediaClock: its pass runs on that thread, under the session's lock, and sends on
the socket's descriptor itself (an asyncio transport is not thread-safe; media/gil_send.py
says why not `socket.sendto`); everything else, inbound
included, stays on the event loop, and the thread reaches the loop's futures through
call_soon_threadsafe.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from sipagent.media import gil_send
from sipagent.media.clock import LatenessHistogram, MediaClock, ThreadedMediaClock
from sipagent.media.codec import FRAME_BYTES, FRAME_SAMPLES, G711Codec, codec_named, static_codec
from sipagent.media.dtmf import DtmfDetector, DtmfSender
from sipagent.media.gil_send import BROKEN_SOCKET_ERRNOS, GilHoldingSender
from sipagent.media.jitter_buffer import JitterBuffer, JitterStats
from sipagent.media.playout import FlushResult, FramePacer, PlayoutQueue
from sipagent.media.recording import TwoChannelRecorder
from sipagent.media.rtp import (
    FilterVerdict,
    InboundRtpFilter,
    RtpPacketizer,
    RtpParseError,
    parse_rtp,
)
from sipagent.media.source import Address, RtpSourceLatch, SourceVerdict, validate_remote

logger = logging.getLogger(__name__)

FRAME_INTERVAL: Final = 0.02
_LOG_INTERVAL: Final = 5.0  # seconds between repeated log lines of one kind


class _LogRateLimiter:
    """Lets one log line per key through every `interval` seconds, counting the rest."""

    def __init__(self, interval: float) -> None:
        self._interval = interval
        self._next_allowed: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    def allow(self, key: str, now: float) -> int | None:
        """None: stay quiet. Otherwise log now; the value is how many were suppressed."""
        if now < self._next_allowed.get(key, float("-inf")):
            self._suppressed[key] = self._suppressed.get(key, 0) + 1
            return None
        self._next_allowed[key] = now + self._interval
        return self._suppressed.pop(key, 0)


@dataclass(frozen=True, slots=True)
class RtpSessionStats:
    call_id: str
    remote: Address  # from SDP
    send_address: Address  # where media actually goes (the latched source, if any)
    latched: bool
    relatches: int  # times media moved to a new source after the first latch
    datagrams_in: int
    packets_in: int  # accepted RTP packets
    packets_out: int
    octets_out: int  # payload octets
    # Inbound datagrams dropped, by reason; rejected sources (RtpSourceLatch) count as
    # "rejected_foreign_source" and "rejected_address_family".
    dropped: dict[str, int]
    jitter: JitterStats
    dtmf_digits: int
    frames_skipped: int  # outgoing frame slots given up after the tick stalled
    callback_errors: int
    tick_lateness_p99_ms: float  # over the whole call
    tick_lateness_max_ms: float
    frames_shed: int = 0  # quiet queued frames dropped to make up for skipped slots


class _RtpProtocol(asyncio.DatagramProtocol):
    def __init__(self, session: RtpSession) -> None:
        self._session = session

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        self._session._on_datagram(data, (str(addr[0]), int(addr[1])))

    def error_received(self, exc: Exception) -> None:
        # ICMP errors (e.g. port unreachable before the far end listens) are routine.
        self._session._log_limited("socket_error", "socket error: %s", exc)

    def connection_lost(self, exc: Exception | None) -> None:
        self._session._on_connection_lost(exc)


class RtpSession:
    """RTP media of one call. Create with `await RtpSession.open(...)`."""

    def __init__(
        self,
        *,
        remote: Address,
        payload_type: int,
        telephone_event_pt: int | None,
        on_audio: Callable[[bytes], None],
        on_dtmf: Callable[[str], None] | None,
        clock: Callable[[], float],
        call_id: str,
        codec: G711Codec,
        family: int = socket.AF_INET,
        on_transport_lost: Callable[[str], None] | None = None,
    ) -> None:
        if telephone_event_pt == payload_type:
            raise ValueError("telephone-event and audio need distinct payload types")
        self.call_id = call_id
        self._family = family
        self._remote = validate_remote(remote, family)
        self._payload_type = payload_type
        self._codec = codec
        self._telephone_event_pt = telephone_event_pt
        self._on_audio = on_audio
        self._on_dtmf = on_dtmf
        self._on_transport_lost = on_transport_lost
        self._clock = clock

        self._queue = PlayoutQueue()
        self._packetizer = RtpPacketizer(payload_type)
        self._wire_silence = codec.silence_frame()
        allowed = {payload_type}
        if telephone_event_pt is not None:
            allowed.add(telephone_event_pt)
        self._filter = InboundRtpFilter(allowed)
        self._source = RtpSourceLatch(self._remote, allowed)
        # Inbound audio goes to STT/VAD, not to a loudspeaker: deliver it as soon as it is in
        # sequence; only a gap waits (up to the adaptive delay) for reordered packets.
        self._jitter_buffer = JitterBuffer(eager=True)
        self._dtmf = DtmfDetector()
        self._dtmf_out = DtmfSender()
        self._dtmf_start_timestamp = 0
        self._inbound_partial = bytearray()  # re-cuts non-20 ms packets into 160-byte frames

        self._pacer: FramePacer | None = None
        self._transport: asyncio.DatagramTransport | None = None
        self._media_clock: MediaClock | None = None
        # media_thread: the clock that sends, what it sends with, and the loop its
        # waiters live on. The lock guards what both threads touch: the playout queue, the
        # pacer, the packetizer and the DTMF sender.
        self._sending_clock: ThreadedMediaClock | None = None
        self._sender: GilHoldingSender | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._lock = threading.Lock()
        self._drain_pending = False  # the thread has asked the loop to check the waiters
        self._transport_lost_by_thread = False  # a send from the thread broke the socket
        self._inbound_timer: asyncio.TimerHandle | None = None  # media_thread: a gap's wait
        self._inbound_timer_due = 0.0  # what it waits for, on the session's clock
        self._drained_waiters: list[asyncio.Future[None]] = []
        self._talkspurt_waiters: list[asyncio.Future[float | None]] = []
        self._closed = False
        self._transport_lost = False
        self._held = False
        self.recorder: TwoChannelRecorder | None = None  # set to record the call (debugging)
        self.talkspurt_started_at: float | None = None
        self.last_voiced_sent_at: float | None = None
        self._streams_seen = 0
        self._datagrams_in = 0
        self._packets_in = 0
        self._parse_drops: dict[str, int] = {}
        self._callback_errors = 0
        self._tick_lateness = LatenessHistogram()
        self._log_limiter = _LogRateLimiter(_LOG_INTERVAL)

    @classmethod
    async def open(
        cls,
        *,
        sock: socket.socket,
        remote: tuple[str, int],
        payload_type: int,
        telephone_event_pt: int | None,
        on_audio: Callable[[bytes], None],
        on_dtmf: Callable[[str], None] | None = None,
        clock: Callable[[], float] | None = None,
        call_id: str = "",
        codec: str | None = None,
        on_transport_lost: Callable[[str], None] | None = None,
        media_thread: bool = False,
    ) -> RtpSession:
        """Start media on a bound, non-blocking UDP socket (see RtpPortAllocator).

        `remote` is the SDP address: an IP literal of the socket's family and a port
        1-65535, else ValueError (names are not resolved). `codec` is the negotiated
        encoding name ("PCMU"/"PCMA"), which a dynamic `payload_type` needs; None takes it
        from the static payload type (0/8). `on_audio` gets 160-byte mu-law frames (PCMA
        is transcoded). `on_transport_lost` is called once, with a reason, if the socket
        dies under the session (the call is then silent for good: end it). `clock`
        supplies monotonic seconds for timing decisions and defaults to the loop's clock;
        the media clock still sleeps on the event loop. `media_thread` sends from the
        loop's ThreadedMediaClock instead (and the session's clock is then
        `time.monotonic`, the thread's; `clock` must be None).

        The session owns `sock` from here on: `close()` closes it, and so does a failed
        open. Releasing the port in the allocator is the caller's job.
        """
        loop = asyncio.get_running_loop()
        if media_thread and clock is not None:
            raise ValueError("media_thread sends on time.monotonic: no clock of your own")
        if media_thread and not gil_send.available():
            logger.debug("no GIL-holding sendto here: media sent from the event loop")
            media_thread = False
        if media_thread:
            clock = time.monotonic
        try:
            session = cls(
                remote=remote,
                payload_type=payload_type,
                telephone_event_pt=telephone_event_pt,
                on_audio=on_audio,
                on_dtmf=on_dtmf,
                clock=clock or loop.time,
                call_id=call_id,
                codec=static_codec(payload_type) if codec is None else codec_named(codec),
                family=sock.family,
                on_transport_lost=on_transport_lost,
            )
            transport, _ = await loop.create_datagram_endpoint(
                lambda: _RtpProtocol(session), sock=sock
            )
        except BaseException:
            sock.close()
            raise
        session._transport = transport
        session._loop = loop
        # The first frame is due at once: the line has a stream from its first moment.
        session._pacer = FramePacer(session._clock(), FRAME_INTERVAL)
        if media_thread:
            # Inbound needs no clock here: frames are delivered as packets arrive, and a
            # timer is armed only while frames wait behind a missing one (_handle_datagram).
            session._sender = GilHoldingSender(sock)
            session._sending_clock = ThreadedMediaClock.for_loop(loop)
            session._sending_clock.add(session, session._pacer.next_deadline)
        else:
            session._media_clock = MediaClock.for_loop(loop, clock)
            session._media_clock.add(session, session._pacer.next_deadline)
        logger.debug("[%s] RTP session open, sending to %s:%d", call_id, *session._remote)
        return session

    # ------------------------------------------------------------- public API

    def play(self, mulaw: bytes) -> None:
        """Queue mu-law audio of any length behind what is already queued (no-op once closed).

        Audio that starts a talkspurt on a quiet line goes out at once instead of at the next
        tick (see FramePacer.send_now): up to a frame less latency on every reply.
        """
        if self._closed:
            return
        with self._lock:
            self._queue.enqueue(mulaw)
            pacer = self._pacer
            if (
                pacer is not None
                and not self._held
                and self._queue.talkspurt_ready
                and not self._dtmf_out.active
                and pacer.send_now(self._clock())
            ):
                self._send_next_frame()

    def end_talkspurt(self) -> None:
        """The audio played so far ends an utterance (PlayoutQueue.end_talkspurt)."""
        with self._lock:
            self._queue.end_talkspurt()

    def flush(self) -> FlushResult:
        """Drop all queued outgoing audio (barge-in).

        Takes effect at once: frames leave the queue only at send time, so the one
        frame possibly already handed to the kernel is all that can still go out.
        """
        with self._lock:
            result = self._queue.flush()
        self._resolve_drained()
        return result

    def pause(self) -> None:
        """Send silence instead of the queued audio, keeping it (tentative barge-in)."""
        with self._lock:
            self._queue.pause()

    def resume(self) -> None:
        with self._lock:
            self._queue.resume()

    @property
    def paused(self) -> bool:
        return self._queue.paused

    def set_held(self, held: bool) -> None:
        """The far end put the call on hold (its offer is sendonly/inactive, our answer
        recvonly/inactive): send nothing at all and keep the queued audio for the unhold.
        Its silence on hold does not let another source take the media over."""
        with self._lock:
            self._held = held
        self._source.set_held(held, self._clock())

    @property
    def held(self) -> bool:
        return self._held

    def update_remote(self, remote: tuple[str, int]) -> None:
        """New SDP address (re-INVITE). If it changed, latching restarts with the next
        inbound packet (see RtpSourceLatch.restart).

        ValueError (and nothing changes) unless `remote` is an IP literal of the socket's
        family with a port 1-65535.
        """
        self._remote = validate_remote(remote, self._family)
        self._source.restart(self._remote)

    @property
    def sent_audio_ms(self) -> float:
        return self._queue.sent_audio_ms

    @property
    def queued_ms(self) -> float:
        return self._queue.queued_ms

    @property
    def is_playing(self) -> bool:
        return self._queue.is_playing

    async def drained(self) -> None:
        """Return once the outgoing queue is empty: its last frame has gone out (or was
        flushed). At once if nothing is queued; also when the session closes. (Paused or
        held audio is still queued: it has not drained.)"""
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        with self._lock:  # the sending thread sees the waiter, or this sees the queue empty
            if self._closed or not self._queue.queued_bytes:
                return
            # Waiters given up on (a timeout around a held call) must not pile up.
            self._drained_waiters = [w for w in self._drained_waiters if not w.done()]
            self._drained_waiters.append(waiter)
        await waiter

    async def first_packet_sent(self, previous: float | None = None) -> float | None:
        """The wire time of the first packet of a talkspurt (`talkspurt_started_at`) once it
        differs from `previous`: pass the value read before `play()` to wait for the reply's
        first packet (at once if play() already sent it). None if the session closes first.
        """
        started = self.talkspurt_started_at
        if started is not None and started != previous:
            return started
        if self._closed:
            return None
        waiter: asyncio.Future[float | None] = asyncio.get_running_loop().create_future()
        self._talkspurt_waiters = [w for w in self._talkspurt_waiters if not w.done()]
        self._talkspurt_waiters.append(waiter)
        return await waiter

    @property
    def sends_from_thread(self) -> bool:
        """The frames go out from the ThreadedMediaClock (`media_thread`)."""
        return self._sending_clock is not None

    @property
    def send_address(self) -> Address:
        return self._source.send_address

    @property
    def local_address(self) -> Address | None:
        if self._transport is None:
            return None
        name = self._transport.get_extra_info("sockname")
        return (str(name[0]), int(name[1]))

    @property
    def stats(self) -> RtpSessionStats:
        if self._media_clock is not None:
            self._media_clock.catch_up()  # a poll of every call's stats is one long callback
        lateness = self._tick_lateness
        dropped = dict(self._parse_drops)
        dropped.update(self._filter.dropped)
        dropped.update(self._source.rejected)
        return RtpSessionStats(
            call_id=self.call_id,
            remote=self._remote,
            send_address=self.send_address,
            latched=self._source.latched_address is not None,
            relatches=self._source.relatches,
            datagrams_in=self._datagrams_in,
            packets_in=self._packets_in,
            packets_out=self._packetizer.packets_sent,
            octets_out=self._packetizer.octets_sent,
            dropped=dropped,
            jitter=self._jitter_buffer.stats,
            dtmf_digits=self._dtmf.digits_detected,
            frames_skipped=self._pacer.frames_skipped if self._pacer else 0,
            callback_errors=self._callback_errors,
            tick_lateness_p99_ms=lateness.percentile(0.99) * 1000,
            tick_lateness_max_ms=lateness.max * 1000,
            frames_shed=self._queue.frames_shed,
        )

    async def close(self) -> None:
        """Leave the media clock and close the socket. Idempotent."""
        if self._closed:
            return
        self._closed = True
        if self._media_clock is not None:
            self._media_clock.remove(self)
        if self._sending_clock is not None:
            self._sending_clock.remove(self)  # waits for a pass under way
        if self._inbound_timer is not None:
            self._inbound_timer.cancel()
        self._resolve_drained()
        self._resolve_talkspurt(None)
        if self._transport is not None:
            self._transport.close()
        logger.debug("[%s] RTP session closed: %s", self.call_id, self.stats)

    # ------------------------------------------------------------ media clock pass

    def clock_pass(self, now: float) -> float:
        """Called by the MediaClock at (or after) the next deadline: send the due frame(s),
        deliver due inbound frames, wake waiters; returns the next deadline. With a sending
        thread it is that thread's clock calling, for the sending only."""
        if self._sending_clock is not None:
            return self._outgoing_pass(now)
        pacer = self._pacer
        assert pacer is not None
        try:
            with self._lock:
                self._send_due(pacer, now)
            self._deliver_due_inbound(now)
        except Exception:
            self._log_limited("tick_error", "media tick failed", exc_info=True)
        if self._drained_waiters and not self._queue.queued_bytes:
            self._resolve_drained()
        return pacer.next_deadline

    def _outgoing_pass(self, now: float) -> float:
        """The ThreadedMediaClock's pass (on its thread): send the due frame(s); tell the loop
        when the queue has drained. Returns the next deadline."""
        pacer = self._pacer
        assert pacer is not None
        try:
            with self._lock:
                self._send_due(pacer, now)
                check_waiters = (
                    self._drained_waiters
                    and not self._queue.queued_bytes
                    and not self._drain_pending
                )
                if check_waiters:
                    self._drain_pending = True
        except Exception:
            self._log_limited("tick_error", "media tick failed", exc_info=True)
            return pacer.next_deadline
        if check_waiters:
            self._call_on_loop(self._resolve_drained_if_empty)
        return pacer.next_deadline

    def _resolve_drained_if_empty(self) -> None:
        # On the loop, some time after the thread saw the queue empty: audio played since
        # then keeps the waiters waiting (the thread asks again once that has gone out).
        with self._lock:
            self._drain_pending = False
            if self._queue.queued_bytes:
                return
        self._resolve_drained()

    def _call_on_loop(self, callback: Callable[..., None], *args: object) -> None:
        assert self._loop is not None
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits any more
            self._loop.call_soon_threadsafe(callback, *args)

    def _send_due(self, pacer: FramePacer, now: float) -> None:
        deadline = pacer.next_deadline
        tick = pacer.due_frames(now)
        if tick.send:
            self._tick_lateness.record(now - deadline)
        if self._held:
            # On hold we must not send (our answer said recvonly/inactive); RTP time still
            # passes, so the timestamps after the unhold stay on the wall clock.
            self._packetizer.skip((tick.skip + tick.send) * FRAME_SAMPLES)
        else:
            if tick.skip:
                self._packetizer.skip(tick.skip * FRAME_SAMPLES)
                self._queue.fell_behind(tick.skip)
            for _ in range(tick.send):
                self._send_next_frame()

    def _deliver_due_inbound(self, now: float) -> None:
        for frame in self._jitter_buffer.pop_due(now):
            self._deliver_inbound(frame)

    def _resolve_drained(self) -> None:
        waiters, self._drained_waiters = self._drained_waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    def _resolve_talkspurt(self, started_at: float | None) -> None:
        waiters, self._talkspurt_waiters = self._talkspurt_waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(started_at)

    def send_digits(self, digits: str) -> None:
        """Press keys (RFC 4733 events); they replace the audio slots while they play."""
        if self._telephone_event_pt is None:
            raise ValueError("the far end did not offer telephone-event")
        with self._lock:
            self._dtmf_out.press(digits)

    def _send_dtmf_slot(self) -> None:
        assert self._telephone_event_pt is not None
        packet = self._dtmf_out.next_packet()
        packetizer = self._packetizer
        if packet is None:  # the gap between two keys: plain silence keeps the clock
            datagram = packetizer.packetize(self._wire_silence)
        else:
            payload, marker, event_start = packet
            if event_start:
                self._dtmf_start_timestamp = packetizer.next_timestamp
            # Every packet of an event carries its start timestamp; time still moves on.
            skew = (packetizer.next_timestamp - self._dtmf_start_timestamp) % 2**32
            packetizer.skip((2**32 - skew) % 2**32)
            datagram = packetizer.packetize(
                payload, marker, samples=skew + FRAME_SAMPLES, payload_type=self._telephone_event_pt
            )
        self._send_datagram(datagram)

    def _send_datagram(self, datagram: bytes) -> None:
        if self._sender is not None:  # media_thread: this may be the clock's thread
            if self._closed or self._transport_lost or self._transport_lost_by_thread:
                return
            failure = self._sender.send(datagram, self.send_address)
            if not failure:
                return
            if failure in BROKEN_SOCKET_ERRNOS:
                self._transport_lost_by_thread = True
                error = OSError(failure, os.strerror(failure))
                self._call_on_loop(self._on_connection_lost, error)
            else:  # a full send buffer, or ICMP from the far end: UDP loses the frame
                self._log_limited("send_error", "RTP send failed: %s", os.strerror(failure))
            return
        if self._transport is not None and not self._transport.is_closing():
            self._transport.sendto(datagram, self.send_address)

    def _send_next_frame(self) -> None:
        if self._dtmf_out.active:
            self._send_dtmf_slot()
            return
        frame = self._queue.next_frame()
        if self.recorder is not None:
            self.recorder.agent_frame(frame.payload)
        wire = self._codec.to_wire(frame.payload) if frame.voiced else self._wire_silence
        datagram = self._packetizer.packetize(wire, marker=frame.marker)
        self._send_datagram(datagram)
        if frame.voiced:
            # Wire times for latency accounting (first packet of a reply, last before silence).
            self.last_voiced_sent_at = self._clock()
            if frame.marker:
                self.talkspurt_started_at = self.last_voiced_sent_at
                if self._talkspurt_waiters:
                    if self._sending_clock is not None:
                        self._call_on_loop(self._resolve_talkspurt, self.talkspurt_started_at)
                    else:
                        self._resolve_talkspurt(self.talkspurt_started_at)
        elif self._pacer is not None and self._pacer.ahead:
            # Silence on the line: put the RTP clock back on the wall clock (FramePacer), at
            # once if the producer fell behind, gently if its talkspurt ended.
            self._pacer.give_back(at_once=frame.underrun)

    def _deliver_inbound(self, payload: bytes) -> None:
        partial = self._inbound_partial
        if not partial and len(payload) == FRAME_BYTES:
            self._call_on_audio(payload)
            return
        partial += payload
        while len(partial) >= FRAME_BYTES:
            self._call_on_audio(bytes(partial[:FRAME_BYTES]))
            del partial[:FRAME_BYTES]

    def _call_on_audio(self, frame: bytes) -> None:
        if self.recorder is not None:
            self.recorder.caller_frame(frame)
        try:
            self._on_audio(frame)
        except Exception:
            self._callback_errors += 1
            self._log_limited("on_audio", "on_audio callback failed", exc_info=True)

    # --------------------------------------------------------------- inbound

    def _on_datagram(self, data: bytes, source: Address) -> None:
        try:
            self._handle_datagram(data, source)
        except Exception:
            self._log_limited("inbound_error", "inbound datagram handling failed", exc_info=True)
        if self._media_clock is not None:
            self._media_clock.catch_up()

    def _handle_datagram(self, data: bytes, source: Address) -> None:
        now = self._clock()
        self._datagrams_in += 1
        if self._sending_clock is not None:
            # No clock pass has run the jitter buffer up to now (media_thread): do it before
            # this packet is judged against it (late? a new talkspurt after a pause?).
            self._deliver_due_inbound(now)
        try:
            packet = parse_rtp(data)
        except RtpParseError as error:
            self._parse_drops[error.reason] = self._parse_drops.get(error.reason, 0) + 1
            self._log_limited(
                f"junk:{error.reason}",
                "dropped %d-byte datagram from %s: %s",
                len(data),
                source,
                error,
            )
            return
        source_verdict = self._source.check(source, packet, now)
        if not source_verdict.accepted:
            # Never played nor answered: such packets may be an attempt to inject audio or
            # to pull the call's media elsewhere.
            self._log_limited(
                f"reject:{source_verdict.value}",
                "rejected RTP from %s: %s (media stays with %s, ssrc=%#010x)",
                source,
                source_verdict.value,
                self.send_address,
                packet.ssrc,
                level=logging.WARNING,
            )
            return
        if source_verdict is SourceVerdict.RELATCHED:
            logger.warning(
                "[%s] RTP source moved to %s:%d after the previous one fell silent",
                self.call_id,
                *source,
            )
            self._filter.reset()  # the new source's stream is locked by this packet
        elif source_verdict is SourceVerdict.LATCHED:
            logger.debug("[%s] RTP latched to %s:%d", self.call_id, *source)
        verdict = self._filter.accept(packet)
        if not verdict.accepted:
            self._log_limited(
                f"drop:{verdict.value}",
                "dropped RTP from %s: %s (pt=%d ssrc=%#010x)",
                source,
                verdict.value,
                packet.payload_type,
                packet.ssrc,
            )
            return
        self._packets_in += 1
        if verdict is FilterVerdict.ACCEPT_NEW_STREAM:
            if self._streams_seen:
                logger.info("[%s] inbound RTP switched to SSRC %#010x", self.call_id, packet.ssrc)
                self._jitter_buffer.reset()
                self._inbound_partial.clear()
            self._streams_seen += 1

        if packet.payload_type == self._telephone_event_pt:
            self._jitter_buffer.push_non_audio(packet, now)
            digit = self._dtmf.push(packet)
            if digit is not None and self._on_dtmf is not None:
                try:
                    self._on_dtmf(digit)
                except Exception:
                    self._callback_errors += 1
                    self._log_limited("on_dtmf", "on_dtmf callback failed", exc_info=True)
            return
        if self._codec.transcodes:
            packet = dataclasses.replace(packet, payload=self._codec.from_wire(packet.payload))
        self._jitter_buffer.push(packet, now)
        for frame in self._jitter_buffer.pop_due(now):
            self._deliver_inbound(frame)
        if self._sending_clock is not None:
            self._arm_inbound_timer()

    def _arm_inbound_timer(self) -> None:
        """media_thread: wake when frames held behind a missing one fall due (then it is
        concealed and they are delivered) rather than at the next packet, which a caller
        who has stopped talking never sends."""
        due = self._jitter_buffer.next_due
        timer = self._inbound_timer
        if due is None or self._closed:
            if timer is not None:
                timer.cancel()
                self._inbound_timer = None
            return
        if timer is not None:
            if self._inbound_timer_due <= due:
                return
            timer.cancel()
        assert self._loop is not None
        self._inbound_timer_due = due
        self._inbound_timer = self._loop.call_later(
            max(due - self._clock(), 0.0), self._on_inbound_timer
        )

    def _on_inbound_timer(self) -> None:
        self._inbound_timer = None
        try:
            self._deliver_due_inbound(self._clock())
        except Exception:
            self._log_limited("tick_error", "inbound media tick failed", exc_info=True)
        self._arm_inbound_timer()

    def _on_connection_lost(self, exc: Exception | None) -> None:
        if self._closed or self._transport_lost:
            return  # our own close()
        # asyncio closed the socket under us (e.g. a send raised something other than
        # OSError): nothing can be sent or received any more, so the call must end.
        self._transport_lost = True
        reason = f"RTP socket lost: {exc!r}" if exc is not None else "RTP socket closed"
        logger.warning("[%s] %s", self.call_id, reason)
        if self._on_transport_lost is not None:
            try:
                self._on_transport_lost(reason)
            except Exception:
                self._callback_errors += 1
                self._log_limited(
                    "on_transport_lost", "on_transport_lost callback failed", exc_info=True
                )

    def _log_limited(
        self,
        key: str,
        message: str,
        *args: object,
        exc_info: bool = False,
        level: int = logging.DEBUG,
    ) -> None:
        suppressed = self._log_limiter.allow(key, self._clock())
        if suppressed is None:
            return
        if suppressed:
            message += f" ({suppressed} similar suppressed)"
        if exc_info:
            level = logging.WARNING
        logger.log(level, f"[%s] {message}", self.call_id, *args, exc_info=exc_info)

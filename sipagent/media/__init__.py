"""RTP media: sans-IO protocol and timing classes plus the per-call asyncio adapter.

codec (G.711), rtp (packets, packetizer, inbound filter), jitter_buffer, dtmf
(RFC 4733), playout (outgoing frame queue and pacer, and what a stall does to them),
clock (one media clock per event loop that sends every call's due frames in one pass),
ports (UDP port allocation), session (RtpSession: the only module doing I/O).
"""

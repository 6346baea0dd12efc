"""RTP media: sans-IO protocol and timing classes plus the per-call asyncio adapter.

codec (G.711), rtp (packets, packetizer, inbound filter), jitter_buffer, dtmf
(RFC 4733), playout (outgoing frame queue and pacer), ports (UDP port allocation),
session (RtpSession: the only module doing I/O).
"""

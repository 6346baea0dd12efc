"""The test kit: what the tests and the benchmarks (bench/) share, imported as `tests.kit.*`.

`fakes` (wire-protocol fakes of Deepgram, OpenAI, ElevenLabs), `peerlib` (the real-peer rig:
Kamailio, SIPp, baresip, tcpdump, audio), `agentlib` (an in-process agent), `pglib` (a
throwaway PostgreSQL), `hostile_input` / `sip_corpus` / `sip_inprocess` (the SIP torture and
fuzz corpus and its in-process runner).
"""

"""`sipagent serve --workers K`: K agent processes under one supervisor.

`plan` derives each worker's SIP port, RTP slice and status port; `restarts` decides when a
dead worker comes back; `aggregate` merges the workers' /status and /metrics; `supervisor` is
the asyncio adapter that runs the processes and serves the merged documents.
"""

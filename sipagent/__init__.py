"""sipagent: an AI phone receptionist that is a real SIP/RTP endpoint."""

__version__ = "0.1.0"

"""The parts of bench/conversation_latency.py (see its docstring for the map)."""

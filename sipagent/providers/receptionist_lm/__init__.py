"""Data for the offline recogniser: see build.py, which generates the files beside it."""

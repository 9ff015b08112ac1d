"""Benchmarks: scripts that print one JSON object as their last line.

Each compares against a baseline measured in the same run, because absolute
times drift from run to run; none is a pass/fail test.
"""

"""The pure core: splitting, windows, rules, judge, stage machine.

Standard library only, no I/O, no clock reads: every function that needs "now" takes it as an
argument. tests/test_layering.py holds this line.
"""

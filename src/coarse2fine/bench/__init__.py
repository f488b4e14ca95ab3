"""Benchmarks: sampling/training speed, FLOP counts, roofline bounds, benchmark runners."""

"""Throughput measurements of bnjax against a PyTorch baseline."""

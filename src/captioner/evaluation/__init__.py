"""Evaluation: captions scored against references (metrics: pycocoevalcap) and their diagnostics."""

"""Evaluation: the papers' retrieval protocol, identification metrics, reports, benchmarks."""

"""Evaluation: the paper's metrics as pure functions, feature extractors, and batch evaluation."""

"""Evaluation: greedy-decoding metrics for the star-graph task (``foresight.eval.stargraph``)."""

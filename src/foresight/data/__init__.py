"""Datasets: the synthetic star-graph path-finding task (``foresight.data.stargraph``)."""

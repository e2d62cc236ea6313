"""Data: the star-graph path-finding task (``stargraph``: generator, text format, batches; docs/stargraph.md)
and pretraining text (``tokenizer``, ``sources``, ``demo_corpus``, ``prepare`` into flat token ``shards``, and the
packed ``loader`` whose sequences carry the look-ahead the run's objectives need)."""

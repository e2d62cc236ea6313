"""Evaluation: star-graph greedy decoding and its metrics (``stargraph``; docs/stargraph.md), next-token loss
and perplexity on prepared text (``perplexity``), a training run's validation (``validation``: every
objective's loss on fixed held-out batches), and lm-evaluation-harness on a checkpoint (``lm_eval_runner``,
with ``lm_eval_model`` the harness model that scores a foresight checkpoint directly)."""

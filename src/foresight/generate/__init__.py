"""Text generation with a trained trunk: greedy decoding, temperature / top-k / top-p sampling, and
self-speculative greedy decoding with the model's own MTP heads, DS-MTP modules or TOP head."""

from foresight.generate.sampling import generate, sample_next_token, top_k_filter, top_p_filter
from foresight.generate.speculative import SpecStats, make_drafter, speculative_generate
from foresight.generate.top_draft import TOPDraftReport, top_draft_acceptance

__all__ = ["SpecStats", "TOPDraftReport", "generate", "make_drafter", "sample_next_token", "speculative_generate",
           "top_draft_acceptance", "top_k_filter", "top_p_filter"]

"""Text generation with a trained trunk: greedy decoding and temperature / top-k / top-p sampling."""

from foresight.generate.sampling import generate, sample_next_token, top_k_filter, top_p_filter

__all__ = ["generate", "sample_next_token", "top_k_filter", "top_p_filter"]

"""Family: causal conditional attention (being written)."""

"""causalmeta: amortized causal inference pipeline (science layer)."""

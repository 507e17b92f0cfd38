"""Small models that `probe` builds itself, so that everything runs without downloading weights."""

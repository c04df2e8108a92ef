"""Data that drives a run: taxonomies of words, prompt templates, caption lexicons (and association-test stimuli)."""

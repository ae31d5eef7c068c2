"""Helpers shared by several steps: prompts, answer extraction, recipes, model loading, statistics."""

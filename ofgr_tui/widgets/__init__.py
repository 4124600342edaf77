"""Reusable widgets. Each takes its data as attributes (set by its screen) and posts nothing up."""

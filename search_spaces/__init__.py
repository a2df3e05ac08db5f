"""Bundled search spaces: each module has a function ``space(...)`` returning a sweep spec."""

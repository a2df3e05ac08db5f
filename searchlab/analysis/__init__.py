"""Analyses that read trained networks: layer similarity (CKA) between models."""

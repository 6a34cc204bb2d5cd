"""Untrusted input: model files and bundles, the parsing sandbox, datasets. Nothing here
imports torch."""

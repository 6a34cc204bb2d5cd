"""Runnable examples, and the digits reference models that tests, benches and the demo build."""

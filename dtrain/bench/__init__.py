"""Benchmarks importable from the installed package (``dtrain bench scaling``); the scripts in the
repository's ``benchmarks/`` folder are thin wrappers around them."""

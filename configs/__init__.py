"""Typed configuration and the domain errors every layer shares.

``configs.settings`` holds the one settings object (fed from YAML / the
environment); ``configs.errors`` the error types that ``pipelines/``,
``index/`` and ``deployments/`` raise, so no layer imports another for them.
"""

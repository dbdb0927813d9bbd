"""Deployment hooks, the release gate and infra checks (not part of the function app)."""

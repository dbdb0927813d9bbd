"""The VM agent: pulls work items from the `work` queue, runs the action, reports back.

Runs on every pool VM (a systemd service) and in a container on Kubernetes. Start it with
`python -m agent`; configuration comes from `AGENT_*` environment variables (see `config.py`).
"""

# The agent package's version: reported in every heartbeat, compared with the published one.
__version__ = "0.2.0"

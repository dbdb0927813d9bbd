"""Business logic of the VM pool orchestrator; importable without azure.functions."""

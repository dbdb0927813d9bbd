"""Local developer tools: Azurite launcher, local run, worker indexing."""

"""The model registry (versions, artifacts, aliases, audit), promotion gates, approval."""

"""The manager role: storage of nodes and agents, the ManagerService servicer,
the group-commit ingest of state reports, the daemon client pool and the HTTP API.

Nothing here imports fleet.daemon (DESIGN.md, "Layout").
"""

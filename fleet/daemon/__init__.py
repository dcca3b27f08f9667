"""Node side: supervises agents, keeps their logs and metrics, reports to the manager."""

"""fleet: keep long-running agents alive on many machines, from one place."""

__version__ = "0.1.0"

"""The process's limit on open descriptors (RLIMIT_NOFILE), raised where fleet needs room.

Every daemon holds one gRPC connection to its manager, and every HTTP client one
more, beside the database's files. A shell's soft limit is often 1,024: a manager
started from it with a fleet of a few thousand nodes stops accepting connections
("File descriptor limit reached" from gRPC core) and then cannot even open its
database file. The hard limit is the administrator's word (systemd's
LimitNOFILE, `ulimit -Hn`); the soft limit is the process's own to raise up to it,
as Go's runtime does for every program at start.
"""
from __future__ import annotations

import resource
from typing import Optional


def raise_soft_limit(wanted: Optional[int] = None) -> int:
    """Raise the soft limit to `wanted` descriptors (None: as far as the hard limit
    allows), never past the hard limit and never down; the soft limit in force
    afterwards (resource.RLIM_INFINITY as -1 when unlimited)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return soft
    target = hard if wanted is None else wanted
    if hard != resource.RLIM_INFINITY:
        target = min(target, hard)
    if target > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        return target
    return soft

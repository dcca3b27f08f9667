"""Paging of the HTTP API's lists: the page size and the cursors.

Every list endpoint takes `limit` (default 500, at most 5000) and `cursor`, and
answers `next_cursor` beside its list: null on the last page, else the value
to pass as `cursor` for the next one (DESIGN.md, "HTTP API"). Pages are keyset
pages: a cursor is the sort key of the last item served, and the next page is
read from the index after it (`WHERE key > cursor ORDER BY key LIMIT n + 1`),
never with OFFSET, so page 200 costs what page 1 does and an item inserted or
deleted meanwhile neither repeats nor hides another.

Cursors are opaque to clients, who pass them back unchanged. Each kind has a
pattern (also in the OpenAPI document) and every string matching it is a
valid position, whether or not an item sits there; anything else is
InvalidArgument naming `cursor`.
"""
from __future__ import annotations

import re
from typing import Optional

from fleet import errors

DEFAULT_LIMIT, MAX_LIMIT = 500, 5000

_NODE = r"(?!.*\.\.)[A-Za-z0-9][A-Za-z0-9_.-]{0,127}"      # fleet.values.valid_node_id
_AGENT = r"[A-Za-z0-9_-]{1,64}"                               # fleet.values.valid_agent_id
NODE_CURSOR = f"^{_NODE}$"                  # nodes: the last node_id
AGENT_CURSOR = f"^{_AGENT}$"                # one node's agents: the last agent_id
FLEET_AGENT_CURSOR = f"^{_NODE}/{_AGENT}$"  # the fleet's agents: node_id/agent_id
TIME_ID_CURSOR = r"^[0-9]{1,18}-[0-9]{1,18}$"   # newest-first logs: time-row id
_BAD_CURSOR = "cursor is not one this server gave (pass next_cursor back unchanged)"


def check_limit(limit: int) -> int:
    """limit if it is an integer in 1..MAX_LIMIT, else InvalidArgument naming `limit`."""
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_LIMIT:
        raise errors.InvalidArgument(f"limit must be an integer from 1 to {MAX_LIMIT}")
    return limit


def _match(pattern: str, cursor: Optional[str]) -> Optional[str]:
    """The cursor, None when absent or empty; InvalidArgument when it breaks `pattern`."""
    if not cursor:
        return None
    if not isinstance(cursor, str) or not re.fullmatch(pattern, cursor):
        raise errors.InvalidArgument(_BAD_CURSOR)
    return cursor


def decode_node(cursor: Optional[str]) -> Optional[str]:
    """The node_id a nodes page ended with (None: first page)."""
    return _match(NODE_CURSOR, cursor)


def decode_agent(cursor: Optional[str]) -> Optional[str]:
    """The agent_id a node's agents page ended with (None: first page)."""
    return _match(AGENT_CURSOR, cursor)


def encode_fleet_agent(node_id: str, agent_id: str) -> str:
    """The cursor after agent (node_id, agent_id) in the fleet-wide list."""
    return f"{node_id}/{agent_id}"


def decode_fleet_agent(cursor: Optional[str]) -> Optional[tuple[str, str]]:
    """(node_id, agent_id) a fleet-wide agents page ended with (None: first page)."""
    text = _match(FLEET_AGENT_CURSOR, cursor)
    if text is None:
        return None
    node_id, _, agent_id = text.partition("/")
    return node_id, agent_id


def encode_time_id(time_ms: int, row_id: int) -> str:
    """The cursor after the entry (time_ms, row_id) of a newest-first list."""
    return f"{time_ms}-{row_id}"


def decode_time_id(cursor: Optional[str]) -> Optional[tuple[int, int]]:
    """(time, row id) a newest-first page ended with (None: first page)."""
    text = _match(TIME_ID_CURSOR, cursor)
    if text is None:
        return None
    time_text, id_text = text.split("-")
    return int(time_text), int(id_text)


def split_page(items: list, limit: int) -> tuple[list, bool]:
    """(the first `limit` items, whether there were more): a page read with LIMIT limit + 1."""
    return items[:limit], len(items) > limit


POLICY_CURSOR = AGENT_CURSOR                # policies: the last name (same rule as agent ids)


def decode_policy(cursor: Optional[str]) -> Optional[str]:
    """The policy name a policies page ended with (None: first page)."""
    return _match(POLICY_CURSOR, cursor)

"""Peewee models of the manager's database: nodes, their agents, the audit log, the
schema version.

The models are bound to `database_proxy`, which `fleet.manager.store.db.open_database`
points at the database it opens, so one process can open many databases one
after another (tests do). Code in fleet.manager passes its database explicitly
(`query.execute(db)`, `SchemaManager(model, db)`) and never relies on the proxy.
The tables themselves are created by the numbered migrations in db.py, not by
`create_tables`, so a model change always comes with a migration.

Times are Unix milliseconds (BIGINT); a time that is unset is NULL.
"""
from __future__ import annotations

import json

import peewee

database_proxy = peewee.DatabaseProxy()


class JSONField(peewee.TextField):
    """A JSON document stored as text (portable: no JSON column type needed)."""

    def db_value(self, value):
        return json.dumps(value if value is not None else {}, sort_keys=True)

    def python_value(self, value):
        return json.loads(value) if value else {}


class BaseModel(peewee.Model):
    class Meta:
        database = database_proxy


class SchemaVersion(BaseModel):
    """One row per applied migration."""

    version = peewee.IntegerField(primary_key=True)
    applied_at = peewee.BigIntegerField()

    class Meta:
        table_name = "schema_version"


class Node(BaseModel):
    """A registered node: the facts of its last RegisterNode, and liveness."""

    node_id = peewee.CharField(max_length=128, unique=True)
    hostname = peewee.TextField(default="")
    ip = peewee.TextField(default="")
    advertise_address = peewee.TextField(default="")
    os = peewee.TextField(default="")
    arch = peewee.TextField(default="")
    labels = JSONField(default=dict)               # {"role": "edge"}
    daemon_version = peewee.TextField(default="")
    boot_id = peewee.BigIntegerField(default=0)    # newest daemon boot seen
    seq = peewee.BigIntegerField(default=0)        # newest report seq of that boot
    registered_at = peewee.BigIntegerField()       # first registration
    last_seen = peewee.BigIntegerField(null=True)  # manager receive time of the last message
    stopped_at = peewee.BigIntegerField(null=True) # receive time of a clean stop's last report;
                                                   # NULL once the node speaks again

    class Meta:
        table_name = "node"


class Agent(BaseModel):
    """The last known state of one agent on one node, unique on (node_id, agent_id)."""

    node_id = peewee.CharField(max_length=128)
    agent_id = peewee.CharField(max_length=64)
    type = peewee.TextField(default="")            # kept from the row's creation
    version = peewee.TextField(default="")
    status = peewee.IntegerField()                 # fleet.states.State value, never 0
    pid = peewee.BigIntegerField(default=0)        # 0: no process
    start_time = peewee.BigIntegerField(null=True)
    restart_count = peewee.BigIntegerField(default=0)
    last_exit_code = peewee.BigIntegerField(default=-1)   # -1: none
    last_exit_signal = peewee.BigIntegerField(default=0)  # 0: none
    health = peewee.TextField(default="unknown")
    last_error = peewee.TextField(default="")
    next_retry_time = peewee.BigIntegerField(null=True)
    changed_at = peewee.BigIntegerField(null=True)       # the daemon's time of the last change
    config_changed = peewee.BooleanField(default=False)  # config differs from the process's
    health_message = peewee.TextField(default="")        # why it is not healthy, in words
    last_heartbeat = peewee.BigIntegerField(null=True)
    boot_id = peewee.BigIntegerField(default=0)    # (boot_id, seq) of the report that wrote it
    seq = peewee.BigIntegerField(default=0)
    last_sync_time = peewee.BigIntegerField(null=True)  # manager time of that write

    class Meta:
        table_name = "agent"
        indexes = ((("node_id", "agent_id"), True),)


class AuditEntry(BaseModel):
    """One operation done through the HTTP API (fleet.manager.audit); never updated."""

    time = peewee.BigIntegerField()                # when it began, Unix ms
    actor = peewee.TextField()                     # the API token's name, never the token
    node_id = peewee.CharField(max_length=128)
    agent_id = peewee.CharField(max_length=64, null=True)   # NULL: a node-level operation
    operation = peewee.CharField(max_length=16)    # start|stop|restart|sync|delete
    result = peewee.CharField(max_length=32)       # "ok" or the error code
    message = peewee.TextField(default="")         # the error message, "" when ok
    duration_ms = peewee.BigIntegerField()

    class Meta:
        table_name = "audit"


class Rollout(BaseModel):
    """One rollout (fleet.manager.changes.rollouts): what to do, where, how fast, and how it stands."""

    operation = peewee.CharField(max_length=16, default="")   # start|stop|restart
    agent_id = peewee.CharField(max_length=64, default="")
    policy = peewee.CharField(max_length=128, null=True)      # a policy rollout's; NULL else
    selector = JSONField(default=dict)             # {"labels": {"k": "v"}}
    max_parallel = peewee.IntegerField()           # nodes in flight at once
    max_failures = peewee.IntegerField()           # failed nodes tolerated before it stops
    wait_seconds = peewee.IntegerField()           # per node: operated -> healthy at most
    status = peewee.CharField(max_length=16)       # pending|running|succeeded|failed|...
    actor = peewee.TextField(default="")           # the API token's name that created it
    created_at = peewee.BigIntegerField()
    finished_at = peewee.BigIntegerField(null=True)

    class Meta:
        table_name = "rollout"


class RolloutNode(BaseModel):
    """One node of a rollout, frozen at its creation; its progress."""

    rollout_id = peewee.BigIntegerField()
    node_id = peewee.CharField(max_length=128)
    status = peewee.CharField(max_length=16)       # pending|running|succeeded|failed|skipped
    message = peewee.TextField(default="")         # why it failed or was skipped
    operated = peewee.BooleanField(default=False)  # set before the operate call is made
    old_pid = peewee.BigIntegerField(default=0)    # the agent's pid before a restart
    started_at = peewee.BigIntegerField(null=True)
    deadline = peewee.BigIntegerField(null=True)   # Unix ms: healthy by then or failed
    finished_at = peewee.BigIntegerField(null=True)

    class Meta:
        table_name = "rollout_node"
        primary_key = peewee.CompositeKey("rollout_id", "node_id")


MODELS = (SchemaVersion, Node, Agent, AuditEntry)

"""The [daemon] section."""
from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

from fleet.config.reader import Reader, TLSConfig, read_tls, read_token
from fleet.values import (is_loopback, to_address, to_address_list, to_bool, to_node_id,
                          to_nonempty_str, to_seconds, to_str_map)

if TYPE_CHECKING:
    from fleet.config import Config


@dataclasses.dataclass(frozen=True)
class DaemonConfig:
    managers: tuple[str, ...] = ("127.0.0.1:9090",)
    listen: str = "127.0.0.1:9091"
    advertise: str = ""
    state_dir: str = "./fleet-state"
    node_id: str = ""
    labels: tuple[tuple[str, str], ...] = ()
    cluster_token: str = ""
    sync_interval: float = 10.0
    heartbeat_interval: float = 30.0
    metrics_interval: float = 10.0
    stop_agents_on_exit: bool = True   # False: SIGTERM leaves agents for the next daemon
    insecure: bool = False
    metrics_listen: str = ""           # HOST:PORT serving Prometheus /metrics; "": off
    tls: TLSConfig | None = None
    accept_policies: bool = False      # run the agents of the manager's policies


def read_daemon(table: Any, problems: list[str]) -> DaemonConfig:
    r = Reader("daemon", table, problems)
    config = DaemonConfig(
        managers=r.get("manager", DaemonConfig.managers, to_address_list),
        listen=r.get("listen", DaemonConfig.listen, to_address),
        advertise=r.get("advertise", "", lambda v: to_address(v) if v else ""),
        state_dir=r.get("state_dir", DaemonConfig.state_dir, to_nonempty_str),
        node_id=r.get("node_id", "", to_node_id),
        labels=r.get("labels", (), to_str_map),
        cluster_token=read_token(r, "cluster_token"),
        sync_interval=r.get("sync_interval", 10.0, lambda v: to_seconds(v, 0.05)),
        heartbeat_interval=r.get("heartbeat_interval", 30.0, lambda v: to_seconds(v, 0.05)),
        metrics_interval=r.get("metrics_interval", 10.0, lambda v: to_seconds(v, 1.0)),
        stop_agents_on_exit=r.get("stop_agents_on_exit", True, to_bool),
        insecure=r.get("insecure", False, to_bool),
        metrics_listen=r.get("metrics_listen", "", lambda v: to_address(v) if v else ""),
        tls=read_tls(r, ("cert", "key", "ca", "server_name")),
        accept_policies=r.get("accept_policies", False, to_bool),
    )
    r.check_unknown()
    return config


def check_daemon_security(config: Config, problems: list[str]) -> None:
    """A daemon on a non-loopback address needs a cluster token or --insecure."""
    daemon = config.daemon
    if config.role not in ("daemon", "all") or daemon.cluster_token or daemon.insecure:
        return
    try:
        loopback = is_loopback(daemon.listen)
    except ValueError:
        return  # already reported
    if not loopback:
        problems.append("[daemon] listen: a non-loopback address needs cluster_token "
                        "(or --insecure)")

"""Run a role until told to stop, in the fixed shutdown order of DESIGN.md:
stop taking HTTP requests, stop the daemon's gRPC, stop agents in parallel,
send the final state report, stop the manager's gRPC, close the database.

Each role imports only what it needs: the daemon never imports peewee or bottle.
"""
from __future__ import annotations

import dataclasses
import logging
import threading
from typing import Callable, Sequence

from fleet.config import Config, TLSConfig
from fleet.values import join_address
from fleet.rpc import as_client

log = logging.getLogger(__name__)


def run(config: Config, wait: Callable[[], None]) -> int:
    """Start the role, wait(), stop it; 0 after a clean stop."""
    if config.role == "daemon":
        return run_daemon(config, wait)
    if config.role == "manager":
        return run_manager(config, wait)
    return run_all(config, wait)


def run_daemon(config: Config, wait: Callable[[], None], label: str = "grpc") -> int:
    from fleet.daemon.app import Daemon
    daemon = Daemon(config, listen_label=label)
    try:
        daemon.start()
    except BaseException:
        daemon.close()
        raise
    wait()
    log.info("stopping")
    daemon.stop()
    log.info("stopped")
    return 0


def run_workers(config: Config, stop: threading.Event, argv: Sequence[str],
                worker_of: int) -> int:
    """`[manager] workers` > 1: the parent of the workers, or (worker_of: the
    parent's pid) one of them, which stops when `stop` is set or its parent is gone."""
    from fleet.manager import workers
    if not worker_of:
        return workers.run_workers(config.manager, workers.worker_command(argv), stop)
    workers.watch_parent(worker_of, stop)

    def wait() -> None:
        while not stop.wait(1.0):
            pass
    return run_manager(config, wait, worker=True)


def run_manager(config: Config, wait: Callable[[], None], worker: bool = False) -> int:
    from fleet.manager.app import Manager
    manager = Manager(config.manager, worker=worker)
    try:
        manager.start()
    except BaseException:
        manager.close()
        raise
    wait()
    log.info("stopping")
    manager.stop_http()
    manager.close()
    log.info("stopped")
    return 0


def local_daemon_tls(config: Config) -> TLSConfig | None:
    """[daemon.tls] if set, else the manager's own material turned toward it.

    A TLS manager refuses plaintext, so the local daemon must speak TLS too;
    borrowing the manager's cert/key and client_ca (the cluster CA) needs no
    second set of files. The manager's certificate must then be valid for
    127.0.0.1, the address the local daemon dials and advertises.
    """
    return config.daemon.tls or as_client(config.manager.tls)


def run_all(config: Config, wait: Callable[[], None]) -> int:
    """A manager and a local daemon reporting to it, in one process.

    All three ports are bound before either creates anything (token files,
    database, state dir): a port in use leaves nothing behind.
    """
    from fleet.daemon.app import Daemon
    from fleet.manager.app import Manager
    manager = Manager(config.manager)
    daemon = None
    try:
        manager.bind()
        local = join_address("127.0.0.1", manager.grpc_port)
        daemon_config = dataclasses.replace(config.daemon, managers=(local,),
                                            cluster_token=manager.cluster_token,
                                            tls=local_daemon_tls(config))
        daemon = Daemon(dataclasses.replace(config, daemon=daemon_config),
                        listen_label="daemon-grpc")
        daemon.bind()
        manager.start()
        daemon.start()
    except BaseException:
        if daemon is not None:
            daemon.close()
        manager.close()
        raise
    wait()
    log.info("stopping")
    manager.stop_http()
    daemon.stop()
    manager.close()
    log.info("stopped")
    return 0

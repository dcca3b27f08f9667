"""Run a role until told to stop, in the fixed shutdown order of DESIGN.md:
stop taking HTTP requests, stop the daemon's gRPC, stop agents in parallel,
send the final state report, stop the manager's gRPC, close the database.

Each role imports only what it needs: the daemon never imports peewee or bottle.
"""
from __future__ import annotations

import dataclasses
import logging
import signal
import threading
from typing import Callable, Sequence

from fleet.config import Config, DaemonConfig, TLSConfig
from fleet.values import join_address
from fleet.rpc import as_client

log = logging.getLogger(__name__)


def run(config: Config, wait: Callable[[], None],
        reload_config: Callable[[], Config] | None = None) -> int:
    """Start the role, wait(), stop it; 0 after a clean stop. A daemon rereads
    its config with reload_config() on SIGHUP and DaemonService.Reload."""
    if config.role == "daemon":
        return run_daemon(config, wait, reload_config=reload_config)
    if config.role == "manager":
        return run_manager(config, wait)
    return run_all(config, wait, reload_config)


def reload_on_hangup(daemon) -> None:
    """SIGHUP makes the daemon reload (the handler only sets a flag: Reloader.request).
    Only the main thread may install a handler; elsewhere (tests) nothing is."""
    if threading.current_thread() is threading.main_thread() and daemon.reloader is not None:
        signal.signal(signal.SIGHUP, lambda signum, frame: daemon.reloader.request())


def run_daemon(config: Config, wait: Callable[[], None], label: str = "grpc",
               reload_config: Callable[[], Config] | None = None) -> int:
    from fleet.daemon.app import Daemon
    daemon = Daemon(config, listen_label=label, reload_config=reload_config)
    try:
        daemon.start()
    except BaseException:
        daemon.close()
        raise
    reload_on_hangup(daemon)
    wait()
    log.info("stopping")
    daemon.stop()
    log.info("stopped")
    return 0


def run_workers(config: Config, stop: threading.Event, argv: Sequence[str],
                worker_of: int, writer_fd: int = 0) -> int:
    """`[manager] workers` > 1: the parent of the workers, or (worker_of: the
    parent's pid) one of them, which stops when `stop` is set or its parent is gone;
    `writer_fd`: its end of the pair to the parent writing its reports."""
    from fleet.manager import workers
    if not worker_of:
        return workers.run_workers(config.manager, workers.worker_command(argv), stop)
    workers.watch_parent(worker_of, stop)

    def wait() -> None:
        while not stop.wait(1.0):
            pass
    return run_manager(config, wait, worker=True, writer_fd=writer_fd,
                       on_writer_lost=stop.set)


def run_manager(config: Config, wait: Callable[[], None], worker: bool = False,
                writer_fd: int = 0, on_writer_lost: Callable[[], None] | None = None) -> int:
    from fleet.manager.app import Manager
    manager = Manager(config.manager, worker=worker, writer_fd=writer_fd,
                      on_writer_lost=on_writer_lost)
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


def local_daemon(config: Config, running: DaemonConfig) -> Config:
    """A reread config as the local daemon of --role all sees it: the manager it
    reports to, its token and TLS are those it started with."""
    return dataclasses.replace(config, daemon=dataclasses.replace(
        config.daemon, managers=running.managers, cluster_token=running.cluster_token,
        tls=running.tls))


def run_all(config: Config, wait: Callable[[], None],
            reload_config: Callable[[], Config] | None = None) -> int:
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
                        listen_label="daemon-grpc",
                        reload_config=reload_config and (lambda: local_daemon(
                            reload_config(), daemon_config)))
        daemon.bind()
        manager.start()
        daemon.start()
    except BaseException:
        if daemon is not None:
            daemon.close()
        manager.close()
        raise
    reload_on_hangup(daemon)
    wait()
    log.info("stopping")
    manager.stop_http()
    daemon.stop()
    manager.close()
    log.info("stopped")
    return 0

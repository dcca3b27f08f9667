"""The node daemon: wires the state dir, supervisor, logs, sampler, gRPC server
and state syncer, and stops them in order."""
from __future__ import annotations

import logging
import platform
import socket
from typing import Callable

import fleet
from fleet.config import Config
from fleet.values import join_address, split_address
from fleet.daemon.events import EventLog
from fleet.daemon.health import HealthChecker, LimitGuard
from fleet.daemon.logs import LogKeeper
from fleet.daemon.manager_client import ManagerClient, local_ip_towards
from fleet.daemon.metrics import Sampler
from fleet.daemon.node import NodeSampler
from fleet.daemon.policies import PolicyKeeper
from fleet.daemon.reload import Reloader
from fleet.daemon.service import DaemonServicer
from fleet.daemon.statedir import StateDir
from fleet.daemon.supervisor import Supervisor
from fleet.daemon.nodereport import NodeMetricsSender
from fleet.daemon.syncer import StateSyncer
from fleet.listen import listen
from fleet.rpc import as_server, create_server
from fleet.serving import ServingStatus
from fleet.v1 import fleet_pb2 as pb
from fleet.v1 import fleet_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)

WILDCARDS = ("0.0.0.0", "::", "")


class Daemon:
    def __init__(self, config: Config, listen_label: str = "grpc",
                 reload_config: Callable[[], Config] | None = None):
        self.config = config
        self.reload_config = reload_config   # rereads the config file; None: no reloads
        self.reloader: Reloader | None = None   # applies reloads and policies
        self.policies: PolicyKeeper | None = None   # with accept_policies
        self.listen_label = listen_label   # "daemon-grpc" under --role all
        self.statedir = StateDir(config.daemon.state_dir)
        self.node_id = ""
        self.boot_id = 0
        self.port = 0                      # the gRPC port actually bound
        self.supervisor: Supervisor | None = None
        self.syncer: StateSyncer | None = None
        self._server = None
        self._servicer: DaemonServicer | None = None
        self._logs: LogKeeper | None = None
        self._sampler: Sampler | None = None
        self.node_sampler: NodeSampler | None = None   # the machine's samples, on the sampler's thread
        self._client: ManagerClient | None = None
        self.events: EventLog | None = None  # agents' history; probes and limits record into it
        self._health: HealthChecker | None = None
        self._limits: LimitGuard | None = None
        self._exporter = None   # fleet.daemon.exporter.MetricsServer with metrics_listen set
        self._serving: ServingStatus | None = None   # gRPC health and reflection

    def bind(self) -> None:
        """Bind the gRPC port (not serving yet); OSError `cannot listen ...` if it is taken.

        start() binds first, so a port in use leaves no state dir behind. Safe to call twice.
        """
        if self._server is not None:
            return
        cfg = self.config.daemon
        self._server, self.port = listen(self.listen_label, cfg.listen, lambda: create_server(
            cfg.listen, [], token=cfg.cluster_token, tls=as_server(cfg.tls)))
        if cfg.metrics_listen:
            from fleet.daemon import exporter   # prometheus_client only when asked for
            self._exporter = listen("metrics", cfg.metrics_listen,
                                    lambda: exporter.MetricsServer(cfg.metrics_listen))

    def start(self) -> None:
        """bind(), take the state dir, start the agents, serve, and start reporting.

        Raises OSError `cannot listen ...` (port in use) or StateDirLocked.
        """
        cfg = self.config.daemon
        self.bind()
        self.statedir.open()
        self.node_id = self.statedir.node_id(cfg.node_id)
        self.boot_id = self.statedir.next_boot_id()
        if cfg.accept_policies:   # the policy agents kept by the last daemon run at once
            self.policies = PolicyKeeper(None, self.node_id, self.boot_id, self.statedir.path)
            self.policies.load()
        self._logs = LogKeeper(self.statedir.logs_dir)
        self._sampler = Sampler(cfg.metrics_interval, history_dir=self.statedir.metrics_dir)
        self.reloader = Reloader(None, self.config, self.reload_config, self.policies)
        agents = self.reloader.agents()
        self._sampler.restore(agent.id for agent in agents)
        self.node_sampler = NodeSampler()
        self._sampler.after_sweep = self.node_sampler.sample
        self.events = EventLog(self.statedir.events_dir)
        self.events.load()
        self.supervisor = Supervisor(agents, self.statedir, self._logs, self._sampler,
                                     events=self.events)
        self.reloader.supervisor = self.supervisor
        self._servicer = DaemonServicer(self.node_id, self.supervisor, self._logs, self._sampler)
        self._servicer.reloader = self.reloader
        pb_grpc.add_DaemonServiceServicer_to_server(self._servicer, self._server)
        self._serving = ServingStatus(pb.DESCRIPTOR.services_by_name["DaemonService"].full_name)
        self._serving.add_to(self._server)
        self._start_health()
        self.supervisor.start()
        self._logs.start()
        self._sampler.start()
        self._health.start()
        self._server.start()
        self._serving.serving()
        host, _ = split_address(cfg.listen)
        log.info("listening %s=%s", self.listen_label, join_address(host, self.port))
        log.info("node %s boot %s: %d agent(s)", self.node_id, self.boot_id, len(agents))
        self._start_syncer()
        self.reloader.start()
        self._start_exporter()

    def _start_health(self) -> None:
        """Probes follow every published change; limits see every tree sample."""
        runners = self.supervisor.find
        self._health = HealthChecker(runners, self.events)
        self._limits = LimitGuard(runners, self.events)
        self.supervisor.listeners.append(self._health.notify)
        self._sampler.on_sample = lambda agent_id, pid, point: self._limits.check(
            agent_id, pid, point.memory_rss, point.cpu)

    def _start_syncer(self) -> None:
        cfg = self.config.daemon
        self._client = ManagerClient(cfg.managers, cfg.cluster_token, cfg.tls)
        sender = NodeMetricsSender(self._client, self.node_sampler, cfg.metrics_interval)
        self.syncer = StateSyncer(self._client, self.registration, self.supervisor.snapshots,
                                  cfg.sync_interval, cfg.heartbeat_interval, events=self.events,
                                  node_metrics=sender)
        self.supervisor.listeners.append(self.syncer.notify)
        self.events.listeners.append(self.syncer.poke)
        self.reloader.on_labels = self.syncer.reregister
        self.reloader.on_changes = lambda changes: self.syncer.request_full()
        if self.policies is not None:
            self.policies.client = self._client
            self.syncer.policies = self.policies
            self.syncer.on_policy_work = self.reloader.policy_news
        self.syncer.start()

    def _start_exporter(self) -> None:
        """Serve /metrics on metrics_listen, if set (bound by bind())."""
        if self._exporter is None:
            return
        from fleet.daemon.exporter import DaemonCollector
        syncer = self.syncer
        self._exporter.start(DaemonCollector(
            self.node_id, self.supervisor.snapshots, self._sampler.latest,
            lambda: (syncer.pending_count(), syncer.last_report_time)))
        log.info("listening metrics=%s", self._exporter.address)

    def registration(self, manager: str = "") -> pb.RegisterNodeRequest:
        """This node's facts now, as RegisterNode to `manager` (default: the first) carries
        them: the IP is the local one routed towards that manager."""
        cfg = self.config.daemon
        labels = self.reloader.config.daemon.labels if self.reloader else cfg.labels
        ip = local_ip_towards(manager or cfg.managers[0])
        host, _ = split_address(cfg.listen)
        advertise = cfg.advertise or join_address(ip if host in WILDCARDS else host, self.port)
        return pb.RegisterNodeRequest(
            node_id=self.node_id, hostname=socket.gethostname(), ip=ip,
            advertise_address=advertise, os=platform.system().lower(),
            arch=platform.machine(), labels=dict(labels),
            daemon_version=fleet.__version__, boot_id=self.boot_id)

    def stop(self) -> None:
        """Stop serving, stop every agent (in parallel) unless stop_agents_on_exit
        is false, send the final report. Health says NOT_SERVING first, while the
        server still answers, so load balancers drain."""
        if self._serving is not None:
            self._serving.draining()
        if self._servicer is not None:
            self._servicer.shutting_down = True
        if self.reloader is not None:   # the apply in progress ends first
            self.reloader.close()
        self._stop_health()
        if self._server is not None:
            self._server.stop(grace=1.0).wait(2.0)
        if self.supervisor is not None:
            if self.config.daemon.stop_agents_on_exit:
                self.supervisor.stop_all()
            else:  # their state records stay, for the next daemon to adopt
                self.supervisor.finish_stopping()
                log.info("leaving %d agent(s) running for the next daemon "
                         "(stop_agents_on_exit = false)", len(self.supervisor.runners))
        if self.syncer is not None:
            self.syncer.stop(final_report=True)
        self.close()

    def _stop_health(self) -> None:
        """No probe or limit restarts an agent from here on."""
        if self._limits is not None:
            self._limits.enabled = False
        if self._health is not None:
            self._health.stop()

    def close(self) -> None:
        """Release everything but the agents' processes (after stop(), or after a
        failed start: then the syncer and the server end here, with no final report)."""
        if self._exporter is not None:
            self._exporter.stop()
        if self.syncer is not None:
            self.syncer.stop(final_report=False)
        if self._server is not None:
            self._server.stop(grace=None)
        if self.reloader is not None:
            self.reloader.close()
        self._stop_health()
        if self.supervisor is not None:
            self.supervisor.close()
        for part in (self._sampler, self._logs):
            if part is not None:
                part.stop()
        if self._client is not None:
            self._client.close()
        if self.events is not None:
            self.events.close()
        self.statedir.close()

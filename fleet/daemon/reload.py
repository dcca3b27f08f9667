"""Reloads and policy changes: the one thread (`fleet-reload`) that changes which
agents the daemon runs while it runs.

Three things ask it for work, and it does one at a time, in order:
  - SIGHUP: the handler only sets a flag and writes a byte to a pipe
    (`request()`, signal-safe: no lock);
  - DaemonService.Reload: `reload()` queues a job and waits for its result;
  - the syncer, when a heartbeat answer names another policy version
    (`policy_news()`, fleet/daemon/policies.py).
A reload rereads the config file as the daemon read it at start (same flags and
environment). Only `[[agents]]` and `[daemon] labels` are applied (new labels:
registered again); any other changed key is logged as needing a restart. An
invalid file changes nothing: InvalidArgument with every problem, each logged.
The agents run are the local ones merged with the kept policies' (local wins).
"""
from __future__ import annotations

import concurrent.futures
import dataclasses
import logging
import select
import threading
from typing import Callable

from fleet.config import AgentConfig, Config
from fleet.daemon import reconcile
from fleet.daemon.policies import PolicyKeeper, merge
from fleet.daemon.reconcile import Change
from fleet.daemon.supervisor import Supervisor
from fleet.daemon.wakepipe import WakePipe
from fleet.errors import ConfigError, Conflict, FleetError, InvalidArgument

log = logging.getLogger(__name__)

JOIN_SECONDS = 30.0     # close() waits this long for an apply in progress


class Reloader:
    def __init__(self, supervisor: Supervisor, config: Config,
                 load: Callable[[], Config] | None, policies: PolicyKeeper | None = None):
        self.supervisor = supervisor
        self.config = config                  # the config last applied (its agents: local)
        self._load = load                     # rereads the config file; None: cannot
        self.policies = policies              # None: accept_policies is off
        # Told after each apply that changed something (the syncer reports it), and
        # of new labels (the syncer registers again).
        self.on_changes: Callable[[list[Change]], None] = lambda changes: None
        self.on_labels: Callable[[], None] = lambda: None
        self._jobs: list[concurrent.futures.Future] = []   # Reload calls waiting
        self._jobs_lock = threading.Lock()    # guards _jobs and _closing (never held long)
        self._closing = False
        self._hangup = False                  # set by the SIGHUP handler
        self._policy_news = False             # set by the syncer
        self._wakes = WakePipe()
        self._thread = threading.Thread(target=self._run, name="fleet-reload", daemon=True)

    def agents(self) -> tuple[AgentConfig, ...]:
        """Every agent to run now: the local ones, then the kept policies' agents."""
        kept = self.policies.policies if self.policies is not None else []
        return merge(self.config.agents, kept)[0]

    # ---- from other threads ----

    def start(self) -> None:
        if not self._thread.is_alive():
            self._thread.start()

    def request(self) -> None:
        """From the SIGHUP handler: a flag and a byte, nothing that can block."""
        self._hangup = True
        self._wakes.wake()

    def policy_news(self) -> None:
        """From the syncer: the manager names another policy version (or a report is due)."""
        self._policy_news = True
        self._wakes.wake()

    def reload(self) -> list[Change]:
        """Reread the config and apply it, on the worker; the changes made.

        InvalidArgument (every problem) for an invalid file, which changes
        nothing; Conflict once the daemon is shutting down or without a file.
        """
        job: concurrent.futures.Future = concurrent.futures.Future()
        with self._jobs_lock:
            if self._closing:
                raise Conflict("the daemon is shutting down: no reload")
            self._jobs.append(job)
        self._wakes.wake()
        return job.result()

    def close(self) -> None:
        """Refuse new work, let the apply in progress end, end the thread."""
        with self._jobs_lock:
            self._closing = True
            jobs, self._jobs = self._jobs, []
        for job in jobs:
            job.set_exception(Conflict("the daemon is shutting down: no reload"))
        self._wakes.wake()
        if self._thread.is_alive():
            self._thread.join(JOIN_SECONDS)
        if not self._thread.is_alive():
            self._wakes.close()

    # ---- the worker ----

    def _run(self) -> None:
        poller = select.poll()
        poller.register(self._wakes.fd, select.POLLIN)
        while True:
            poller.poll()
            self._wakes.drain()
            with self._jobs_lock:
                if self._closing:
                    return
                jobs, self._jobs = self._jobs, []
            try:
                self._work(jobs)
            except Exception:  # noqa: BLE001 - log and keep serving reloads
                log.exception("reload worker error")

    def _work(self, jobs: list[concurrent.futures.Future]) -> None:
        for job in jobs:
            try:
                job.set_result(self._reload())
            except FleetError as exc:
                job.set_exception(exc)
        if self._hangup:
            self._hangup = False
            log.info("SIGHUP: reloading the config")
            try:
                self._reload()
            except FleetError as exc:
                log.error("reload refused: %s", exc.message)
        if self._policy_news:
            self._policy_news = False
            self._refresh_policies()

    def _reload(self) -> list[Change]:
        if self._load is None:
            raise Conflict("this daemon has no config to reread")
        try:
            config = self._load()
        except ConfigError as exc:
            for problem in exc.problems:
                log.error("reload: config error: %s", problem)
            raise InvalidArgument("invalid config, nothing changed: "
                                  + "; ".join(exc.problems)) from exc
        self._warn_restart_keys(config)
        labels_changed = config.daemon.labels != self.config.daemon.labels
        # Keys that need a restart keep their running values.
        self.config = dataclasses.replace(
            self.config, agents=config.agents,
            daemon=dataclasses.replace(self.config.daemon, labels=config.daemon.labels))
        if labels_changed:
            log.info("reload: labels now %s", dict(config.daemon.labels))
            self.on_labels()
        changes = self._apply("reload", "reload")
        log.info("reload applied: %d change(s)", len(changes))
        return changes

    def _warn_restart_keys(self, config: Config) -> None:
        old, new = self.config, config
        for field in dataclasses.fields(old.daemon):
            if field.name != "labels" and \
                    getattr(old.daemon, field.name) != getattr(new.daemon, field.name):
                log.warning("reload: [daemon] %s changed: needs a restart (ignored)", field.name)
        for key in ("log_level", "log_format"):
            if getattr(old, key) != getattr(new, key):
                log.warning("reload: %s changed: needs a restart (ignored)", key)

    def _apply(self, cause: str, restart_cause: str) -> list[Change]:
        changes = reconcile.apply(self.supervisor, self.agents(), cause, restart_cause)
        if changes:
            self.on_changes(changes)
        return changes

    def _refresh_policies(self) -> None:
        """Fetch the policies the manager names, apply them, keep and report them."""
        keeper = self.policies
        if keeper is None:
            return
        if keeper.wanted is None:
            keeper.report()   # only a report to send again
            return
        fetched = keeper.fetch()
        if fetched is None:
            return
        version, policies, results = fetched
        cause = "policy " + (keeper.changed(policies) or "unchanged")
        conflicts = merge(self.config.agents, policies)[1]
        old = keeper.policies
        keeper.policies = policies
        try:
            self._apply(cause, "policy")
        except Exception:
            keeper.policies = old
            raise
        keeper.applied(version, policies, results, conflicts)

"""ctl rollout: start a rollout, watch it until it ends, then show each node's result."""
from __future__ import annotations

import sys

from fleet.ctl import columns
from fleet.ctl.client import CtlError, path
from fleet.ctl.commands import API, POLL_SECONDS, ROLLOUT_ENDED, Ctl
from fleet.ctl.output import table

NODE_STATUSES = ("succeeded", "failed", "running", "pending", "skipped")


def selector(labels: list[str]) -> dict:
    """{"k": "v"} from ["k=v", ...] (argparse has checked each has an "=")."""
    return dict(label.split("=", 1) for label in labels)


def rollout(ctl: Ctl, args) -> int:
    """POST /api/v1/rollouts, poll it about every second printing progress, then the
    per-node summary. Exit 0 if it succeeded, 1 otherwise; Ctrl-C stops watching only."""
    body = _body(args)
    if args.wait_seconds is not None:
        body["wait_seconds"] = args.wait_seconds
    answer = ctl.client.post(API + "/rollouts", body)
    current = answer.get("rollout", answer)
    if ctl.json:
        ctl.dump(answer, compact=True)
    else:
        ctl.say(f"rollout {current['id']}: policy {args.agent} on its "
                f"{len(current.get('nodes') or [])} pinned nodes" if args.operation == "policy"
                else f"rollout {current['id']}: {args.operation} {args.agent} on nodes with "
                f"{', '.join(args.label)}")
    try:
        current = _watch(ctl, current)
    except KeyboardInterrupt:
        print(f"fleet ctl: stopped watching; rollout {current['id']} goes on "
              f"(GET {API}/rollouts/{current['id']})", file=sys.stderr)
        return 130
    if not ctl.json:
        table(columns.ROLLOUT_NODE_COLUMNS, current.get("nodes") or [], ctl.out)
    if current["status"] != "succeeded":
        raise CtlError(f"rollout {current['id']} {current['status']}: {progress(current)}")
    return 0


def _body(args) -> dict:
    """The POST body: a policy rollout names the policy, an operation its agent and
    labels (main has checked that --label is given for an operation only)."""
    if args.operation == "policy":
        body = {"policy": args.agent}
    else:
        body = {"operation": args.operation, "agent_id": args.agent,
                "selector": {"labels": selector(args.label)}}
    body.update(max_parallel=args.max_parallel, max_failures=args.max_failures)
    return body


def _watch(ctl: Ctl, current: dict) -> dict:
    """Poll until the rollout ends; print each change of its progress. The last state."""
    shown = ""
    while True:
        line = f"{current['status']}: {progress(current)}"
        if line != shown:
            if not ctl.json:
                ctl.say(line)
            shown = line
        if current["status"] in ROLLOUT_ENDED:
            return current
        ctl.sleep(POLL_SECONDS)
        answer = ctl.client.get(path("api", "v1", "rollouts", str(current["id"])))
        previous, current = current, answer.get("rollout", answer)
        if ctl.json and current != previous:
            ctl.dump(answer, compact=True)


def progress(rollout: dict) -> str:
    """"3/10 nodes done (3 succeeded, 0 failed), 2 running, 5 pending"."""
    nodes = rollout.get("nodes") or []
    counts = {name: 0 for name in NODE_STATUSES}
    for node in nodes:
        counts[node.get("status", "pending")] = counts.get(node.get("status", "pending"), 0) + 1
    done = counts["succeeded"] + counts["failed"] + counts["skipped"]
    text = f"{done}/{len(nodes)} nodes done ({counts['succeeded']} succeeded, " \
           f"{counts['failed']} failed"
    text += f", {counts['skipped']} skipped)" if counts["skipped"] else ")"
    return text + f", {counts['running']} running, {counts['pending']} pending"

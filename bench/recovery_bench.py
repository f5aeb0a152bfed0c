#!/usr/bin/env python3
"""Recovery benchmark: from `kill -9` of a node to all of its instances
running elsewhere, on a real cluster of separate processes.

It starts `shoal control-plane` and three `shoal node`s on 127.0.0.1 from
the release binary, applies one app (the C wasi:http component, 30
replicas by default) with `shoal apply --wait`, and then, per cycle:

  1. spreads the app evenly again (scale to 0, then back up: nothing moves
     instances back to a node that restarted, so without this later cycles
     would kill an empty node),
  2. waits a random fraction of a heartbeat (so the kill does not always
     land at the same point of the heartbeat cycle), then SIGKILLs one node
     (a different one each cycle),
  3. polls GET /v1/instances?namespace=* until every instance of the app is
     Running and ready on the surviving nodes, and
  4. restarts the killed node and waits until it is Ready again.

The recovery time is the wall time from the kill to the first poll that
sees the app whole again. It is split, using the control plane's event
timestamps, into

  * lease expiry: kill -> the NodeLost event (the lease counts from the
    node's last heartbeat, so this is the lease minus the time since that
    heartbeat, plus the control plane's tick),
  * rescheduling: NodeLost -> the last replacement instance Scheduled,
  * start: that -> all Running and ready as seen by the poll (the
    surviving nodes learn of their new instances, start them and report
    them running).

Standard library only; all traffic goes to 127.0.0.1 and every wait is
bounded. Knobs (environment):

  SHOAL_BIN            the shoal binary (default: $CARGO_TARGET_DIR or the
                       repo's target/, then release/shoal)
  COMPONENT            the app's module (default
                       examples/wasm-apps/http-component.wasm)
  RECOVERY_CYCLES      kill/recover cycles (default 10)
  RECOVERY_REPLICAS    replicas of the app (default 30)
  RECOVERY_NODES       nodes in the cluster (default 3)
  RECOVERY_TIMEOUT     seconds one recovery may take before it fails (60)
  RECOVERY_POLL_MS     poll interval in milliseconds (default 20)
  RECOVERY_SEED        seed for the kill's random delay (default 1)
  RECOVERY_OUT         markdown output (default bench/results/recovery.md)
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import random
import re
import shutil
import statistics
import sys
import tempfile
import time
import urllib.error
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchlib  # noqa: E402
from benchlib import (  # noqa: E402
    BENCH_DIR, C_COMPONENT, REPO, Proc, cpu_model, md_head, md_row, write_report,
)

APP = "web"
NAMESPACE = "default"
# The control plane's defaults (shoal control-plane --lease/--heartbeat).
LEASE_S = 2.0
HEARTBEAT_S = 0.25
TARGET_S = 3.0
START_TIMEOUT_S = 60
SETTLE_TIMEOUT_S = 120
STOP_TIMEOUT_S = 15
HTTP_TIMEOUT_S = 5


def env_int(name: str, default: int) -> int:
    return benchlib.env_int(name, default, positive=True)


def default_shoal_bin() -> Path:
    target = os.environ.get("CARGO_TARGET_DIR") or str(REPO / "target")
    return Path(target) / "release" / "shoal"


# --- the API ------------------------------------------------------------------


class Api(benchlib.Api):
    def app_instances(self) -> list[dict]:
        return self.instances(APP, NAMESPACE)

    def events_after(self, seq: int | None) -> list[dict]:
        q = "/v1/events?namespace=*"
        if seq is not None:
            q += f"&after={seq}"
        return self.get(q)

    def scale(self, replicas: int) -> None:
        self.call(
            "POST",
            f"/v1/namespaces/{NAMESPACE}/apps/{APP}/scale",
            {"replicas": replicas},
        )


def healthy(insts: list[dict], replicas: int, avoid: str | None = None) -> bool:
    return len(insts) == replicas and all(
        i["phase"] == "running" and i["ready"] and i["node"] and i["node"] != avoid
        for i in insts
    )


def wait_until(what: str, check, timeout_s: float, poll_s: float = 0.05):
    deadline = time.monotonic() + timeout_s
    last_error = None
    while time.monotonic() < deadline:
        try:
            result = check()
            if result:
                return result
        except (urllib.error.URLError, OSError, ValueError) as e:
            last_error = e
        time.sleep(poll_s)
    extra = f" (last error: {last_error})" if last_error else ""
    raise RuntimeError(f"timed out after {timeout_s}s waiting for {what}{extra}")


# --- the cluster ----------------------------------------------------------------


class Cluster:
    """The control plane and the nodes, in the benchmark's process group,
    each logging to logs/NAME.log (a restarted node appends to its log)."""

    def __init__(self, shoal: Path, work: Path, logs: Path, nodes: int):
        self.shoal = shoal
        self.work = work
        self.logs = logs
        self.cp: Proc | None = None
        self.nodes: dict[str, Proc] = {}
        self.names = [f"node-{i}" for i in range(1, nodes + 1)]
        self.url = ""
        self.api: Api | None = None

    def start(self) -> None:
        self.cp, self.url = benchlib.start_control_plane(
            self.shoal, self.work / "control-plane", self.logs / "control-plane.log",
            START_TIMEOUT_S, group=False,
        )
        self.api = Api(self.url, timeout=HTTP_TIMEOUT_S)
        for name in self.names:
            self.start_node(name)
        wait_until("all nodes to be ready", self.all_nodes_ready, START_TIMEOUT_S)

    def start_node(self, name: str) -> None:
        self.nodes[name], _ = benchlib.start_node(
            self.shoal, self.url, name, self.work / "cache", self.logs / f"{name}.log",
            START_TIMEOUT_S, group=False,
        )

    def all_nodes_ready(self) -> bool:
        assert self.api is not None
        nodes = self.api.nodes()
        return all(nodes.get(n, {}).get("state") == "ready" for n in self.names)

    def stop(self) -> None:
        for p in self.nodes.values():
            p.stop(timeout=STOP_TIMEOUT_S)
        if self.cp:
            self.cp.stop(timeout=STOP_TIMEOUT_S)


# --- one cycle --------------------------------------------------------------------


@dataclass
class Cycle:
    victim: str
    moved: int
    total_s: float
    lease_s: float | None
    reschedule_s: float | None
    start_s: float | None
    started_event_s: float | None
    since_heartbeat_s: float | None
    placed_on: dict[str, int]
    settle_s: float


def spread(c: Cluster, replicas: int) -> float:
    """Scales to 0 and back so the app is spread over every node again;
    returns how long the app took to be whole again."""
    assert c.api is not None
    api = c.api
    api.scale(0)
    wait_until("scale to 0", lambda: not api.app_instances(), SETTLE_TIMEOUT_S)
    t = time.monotonic()
    api.scale(replicas)
    wait_until(
        f"{replicas} replicas ready", lambda: healthy(api.app_instances(), replicas),
        SETTLE_TIMEOUT_S,
    )
    return time.monotonic() - t


def last_event_seq(api: Api) -> int | None:
    events = api.events_after(None)
    return max((e["seq"] for e in events), default=None)


def one_cycle(
    c: Cluster, victim: str, replicas: int, timeout_s: float, poll_s: float, rng: random.Random
) -> Cycle:
    assert c.api is not None
    api = c.api
    settle_s = spread(c, replicas)
    before = api.app_instances()
    moved = sum(1 for i in before if i["node"] == victim)
    if moved == 0:
        raise RuntimeError(f"{victim} has no instances of {APP} to lose: {before}")
    seq = last_event_seq(api)
    # The poll above returns just after a heartbeat reported the app whole:
    # killing at once would always hit the same point of the cycle.
    time.sleep(rng.uniform(0, HEARTBEAT_S))

    kill_wall_ms = time.time() * 1000
    t0 = time.monotonic()
    c.nodes[victim].kill(STOP_TIMEOUT_S)
    done_at = None
    deadline = t0 + timeout_s
    while time.monotonic() < deadline:
        try:
            insts = api.app_instances()
        except (urllib.error.URLError, OSError) as e:
            print(f"  poll failed: {e}", file=sys.stderr)
            insts = []
        now = time.monotonic()
        if healthy(insts, replicas, avoid=victim):
            done_at = now
            break
        time.sleep(poll_s)
    if done_at is None:
        raise RuntimeError(
            f"{APP} was not whole again {timeout_s}s after killing {victim}: {api.app_instances()}"
        )
    total_s = done_at - t0
    after = api.app_instances()
    placed_on: dict[str, int] = {}
    for i in after:
        placed_on[i["node"]] = placed_on.get(i["node"], 0) + 1

    # The split, from the control plane's event clock (same machine).
    events = api.events_after(seq)
    lost_ms = next(
        (e["at-ms"] for e in events
         if e["reason"] == "NodeLost" and e["object"] == f"node/{victim}"),
        None,
    )
    old_ids = {i["id"] for i in before}
    new_ids = {i["id"] for i in after} - old_ids
    scheduled = [
        e["at-ms"] for e in events
        if e["reason"] == "Scheduled" and e["object"].removeprefix("instance/") in new_ids
    ]
    started = [
        e["at-ms"] for e in events
        if e["reason"] == "Started" and e["object"].removeprefix("instance/") in new_ids
    ]
    started_event_s = (
        (max(started) - kill_wall_ms) / 1000 if len(started) == len(new_ids) else None
    )
    lease_s = reschedule_s = start_s = None
    if lost_ms is not None:
        lease_s = (lost_ms - kill_wall_ms) / 1000
        if scheduled:
            reschedule_s = (max(scheduled) - lost_ms) / 1000
            start_s = total_s - lease_s - reschedule_s
    last_hb = api.nodes().get(victim, {}).get("last-heartbeat-ms")
    since_hb = (kill_wall_ms - last_hb) / 1000 if last_hb else None

    # Bring the node back for the next cycle.
    c.start_node(victim)
    wait_until(f"{victim} to be ready again", c.all_nodes_ready, START_TIMEOUT_S)
    return Cycle(
        victim=victim, moved=moved, total_s=total_s, lease_s=lease_s,
        reschedule_s=reschedule_s, start_s=start_s, started_event_s=started_event_s,
        since_heartbeat_s=since_hb,
        placed_on=placed_on, settle_s=settle_s,
    )


# --- the report ----------------------------------------------------------------------


def fmt_s(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.3f} s"


def stats_row(label: str, values: list[float | None]) -> str:
    vs = [v for v in values if v is not None]
    if not vs:
        return md_row(label, "n/a", "n/a", "n/a")
    return md_row(label, fmt_s(min(vs)), fmt_s(statistics.median(vs)), fmt_s(max(vs)))


def log_findings(logs: Path) -> list[str]:
    """Warnings and errors in the logs other than the ones a node kill is
    expected to cause."""
    expected = re.compile(
        r"NodeLost|missed heartbeats|heartbeating again|Killing|node .* is back"
    )
    ansi = re.compile(r"\x1b\[[0-9;]*m")
    found = []
    for path in sorted(logs.glob("*.log")):
        counts: dict[str, int] = {}
        for line in path.read_text(errors="replace").splitlines():
            line = ansi.sub("", line)
            if not re.search(r"\b(WARN|ERROR)\b|panicked", line) or expected.search(line):
                continue
            # Group by message, without the timestamp.
            key = re.sub(r"^\S+\s+", "", line)[:200]
            counts[key] = counts.get(key, 0) + 1
        for line, n in sorted(counts.items(), key=lambda kv: -kv[1]):
            found.append(f"{path.name}: {line}" + (f" (x{n})" if n > 1 else ""))
    return found


def render(cfg: dict, cycles: list[Cycle], findings: list[str], apply_s: float) -> str:
    out = []
    out.append("# Recovery benchmark\n")
    out.append(
        f"Time from `kill -9` of one node to every instance of the app Running "
        f"and ready on the other nodes. {cfg['nodes']} `shoal node` processes "
        f"and a `shoal control-plane` on 127.0.0.1, default lease "
        f"({LEASE_S:g} s) and heartbeat ({HEARTBEAT_S * 1000:.0f} ms), app `{APP}` "
        f"({cfg['component']}, {cfg['replicas']} replicas), {len(cycles)} cycles, "
        f"API polled every {cfg['poll_ms']} ms. Target: under {TARGET_S:g} s.\n"
    )
    out.append(
        f"Date {cfg['date']}; {cfg['machine']}; shoal binary {cfg['shoal']}; "
        f"command `{cfg['command']}`. Initial `shoal apply --wait`: {apply_s:.2f} s.\n"
    )
    totals = [c.total_s for c in cycles]
    med = statistics.median(totals)
    verdict = "meets" if max(totals) < TARGET_S else (
        "median meets" if med < TARGET_S else "misses")
    out.append("## Summary\n")
    out.append("| | min | median | max |")
    out.append("|---|---:|---:|---:|")
    out.append(stats_row("**kill → all running and ready**", totals))
    out.append(stats_row(
        "kill → last replacement Started (event clock)", [c.started_event_s for c in cycles]
    ))
    out.append(stats_row("lease expiry (kill → NodeLost)", [c.lease_s for c in cycles]))
    out.append(stats_row(
        "the rest (NodeLost → all running and ready)",
        [None if c.lease_s is None else c.total_s - c.lease_s for c in cycles],
    ))
    out.append(stats_row("… of which rescheduling (NodeLost → last Scheduled)",
                         [c.reschedule_s for c in cycles]))
    out.append(stats_row("… of which start (last Scheduled → all ready, polled)",
                         [c.start_s for c in cycles]))
    out.append(stats_row("last heartbeat → kill", [c.since_heartbeat_s for c in cycles]))
    out.append("")
    out.append(f"Verdict: {verdict} the {TARGET_S:g} s target "
               f"(median {med:.3f} s, max {max(totals):.3f} s).\n")
    out.append("## Cycles\n")
    out += md_head(["#", "killed", "instances moved", "total", "lease expiry", "rescheduling",
                    "start", "last heartbeat → kill", "spread after", "re-spread took"],
                   "rlrrrrrrlr", right="---:")
    for n, c in enumerate(cycles, 1):
        spread_txt = ", ".join(f"{k}: {v}" for k, v in sorted(c.placed_on.items()))
        out.append(md_row(
            n, c.victim, c.moved, fmt_s(c.total_s), fmt_s(c.lease_s), fmt_s(c.reschedule_s),
            fmt_s(c.start_s), fmt_s(c.since_heartbeat_s), spread_txt, f"{c.settle_s:.2f} s",
        ))
    out.append("")
    out.append(
        "Lease expiry is measured against the control plane's NodeLost event "
        "(wall clock, same machine); the lease counts from the node's last "
        "heartbeat, so it is about the lease minus \"last heartbeat → kill\", "
        "plus up to one control-plane tick (100 ms). Between cycles the killed "
        "node is restarted and the app is scaled to 0 and back so that every "
        "cycle starts evenly spread.\n"
    )
    out.append("## Warnings and errors in the logs\n")
    if findings:
        out.append("Other than those a node kill is expected to cause:\n")
        out.extend(f"- `{f}`" for f in findings[:40])
        if len(findings) > 40:
            out.append(f"- … and {len(findings) - 40} more")
    else:
        out.append("None besides those a node kill is expected to cause.")
    out.append("")
    return "\n".join(out)


def machine() -> str:
    cpu = cpu_model(platform.processor() or platform.machine())
    return f"{platform.system()} {platform.release()}, {cpu}, {os.cpu_count()} CPUs"


def main() -> int:
    shoal = Path(os.environ.get("SHOAL_BIN") or default_shoal_bin())
    if not shoal.is_file():
        raise SystemExit(f"{shoal} not found: build it with `cargo build --release` or set SHOAL_BIN")
    component = Path(
        os.environ.get("COMPONENT") or C_COMPONENT
    ).resolve()
    if not component.is_file():
        raise SystemExit(f"{component} not found (examples/wasm-apps/build.sh builds it)")
    cycles_n = env_int("RECOVERY_CYCLES", 10)
    replicas = env_int("RECOVERY_REPLICAS", 30)
    nodes_n = env_int("RECOVERY_NODES", 3)
    timeout_s = env_int("RECOVERY_TIMEOUT", 60)
    poll_ms = env_int("RECOVERY_POLL_MS", 20)
    rng = random.Random(env_int("RECOVERY_SEED", 1))
    out_path = Path(os.environ.get("RECOVERY_OUT") or BENCH_DIR / "results/recovery.md")
    if nodes_n < 2:
        raise SystemExit("RECOVERY_NODES must be at least 2")

    logs = out_path.parent / "recovery-logs"
    shutil.rmtree(logs, ignore_errors=True)
    logs.mkdir(parents=True)
    work = Path(tempfile.mkdtemp(prefix="shoal-recovery-"))
    cluster = Cluster(shoal, work, logs, nodes_n)
    cycles: list[Cycle] = []
    try:
        cluster.start()
        print(f"cluster up: control plane {cluster.url}, nodes {', '.join(cluster.names)}",
              file=sys.stderr)
        manifest = work / "web.toml"
        manifest.write_text(
            f'name = "{APP}"\nmodule = {json.dumps(str(component))}\n'
            f'replicas = {replicas}\n\n[[routes]]\npath = "/"\n'
        )
        t = time.monotonic()
        benchlib.shoal_apply(cluster.shoal, cluster.url, manifest, timeout=600)
        apply_s = time.monotonic() - t
        print(f"applied {APP} ({replicas} replicas) in {apply_s:.2f} s", file=sys.stderr)
        for n in range(cycles_n):
            victim = cluster.names[n % len(cluster.names)]
            c = one_cycle(cluster, victim, replicas, timeout_s, poll_ms / 1000, rng)
            cycles.append(c)
            print(
                f"cycle {n + 1}/{cycles_n}: killed {victim} ({c.moved} instances): "
                f"{c.total_s:.3f} s (lease expiry {fmt_s(c.lease_s)}, "
                f"rescheduling {fmt_s(c.reschedule_s)}, start {fmt_s(c.start_s)})",
                file=sys.stderr,
            )
    finally:
        cluster.stop()
        shutil.rmtree(work, ignore_errors=True)

    cfg = {
        "nodes": nodes_n,
        "replicas": replicas,
        "poll_ms": poll_ms,
        "component": component.relative_to(REPO) if component.is_relative_to(REPO) else component,
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "machine": machine(),
        "shoal": shoal,
        "command": os.environ.get("BENCH_COMMAND", "python3 bench/recovery_bench.py"),
    }
    write_report(out_path, render(cfg, cycles, log_findings(logs), apply_s))
    print(f"(written to {out_path}; process logs in {logs})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

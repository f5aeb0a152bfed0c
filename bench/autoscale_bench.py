#!/usr/bin/env python3
"""Autoscaling benchmark: scale-from-zero latency through the gateway, and
the time to go from 1 to 10 instances under a step in load.

It starts a control plane, two nodes (sharing one compile-cache directory)
and a gateway on 127.0.0.1, and deploys the C wasi:http demo component
(examples/wasm-apps/http-component.wasm) twice:

  zero   autoscale min = 0, max = 10, target-concurrency = 1,
         stable-window 4s, panic-window 1s, scale-down-delay 1s,
         scale-to-zero-after 1s; route host `zero.bench`
  step   the same but min = 1; route host `step.bench`

Scale from zero (BENCH_CYCLES times, after BENCH_WARMUP_CYCLES untimed
ones): wait until `zero` has no instance at all (GET /v1/instances) and the
route table has no endpoint for it, then send one GET / through the gateway
on a fresh connection and time the first byte of the response and the whole
response. The first cycles run after `zero` started with replicas = 2, one
instance per node, so both nodes have loaded the compiled module: the
measured cycles are warm-node cold starts. Each cycle is split with the new
instance's `created-at-ms` (when the control plane asked for it) and the
node's `instance started` log line (when the node had it linked and ready).
The control plane's own `cold-starts` numbers for the app (from /v1/apps,
as the gateway reports them) are read at the end for comparison.

Step (BENCH_STEP_REPEATS times): with `step` idle at 1 instance, start
BENCH_STEP_CLIENTS client threads that loop on GET through the gateway, and
poll /v1/instances until 10 instances are running and ready. The requests
are `/sleep?ms=BENCH_SLEEP_MS` when the component has that route (checked
against the node first), else `/` driven by wrk with as many connections
(the component then answers in microseconds, so the gateway sees less
concurrency).

Standard library only. Knobs (environment):

  BENCH_CYCLES         timed scale-from-zero cycles          (default 25)
  BENCH_WARMUP_CYCLES  untimed cycles first                  (default 1)
  BENCH_SETTLE_MS      pause after reaching zero, before the request (default 300)
  BENCH_STEP_REPEATS   step tests                            (default 10)
  BENCH_STEP_CLIENTS   concurrent clients in the step        (default 15)
  BENCH_SLEEP_MS       ms each /sleep request takes          (default 200)
  BENCH_STEP_TIMEOUT   seconds to wait for 10 ready instances (default 60)
  BENCH_ISOLATION      isolation mode of both apps           (default per-request)
  SHOAL_BIN, WRK_BIN   the binaries (default: found on PATH)
  COMPONENT            the wasi:http component (default: the C demo app)
  BENCH_OUT            markdown output (default bench/results/autoscale.md)
  BENCH_KEEP_TMP       keep the temporary directory if set
"""

from __future__ import annotations

import datetime
import http.client
import os
import re
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchlib  # noqa: E402
from benchlib import (  # noqa: E402
    BENCH_DIR, C_COMPONENT, HOST, REPO, Proc, env_int, env_str, find_bin, git_rev, keep_logs,
    loadavg, log, machine_summary, md_head, md_row, parse_wrk, percentile, shoal_apply,
    start_control_plane, start_gateway, start_node, stop_all, stop_all_on_exit, url_port,
    write_report,
)

benchlib.set_tag("autoscale-bench")

START_TIMEOUT_S = 120
ZERO_APP, ZERO_HOST = "zero", "zero.bench"
STEP_APP, STEP_HOST = "step", "step.bench"
STEP_GOAL = 10
POLL_S = 0.02
TARGET_NODE_MS = 20.0   # first byte within 20 ms of an instance being asked for
TARGET_E2E_MS = 100.0   # ...and within 100 ms end to end through the gateway

# --------------------------------------------------------------- helpers


class Api(benchlib.Api):
    def app_view(self, app: str) -> dict | None:
        for a in self.get("/v1/apps?namespace=*"):
            if a["app"]["key"]["name"] == app:
                return a
        return None

    def route_endpoints(self, app: str) -> int:
        """Endpoints the gateway's route table lists for `app`, over all backends."""
        n = 0
        for a in self.get("/v1/routes").get("apps", []):
            if a.get("app", {}).get("name") == app:
                n += sum(len(b.get("endpoints", [])) for b in a.get("backends", []))
        return n


def timed_get(port: int, host: str, path: str = "/", timeout: float = 30.0) -> dict:
    """One GET over a fresh connection (Connection: close), timed from the
    moment the request is written: first byte of the response, whole response."""
    req = (f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").encode()
    s = socket.create_connection((HOST, port), timeout=timeout)
    try:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        wall = time.time()
        t0 = time.perf_counter()
        s.sendall(req)
        first = s.recv(65536)
        t_first = time.perf_counter()
        data = first
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
        t_done = time.perf_counter()
    finally:
        s.close()
    m = re.match(rb"HTTP/1\.[01] (\d{3})", data)
    body = data.partition(b"\r\n\r\n")[2]
    return {"status": int(m.group(1)) if m else None, "body": body,
            "sent_wall": wall, "ttfb_ms": (t_first - t0) * 1000,
            "total_ms": (t_done - t0) * 1000,
            "first_wall": wall + (t_first - t0)}


# --------------------------------------------------------------- cluster


def manifest(cfg: dict, name: str, host: str, min_: int, replicas: int) -> str:
    iso = (f'\n[isolation]\nmode = "{cfg["isolation"]}"\n'
           if cfg["isolation"] != "per-request" else "")
    return f"""name = "{name}"
module = "{cfg['component']}"
replicas = {replicas}

[[routes]]
host = "{host}"
path = "/"
{iso}
[autoscale]
min = {min_}
max = {STEP_GOAL}
target-concurrency = 1
stable-window = "4s"
panic-window = "1s"
scale-down-delay = "1s"
scale-to-zero-after = "1s"
"""


def start_cluster(cfg: dict, tmp: Path, logs: Path) -> dict:
    shoal = cfg["shoal"]
    cp, cp_url = start_control_plane(shoal, tmp / "cp", logs / "control-plane.log",
                                     START_TIMEOUT_S)
    nodes = {}
    for i in (1, 2):
        name = f"node-{i}"
        p, url = start_node(shoal, cp_url, name, tmp / "cache", logs / f"{name}.log",
                            START_TIMEOUT_S)
        nodes[name] = {"proc": p, "url": url, "port": url_port(url)}
    # Debug for the module that holds requests for activation (`activate`;
    # `proxy` in gateways before the request path was split into stages):
    # it logs each held (cold-start) request with the gateway's own measure
    # of its wait, nothing per ordinary request.
    gw, gw_url = start_gateway(shoal, cp_url, logs / "gateway.log", START_TIMEOUT_S,
                               env={"SHOAL_LOG": "info,shoal_gateway::proxy=debug,"
                                                 "shoal_gateway::activate=debug"})
    api = Api(cp_url)
    deadline = time.monotonic() + START_TIMEOUT_S
    while sum(1 for n in api.get("/v1/nodes") if n.get("state") in ("ready", "Ready")) < 2:
        if time.monotonic() > deadline:
            raise RuntimeError("the two nodes did not register")
        time.sleep(0.05)
    return {"cp": cp, "gw": gw, "nodes": nodes, "api": api, "cp_url": cp_url,
            "gw_port": url_port(gw_url)}


def apply(cfg: dict, cp_url: str, path: Path, logs: Path) -> None:
    shoal_apply(cfg["shoal"], cp_url, path, START_TIMEOUT_S, logs / "apply.log")


def node_started_ms(cl: dict, instance_id: str) -> tuple[str, float] | None:
    """(node, wall-clock ms) of the node's `instance started` line for the instance."""
    rx = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?)Z\s+INFO\s+instance started"
                    r".*\binstance=" + re.escape(instance_id) + r"\b", re.M)
    for name, n in cl["nodes"].items():
        m = rx.search(n["proc"].text())
        if m:
            ts = m.group(1)
            base, _, frac = ts.partition(".")
            t = datetime.datetime.strptime(base, "%Y-%m-%dT%H:%M:%S").replace(
                tzinfo=datetime.timezone.utc).timestamp()
            return name, (t + float("0." + (frac or "0"))) * 1000
    return None


# --------------------------------------------------------------- scale from zero


def wait_for_zero(cl: dict, timeout: float = 60.0) -> float:
    """Seconds until `zero` has no instance and no endpoint in the route table."""
    api = cl["api"]
    t0 = time.monotonic()
    while True:
        if not api.instances(ZERO_APP) and api.route_endpoints(ZERO_APP) == 0:
            return time.monotonic() - t0
        if time.monotonic() - t0 > timeout:
            left = [(i["id"], i["phase"]) for i in api.instances(ZERO_APP)]
            raise RuntimeError(f"{ZERO_APP} did not scale to zero within {timeout}s "
                               f"(instances left: {left})")
        time.sleep(POLL_S)


HELD_RE = re.compile(r"cold start: held request answered.*?\bms=(\d+)")


def gateway_held(cl: dict, seen: int) -> tuple[int | None, int]:
    """The gateway's own measure (whole ms, from holding the request to the
    instance's answer) of the newest held request, if a new one is logged."""
    for _ in range(50):
        found = HELD_RE.findall(cl["gw"].text())
        if len(found) > seen:
            return int(found[-1]), len(found)
        time.sleep(0.01)
    return None, seen


def scale_from_zero(cfg: dict, cl: dict) -> tuple[list[dict], list[str]]:
    cycles, problems = [], []
    total = cfg["warmup_cycles"] + cfg["cycles"]
    seen_ids: set[str] = set()
    held_seen = 0
    for c in range(total):
        warm = c < cfg["warmup_cycles"]
        waited = wait_for_zero(cl)
        time.sleep(cfg["settle_ms"] / 1000)
        r = timed_get(cl["gw_port"], ZERO_HOST)
        ok = r["status"] == 200 and b"Hello" in r["body"]
        if not ok:
            problems.append(f"cycle {c}: status {r['status']}, body {r['body'][:200]!r}")
        # The instance that answered: the newest one of the app.
        inst = [i for i in cl["api"].instances(ZERO_APP) if i["id"] not in seen_ids]
        inst.sort(key=lambda i: i["created-at-ms"])
        row = {"cycle": c, "warmup": warm, "ok": ok, "status": r["status"],
               "ttfb_ms": r["ttfb_ms"], "total_ms": r["total_ms"], "zero_wait_s": waited,
               "new_instances": len(inst)}
        if inst:
            first = inst[0]
            seen_ids.update(i["id"] for i in inst)
            row["instance"] = first["id"]
            row["node"] = first.get("node")
            row["asked_ms"] = first["created-at-ms"] - r["sent_wall"] * 1000
            row["created_to_first_ms"] = r["first_wall"] * 1000 - first["created-at-ms"]
            # The node writes its log line right away; give it a moment.
            started = None
            for _ in range(50):
                started = node_started_ms(cl, first["id"])
                if started:
                    break
                time.sleep(0.01)
            if started:
                row["node"] = started[0]
                row["created_to_started_ms"] = started[1] - first["created-at-ms"]
                row["started_to_first_ms"] = r["first_wall"] * 1000 - started[1]
        else:
            problems.append(f"cycle {c}: answered, but no new instance of {ZERO_APP} "
                            "was found (did the request go to an old one?)")
        held, held_seen = gateway_held(cl, held_seen)
        if held is not None:
            row["gw_held_ms"] = held
            row["before_held_ms"] = r["ttfb_ms"] - held
        cycles.append(row)
        log(f"cycle {c + 1}/{total}{' (warm-up)' if warm else ''}: {r['status']} "
            f"first byte {r['ttfb_ms']:.1f} ms, whole {r['total_ms']:.1f} ms; "
            f"client->created {row.get('asked_ms', float('nan')):.1f} ms, "
            f"created->node started {row.get('created_to_started_ms', float('nan')):.1f} ms, "
            f"started->first byte {row.get('started_to_first_ms', float('nan')):.1f} ms; "
            f"gateway held it {row.get('gw_held_ms', 'n/a')} ms "
            f"on {row.get('node')}; reached zero after {waited:.1f}s")
    return cycles, problems


# --------------------------------------------------------------- step


def has_sleep_route(cl: dict) -> bool:
    """Does the component answer /sleep?ms=100 by sleeping? (Asked through the
    gateway, so whichever node runs the step app answers.)"""
    try:
        conn = http.client.HTTPConnection(HOST, cl["gw_port"], timeout=10)
        t0 = time.perf_counter()
        conn.request("GET", "/sleep?ms=100", headers={"Host": STEP_HOST})
        resp = conn.getresponse()
        body = resp.read()
        dt = time.perf_counter() - t0
        conn.close()
    except (OSError, http.client.HTTPException):
        return False
    log(f"GET /sleep?ms=100 through the gateway: {resp.status} in {dt * 1000:.0f} ms, "
        f"body {body[:60]!r}")
    return resp.status == 200 and dt >= 0.09 and b"Hello from" not in body


class StepLoad:
    """N threads looping on GET through the gateway until stopped."""

    def __init__(self, port: int, clients: int, path: str):
        self.port, self.clients, self.path = port, clients, path
        self.stop_ev = threading.Event()
        self.lock = threading.Lock()
        self.lat_ms: list[float] = []
        self.statuses: dict[int, int] = {}
        self.errors: list[str] = []
        self.threads = [threading.Thread(target=self.run, daemon=True)
                        for _ in range(clients)]

    def start(self):
        for t in self.threads:
            t.start()

    def run(self):
        conn = None
        while not self.stop_ev.is_set():
            try:
                if conn is None:
                    conn = http.client.HTTPConnection(HOST, self.port, timeout=30)
                t0 = time.perf_counter()
                conn.request("GET", self.path, headers={"Host": STEP_HOST})
                resp = conn.getresponse()
                resp.read()
                dt = (time.perf_counter() - t0) * 1000
                with self.lock:
                    self.lat_ms.append(dt)
                    self.statuses[resp.status] = self.statuses.get(resp.status, 0) + 1
                if resp.will_close:
                    conn.close()
                    conn = None
            except (OSError, http.client.HTTPException) as e:
                with self.lock:
                    self.errors.append(f"{type(e).__name__}: {e}")
                if conn is not None:
                    conn.close()
                conn = None
                time.sleep(0.01)
        if conn is not None:
            conn.close()

    def stop(self):
        self.stop_ev.set()
        for t in self.threads:
            t.join(timeout=40)


class WrkLoad:
    """wrk with N connections on GET / (when the component has no /sleep)."""

    def __init__(self, wrk: str, port: int, clients: int, seconds: int, log_path: Path):
        self.argv = [wrk, f"-t{min(2, clients)}", f"-c{clients}", f"-d{seconds}s",
                     "--latency", "-H", f"Host: {STEP_HOST}", f"http://{HOST}:{port}/"]
        self.log_path = log_path
        self.lat_ms: list[float] = []
        self.statuses: dict[int, int] = {}
        self.errors: list[str] = []
        self.summary = ""

    def start(self):
        self.proc = subprocess.Popen(self.argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     text=True, start_new_session=True)

    def stop(self):
        try:
            os.killpg(self.proc.pid, signal.SIGINT)  # wrk prints its summary on SIGINT
        except ProcessLookupError:
            pass
        try:
            out, _ = self.proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            out, _ = self.proc.communicate()
        with open(self.log_path, "a") as f:
            f.write("$ " + shlex.join(self.argv) + "\n" + out + "\n")
        self.summary = out
        # wrk prints its summary on SIGINT: the request count, percentiles, errors.
        res = parse_wrk(out)
        self.requests, self.p50, self.p99 = res["requests"], res["p50_ms"], res["p99_ms"]
        if res["non2xx"]:
            self.statuses["non-2xx"] = res["non2xx"]
        if res["socket_errors"] is not None:
            self.errors.append("wrk socket errors: " + ", ".join(
                f"{k} {v}" for k, v in res["socket_errors"].items()))


def wait_idle_at_one(cl: dict, quiet_s: float, timeout: float = 120.0) -> None:
    """Until `step` has exactly one instance, running and ready, for quiet_s."""
    api = cl["api"]
    deadline = time.monotonic() + timeout
    since = None
    while True:
        inst = api.instances(STEP_APP)
        one = len(inst) == 1 and inst[0]["phase"] == "running" and inst[0]["ready"]
        now = time.monotonic()
        if one:
            since = since or now
            if now - since >= quiet_s:
                return
        else:
            since = None
        if now > deadline:
            raise RuntimeError(f"{STEP_APP} did not settle at 1 instance within {timeout}s "
                               f"({[(i['id'], i['phase']) for i in inst]})")
        time.sleep(0.1)


def step_once(cfg: dict, cl: dict, use_sleep: bool, rep: int, logs: Path) -> dict:
    api = cl["api"]
    if use_sleep:
        load = StepLoad(cl["gw_port"], cfg["step_clients"], f"/sleep?ms={cfg['sleep_ms']}")
    else:
        load = WrkLoad(cfg["wrk"], cl["gw_port"], cfg["step_clients"],
                       int(cfg["step_timeout"]) + 30, logs / "step-wrk.log")
    scheduled_at: dict[int, float] = {}
    ready_at: dict[int, float] = {}
    peak_desired = None
    reasons = []
    t0 = time.monotonic()
    load.start()
    try:
        while True:
            now = time.monotonic() - t0
            inst = api.instances(STEP_APP)
            live = [i for i in inst if i["phase"] not in ("terminating", "failed",
                                                          "succeeded", "lost")]
            ready = [i for i in live if i["phase"] == "running" and i["ready"]]
            for k in range(1, len(live) + 1):
                scheduled_at.setdefault(k, now)
            for k in range(1, len(ready) + 1):
                ready_at.setdefault(k, now)
            if len(ready) >= STEP_GOAL or now > cfg["step_timeout"]:
                break
            time.sleep(POLL_S)
        view = api.app_view(STEP_APP) or {}
        a = view.get("autoscale") or {}
        peak_desired = a.get("desired")
        reasons.append(a.get("reason"))
    finally:
        load.stop()
    lat = load.lat_ms
    if isinstance(load, WrkLoad):
        requests, p50, p99 = load.requests, load.p50, load.p99
    else:
        requests, p50, p99 = len(lat), percentile(lat, 50), percentile(lat, 99)
    res = {"rep": rep, "scheduled_at": scheduled_at, "ready_at": ready_at,
           "reached": max(ready_at) if ready_at else 0, "requests": requests,
           "statuses": dict(load.statuses), "errors": list(load.errors),
           "p50_ms": p50, "p99_ms": p99,
           "reason": reasons[-1] if reasons else None, "desired": peak_desired,
           "nodes": {}}
    for i in api.instances(STEP_APP):
        res["nodes"][i.get("node")] = res["nodes"].get(i.get("node"), 0) + 1
    if isinstance(load, WrkLoad):
        res["wrk"] = load.summary
    t10 = ready_at.get(STEP_GOAL)
    log(f"step {rep}: {STEP_GOAL} ready after "
        f"{'%.2f s' % t10 if t10 is not None else 'timeout'}; "
        + ", ".join(f"{k} ready @ {ready_at[k]:.2f}s" for k in (2, 5, 10) if k in ready_at)
        + f"; requests {requests}, statuses {res['statuses']}, errors {len(load.errors)}"
        + f"; autoscaler: {res['reason']}")
    return res


# --------------------------------------------------------------- report


def fmt(v: float | None, unit: str = "ms") -> str:
    if v is None:
        return "n/a"
    if unit == "s":
        return f"{v:.2f} s"
    return f"{v:.1f} ms"


def stats_row(name: str, xs: list[float], target: float | None = None) -> str:
    if not xs:
        return f"| {name} | n/a | n/a | n/a | n/a | n/a | |"
    p50, p99 = percentile(xs, 50), percentile(xs, 99)
    verdict = ""
    if target is not None:
        verdict = (f"≤ {target:.0f} ms: p50 {'met' if p50 <= target else 'missed'}, "
                   f"p99 {'met' if p99 <= target else 'missed'}")
    return md_row(name, fmt(p50), fmt(p99), fmt(min(xs)), fmt(max(xs)),
                  fmt(statistics.mean(xs)), verdict)


def render(cfg, cycles, cold_view, zero_problems, steps, step_problems, use_sleep,
           manifests, load_start, load_end, log_notes) -> str:
    L = []
    L.append("# Autoscaling benchmark: scale from zero, and 1 → 10 instances under a step\n")
    L.append(f"Generated {datetime.datetime.now().astimezone():%Y-%m-%d %H:%M %Z} by "
             "`bench/autoscale_bench.py` (`bash bench/autoscale.sh`).\n")
    L.append("## Setup\n")
    L.append(f"- Machine: {machine_summary()}. Load average at start {load_start}, at end "
             f"{load_end}. Everything (control plane, 2 nodes, gateway, clients) runs on it.")
    L.append(f"- shoal: `{cfg['shoal']}` (release), git {git_rev()}")
    L.append(f"- App: `{cfg['component_rel']}` (C wasi:http component), isolation "
             f"`{cfg['isolation']}`; `[autoscale] max = 10, target-concurrency = 1, "
             "stable-window = \"4s\", panic-window = \"1s\", scale-down-delay = \"1s\", "
             "scale-to-zero-after = \"1s\"`, `min = 0` for the scale-from-zero app and "
             "`min = 1` for the step app (manifests at the end).")
    L.append("- The two nodes share one compile-cache directory, and `zero` starts with "
             "replicas = 2 (one instance per node) before scaling to zero, so both nodes "
             "have the compiled module loaded: the timed cycles are cold starts of an "
             f"instance on a warm node. {cfg['warmup_cycles']} untimed warm-up cycle(s) "
             "first.")
    L.append(f"- Command: `{cfg['command']}`\n")

    timed = [c for c in cycles if not c["warmup"] and c["ok"]]
    n = len(timed)
    L.append(f"## Scale from zero ({n} cycles)\n")
    L.append("Each cycle waits until the app has no instance at all (`GET /v1/instances`) "
             "and the route table lists no endpoint for it, pauses "
             f"{cfg['settle_ms']} ms, then sends `GET /` with `Host: {ZERO_HOST}` to the "
             "gateway on a fresh connection and times it from the moment the request is "
             "written. The gateway holds the request, asks the control plane for an "
             "instance, and forwards it once the instance is in the route table. "
             "The split uses the new instance's `created-at-ms` (the control plane "
             "creating it: the instance being *asked for*) and the node's `instance started` "
             "log line (compiled module linked, instance ready); clocks are the same machine's "
             "wall clock, and `created-at-ms` is in whole ms, so the split is good to about "
             f"±1 ms (a tiny negative value is rounding). With {n} samples, p99 is the "
             "largest or second-largest (nearest rank).\n")
    L += md_head(["measure", "p50", "p99", "min", "max", "mean", "target"], "lrrrrrl")
    L.append(stats_row("**first byte through the gateway** (end to end)",
                       [c["ttfb_ms"] for c in timed], TARGET_E2E_MS))
    L.append(stats_row("whole response through the gateway",
                       [c["total_ms"] for c in timed]))
    L.append(stats_row("**instance asked for → first byte** (created-at-ms → client's "
                       "first byte)",
                       [c["created_to_first_ms"] for c in timed if "created_to_first_ms" in c],
                       TARGET_NODE_MS))
    L.append(stats_row("  request sent → instance asked for (gateway → control plane)",
                       [c["asked_ms"] for c in timed if "asked_ms" in c]))
    L.append(stats_row("  instance asked for → node started it (assignment, link)",
                       [c["created_to_started_ms"] for c in timed
                        if "created_to_started_ms" in c]))
    L.append(stats_row("  node started it → first byte (report, route table, forward)",
                       [c["started_to_first_ms"] for c in timed
                        if "started_to_first_ms" in c]))
    L.append(stats_row("gateway's own measure: request held → response started "
                       "(its debug log, whole ms)",
                       [c["gw_held_ms"] for c in timed if "gw_held_ms" in c]))
    L.append(stats_row("  client's first byte minus the gateway's measure (connection "
                       "accept, request read and routing before the hold, response relay)",
                       [c["before_held_ms"] for c in timed if "before_held_ms" in c]))
    L.append("")
    L.append("Compared with what the control plane reports (`cold-starts` in "
             "`GET /v1/apps` for the app: the gateway's time from holding a request to "
             "its response starting, in whole ms, reported once a second; it includes "
             "the warm-up cycles):\n")
    L += md_head(["source", "count", "p50", "p99", "last"], "lrrrr")
    all_ok = [c for c in cycles if c["ok"]]
    ttfb = [c["ttfb_ms"] for c in all_ok]
    L.append(md_row(f"this benchmark, first byte at the client (all {len(all_ok)} cycles "
                    "incl. warm-up)", len(all_ok), fmt(percentile(ttfb, 50)),
                    fmt(percentile(ttfb, 99)), fmt(all_ok[-1]["ttfb_ms"]) if all_ok else "n/a"))
    if cold_view:
        L.append(md_row("control plane `cold-starts`", cold_view.get("count"),
                        f"{cold_view.get('p50-ms')} ms", f"{cold_view.get('p99-ms')} ms",
                        f"{cold_view.get('last-ms')} ms"))
    else:
        L.append("| control plane `cold-starts` | not reported | | | |")
    L.append("")
    L.append("Anchor: Knative Serving's scale-from-zero is typically measured in seconds "
             "(pod scheduling, container start, queue-proxy readiness); the target here "
             f"is ≤ {TARGET_NODE_MS:.0f} ms from the instance being asked for to the first "
             f"byte and ≤ {TARGET_E2E_MS:.0f} ms end to end.\n")
    nodes = {}
    for c in timed:
        nodes[c.get("node")] = nodes.get(c.get("node"), 0) + 1
    L.append("Placement of the timed cold starts: "
             + ", ".join(f"{k}: {v}" for k, v in sorted(nodes.items(), key=str)) + ". "
             + "Time waiting for scale to zero per cycle: median "
             + (f"{statistics.median([c['zero_wait_s'] for c in timed]):.1f} s" if timed
                else "n/a") + ".\n")
    L.append("<details><summary>Every cycle</summary>\n")
    L += md_head(["cycle", "status", "first byte", "whole", "sent → asked",
                  "asked → started", "started → first byte", "gateway held", "node",
                  "instance"], "rrrrrrrrll")
    for c in cycles:
        L.append(md_row(f"{c['cycle']}{' (warm-up)' if c['warmup'] else ''}", c["status"],
                        fmt(c["ttfb_ms"]), fmt(c["total_ms"]), fmt(c.get("asked_ms")),
                        fmt(c.get("created_to_started_ms")),
                        fmt(c.get("started_to_first_ms")),
                        f"{c['gw_held_ms'] if 'gw_held_ms' in c else 'n/a'} ms",
                        c.get("node"), f"`{c.get('instance')}`"))
    L.append("\n</details>\n")
    if zero_problems:
        L.append("Problems seen:\n")
        L.extend(f"- {p}" for p in zero_problems)
        L.append("")

    L.append(f"## Step: 1 → {STEP_GOAL} instances\n")
    if use_sleep:
        L.append(f"From `step` idle at 1 ready instance, {cfg['step_clients']} client threads "
                 f"start at once, each looping on `GET /sleep?ms={cfg['sleep_ms']}` "
                 f"(`Host: {STEP_HOST}`) through the gateway on a kept-alive connection: a "
                 f"step to ~{cfg['step_clients']} requests in flight, which at "
                 f"target-concurrency 1 asks for the max of {STEP_GOAL}.")
    else:
        L.append(f"The component has no `/sleep` route, so the step is wrk with "
                 f"{cfg['step_clients']} connections on `GET /` (`Host: {STEP_HOST}`) "
                 "through the gateway; those requests take microseconds, so the "
                 "concurrency the gateway sees is lower than the connection count.")
    L.append(" Times are from the start of the load; `GET /v1/instances` is polled every "
             f"{POLL_S * 1000:.0f} ms. \"scheduled\" counts instances in any live phase, "
             "\"ready\" those running and ready (in the route table). The autoscaler "
             "decides once a second on load the gateway reports once a second.\n")
    L += md_head(["run", "2 scheduled", f"{STEP_GOAL} scheduled", "2 ready", "5 ready",
                  f"**{STEP_GOAL} ready**", "ready count over time", "requests", "non-200",
                  "errors", "p50", "p99", "instances per node",
                  "autoscaler's reason at the end"], "rrrrrrlrrrrrll")
    for s in steps:
        non200 = sum(v for k, v in s["statuses"].items() if k != 200)
        # The ready count each time it rose: "1.37 s → 6, 2.47 s → 10".
        rises: dict[float, int] = {}
        for k, t in s["ready_at"].items():
            rises[t] = max(rises.get(t, 0), k)
        curve = ", ".join(f"{t:.2f} s → {k}" for t, k in sorted(rises.items()))
        L.append(md_row(
            s["rep"], fmt(s["scheduled_at"].get(2), "s"),
            fmt(s["scheduled_at"].get(STEP_GOAL), "s"), fmt(s["ready_at"].get(2), "s"),
            fmt(s["ready_at"].get(5), "s"), f"**{fmt(s['ready_at'].get(STEP_GOAL), 's')}**",
            curve, s["requests"] if s["requests"] is not None else "n/a", non200,
            len(s["errors"]), fmt(s["p50_ms"]), fmt(s["p99_ms"]),
            ", ".join(f"{k}: {v}" for k, v in sorted(s["nodes"].items(), key=str)),
            s.get("reason") or ""))
    t10 = [s["ready_at"][STEP_GOAL] for s in steps if STEP_GOAL in s["ready_at"]]
    if t10:
        L.append(f"\nTime from the step to {STEP_GOAL} ready instances: median "
                 f"{statistics.median(t10):.2f} s, min {min(t10):.2f} s, max "
                 f"{max(t10):.2f} s over {len(t10)} run(s).")
    L.append("")
    if step_problems:
        L.append("Problems seen:\n")
        L.extend(f"- {p}" for p in step_problems)
        L.append("")
    if log_notes:
        L.append("## Warnings and errors in the logs\n")
        L.extend(f"- {n}" for n in log_notes)
        L.append("")
    L.append("## Manifests\n")
    for m in manifests:
        L.append("```toml\n" + m.strip() + "\n```\n")
    return "\n".join(L) + "\n"


# --------------------------------------------------------------- main


def main() -> int:
    shoal = find_bin("SHOAL_BIN", "shoal")
    component = Path(env_str("COMPONENT", str(C_COMPONENT))).resolve()
    cfg = {
        "shoal": shoal, "wrk": os.environ.get("WRK_BIN") or shutil.which("wrk") or "wrk",
        "component": str(component),
        "component_rel": str(component.relative_to(REPO)) if component.is_relative_to(REPO)
        else str(component),
        "cycles": env_int("BENCH_CYCLES", 25),
        "warmup_cycles": env_int("BENCH_WARMUP_CYCLES", 1),
        "settle_ms": env_int("BENCH_SETTLE_MS", 300),
        "step_repeats": env_int("BENCH_STEP_REPEATS", 10),
        "step_clients": env_int("BENCH_STEP_CLIENTS", 15),
        "sleep_ms": env_int("BENCH_SLEEP_MS", 200),
        "step_timeout": float(env_int("BENCH_STEP_TIMEOUT", 60)),
        "isolation": env_str("BENCH_ISOLATION", "per-request"),
        "command": env_str("BENCH_COMMAND", "python3 bench/autoscale_bench.py"),
    }
    out_path = Path(env_str("BENCH_OUT", str(BENCH_DIR / "results" / "autoscale.md")))
    tmp = Path(tempfile.mkdtemp(prefix="shoal-autoscale-bench-"))
    logs = tmp / "logs"
    logs.mkdir()
    stop_all_on_exit()
    load_start = loadavg()
    log(f"temporary directory {tmp}")
    cycles, cold_view, zero_problems, steps, step_problems = [], None, [], [], []
    use_sleep, manifests, log_notes = False, [], []
    failed = False
    try:
        cl = start_cluster(cfg, tmp, logs)
        log(f"control plane {cl['cp_url']}, gateway :{cl['gw_port']}, nodes "
            + ", ".join(f"{k} :{v['port']}" for k, v in cl["nodes"].items()))
        zm = manifest(cfg, ZERO_APP, ZERO_HOST, 0, 2)
        sm = manifest(cfg, STEP_APP, STEP_HOST, 1, 1)
        manifests = [zm, sm]
        (tmp / "zero.toml").write_text(zm)
        (tmp / "step.toml").write_text(sm)
        apply(cfg, cl["cp_url"], tmp / "zero.toml", logs)
        placed = {i.get("node") for i in cl["api"].instances(ZERO_APP)}
        log(f"{ZERO_APP} deployed with 2 replicas on {sorted(placed, key=str)}; "
            "waiting for it to scale to zero")
        if len(placed) < 2:
            zero_problems.append(f"the 2 initial replicas of {ZERO_APP} landed on "
                                 f"{sorted(placed, key=str)}, not on both nodes")
        try:
            cycles, probs = scale_from_zero(cfg, cl)
            zero_problems += probs
        except RuntimeError as e:
            failed = True
            zero_problems.append(f"failed: {e}")
            log(f"scale from zero FAILED: {e}")
        time.sleep(2.5)  # the gateway reports cold starts once a second
        view = cl["api"].app_view(ZERO_APP) or {}
        cold_view = view.get("cold-starts")
        log(f"control plane cold-starts for {ZERO_APP}: {cold_view}")

        try:
            apply(cfg, cl["cp_url"], tmp / "step.toml", logs)
            wait_idle_at_one(cl, 1.0)
            use_sleep = has_sleep_route(cl)
            log(f"/sleep route: {'yes' if use_sleep else 'no (falling back to wrk on /)'}")
            for rep in range(1, cfg["step_repeats"] + 1):
                # Quiet for a whole stable window so the last run's load is gone.
                wait_idle_at_one(cl, 5.0)
                steps.append(step_once(cfg, cl, use_sleep, rep, logs))
                if STEP_GOAL not in steps[-1]["ready_at"]:
                    step_problems.append(f"run {rep}: only {steps[-1]['reached']} ready "
                                         f"within {cfg['step_timeout']:.0f}s")
                if steps[-1]["errors"]:
                    step_problems.append(f"run {rep}: {len(steps[-1]['errors'])} client "
                                         f"errors, first: {steps[-1]['errors'][0]}")
                bad = {k: v for k, v in steps[-1]["statuses"].items() if k != 200}
                if bad:
                    step_problems.append(f"run {rep}: non-200 responses {bad}")
        except RuntimeError as e:
            failed = True
            step_problems.append(f"failed: {e}")
            log(f"step FAILED: {e}")
    except RuntimeError as e:
        failed = True
        zero_problems.append(f"failed: {e}")
        log(f"FAILED: {e}")
    finally:
        procs = list(Proc.running)
        stop_all()
        for p in procs:
            bad = [ln for ln in p.text().splitlines()
                   if re.search(r"\b(ERROR|WARN|panicked)\b", ln)]
            if bad:
                log_notes.append(f"{p.name}: {len(bad)} WARN/ERROR lines, first: "
                                 f"`{bad[0].strip()[:300]}`")
        keep_logs(tmp, logs, out_path.parent / "autoscale-logs")
    write_report(out_path, render(cfg, cycles, cold_view, zero_problems, steps, step_problems,
                                  use_sleep, manifests, load_start, loadavg(), log_notes))
    log(f"wrote {out_path}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

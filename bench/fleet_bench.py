#!/usr/bin/env python3
"""The control plane under a simulated fleet: thousands of nodes and
100,000 instances on one leader, with redb and with etcd as the store.

Run it through bench/fleet.sh, which builds shoal (release) first. For each
store and each fleet size it starts (with etcd: one etcd member, then) one
control plane on 127.0.0.1 and `shoal fleet-sim`, whose simulated nodes
register with the join token, heartbeat and long-poll like real nodes and
report every instance assigned to them as running at once (no wasm). Then:

  register   time until every simulated node has registered
  idle       the leader's CPU (utime + stime from /proc/PID/stat over
             FLEET_WINDOW) and the heartbeat round trip as the nodes see it,
             with no apps
  place      apps totalling FLEET_INSTANCES instances (FLEET_REPLICAS each)
             posted to /v1/apply; the time from the first post until every
             instance is reported running and the control plane has
             acknowledged the report (its heartbeat answered)
  steady     the leader's CPU and the heartbeat round trip again over
             FLEET_WINDOW, every instance running (heartbeats now carry
             the nodes' reports)
  recovery   FLEET_SILENCE_PERCENT of the nodes (at least one) fall silent
             at once; the time until every app they ran instances of has
             as many instances running elsewhere as before, reported and
             acknowledged

It writes bench/results/fleet.md and prints it.

Knobs (environment):
  SHOAL_BIN              the shoal binary (required)
  ETCD_BIN               the etcd binary (required for the etcd store)
  FLEET_STORES           redb,etcd
  FLEET_NODES            1000,5000 (fleet sizes)
  FLEET_INSTANCES        100000
  FLEET_REPLICAS         100 (replicas an app; apps = instances / replicas)
  FLEET_CAPACITY_FACTOR  2 (each node offers this many times its share of
                         the instances, so that lost ones fit elsewhere)
  FLEET_SILENCE_PERCENT  1
  FLEET_WINDOW           15s (the CPU and latency windows)
  FLEET_TIMEOUT          900s (for registering, placing, recovering)
  FLEET_HEARTBEAT        the control plane's --heartbeat (its default if unset)
  FLEET_LEASE            the control plane's --lease (its default if unset)
  FLEET_MAX_RENEWALS     the control plane's --max-renewals-per-second (its
                         default if unset; 0: every node renews every
                         --heartbeat, as before that flag)
  BENCH_KEEP_TMP         keep the temporary directory (logs, data)
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchlib  # noqa: E402
from benchlib import (HOST, Api, Proc, env_int, env_str, free_port, log,  # noqa: E402
                      md_head, md_row, parse_duration_s, proc_cpu_s)

MODULE = benchlib.REPO / "examples/wasm-apps/hello.wasm"
START_TIMEOUT_S = 120
APPLY_BATCH = 50


class Sim:
    """`shoal fleet-sim`: its JSON lines go to a file; commands go to its
    stdin."""

    def __init__(self, shoal: str, cp_url: str, join: str, nodes: int, capacity: str,
                 out: Path, err: Path):
        self.out_path = out
        self._out = open(out, "wb")
        self._err = open(err, "wb")
        argv = [shoal, "fleet-sim", "--join", cp_url, "--nodes", str(nodes),
                "--capacity", capacity, "--progress-every", "500ms"]
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=self._out,
                                     stderr=self._err, start_new_session=True,
                                     env={**os.environ, "SHOAL_JOIN_TOKEN": join,
                                          "SHOAL_LOG": "warn"})
        self._seen = 0

    def events(self) -> list[dict]:
        out = []
        with open(self.out_path, "rb") as f:
            for line in f.read().decode(errors="replace").splitlines():
                try:
                    out.append(json.loads(line))
                except json.JSONDecodeError:
                    continue
        return out

    def last(self, kind: str, after: int = 0) -> dict | None:
        evs = [e for e in self.events()[after:] if e.get("event") == kind]
        return evs[-1] if evs else None

    def wait(self, kind: str, cond, timeout: float, after: int = 0) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"fleet-sim exited with {self.proc.returncode}")
            for e in self.events()[after:]:
                if e.get("event") == kind and cond(e):
                    return e
            if time.monotonic() > deadline:
                last = self.last("progress")
                raise RuntimeError(f"fleet-sim: no {kind} as expected within {timeout:.0f} s "
                                   f"(last progress: {last})")
            time.sleep(0.05)

    def send(self, line: str) -> int:
        """Sends a command; the number of events before it (for wait's after)."""
        n = len(self.events())
        assert self.proc.stdin is not None
        self.proc.stdin.write((line + "\n").encode())
        self.proc.stdin.flush()
        return n

    def stop(self) -> None:
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
                self.proc.wait(timeout=15)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=15)
        self._out.close()
        self._err.close()


def start_etcd(etcd: str, tmp: Path, logs: Path) -> tuple[Proc, str]:
    client, peer = free_port(), free_port()
    c_url, p_url = f"http://{HOST}:{client}", f"http://{HOST}:{peer}"
    p = Proc("etcd", [etcd, "--name", "fleet", "--data-dir", str(tmp / "etcd"),
                      "--listen-client-urls", c_url, "--advertise-client-urls", c_url,
                      "--listen-peer-urls", p_url, "--initial-advertise-peer-urls", p_url,
                      "--initial-cluster", f"fleet={p_url}",
                      "--initial-cluster-state", "new",
                      "--quota-backend-bytes", str(8 << 30),
                      "--logger", "zap", "--log-outputs", "stderr"],
             logs / "etcd.log")
    p.wait_for_line(r"serving client traffic|ready to serve client requests", START_TIMEOUT_S)
    return p, f"{HOST}:{client}"


def start_cp(shoal: str, tmp: Path, logs: Path, store: str | None) -> tuple[Proc, Api]:
    data = tmp / "cp"
    extra = ["--compile-for-nodes", "off"]
    if store:
        extra += ["--store", f"etcd://{store}"]
    if os.environ.get("FLEET_HEARTBEAT"):
        extra += ["--heartbeat", os.environ["FLEET_HEARTBEAT"]]
    if os.environ.get("FLEET_LEASE"):
        extra += ["--lease", os.environ["FLEET_LEASE"]]
    if os.environ.get("FLEET_MAX_RENEWALS"):
        extra += ["--max-renewals-per-second", os.environ["FLEET_MAX_RENEWALS"]]
    p = Proc("control-plane", [shoal, "control-plane", "--plain-http", "--listen", f"{HOST}:0",
                               "--data-dir", str(data), *extra], logs / "control-plane.log")
    url = p.wait_for_line(r"Control plane listening on " + benchlib.URL,
                          START_TIMEOUT_S).group(1).rstrip("/")
    # With etcd, the tokens are written once this replica leads.
    benchlib.poll_until("the control plane's tokens",
                        lambda: (data / "join.token").exists() and (data / "admin.token").exists(),
                        START_TIMEOUT_S, 0.05)
    admin = (data / "admin.token").read_text().strip()
    benchlib.TOKENS[url] = (admin, (data / "join.token").read_text().strip())
    return p, Api(url, timeout=120.0, token=admin)


def window(sim: Sim, cp: Proc, etcd: Proc | None, seconds: float) -> dict:
    """The leader's CPU (cores), etcd's, and the heartbeats over `seconds`."""
    who = {"cpu_cores": cp.pid, "etcd_cores": etcd.pid if etcd else None}
    sim.send("stats")
    c0 = {k: proc_cpu_s(p) if p else None for k, p in who.items()}
    t0 = time.monotonic()
    time.sleep(seconds)
    c1 = {k: proc_cpu_s(p) if p else None for k, p in who.items()}
    t1 = time.monotonic()
    after = sim.send("stats")
    stats = sim.wait("stats", lambda e: True, 30, after=after)
    out = {k: (c1[k] - c0[k]) / (t1 - t0) if c0[k] is not None and c1[k] is not None else None
           for k in who}
    return {**out, "hb": stats["hb"], "hb_errors": stats["hb_errors"]}


def rss_mib(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def ready_total(api: Api) -> int | None:
    """Ready instances, as the control plane counts them (its app list)."""
    try:
        return sum(a.get("ready", 0) for a in api.get("/v1/apps?namespace=*"))
    except OSError:
        return None


def wait_placed(api: Api, sim: Sim, instances: int, t0: float, deadline: float) -> dict:
    """When the control plane first counted every instance ready, and when
    the simulated nodes' heartbeats reporting them were all answered."""
    out: dict = {"place_s": None, "place_acked_s": None, "ready": 0, "acked": 0}
    while time.monotonic() < deadline:
        now = time.monotonic()
        last = sim.last("progress")
        out["acked"] = last["running"] if last else 0
        if out["place_acked_s"] is None and out["acked"] >= instances:
            out["place_acked_s"] = now - t0
        if out["place_s"] is None:
            ready = ready_total(api)
            out["ready"] = ready if ready is not None else out["ready"]
            if out["ready"] >= instances:
                out["place_s"] = time.monotonic() - t0
        if out["place_s"] is not None and (out["place_acked_s"] is not None
                                           or now - t0 > out["place_s"] + 60):
            break
        time.sleep(0.5)
    return out


def nodes_lost(cp: Proc) -> int:
    """Nodes the control plane has judged lost so far (its log)."""
    try:
        return cp.log_path.read_text(errors="replace").count("reason=NodeLost")
    except OSError:
        return 0


def wait_settled(api: Api, instances: int, deadline: float) -> float | None:
    """Waits until the control plane counts exactly `instances` ready (no
    surge of a move or a rollout in progress), twice in a row; the seconds
    waited, or None if it did not settle by `deadline`."""
    t, seen = time.monotonic(), 0
    while time.monotonic() < deadline:
        seen = seen + 1 if ready_total(api) == instances else 0
        if seen >= 2:
            return time.monotonic() - t
        time.sleep(0.5)
    return None


def post_apps(api: Api, apps: int, replicas: int, deadline: float) -> None:
    digest = api.upload_module(MODULE.read_bytes())
    for start in range(0, apps, APPLY_BATCH):
        batch = [{"manifest": {"name": f"fleet-{i:05d}", "module": MODULE.name,
                               "replicas": replicas}, "digest": digest}
                 for i in range(start, min(apps, start + APPLY_BATCH))]
        if time.monotonic() > deadline:
            raise RuntimeError(f"only {start:,} of {apps:,} apps posted in time")
        # An apply of the same manifests is idempotent: one whose
        # connection was reset (the leader's cores and listen queue are
        # shared with thousands of simulated nodes) is sent again.
        for attempt in range(3):
            try:
                api.call("POST", "/v1/apply", {"apps": batch})
                break
            except ConnectionResetError:
                if attempt == 2:
                    raise
                log(f"apply of apps {start:,}.. reset; sending it again")
                time.sleep(1)


def one_run(cfg: dict, store: str, nodes: int, tmp: Path, logs: Path) -> dict:
    shoal, timeout, win = cfg["shoal"], cfg["timeout"], cfg["window"]
    instances, replicas = cfg["instances"], cfg["replicas"]
    apps = max(1, instances // replicas)
    instances = apps * replicas
    per_node = max(1, -(-instances * cfg["factor"] // nodes))
    res: dict = {"store": store, "nodes": nodes, "instances": instances, "apps": apps,
                 "capacity": per_node}
    procs: list = []
    sim = None
    try:
        etcd_addr, etcd = None, None
        if store == "etcd":
            etcd, etcd_addr = start_etcd(cfg["etcd"], tmp, logs)
            procs.append(etcd)
        cp, api = start_cp(shoal, tmp, logs, etcd_addr)
        procs.append(cp)
        t = time.monotonic()
        sim = Sim(shoal, api.url, benchlib.TOKENS[api.url][1], nodes,
                  f"memory=64TiB,instances={per_node}", logs / "fleet-sim.jsonl",
                  logs / "fleet-sim.log")
        sim.wait("progress", lambda e: e["registered"] >= nodes, timeout)
        res["register_s"] = time.monotonic() - t
        log(f"{store} {nodes}: registered in {res['register_s']:.1f} s")

        res["idle"] = window(sim, cp, etcd, win)
        log(f"{store} {nodes}: idle {res['idle']}")

        t = time.monotonic()
        post_apps(api, apps, replicas, t + timeout)
        res["posted_s"] = time.monotonic() - t
        log(f"{store} {nodes}: {apps} apps posted in {res['posted_s']:.1f} s")
        placed = wait_placed(api, sim, instances, t, t + timeout)
        res.update(placed)
        if placed.get("place_s") is None:
            raise RuntimeError(f"not placed within {timeout:.0f} s: {placed['ready']:,} of "
                               f"{instances:,} instances ready as the control plane says, "
                               f"{placed['acked']:,} acknowledged to the nodes")
        log(f"{store} {nodes}: all ready after {res['place_s']:.1f} s "
            f"(acknowledged to the nodes: {fmt_s(res.get('place_acked_s'))})")

        res["steady"] = window(sim, cp, etcd, win)
        res["rss_mib"] = rss_mib(cp.pid)
        log(f"{store} {nodes}: steady {res['steady']}")
        # Nodes judged lost while they were alive (the simulator and the
        # leader share the machine's cores: under the load of placing, a
        # starved simulator falls silent); their replicas move back
        # (rebalancing) before the silence is timed.
        res["lost_before"] = nodes_lost(cp)
        res["settle_s"] = wait_settled(api, instances, time.monotonic() + timeout)
        log(f"{store} {nodes}: {res['lost_before']} nodes judged lost before the silence; "
            f"settled {fmt_s(res['settle_s'])} later")

        k = max(1, nodes * cfg["silence_pct"] // 100)
        after = sim.send(f"silence {k}")
        silenced = sim.wait("silenced", lambda e: True, 60, after=after)
        rec = sim.wait("recovered", lambda e: True, timeout, after=after)
        res["silenced"] = {"nodes": silenced["nodes"], "instances": silenced["instances"]}
        res["recovery_s"] = rec["after_ms"] / 1000
        # When the last node was handed a replacement (the rest is the
        # nodes' reports being answered).
        res["recovery_assigned_s"] = (rec["assigned_after_ms"] / 1000
                                      if "assigned_after_ms" in rec else None)
        log(f"{store} {nodes}: {silenced['nodes']} nodes silenced "
            f"({silenced['instances']} instances), recovered in {res['recovery_s']:.2f} s "
            f"(the last replacement handed to its node after "
            f"{fmt_s(res['recovery_assigned_s'])})")
        last = sim.last("progress")
        res["sim_cpu_s"] = last["cpu_s"] if last else None
    except Exception as e:  # noqa: BLE001 - reported in the table
        res["error"] = str(e).splitlines()[0][:300]
        log(f"{store} {nodes}: FAILED: {e}")
    finally:
        if sim:
            sim.stop()
        for p in reversed(procs):
            p.stop()
    return res


def fmt_s(v) -> str:
    return "n/a" if v is None else f"{v:.2f} s"


def fmt_hb(w: dict | None, key: str) -> str:
    if not w or key not in w.get("hb", {}):
        return "n/a"
    return benchlib.fmt_ms(w["hb"][key])


def fmt_cpu(w: dict | None, key: str = "cpu_cores") -> str:
    if not w or w.get(key) is None:
        return "n/a"
    return f"{w[key]:.2f}"


def report(cfg: dict, runs: list[dict]) -> str:
    lines = ["# A simulated fleet: the control plane at thousands of nodes", "",
             f"`{cfg['command']}` — shoal at {benchlib.git_rev()}, "
             f"{benchlib.machine_summary()}, {benchlib.mem_total()}; load average before: "
             f"{cfg['load']}, after: {benchlib.loadavg()}.", "",
             "One control plane (the leader) and `shoal fleet-sim` (every simulated node, "
             "in one process) on the same machine, over plain HTTP on 127.0.0.1. "
             f"Heartbeat every {cfg['heartbeat']} at least, lease {cfg['lease']}, "
             f"renewals a second planned for: {cfg['max_renewals']} (past it nodes renew "
             "less often, at most a quarter of the lease apart). "
             f"Apps of {cfg['replicas']} replicas; each node offers "
             f"{cfg['factor']}x its share of the instances. CPU: the leader's utime + stime "
             f"over {cfg['window']:.0f} s, in cores (idle: no apps; steady: every instance running; etcd CPU: the etcd member's, steady); hb: a heartbeat's round trip as the "
             "simulated node sees it (the simulator shares the machine's cores with the "
             "leader, so this includes waiting for a core).", ""]
    lines += md_head(["store", "nodes", "apps x replicas", "register", "posted", "ready",
                      "acked", "CPU idle", "CPU steady", "etcd CPU", "hb p50", "hb p99",
                      "hb errors", "lost while placing", "silenced", "recovery", "leader RSS"],
                     "lrrrrrrrrrrrrrlrr")
    for r in runs:
        st = r.get("steady")
        errs = (r.get("idle") or {}).get("hb_errors", 0) + (st or {}).get("hb_errors", 0) \
            if r.get("idle") else "n/a"
        sil = r.get("silenced")
        lines.append(md_row(
            r["store"], f"{r['nodes']:,}", f"{r['apps']:,} x {r['instances'] // r['apps']:,}",
            fmt_s(r.get("register_s")), fmt_s(r.get("posted_s")), fmt_s(r.get("place_s")),
            fmt_s(r.get("place_acked_s")), fmt_cpu(r.get("idle")), fmt_cpu(st),
            fmt_cpu(st, "etcd_cores"), fmt_hb(st, "p50_ms"), fmt_hb(st, "p99_ms"), errs,
            f"{r['lost_before']:,}" if r.get("lost_before") is not None else "n/a",
            f"{sil['nodes']} nodes, {sil['instances']:,} inst." if sil else "n/a",
            fmt_s(r.get("recovery_s")),
            f"{r['rss_mib']:.0f} MiB" if r.get("rss_mib") else "n/a"))
    lines.append("")
    lines.append("posted: the time to POST every app to /v1/apply (50 a request); ready: from "
                 "the first POST until the control plane counts every instance ready (its app "
                 "list); acked: until every simulated node's heartbeat reporting them was "
                 "answered; recovery: from the silence until every app the silenced nodes "
                 "ran is back to as many running instances, acknowledged to the nodes. "
                 "hb p50/p99 and errors are over the steady window (every instance running); "
                 "errors count heartbeats that failed or took longer than the node's 2 s "
                 "limit, in both windows; lost while placing: nodes the control plane judged "
                 "lost before the silence, every one of them alive (the simulator shares the "
                 "two cores and can starve while everything is placed); the silence waits "
                 "until their replicas have moved back. Idle-window heartbeats (no instances):")
    lines.append("")
    for r in runs:
        w = r.get("idle")
        if w:
            lines.append(f"- {r['store']}, {r['nodes']:,} nodes: p50 {fmt_hb(w, 'p50_ms')}, "
                         f"p99 {fmt_hb(w, 'p99_ms')}, max {fmt_hb(w, 'max_ms')}, "
                         f"{w['hb']['count']:,} heartbeats")
    failed = [r for r in runs if r.get("error")]
    if failed:
        lines += ["", "Failed runs:", ""]
        lines += [f"- {r['store']}, {r['nodes']:,} nodes: {r['error']}" for r in failed]
    lines.append("")
    return "\n".join(lines)


def main() -> None:
    benchlib.set_tag("fleet")
    benchlib.stop_all_on_exit()
    stores = [s.strip() for s in env_str("FLEET_STORES", "redb,etcd").split(",") if s.strip()]
    for s in stores:
        if s not in ("redb", "etcd"):
            raise SystemExit(f"FLEET_STORES: unknown store {s!r} (redb, etcd)")
    sizes = [int(x) for x in env_str("FLEET_NODES", "1000,5000").split(",") if x.strip()]
    cfg = {
        "shoal": benchlib.find_bin("SHOAL_BIN", "shoal"),
        "etcd": benchlib.find_bin("ETCD_BIN", "etcd") if "etcd" in stores else None,
        "instances": env_int("FLEET_INSTANCES", 100_000, positive=True),
        "replicas": env_int("FLEET_REPLICAS", 100, positive=True),
        "factor": env_int("FLEET_CAPACITY_FACTOR", 2, positive=True),
        "silence_pct": env_int("FLEET_SILENCE_PERCENT", 1, positive=True),
        "window": parse_duration_s(env_str("FLEET_WINDOW", "15s")),
        "timeout": parse_duration_s(env_str("FLEET_TIMEOUT", "900s")),
        "heartbeat": env_str("FLEET_HEARTBEAT", "250ms (default)"),
        "lease": env_str("FLEET_LEASE", "2s (default)"),
        "max_renewals": env_str("FLEET_MAX_RENEWALS", "10000 (default)"),
        "command": env_str("BENCH_COMMAND", "bash bench/fleet.sh"),
        "load": benchlib.loadavg(),
    }
    tmp = Path(tempfile.mkdtemp(prefix="shoal-fleet-"))
    logs = tmp / "logs"
    (benchlib.BENCH_DIR / "results").mkdir(parents=True, exist_ok=True)
    runs = []
    try:
        for nodes in sizes:
            for store in stores:
                d = tmp / f"{store}-{nodes}"
                runs.append(one_run(cfg, store, nodes, d, logs / f"{store}-{nodes}"))
                # Write as we go: a long run interrupted keeps what it measured.
                (benchlib.BENCH_DIR / "results" / "fleet.json").write_text(
                    json.dumps(runs, indent=1))
    finally:
        benchlib.keep_logs(tmp, logs, benchlib.BENCH_DIR / "results" / "fleet-logs")
    benchlib.write_report(benchlib.BENCH_DIR / "results" / "fleet.md", report(cfg, runs))
    if any(r.get("error") for r in runs):
        sys.exit(1)


if __name__ == "__main__":
    main()

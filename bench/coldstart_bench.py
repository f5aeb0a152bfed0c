#!/usr/bin/env python3
"""Cold-start benchmark: compile once for the cluster, start anywhere.

One run, one TLS control plane (which compiles each module once for the
nodes and signs the artifact) and one gateway on 127.0.0.1, the 13 MB
componentize-js component of the examples (examples/wasm-apps/js-app.wasm),
and four measurements:

  fresh   scale from zero onto a node that has never run the app: for each
          cycle a new node with an empty cache and a label of its own, and an
          app at zero (autoscale min = 0) whose node selector names only that
          node; one GET through the gateway, timed from writing the request
          to the end of the answer. The node loads the control plane's
          artifact (fetched, signature checked, mapped).
  warm    scale from zero onto a node that ran the app before (its compiled
          code is in memory): the same app, cycled through zero.
  local   today's path, compile on the node: like `fresh`, but the node
          runs with `--artifacts local` and the control plane of this
          phase with `--compile-for-nodes off`.
  spread  `shoal apply --wait` of a 3-replica app to 3 nodes with empty
          caches, for a module no process has compiled (the component with
          a custom section of its own per repeat, so its digest is new), from
          the start of the command to its return (every replica ready);
          with the control plane compiling (once) and, for comparison, with
          every node compiling for itself. Beside it, the time of one
          compile (the control plane's log of it).

Standard library only. Knobs (environment):

  BENCH_CYCLES         fresh-node and warm cycles        (default 10)
  BENCH_LOCAL_CYCLES   compile-on-the-node cycles        (default 3)
  BENCH_SPREAD_REPEATS apply-to-ready repeats per mode   (default 3)
  BENCH_SETTLE_MS      pause before each timed request   (default 300)
  BENCH_PHASES         which of fresh,warm,spread,local to run (default all)
  SHOAL_BIN            the shoal binary
  COMPONENT            the component (default examples/wasm-apps/js-app.wasm)
  BENCH_OUT            markdown output (default bench/results/coldstart.md)
  BENCH_KEEP_TMP       keep the temporary directory if set
"""

from __future__ import annotations

import datetime
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchlib  # noqa: E402
from benchlib import (  # noqa: E402
    BENCH_DIR, HOST, REPO, Api, admin_env, env_int, env_str, find_bin, fmt_ms, keep_logs, leb128,
    poll_until,
    loadavg, log, machine_summary, md_head, md_row, percentile, start_control_plane,
    start_gateway, start_node, stop_all_on_exit, url_port, write_report,
)

START_TIMEOUT_S = 120.0


def wait_until(what: str, cond, timeout: float = START_TIMEOUT_S):
    return poll_until(what, cond, timeout, POLL_S)
POLL_S = 0.02
GOAL_FRESH_P50_MS = 100.0
BODY = b"hello from javascript"


def timed_get(port: int, host: str, timeout: float = 180.0) -> dict:
    """One GET / over a fresh connection, timed from writing the request to
    the end of the answer."""
    req = f"GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode()
    s = socket.create_connection((HOST, port), timeout=timeout)
    try:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        t0 = time.perf_counter()
        s.sendall(req)
        data = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
        total = (time.perf_counter() - t0) * 1000
    finally:
        s.close()
    m = re.match(rb"HTTP/1\.[01] (\d{3})", data)
    return {"status": int(m.group(1)) if m else None,
            "body": data.partition(b"\r\n\r\n")[2], "total_ms": total}


def manifest(name: str, module: Path, host: str, selector: str, replicas: int = 0,
             autoscale: bool = True) -> str:
    key, _, value = selector.partition("=")
    text = f"""name = "{name}"
module = "{module}"
replicas = {replicas}
node-selector = {{ {key} = "{value}" }}

[[routes]]
host = "{host}"
path = "/"
"""
    if autoscale:
        text += """
[autoscale]
min = 0
max = 1
scale-to-zero-after = "1s"
scale-down-delay = "1s"
"""
    return text


def apply(shoal: str, cp_url: str, path: Path, logs: Path, wait: bool = True) -> float:
    """`shoal apply -f PATH [--wait]`; seconds it took. Raises on failure."""
    argv = [shoal, "--server", cp_url, "apply", "-f", str(path)]
    if wait:
        argv += ["--wait", "--timeout", "300s"]
    t0 = time.perf_counter()
    p = subprocess.run(argv, capture_output=True, text=True, timeout=600, cwd=REPO,
                       env={**os.environ, **admin_env(cp_url)})
    took = time.perf_counter() - t0
    with open(logs / "apply.log", "a") as f:
        f.write("$ " + " ".join(argv) + "\n" + p.stdout + p.stderr)
    if p.returncode != 0:
        raise RuntimeError(f"apply {path.name} failed: {p.stderr.strip()[-400:]}")
    return took


def delete(shoal: str, cp_url: str, name: str, logs: Path) -> None:
    argv = [shoal, "--server", cp_url, "delete", "app", name]
    p = subprocess.run(argv, capture_output=True, text=True, timeout=60, cwd=REPO,
                       env={**os.environ, **admin_env(cp_url)})
    with open(logs / "apply.log", "a") as f:
        f.write("$ " + " ".join(argv) + "\n" + p.stdout + p.stderr)


def node_ready(api: Api, name: str) -> bool:
    return any(n["name"] == name and n.get("state") in ("ready", "Ready")
               for n in api.get("/v1/nodes"))


def routed(api: Api, app: str) -> bool:
    """The route table (what the gateway follows) lists the app."""
    return any(a.get("app", {}).get("name") == app
               for a in api.get("/v1/routes").get("apps", []))


def idle(api: Api, app: str) -> bool:
    """No instance, no endpoint: the app is at zero."""
    if api.instances(app):
        return False
    for a in api.get("/v1/routes").get("apps", []):
        if a.get("app", {}).get("name") == app:
            return not any(b.get("endpoints") for b in a.get("backends", []))
    return True


STARTED = re.compile(r"instance started.*?\bstart_us=(\d+).*?\bsource=(\w+)")


def started_lines(text: str) -> list[tuple[int, str]]:
    return [(int(us), src) for us, src in STARTED.findall(text)]


def variant(component: Path, tag: str, dest: Path) -> Path:
    """The component with a custom section named `tag` appended: the same
    code under a digest nobody has compiled."""
    name = tag.encode()
    payload = leb128(len(name)) + name + b"\0"
    dest.write_bytes(component.read_bytes() + b"\x00" + leb128(len(payload)) + payload)
    return dest


class Cluster:
    def __init__(self, shoal: str, tmp: Path, logs: Path, tag: str, compile_for_nodes: bool):
        self.shoal, self.tmp, self.logs, self.tag = shoal, tmp, logs, tag
        extra = [] if compile_for_nodes else ["--compile-for-nodes", "off"]
        self.cp, self.url = start_control_plane(
            shoal, tmp / f"cp-{tag}", logs / f"control-plane-{tag}.log", START_TIMEOUT_S,
            extra=extra, tls=True)
        self.api = Api(self.url, timeout=30)
        self.gw, gw_url = start_gateway(shoal, self.url, logs / f"gateway-{tag}.log",
                                        START_TIMEOUT_S)
        self.gw_port = url_port(gw_url)
        self.nodes: dict[str, benchlib.Proc] = {}

    def node(self, name: str, labels: list[str], extra: list[str] | None = None):
        p, _ = start_node(self.shoal, self.url, name, self.tmp / f"cache-{name}",
                          self.logs / f"{name}.log", START_TIMEOUT_S, tls=True,
                          labels=labels, extra=extra)
        self.nodes[name] = p
        wait_until(f"node {name} to be ready", lambda: node_ready(self.api, name))
        return p

    def write(self, name: str, text: str) -> Path:
        path = self.tmp / f"{name}.toml"
        path.write_text(text)
        return path

    def stop(self):
        for p in [*self.nodes.values(), self.gw, self.cp]:
            p.stop()


def cold_get(cl: Cluster, app: str, host: str, settle_ms: int) -> dict:
    wait_until(f"{app} in the route table", lambda: routed(cl.api, app))
    time.sleep(settle_ms / 1000)
    r = timed_get(cl.gw_port, host)
    if r["status"] != 200 or BODY not in r["body"]:
        raise RuntimeError(f"{app}: status {r['status']}, body {r['body'][:200]!r}")
    return r


def fresh_cycles(cl: Cluster, module: Path, cycles: int, settle_ms: int, kind: str,
                 node_extra: list[str] | None) -> list[dict]:
    rows = []
    for i in range(cycles):
        name = f"{kind}-{i}"
        node = cl.node(name, [f"slot={name}"], node_extra)
        path = cl.write(name, manifest(name, module, f"{name}.bench", f"slot={name}"))
        apply(cl.shoal, cl.url, path, cl.logs, wait=False)
        r = cold_get(cl, name, f"{name}.bench", settle_ms)
        started = wait_until("the node's start line", lambda: started_lines(node.text()), 10)
        r.update(node_start_ms=started[0][0] / 1000, source=started[0][1])
        rows.append(r)
        log(f"{kind} {i + 1}/{cycles}: {r['total_ms']:.1f} ms through the gateway "
            f"(node start {r['node_start_ms']:.1f} ms, code from {r['source']})")
        delete(cl.shoal, cl.url, name, cl.logs)
        node.stop()
        del cl.nodes[name]
    return rows


def warm_cycles(cl: Cluster, module: Path, cycles: int, settle_ms: int) -> list[dict]:
    node = cl.node("warm", ["slot=warm"])
    path = cl.write("warm", manifest("warm", module, "warm.bench", "slot=warm"))
    apply(cl.shoal, cl.url, path, cl.logs, wait=False)
    cold_get(cl, "warm", "warm.bench", settle_ms)  # untimed: the first load
    rows = []
    for i in range(cycles):
        wait_until("warm to scale to zero", lambda: idle(cl.api, "warm"), 120)
        seen = len(started_lines(node.text()))
        r = cold_get(cl, "warm", "warm.bench", settle_ms)
        lines = wait_until("the node's start line",
                           lambda: started_lines(node.text())[seen:], 10)
        r.update(node_start_ms=lines[0][0] / 1000, source=lines[0][1])
        rows.append(r)
        log(f"warm {i + 1}/{cycles}: {r['total_ms']:.1f} ms through the gateway "
            f"(node start {r['node_start_ms']:.1f} ms, code from {r['source']})")
    node.stop()
    del cl.nodes["warm"]
    return rows


# Every process that compiles (control plane or node) logs this line once.
COMPILED = re.compile(r"compile cache miss: compiled module.*?\belapsed_ms=(\d+)")


def spread(cl: Cluster, component: Path, repeats: int, mode: str,
           node_extra: list[str] | None) -> list[dict]:
    names = [f"{mode}-spread-{k}" for k in range(3)]
    for n in names:
        cl.node(n, [f"group={mode}-spread"], node_extra)
    rows = []
    for r in range(repeats):
        app = f"{mode}-s{r}"
        module = variant(component, f"shoal-bench-{mode}-{r}-{time.time_ns()}",
                         cl.tmp / f"{app}.wasm")
        path = cl.write(app, manifest(app, module, f"{app}.bench", f"group={mode}-spread",
                                      replicas=3, autoscale=False))
        before = {n: len(COMPILED.findall(cl.nodes[n].text())) for n in names}
        cp_before = len(COMPILED.findall(cl.cp.text()))
        took = apply(cl.shoal, cl.url, path, cl.logs)
        placed = sorted(i.get("node") or "" for i in cl.api.instances(app))
        # One compile's time: the control plane's, else the nodes' own.
        compiles = [int(x) for x in COMPILED.findall(cl.cp.text())[cp_before:]]
        for n in names:
            compiles += [int(x) for x in COMPILED.findall(cl.nodes[n].text())[before[n]:]]
        row = {"apply_s": took, "placed": placed, "compiles": compiles}
        rows.append(row)
        log(f"spread {mode} {r + 1}/{repeats}: every replica ready {took:.2f} s after apply "
            f"(on {placed}); compiles: {compiles} ms")
        delete(cl.shoal, cl.url, app, cl.logs)
    for n in names:
        cl.nodes.pop(n).stop()
    return rows


def stats(xs: list[float]) -> tuple:
    return (percentile(xs, 50), percentile(xs, 90), min(xs) if xs else None,
            max(xs) if xs else None)


def render(cfg: dict, res: dict, load: tuple[str, str]) -> str:
    when = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    size = Path(cfg["component"]).stat().st_size / 1e6
    out = [
        "# Cold-start benchmark: compile once for the cluster, start anywhere",
        "",
        f"Generated {when} by `bench/coldstart_bench.py`.",
        "",
        f"- Machine: {machine_summary()}; load average at start {load[0]}, at end {load[1]}.",
        f"- shoal: `{cfg['shoal']}` ({benchlib.git_rev()}); command: `{cfg['command']}`.",
        f"- Component: `{cfg['component_rel']}` ({size:.1f} MB, componentize-js).",
        "- One control plane over TLS, one gateway, nodes started per phase (mutual TLS); "
        "every process on 127.0.0.1 and the same 2 cores.",
        "",
        "## Scale from zero through the gateway",
        "",
        "From writing `GET /` (fresh connection) to the end of the answer, for an app at "
        "zero; \"node start\" is the node's own time from assignment to a linked instance "
        "(its `instance started` log line).",
        "",
        *md_head(["path", "cycles", "p50", "p90", "min", "max", "node start p50",
                  "code from", "vs fresh"], "lrrrrrrll"),
    ]
    fresh_p50 = percentile([r["total_ms"] for r in res.get("fresh", [])], 50)
    labels = {
        "fresh": "fresh node, artifact from the control plane",
        "warm": "node that ran the app (compiled code in memory)",
        "local": "fresh node compiling for itself (`--artifacts local`)",
    }
    for key in ("fresh", "warm", "local"):
        rows = res.get(key) or []
        if not rows:
            out.append(md_row(labels[key], 0, "n/a", "", "", "", "", "", ""))
            continue
        xs = [r["total_ms"] for r in rows]
        p50, p90, lo, hi = stats(xs)
        ratio = f"{p50 / fresh_p50:.2f}×" if fresh_p50 else "n/a"
        sources = sorted({r["source"] for r in rows})
        out.append(md_row(labels[key], len(rows), fmt_ms(p50), fmt_ms(p90), fmt_ms(lo),
                          fmt_ms(hi), fmt_ms(percentile([r["node_start_ms"] for r in rows], 50)),
                          ", ".join(sources), ratio))
    verdict = ("met" if fresh_p50 is not None and fresh_p50 < GOAL_FRESH_P50_MS else "NOT met")
    out += ["", f"Goal: fresh-node p50 under {GOAL_FRESH_P50_MS:.0f} ms: **{verdict}**.", ""]

    out += [
        "## `shoal apply` to every replica ready, 3 replicas on 3 fresh nodes",
        "",
        "A module nobody has compiled (the component plus a custom section of its own). "
        "\"one compile\" is the compile's own time as the process that compiled logged it.",
        "",
        *md_head(["who compiles", "repeats", "apply to all ready (median)", "each",
                  "compiles (ms each)", "ready ÷ one compile"], "lrrlll"),
    ]
    for key, label in (("spread_cluster", "the control plane, once"),
                       ("spread_local", "each node, for itself")):
        rows = res.get(key) or []
        if not rows:
            out.append(md_row(label, 0, "n/a", "", "", ""))
            continue
        med = statistics.median(r["apply_s"] for r in rows)
        one = statistics.median(min(r["compiles"]) for r in rows if r["compiles"]) / 1000 \
            if any(r["compiles"] for r in rows) else None
        out.append(md_row(
            label, len(rows), f"{med:.2f} s", ", ".join(f"{r['apply_s']:.2f}" for r in rows),
            "; ".join(",".join(str(c) for c in r["compiles"]) for r in rows),
            f"{med / one:.2f}" if one else "n/a"))
    if res.get("problems"):
        out += ["", "## Problems", ""] + [f"- {p}" for p in res["problems"]]
    return "\n".join(out) + "\n"


def main() -> int:
    shoal = find_bin("SHOAL_BIN", "shoal")
    component = Path(env_str("COMPONENT", str(REPO / "examples/wasm-apps/js-app.wasm"))).resolve()
    if not component.exists():
        raise SystemExit(f"{component} is missing: build it with "
                         "examples/wasm-apps/build.sh js-app")
    cfg = {
        "shoal": shoal, "component": str(component),
        "component_rel": str(component.relative_to(REPO)) if component.is_relative_to(REPO)
        else str(component),
        "cycles": env_int("BENCH_CYCLES", 10, positive=True),
        "local_cycles": env_int("BENCH_LOCAL_CYCLES", 3, positive=True),
        "spread_repeats": env_int("BENCH_SPREAD_REPEATS", 3, positive=True),
        "settle_ms": env_int("BENCH_SETTLE_MS", 300),
        "command": env_str("BENCH_COMMAND", "python3 bench/coldstart_bench.py"),
        "phases": set(env_str("BENCH_PHASES", "fresh,warm,spread,local").split(",")),
    }
    out_path = Path(env_str("BENCH_OUT", str(BENCH_DIR / "results" / "coldstart.md")))
    tmp = Path(tempfile.mkdtemp(prefix="shoal-coldstart-bench-"))
    logs = tmp / "logs"
    logs.mkdir()
    stop_all_on_exit()
    load_start = loadavg()
    res: dict = {"problems": []}
    try:
        cl = Cluster(shoal, tmp, logs, "cluster", compile_for_nodes=True)
        # The control plane compiles the module once, at its first apply.
        prime = cl.write("prime", manifest("prime", component, "prime.bench", "slot=none"))
        apply(shoal, cl.url, prime, logs, wait=False)
        cl.cp.wait_for_line(r"artifact ready for the nodes", START_TIMEOUT_S)
        phases = cfg["phases"]
        if "fresh" in phases:
            res["fresh"] = fresh_cycles(cl, component, cfg["cycles"], cfg["settle_ms"],
                                        "fresh", None)
        if "warm" in phases:
            res["warm"] = warm_cycles(cl, component, cfg["cycles"], cfg["settle_ms"])
        if "spread" in phases:
            res["spread_cluster"] = spread(cl, component, cfg["spread_repeats"], "cluster",
                                           None)
        cl.stop()
        if "local" in phases or "spread" in phases:
            local = Cluster(shoal, tmp, logs, "local", compile_for_nodes=False)
            if "local" in phases:
                res["local"] = fresh_cycles(local, component, cfg["local_cycles"],
                                            cfg["settle_ms"], "local", ["--artifacts", "local"])
            if "spread" in phases:
                res["spread_local"] = spread(local, component, cfg["spread_repeats"], "local",
                                             ["--artifacts", "local"])
            local.stop()
    except (RuntimeError, OSError) as e:
        res["problems"].append(f"failed: {e}")
        log(f"FAILED: {e}")
    write_report(out_path, render(cfg, res, (load_start, loadavg())))
    keep_logs(tmp, logs, BENCH_DIR / "results" / "coldstart-logs")
    return 1 if res["problems"] else 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""Density benchmark: how many distinct apps one Shoal node holds, what
each costs it while idle, and how fast a request to a random idle app is.

For each N in BENCH_DENSITY_N (default 100,1000,10000) it starts a fresh
control plane, one node and a gateway on 127.0.0.1 (tokens as the other
benchmarks; plain HTTP on the loopback) and registers N distinct apps made
from a template:

  cgi        examples/wasm-apps/hello.wasm (a 192-byte CGI-style core
             module) with its body text replaced by `Hello app NNNNNNN`
             (same length), so every module, digest and compiled artifact
             differs; route host aNNNNNNN.density

It measures:

  * the node's resident memory (VmRSS from /proc) with no app, and after
    every app is ready and idle; memory per idle app = (RSS_N - RSS_0) / N
  * the time to register all N apps through POST /v1/apply, in batches of
    BENCH_DENSITY_BATCH apps (each module uploaded first), and the time until
    the gateway's route table has a ready endpoint for every one
  * BENCH_DENSITY_REQUESTS requests, one at a time, each to a random app
    through the gateway (one keep-alive connection, BENCH_DENSITY_GAP_MS
    between requests so the others stay idle): p50 / p99 / max latency;
    every answer is checked to be that app's own
  * `shoal get apps` with N rows (the CLI, all pages), its time
  * resident memory and CPU of the control plane and the gateway, during
    registration and over BENCH_DENSITY_IDLE_S seconds of idleness (what
    heartbeats, the route watch and reconcile cost with N apps)

The peer (BENCH_DENSITY_PEER_N, default 100; empty to skip): one
`wasmtime serve` process per app, the per-process way to host N apps, side
by side in the same run with Shoal holding the same N apps. Both serve the
same N components: the C wasi:http demo component
(examples/wasm-apps/http-component.wasm) with a custom section naming the
app appended, so every digest differs. For wasmtime the memory is the sum
of the processes' proportional set sizes (Pss, shared pages split among the
processes that share them; RSS summed is also given), the start time is from
launching the first process to every one answering, and requests go
straight to each process's port (one keep-alive connection per process);
Shoal's go through its gateway.

Standard library only. Knobs (environment):

  BENCH_DENSITY_N         app counts                       (100,1000,10000)
  BENCH_DENSITY_BATCH     apps per POST /v1/apply          (default 200)
  BENCH_DENSITY_REQUESTS  requests to random apps          (default 1000)
  BENCH_DENSITY_GAP_MS    pause between two requests       (default 2)
  BENCH_DENSITY_IDLE_S    idle window for the CPU figures  (default 10)
  BENCH_DENSITY_READY_S   limit for every app to be ready  (default 1200)
  BENCH_DENSITY_PEER_N    app counts of the wasmtime comparison (default 100)
  SHOAL_BIN, WASMTIME_BIN the binaries
  BENCH_OUT               markdown output (default bench/results/density.md)
  BENCH_KEEP_TMP          keep the temporary directory if set
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchlib  # noqa: E402
from benchlib import (  # noqa: E402
    BENCH_DIR, C_COMPONENT, HOST, REPO, Api, Proc, admin_env, cmd_version, env_int, env_str, leb128,
    free_port, git_rev, keep_logs, loadavg, log, machine_summary, md_head, md_row, percentile,
    proc_cpu_s, start_control_plane, start_gateway, start_node, stop_all, stop_all_on_exit,
    url_port, write_report,
)

benchlib.set_tag("density-bench")

START_TIMEOUT_S = 120
HELLO = REPO / "examples/wasm-apps/hello.wasm"
HELLO_TEXT = b"Hello from Shoal!\n"
GOAL_APPS, GOAL_RSS_GIB, GOAL_P99_MS = 10_000, 4.0, 20.0

# --------------------------------------------------------------- apps


def app_name(i: int) -> str:
    return f"a{i:07d}"


def app_host(i: int) -> str:
    return f"{app_name(i)}.density"


def cgi_module(i: int) -> tuple[bytes, bytes]:
    """hello.wasm with its body text made app i's own (same length, so the
    data segment and the iovec stay valid); the module and its body."""
    base = HELLO.read_bytes()
    if base.count(HELLO_TEXT) != 1:
        raise SystemExit(f"{HELLO}: expected its body text {HELLO_TEXT!r} once")
    text = f"Hello app {i:07d}\n".encode()
    assert len(text) == len(HELLO_TEXT)
    return base.replace(HELLO_TEXT, text), text


def component_module(i: int) -> bytes:
    """The C demo component with a custom section `density-app` = app i
    appended (custom sections may come anywhere in a component), so the
    digest differs while the behaviour does not."""
    name = b"density-app"
    payload = leb128(len(name)) + name + app_name(i).encode()
    return C_COMPONENT.read_bytes() + b"\x00" + leb128(len(payload)) + payload


def manifest(i: int, memory: str) -> dict:
    return {"name": app_name(i), "module": f"{app_name(i)}.wasm",
            "routes": [{"host": app_host(i), "path": "/"}],
            "limits": {"memory": memory}}


# --------------------------------------------------------------- /proc


def status_kib(pid: int, field: str) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return None


def rss_mib(pid: int) -> float | None:
    v = status_kib(pid, "VmRSS")
    return None if v is None else v / 1024


def pss_mib(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1]) / 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def threads(pid: int) -> int | None:
    return status_kib(pid, "Threads")


def mappings(pid: int) -> int | None:
    """Memory mappings of the process (each compiled module has some)."""
    try:
        return len(Path(f"/proc/{pid}/maps").read_text().splitlines())
    except OSError:
        return None


class CpuMark:
    """CPU seconds of some processes since it was made."""

    def __init__(self, procs: dict[str, Proc]):
        self.procs = procs
        self.t0 = time.monotonic()
        self.c0 = {k: proc_cpu_s(p.pid) or 0.0 for k, p in procs.items()}

    def take(self) -> dict:
        wall = time.monotonic() - self.t0
        out = {"wall_s": wall}
        for k, p in self.procs.items():
            out[k] = (proc_cpu_s(p.pid) or 0.0) - self.c0[k]
        return out


# --------------------------------------------------------------- requests


class Requester:
    """Keep-alive GETs through one connection per port."""

    def __init__(self):
        self.conns: dict[int, http.client.HTTPConnection] = {}

    def get(self, port: int, host: str, timeout: float = 30.0) -> tuple[int, bytes, float]:
        for attempt in (0, 1):
            conn = self.conns.get(port)
            if conn is None:
                conn = http.client.HTTPConnection(HOST, port, timeout=timeout)
                self.conns[port] = conn
            t0 = time.perf_counter()
            try:
                conn.request("GET", "/", headers={"Host": host})
                resp = conn.getresponse()
                body = resp.read()
                ms = (time.perf_counter() - t0) * 1000
                if resp.getheader("connection", "").lower() == "close":
                    conn.close()
                    self.conns.pop(port, None)
                return resp.status, body, ms
            except (http.client.HTTPException, OSError):
                conn.close()
                self.conns.pop(port, None)
                if attempt:
                    raise
        raise AssertionError("unreachable")

    def close(self):
        for c in self.conns.values():
            c.close()
        self.conns.clear()


def latency_run(cfg: dict, n: int, target, expect) -> dict:
    """cfg['requests'] GETs, each to a random app of n: target(i) -> (port,
    host); expect(i, body) says whether the body is app i's."""
    rng = random.Random(1234 + n)
    req = Requester()
    lat, bad = [], []
    gap = cfg["gap_ms"] / 1000
    try:
        for _ in range(cfg["requests"]):
            i = rng.randrange(n)
            port, host = target(i)
            status, body, ms = req.get(port, host)
            lat.append(ms)
            if status != 200 or not expect(i, body):
                bad.append(f"{app_name(i)}: {status} {body[:80]!r}")
            if gap:
                time.sleep(gap)
    finally:
        req.close()
    return {"p50": percentile(lat, 50), "p99": percentile(lat, 99), "max": max(lat),
            "count": len(lat), "bad": bad}


# --------------------------------------------------------------- shoal


def start_cluster(cfg: dict, tmp: Path, logs: Path, n: int, memory_each: int) -> dict:
    shoal = cfg["shoal"]
    cp, cp_url = start_control_plane(shoal, tmp / "cp", logs / "control-plane.log",
                                     START_TIMEOUT_S)
    # The node offers room for every app (an instance each) and at least
    # the 4 GiB of the goal; memory is what placement counts, not a limit
    # the node enforces on itself.
    cap_mem = max(4 << 30, (n + 10) * memory_each)
    cap = f"memory={cap_mem // (1 << 20)}MiB,instances={n + 10}"
    node_argv_extra = ["--capacity", cap]
    node, node_url = start_node_with(shoal, cp_url, tmp / "cache", logs / "node.log",
                                     node_argv_extra)
    gw, gw_url = start_gateway(shoal, cp_url, logs / "gateway.log", START_TIMEOUT_S)
    api = Api(cp_url, timeout=120.0)
    deadline = time.monotonic() + START_TIMEOUT_S
    while not any(x.get("state") in ("ready", "Ready") for x in api.get("/v1/nodes")):
        if time.monotonic() > deadline:
            raise RuntimeError("the node did not register")
        time.sleep(0.05)
    return {"cp": cp, "gw": gw, "node": node, "api": api, "cp_url": cp_url,
            "gw_port": url_port(gw_url), "node_url": node_url, "capacity": cap}


def start_node_with(shoal: str, cp_url: str, cache: Path, log_path: Path,
                    extra: list[str]) -> tuple[Proc, str]:
    """benchlib.start_node with extra arguments (the capacity)."""
    import re
    argv = [str(shoal), "node", "--join", cp_url, "--name", "node-1",
            "--listen", f"{HOST}:0", "--cache-dir", str(cache), "--plain-http", *extra]
    join = benchlib.TOKENS.get(cp_url.rstrip("/"), (None, None))[1]
    p = Proc("node-1", argv, log_path, env={"SHOAL_JOIN_TOKEN": join} if join else None)
    url = p.wait_for_line(r"Node node-1 serving on " + benchlib.URL, START_TIMEOUT_S).group(1)
    return p, url


def ready_apps(api: Api) -> int:
    """Apps the route table lists with at least one endpoint."""
    n = 0
    for a in api.get("/v1/routes").get("apps", []):
        if any(b.get("endpoints") for b in a.get("backends", [])):
            n += 1
    return n


def register(cfg: dict, cl: dict, n: int, module_of, memory: str) -> dict:
    """POSTs every app in batches; times the posts and the wait until the
    route table has every app ready."""
    api: Api = cl["api"]
    batch = cfg["batch"]
    mark = CpuMark({"cp": cl["cp"], "gw": cl["gw"], "node": cl["node"]})
    t0 = time.monotonic()
    uploaded: set[str] = set()
    for start in range(0, n, batch):
        apps = []
        for i in range(start, min(n, start + batch)):
            wasm = module_of(i)
            digest = hashlib.sha256(wasm).hexdigest()
            if digest not in uploaded:
                api.upload_module(wasm)
                uploaded.add(digest)
            apps.append({"manifest": manifest(i, memory), "digest": digest})
        api.call("POST", "/v1/apply", {"apps": apps})
    posted = time.monotonic() - t0
    deadline = t0 + cfg["ready_s"]
    last, polls = 0, 0
    while True:
        last = ready_apps(api)
        polls += 1
        if last >= n:
            break
        if time.monotonic() > deadline:
            raise RuntimeError(f"only {last} of {n} apps ready after {cfg['ready_s']} s")
        time.sleep(0.25)
    ready = time.monotonic() - t0
    cpu = mark.take()
    log(f"N={n}: posted in {posted:.1f} s, all ready after {ready:.1f} s")
    return {"posted_s": posted, "ready_s": ready, "cpu": cpu}


def get_apps_cli(cfg: dict, cl: dict, n: int) -> dict:
    argv = [str(cfg["shoal"]), "--server", cl["cp_url"], "get", "apps"]
    t0 = time.monotonic()
    p = subprocess.run(argv, capture_output=True, text=True, timeout=600, cwd=REPO,
                       env={**os.environ, **admin_env(cl["cp_url"])})
    s = time.monotonic() - t0
    rows = max(0, len(p.stdout.strip().splitlines()) - 1)
    if p.returncode != 0 or rows != n:
        raise RuntimeError(f"shoal get apps: exit {p.returncode}, {rows} rows of {n}: "
                           f"{p.stderr[-500:]}")
    return {"s": s, "rows": rows}


def idle_window(cfg: dict, procs: dict[str, Proc]) -> dict:
    mark = CpuMark(procs)
    time.sleep(cfg["idle_s"])
    return mark.take()


def shoal_run(cfg: dict, n: int, template: str, tmp: Path, logs: Path) -> dict:
    if template == "cgi":
        memory, memory_each = "256KiB", 256 << 10
        bodies = {}

        def module_of(i: int) -> bytes:
            wasm, body = cgi_module(i)
            bodies[i] = body
            return wasm

        def expect(i: int, body: bytes) -> bool:
            return body == bodies[i]
    else:
        memory, memory_each = "4MiB", 4 << 20
        module_of = component_module

        def expect(_i: int, body: bytes) -> bool:
            return len(body) > 0

    run_tmp = tmp / f"shoal-{template}-{n}"
    run_logs = logs / f"shoal-{template}-{n}"
    cl = start_cluster(cfg, run_tmp, run_logs, n, memory_each)
    try:
        node_pid = cl["node"].pid
        time.sleep(1.0)  # let the node's first heartbeats settle (RSS_0)
        rss0 = rss_mib(node_pid)
        maps0 = mappings(node_pid)
        reg = register(cfg, cl, n, module_of, memory)
        procs = {"cp": cl["cp"], "gw": cl["gw"], "node": cl["node"]}
        idle = idle_window(cfg, procs)
        rss_idle = rss_mib(node_pid)
        anon_idle = (status_kib(node_pid, "RssAnon") or 0) / 1024
        file_idle = (status_kib(node_pid, "RssFile") or 0) / 1024
        maps_idle = mappings(node_pid)
        lat = latency_run(cfg, n, lambda i: (cl["gw_port"], app_host(i)), expect)
        rss_after = rss_mib(node_pid)
        get = get_apps_cli(cfg, cl, n)
        res = {
            "n": n, "template": template, "capacity": cl["capacity"],
            "rss0": rss0, "rss_idle": rss_idle, "rss_after": rss_after,
            "anon_idle": anon_idle, "file_idle": file_idle, "maps_idle": maps_idle,
            "maps0": maps0,
            "hwm": (status_kib(node_pid, "VmHWM") or 0) / 1024,
            "node_threads": threads(node_pid),
            "per_app_kib": ((rss_idle or 0) - (rss0 or 0)) * 1024 / n,
            "reg": reg, "idle": idle, "lat": lat, "get": get,
            "cp_rss": rss_mib(cl["cp"].pid), "gw_rss": rss_mib(cl["gw"].pid),
        }
        log(f"N={n} {template}: node RSS {rss0:.0f} -> {rss_idle:.0f} MiB, "
            f"{res['per_app_kib']:.1f} KiB/app, p50 {lat['p50']:.2f} ms, "
            f"p99 {lat['p99']:.2f} ms, get apps {get['s']:.2f} s")
        return res
    finally:
        stop_all()


# --------------------------------------------------------------- wasmtime


def wasmtime_run(cfg: dict, n: int, tmp: Path, logs: Path) -> dict:
    d = tmp / f"wasmtime-{n}"
    d.mkdir(parents=True, exist_ok=True)
    files = []
    for i in range(n):
        f = d / f"{app_name(i)}.wasm"
        f.write_bytes(component_module(i))
        files.append(f)
    ports: list[int] = []
    procs: list[Proc] = []
    t0 = time.monotonic()
    try:
        for i, f in enumerate(files):
            port = free_port()
            ports.append(port)
            # Compile cache off: each process compiles its component, as
            # Shoal's node (with an empty cache directory) does.
            procs.append(Proc(f"wasmtime-{i}", [cfg["wasmtime"], "serve", "-S", "cli=y",
                                                 "-C", "cache=n",
                                                 "--addr", f"{HOST}:{port}", str(f)],
                              logs / f"wasmtime-{n}" / f"{app_name(i)}.log",
                              stop_signal=signal.SIGINT))
        req = Requester()
        deadline = t0 + cfg["ready_s"]
        for i, port in enumerate(ports):
            while True:
                try:
                    status, _, _ = req.get(port, app_host(i), timeout=5)
                    if status == 200:
                        break
                except OSError:
                    pass
                if procs[i].proc.poll() is not None:
                    raise RuntimeError(f"wasmtime serve {i} exited: {procs[i].tail()}")
                if time.monotonic() > deadline:
                    raise RuntimeError(f"wasmtime serve {i} not answering")
                time.sleep(0.05)
        req.close()
        ready = time.monotonic() - t0
        time.sleep(cfg["idle_s"])
        rss = sum(rss_mib(p.pid) or 0 for p in procs)
        pss = sum(pss_mib(p.pid) or 0 for p in procs)
        lat = latency_run(cfg, n, lambda i: (ports[i], app_host(i)),
                          lambda _i, body: len(body) > 0)
        log(f"N={n} wasmtime serve: Pss {pss:.0f} MiB (RSS sum {rss:.0f}), ready {ready:.1f} s, "
            f"p50 {lat['p50']:.2f} ms, p99 {lat['p99']:.2f} ms")
        return {"n": n, "ready_s": ready, "rss_sum": rss, "pss_sum": pss, "lat": lat}
    finally:
        stop_all()
        for f in files:
            f.unlink(missing_ok=True)


# --------------------------------------------------------------- report


def mib(v: float | None) -> str:
    return "n/a" if v is None else f"{v:,.0f} MiB"


def report(cfg: dict, runs: list[dict], peers: list[tuple[dict, dict]]) -> str:
    lines = ["# Density: N distinct apps on one node", ""]
    lines += [f"Command: `{cfg['command']}`", "",
              f"Machine: {machine_summary()}; load average before: {cfg['load']}; "
              f"shoal at {git_rev()}; {cfg['wasmtime_version']}.", ""]
    lines += ["Each app is its own module (hello.wasm with its own body text, so no two "
              "digests are alike), one instance each, per-request isolation; requests go "
              f"one at a time through the gateway to a random app, {cfg['requests']} of "
              f"them, {cfg['gap_ms']} ms apart, each answer checked to be that app's. "
              f"Registration: POST /v1/apply, {cfg['batch']} apps a request. Memory per "
              "idle app = (node RSS with N idle apps - node RSS with none) / N.", ""]
    lines += md_head(["N", "node RSS (0 apps)", "node RSS (N idle)", "per idle app",
                      "register (POSTs)", "all ready", "p50", "p99", "max",
                      "`shoal get apps`"], "rrrrrrrrrr")
    for r in runs:
        lat = r["lat"]
        lines.append(md_row(
            f"{r['n']:,}", mib(r["rss0"]), mib(r["rss_idle"]), f"{r['per_app_kib']:.1f} KiB",
            f"{r['reg']['posted_s']:.2f} s", f"{r['reg']['ready_s']:.2f} s",
            benchlib.fmt_ms(lat["p50"]), benchlib.fmt_ms(lat["p99"]),
            benchlib.fmt_ms(lat["max"]), f"{r['get']['s']:.2f} s"))
    lines += ["", "The control plane and the gateway at that count (RSS at the end; CPU "
              "seconds during registration until every app was ready, and % of one core "
              f"over {cfg['idle_s']} s with every app idle):", ""]
    lines += md_head(["N", "control plane RSS", "gateway RSS", "node peak RSS",
                      "CPU in registration: cp / gw / node",
                      "idle CPU: cp / gw / node"], "rrrrrr")
    for r in runs:
        c, i = r["reg"]["cpu"], r["idle"]
        pct = lambda k: f"{100 * i[k] / i['wall_s']:.1f}%"  # noqa: E731
        lines.append(md_row(
            f"{r['n']:,}", mib(r["cp_rss"]), mib(r["gw_rss"]), mib(r["hwm"]),
            f"{c['cp']:.1f} / {c['gw']:.1f} / {c['node']:.1f} s",
            f"{pct('cp')} / {pct('gw')} / {pct('node')}"))
    lines += ["", "What the node's resident memory with N idle apps is made of (from "
              "/proc: anonymous and file-backed pages, and its memory mappings, with "
              "none and with N apps):", ""]
    lines += md_head(["N", "RssAnon", "RssFile", "mappings (0 apps)", "mappings (N apps)",
                      "mappings per app", "node threads"], "rrrrrrr")
    for r in runs:
        per_map = ((r["maps_idle"] or 0) - (r["maps0"] or 0)) / r["n"]
        lines.append(md_row(f"{r['n']:,}", mib(r["anon_idle"]), mib(r["file_idle"]),
                            r["maps0"], r["maps_idle"], f"{per_map:.1f}",
                            r["node_threads"]))
    bad = [(r["n"], r["lat"]["bad"]) for r in runs if r["lat"]["bad"]]
    for n, b in bad:
        lines += ["", f"**N={n}: {len(b)} wrong answers**, e.g. {b[:3]}"]
    goal = [r for r in runs if r["n"] >= GOAL_APPS]
    if goal:
        r = goal[0]
        ok_mem = (r["rss_idle"] or 0) <= GOAL_RSS_GIB * 1024
        ok_p99 = (r["lat"]["p99"] or 1e9) <= GOAL_P99_MS
        lines += ["", f"Goal ({GOAL_APPS:,} apps within {GOAL_RSS_GIB:.0f} GiB, p99 under "
                  f"{GOAL_P99_MS:.0f} ms): memory {'met' if ok_mem else 'NOT met'}, "
                  f"p99 {'met' if ok_p99 else 'NOT met'}."]
    if peers:
        lines += ["", "## Beside one `wasmtime serve` process per app", "",
                  "The same N components (the C wasi:http demo component, a custom section "
                  "naming the app appended) in both, compiled from scratch (wasmtime with "
                  "`-C cache=n`, Shoal's node with an empty cache). wasmtime: the sum of the "
                  "processes' Pss "
                  "(RSS summed in brackets), time from the first launch to every process "
                  "answering, requests straight to each process's port. Shoal: the node's "
                  "RSS, time from the first POST to every app ready in the route table, "
                  "requests through the gateway. Ratio = Shoal / wasmtime.", ""]
        lines += md_head(["N", "", "memory", "per app", "all ready", "p50", "p99"], "rlrrrrr")
        for s, w in peers:
            n = s["n"]
            s_mem, w_mem = s["rss_idle"] or 0, w["pss_sum"]
            s_per = (s_mem - (s["rss0"] or 0)) / n
            w_per = w_mem / n
            lines.append(md_row(f"{n:,}", "wasmtime serve ×N",
                                f"{w_mem:,.0f} MiB ({w['rss_sum']:,.0f})",
                                f"{w_per * 1024:,.0f} KiB", f"{w['ready_s']:.2f} s",
                                benchlib.fmt_ms(w["lat"]["p50"]),
                                benchlib.fmt_ms(w["lat"]["p99"])))
            lines.append(md_row("", "shoal, one node", mib(s_mem), f"{s_per * 1024:,.0f} KiB",
                                f"{s['reg']['ready_s']:.2f} s",
                                benchlib.fmt_ms(s["lat"]["p50"]),
                                benchlib.fmt_ms(s["lat"]["p99"])))
            ratio = lambda a, b: f"{a / b:.3f}×" if b else "n/a"  # noqa: E731
            lines.append(md_row("", "ratio", ratio(s_mem, w_mem), ratio(s_per, w_per),
                                ratio(s["reg"]["ready_s"], w["ready_s"]),
                                ratio(s["lat"]["p50"], w["lat"]["p50"]),
                                ratio(s["lat"]["p99"], w["lat"]["p99"])))
    return "\n".join(lines) + "\n"


def parse_counts(text: str) -> list[int]:
    out = []
    for part in text.replace("_", "").split(","):
        part = part.strip()
        if part:
            try:
                out.append(int(part))
            except ValueError:
                raise SystemExit(f"bad app count {part!r}")
            if out[-1] <= 0:
                raise SystemExit(f"bad app count {part!r}")
    return out


def main() -> None:
    stop_all_on_exit()
    shoal = env_str("SHOAL_BIN", "")
    if not shoal:
        raise SystemExit("SHOAL_BIN is not set")
    wasmtime = env_str("WASMTIME_BIN", str(BENCH_DIR / ".tools/bin/wasmtime"))
    cfg = {
        "shoal": shoal, "wasmtime": wasmtime,
        "counts": parse_counts(env_str("BENCH_DENSITY_N", "100,1000,10000")),
        "peer_counts": parse_counts(os.environ.get("BENCH_DENSITY_PEER_N", "100")),
        "batch": env_int("BENCH_DENSITY_BATCH", 200, positive=True),
        "requests": env_int("BENCH_DENSITY_REQUESTS", 1000, positive=True),
        "gap_ms": env_int("BENCH_DENSITY_GAP_MS", 2),
        "idle_s": env_int("BENCH_DENSITY_IDLE_S", 10, positive=True),
        "ready_s": env_int("BENCH_DENSITY_READY_S", 1200, positive=True),
        "command": env_str("BENCH_COMMAND", "bash bench/density.sh"),
        "load": loadavg(),
    }
    cfg["wasmtime_version"] = (cmd_version([wasmtime, "--version"])
                               if cfg["peer_counts"] else "no wasmtime run")
    if cfg["peer_counts"] and not Path(wasmtime).exists():
        raise SystemExit(f"{wasmtime} missing (bench/density.sh installs it)")
    out = Path(env_str("BENCH_OUT", str(BENCH_DIR / "results/density.md")))
    tmp = Path(tempfile.mkdtemp(prefix="shoal-density-"))
    logs = tmp / "logs"
    runs, peers = [], []
    try:
        for n in cfg["counts"]:
            log(f"shoal with {n} apps")
            runs.append(shoal_run(cfg, n, "cgi", tmp, logs))
        for n in cfg["peer_counts"]:
            log(f"wasmtime serve x {n} beside shoal with the same {n} components")
            w = wasmtime_run(cfg, n, tmp, logs)
            s = shoal_run(cfg, n, "component", tmp, logs)
            peers.append((s, w))
        (tmp / "results.json").write_text(json.dumps({"runs": runs, "peers": peers},
                                                     indent=1, default=str))
        write_report(out, report(cfg, runs, peers))
    finally:
        stop_all()
        keep_logs(tmp, logs, out.parent / "density-logs")


if __name__ == "__main__":
    main()

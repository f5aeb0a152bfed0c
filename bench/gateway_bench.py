#!/usr/bin/env python3
"""Gateway benchmark: the Shoal gateway against nginx as a reverse proxy,
and both against going straight to the node, in one run, same backend.

It starts a control plane, one node and a gateway (`shoal control-plane`,
`shoal node`, `shoal gateway`, all on 127.0.0.1 with free ports), deploys the
C wasi:http demo component (examples/wasm-apps/http-component.wasm) as app
`web` with one replica and a `/` route, and starts nginx in the foreground
with a generated configuration that proxies to the node's address with
`x-shoal-instance: <the instance's id>` and `x-shoal-app: default/web`, the
headers the gateway sends (HTTP/1.1, upstream keepalive 64), and does the
per-request work the gateway does: X-Forwarded-For/-Host/-Proto and an
X-Request-Id to the node and back to the client. Then wrk drives
three targets, one at a time, at each connection count:

  direct    wrk -> node (wrk sends `x-shoal-instance: <id>` itself: a node
            serves an instance only to requests that name it)
  nginx     wrk -> nginx -> node
  gateway   wrk -> shoal gateway -> node

and it reports requests/s, p50 and p99 latency, the p50/p99 each proxy adds
over going direct, and the gateway's throughput as a ratio of nginx's.

The main case deploys the app with `isolation.mode = "reuse"`, where the C
component answers in a few microseconds, so the proxies (not the backend)
decide the numbers. The default `per-request` isolation is measured too,
as a second case (BENCH_ISOLATION), where the backend costs more.

The three targets take turns within each connection count, for several
rounds (the order rotates), so drift on a shared machine hits them alike;
the report gives medians over the rounds. wrk, the proxy
and the node share the machine's cores; the CPU column shows who used what.

Standard library only. Knobs (environment):

  BENCH_DURATION     wrk duration per run                (default 10s)
  BENCH_WARMUP       warm-up per target before the runs  (default 2s)
  BENCH_CONNECTIONS  comma-separated connection counts   (default 1,16,64)
  BENCH_THREADS      wrk threads (fewer if fewer connections) (default 2)
  BENCH_ROUNDS       rounds of the three targets per connection count; the
                     report gives each target's median (default 3)
  BENCH_ISOLATION    comma-separated isolation modes, first is the main case
                     (default reuse,per-request)
  BENCH_NGINX_WORKERS  nginx worker_processes            (default auto)
  SHOAL_BIN, WRK_BIN, NGINX_BIN   the binaries (default: found on PATH)
  COMPONENT          the wasi:http component (default: the C demo app)
  BENCH_OUT          markdown output (default bench/results/gateway.md)
  BENCH_KEEP_TMP     keep the temporary directory (logs, configs) if set
"""

from __future__ import annotations

import datetime
import json
import os
import re
import resource
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchlib  # noqa: E402
from benchlib import (  # noqa: E402
    nginx_user_directive,
    BENCH_DIR, C_COMPONENT, CLK_TCK, HOST, OTHER_CPU_LIMIT_PCT, REPO, Proc, cmd_version,
    env_str, find_bin, fmt_errors, fmt_ms, fmt_rps, free_port, git_rev, group_cpu_s,
    has_socket_errors, keep_logs, loadavg, log, machine_summary, md_head, md_row, parse_duration_s,
    proc_cpu_s, proc_stat_ticks, rusage_cpu_s, shoal_apply, start_control_plane,
    start_gateway, start_node, stop_all, stop_all_on_exit, url_port, write_report,
)

benchlib.set_tag("gateway-bench")

APP = "web"
APP_HEADER = ("x-shoal-app", f"default/{APP}")
# A node serves an instance only to requests that name it, as the gateway
# does once it has chosen the instance by its own route table.
INSTANCE_HEADER = "x-shoal-instance"
EXPECTED_BODY = b"Hello from a wasi:http component!"
START_TIMEOUT_S = 120

# --------------------------------------------------------------- helpers


def http_get(port: int, path: str = "/", headers: dict | None = None,
             timeout: float = 5.0) -> tuple[int | None, bytes, dict]:
    """One GET over a fresh connection (Connection: close): status, body, headers."""
    hdrs = {"Host": f"{HOST}:{port}", "Connection": "close", **(headers or {})}
    req = f"GET {path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in hdrs.items())
    try:
        with socket.create_connection((HOST, port), timeout=timeout) as s:
            s.sendall((req + "\r\n").encode())
            data = b""
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                chunk = s.recv(65536)
                if not chunk:
                    break
                data += chunk
    except OSError:
        return None, b"", {}
    head, _, body = data.partition(b"\r\n\r\n")
    m = re.match(rb"HTTP/1\.[01] (\d{3})", head)
    if not m:
        return None, b"", {}
    resp_headers = {}
    for line in head.split(b"\r\n")[1:]:
        k, _, v = line.decode("latin-1").partition(":")
        resp_headers[k.strip().lower()] = v.strip()
    if resp_headers.get("transfer-encoding", "").lower() == "chunked":
        body = dechunk(body)
    return int(m.group(1)), body, resp_headers


def dechunk(data: bytes) -> bytes:
    out, rest = b"", data
    while rest:
        size_line, _, rest = rest.partition(b"\r\n")
        try:
            n = int(size_line.split(b";")[0], 16)
        except ValueError:
            break
        if n == 0:
            break
        out += rest[:n]
        rest = rest[n + 2:]
    return out


# --------------------------------------------------------------- CPU


def system_busy_s() -> tuple[float, float] | None:
    """CPU-seconds the machine spent in processes (user, nice, system), and in
    interrupts (irq, softirq: on loopback, much of the TCP work, charged to no
    process)."""
    vals = proc_stat_ticks()
    if vals is None:
        return None
    return (vals[0] + vals[1] + vals[2]) / CLK_TCK, (vals[5] + vals[6]) / CLK_TCK


def children_cpu_s() -> float:
    return rusage_cpu_s(resource.RUSAGE_CHILDREN)


class CpuWatch:
    """CPU used during a run, as % of all cores: the proxy under test, the
    node, wrk, interrupt handling (the kernel's loopback TCP work) and every
    other process on the machine."""

    def __init__(self, proxy_pgid: int | None, node_pid: int, bystanders: list[int]):
        self.proxy, self.node, self.by = proxy_pgid, node_pid, bystanders
        self.t0 = time.monotonic()
        self.sys0 = system_busy_s()
        self.proxy0 = group_cpu_s(proxy_pgid) if proxy_pgid else 0.0
        self.node0 = proc_cpu_s(node_pid) or 0.0
        self.by0 = sum(group_cpu_s(p) for p in bystanders)
        self.wrk0 = children_cpu_s()

    def finish(self) -> dict:
        cap = (time.monotonic() - self.t0) * (os.cpu_count() or 1)
        sys1 = system_busy_s()
        if self.sys0 is None or sys1 is None or cap <= 0:
            return {}
        proxy = (group_cpu_s(self.proxy) - self.proxy0) if self.proxy else 0.0
        node = (proc_cpu_s(self.node) or 0.0) - self.node0
        by = sum(group_cpu_s(p) for p in self.by) - self.by0
        wrk = children_cpu_s() - self.wrk0
        other = max(0.0, (sys1[0] - self.sys0[0]) - proxy - node - wrk - by)
        irq = sys1[1] - self.sys0[1]
        pct = lambda x: 100.0 * x / cap  # noqa: E731
        return {"proxy": pct(proxy), "node": pct(node), "wrk": pct(wrk), "irq": pct(irq),
                "other": pct(other + by)}


# --------------------------------------------------------------- wrk


def run_wrk(cfg: dict, port: int, conns: int, seconds: float, headers: list[str],
            log_path: Path, watch_args: tuple | None = None) -> dict:
    threads = max(1, min(cfg["threads"], conns))
    watch = (lambda: CpuWatch(*watch_args)) if watch_args else None
    return benchlib.run_wrk(cfg["wrk"], port, conns, seconds, threads, log_path, headers,
                            watch)


# --------------------------------------------------------------- nginx


def nginx_conf(d: Path, listen_port: int, node_addr: str, instance: str, workers: str) -> str:
    user = nginx_user_directive()
    t = d / "temp"
    return f"""# Generated by bench/gateway_bench.py
{user}
worker_processes {workers};
pid {d / 'nginx.pid'};
error_log {d / 'error.log'} warn;
events {{
    worker_connections 4096;
}}
http {{
    access_log off;
    client_body_temp_path {t / 'body'};
    proxy_temp_path {t / 'proxy'};
    fastcgi_temp_path {t / 'fastcgi'};
    uwsgi_temp_path {t / 'uwsgi'};
    scgi_temp_path {t / 'scgi'};
    # Keep client connections open for the whole run, as the Shoal gateway
    # does (nginx's default closes them every 1000 requests).
    keepalive_requests 1000000;
    keepalive_timeout 60s;
    # The same work per request as the Shoal gateway does: the client's
    # Host passed on, X-Forwarded-For/-Host/-Proto set, an X-Request-Id
    # kept or made up and returned to the client.
    map $http_x_request_id $shoal_request_id {{
        "" $request_id;
        default $http_x_request_id;
    }}
    upstream shoal_node {{
        server {node_addr};
        keepalive 64;
        keepalive_requests 1000000;
    }}
    server {{
        listen {HOST}:{listen_port};
        location / {{
            proxy_pass http://shoal_node;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $http_host;
            proxy_set_header {APP_HEADER[0]} {APP_HEADER[1]};
            proxy_set_header {INSTANCE_HEADER} {instance};
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Host $http_host;
            proxy_set_header X-Forwarded-Proto $scheme;
            proxy_set_header X-Request-Id $shoal_request_id;
            add_header X-Request-Id $shoal_request_id always;
        }}
    }}
}}
"""


# --------------------------------------------------------------- cluster


def start_cluster(cfg: dict, tmp: Path, logs: Path, isolation: str) -> dict:
    shoal = cfg["shoal"]
    cp, cp_url = start_control_plane(shoal, tmp / "cp", logs / "control-plane.log",
                                     START_TIMEOUT_S)
    node, node_url = start_node(shoal, cp_url, "node-1", tmp / "cache", logs / "node-1.log",
                                START_TIMEOUT_S)
    gw, gw_url = start_gateway(shoal, cp_url, logs / "gateway.log", START_TIMEOUT_S)

    manifest = tmp / "app.toml"
    iso = f'\n[isolation]\nmode = "{isolation}"\n' if isolation != "per-request" else ""
    manifest.write_text(f'name = "{APP}"\nmodule = "{cfg["component"]}"\nreplicas = 1\n'
                        f'\n[[routes]]\npath = "/"\n{iso}')
    shoal_apply(shoal, cp_url, manifest, START_TIMEOUT_S, logs / "apply.log")

    node_port = url_port(node_url)
    gw_port = url_port(gw_url)
    # Ready: the node answers for the app's instance, and the gateway
    # routes to it.
    deadline = time.monotonic() + START_TIMEOUT_S
    instance = instance_on_node(node_port, deadline)
    while True:
        d = http_get(node_port, headers={INSTANCE_HEADER: instance})
        g = http_get(gw_port)
        if d[0] == 200 and g[0] == 200:
            break
        if time.monotonic() > deadline:
            raise RuntimeError(f"app not served within {START_TIMEOUT_S}s: direct {d[0]} "
                               f"{d[1][:200]!r}, gateway {g[0]} {g[1][:200]!r}")
        time.sleep(0.05)
    return {"cp": cp, "node": node, "gw": gw, "cp_url": cp_url, "node_url": node_url,
            "gw_url": gw_url, "node_port": node_port, "gw_port": gw_port, "instance": instance,
            "manifest": manifest.read_text()}


def instance_on_node(node_port: int, deadline: float) -> str:
    """The id of the one instance the node runs, from its status endpoint."""
    while True:
        st, body, _ = http_get(node_port, path="/v1/status")
        if st == 200:
            try:
                ids = [i["id"] for i in json.loads(body)]
            except (ValueError, KeyError, TypeError):
                ids = []
            if ids:
                return ids[0]
        if time.monotonic() > deadline:
            raise RuntimeError(f"no instance on the node within {START_TIMEOUT_S}s: "
                               f"status {st} {body[:200]!r}")
        time.sleep(0.05)


def start_nginx(cfg: dict, tmp: Path, node_port: int, instance: str,
                logs: Path) -> tuple[Proc, int, str]:
    d = tmp / "nginx"
    for sub in ("temp", "logs"):
        (d / sub).mkdir(parents=True, exist_ok=True)
    # Workers may run as another user: let them through the temp dirs.
    for p in (tmp, d, d / "temp"):
        p.chmod(0o755)
    port = free_port()
    conf = d / "nginx.conf"
    conf.write_text(nginx_conf(d, port, f"{HOST}:{node_port}", instance, cfg["nginx_workers"]))
    argv = [cfg["nginx"], "-p", str(d), "-c", str(conf), "-e", str(d / "error.log"),
            "-g", "daemon off;"]
    test = subprocess.run(argv[:-2] + ["-t"], capture_output=True, text=True, timeout=30)
    if test.returncode != 0:
        raise RuntimeError(f"nginx -t refused the config:\n{test.stderr}")
    proc = Proc("nginx", argv, logs / "nginx.log")
    deadline = time.monotonic() + 30
    while http_get(port)[0] != 200:
        if proc.proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"nginx did not serve 200 on :{port}; error.log:\n"
                               + (d / "error.log").read_text(errors="replace")[-2000:])
        time.sleep(0.05)
    return proc, port, conf.read_text()


# --------------------------------------------------------------- formatting


def fmt_delta(v: float | None) -> str:
    if v is None:
        return "n/a"
    return ("+" if v >= 0 else "−") + fmt_ms(abs(v))


def fmt_cpu(c: dict) -> str:
    if not c:
        return "n/a"
    flag = " ⚠" if c["other"] > OTHER_CPU_LIMIT_PCT else ""
    return (f"{c['proxy']:.0f} / {c['node']:.0f} / {c['wrk']:.0f} / {c['irq']:.0f} / "
            f"{c['other']:.0f}{flag}")


# --------------------------------------------------------------- the runs

TARGETS = ("direct", "nginx", "gateway")


def bench_case(cfg: dict, tmp: Path, isolation: str) -> dict:
    logs = tmp / "logs" / isolation
    logs.mkdir(parents=True, exist_ok=True)
    log(f"[{isolation}] starting control plane, node, gateway; deploying {APP}")
    case_dir = tmp / isolation
    case_dir.mkdir(parents=True, exist_ok=True)
    cl = start_cluster(cfg, case_dir, logs, isolation)
    ngx, ngx_port, ngx_conf = start_nginx(cfg, case_dir, cl["node_port"], cl["instance"], logs)
    ports = {"direct": cl["node_port"], "nginx": ngx_port, "gateway": cl["gw_port"]}
    direct = {INSTANCE_HEADER: cl["instance"]}
    headers = {"direct": [f"{k}: {v}" for k, v in direct.items()], "nginx": [], "gateway": []}
    proxy_pgid = {"direct": None, "nginx": ngx.pid, "gateway": cl["gw"].pid}
    bystanders = {"direct": [ngx.pid, cl["gw"].pid, cl["cp"].pid],
                  "nginx": [cl["gw"].pid, cl["cp"].pid],
                  "gateway": [ngx.pid, cl["cp"].pid]}
    problems: list[str] = []

    # Same answer through all three?
    for t in TARGETS:
        st, body, _ = http_get(ports[t], headers=direct if t == "direct" else None)
        if st != 200 or EXPECTED_BODY not in body:
            problems.append(f"{t}: GET / answered {st} {body[:200]!r}")
    log(f"[{isolation}] direct :{ports['direct']}, nginx :{ports['nginx']}, "
        f"gateway :{ports['gateway']}; warm-up {cfg['warmup']:.0f}s each")
    wrk_log = logs / "wrk.log"
    for t in TARGETS:
        run_wrk(cfg, ports[t], 16, cfg["warmup"], headers[t], wrk_log)

    runs = []
    turn = 0
    for conns in cfg["connections"]:
        for rnd in range(cfg["rounds"]):
            order = TARGETS[turn % 3:] + TARGETS[:turn % 3]
            turn += 1
            for t in order:
                for p in (cl["node"], cl["gw"], ngx, cl["cp"]):
                    if p.proc.poll() is not None:
                        raise RuntimeError(f"{p.name} exited ({p.proc.returncode}); log tail:\n"
                                           f"{p.tail()}")
                r = run_wrk(cfg, ports[t], conns, cfg["duration"], headers[t], wrk_log,
                            (proxy_pgid[t], cl["node"].pid, bystanders[t]))
                r.update(target=t, conns=conns, isolation=isolation, round=rnd + 1)
                runs.append(r)
                log(f"[{isolation}] c={conns:<3} round {rnd + 1} {t:<8} {fmt_rps(r['rps']):>8} req/s  p50 "
                    f"{fmt_ms(r['p50_ms'])}  p99 {fmt_ms(r['p99_ms'])}  non-2xx {r['non2xx']}  "
                    f"errors {fmt_errors(r)}  CPU proxy/node/wrk/irq/other {fmt_cpu(r['cpu'])}")
                if r["rps"] is None:
                    problems.append(f"c={conns} {t}: wrk gave no result (see wrk.log)")
                if r["non2xx"]:
                    problems.append(f"c={conns} {t}: {r['non2xx']} non-2xx responses")
                if has_socket_errors(r):
                    problems.append(f"c={conns} {t}: socket errors {fmt_errors(r)}")

    # Stop and look for trouble in the logs.
    ngx.stop(signal.SIGQUIT)
    for name in ("gw", "node", "cp"):
        cl[name].stop()
    for p in (cl["gw"], cl["node"], cl["cp"]):
        bad = [ln for ln in p.text().splitlines()
               if re.search(r"\b(ERROR|WARN|panicked)\b", ln)]
        if bad:
            problems.append(f"{p.name} log: {len(bad)} WARN/ERROR lines, first: "
                            f"{bad[0].strip()[:300]}")
    err_log = (case_dir / "nginx" / "error.log")
    if err_log.exists():
        bad = [ln for ln in err_log.read_text(errors="replace").splitlines()
               if "[error]" in ln or "[crit]" in ln or "[alert]" in ln or "[emerg]" in ln]
        if bad:
            problems.append(f"nginx error.log: {len(bad)} error lines, first: {bad[0][:300]}")
    Proc.running[:] = [p for p in Proc.running if p.proc.poll() is None]
    return {"isolation": isolation, "rows": medians(runs), "problems": problems,
            "nginx_conf": ngx_conf, "manifest": cl["manifest"]}


def medians(runs: list[dict]) -> list[dict]:
    """One row per (connections, target): the run with the median req/s,
    with the median p50 and p99 of all rounds, every round's req/s, and the
    non-2xx responses of all rounds added up."""
    out = []
    keys = sorted({(r["conns"], r["target"]) for r in runs}, key=lambda k: (k[0], TARGETS.index(k[1])))
    for key in keys:
        group = [r for r in runs if (r["conns"], r["target"]) == key]
        ok = sorted((r for r in group if r["rps"] is not None), key=lambda r: r["rps"])
        base = dict(ok[len(ok) // 2] if ok else group[0])

        def med(field):
            vals = sorted(r[field] for r in group if r[field] is not None)
            return vals[len(vals) // 2] if vals else None
        base["p50_ms"] = med("p50_ms")
        base["p99_ms"] = med("p99_ms")
        base["non2xx"] = sum(r["non2xx"] or 0 for r in group)
        base["each_rps"] = [r["rps"] for r in group]
        out.append(base)
    return out


# --------------------------------------------------------------- report


def by_key(rows):
    return {(r["conns"], r["target"]): r for r in rows}


def summary_rows(case: dict) -> list[dict]:
    out = []
    idx = by_key(case["rows"])
    for conns in sorted({r["conns"] for r in case["rows"]}):
        d, n, g = (idx.get((conns, t)) for t in TARGETS)
        if not (d and n and g):
            continue

        def added(r, key):
            return (r[key] - d[key]) if (r[key] is not None and d[key] is not None) else None
        ratio = (g["rps"] / n["rps"]) if (g["rps"] and n["rps"]) else None
        out.append({"conns": conns, "ratio": ratio,
                    "gw_p50": added(g, "p50_ms"), "ngx_p50": added(n, "p50_ms"),
                    "gw_p99": added(g, "p99_ms"), "ngx_p99": added(n, "p99_ms")})
    return out


def render(cfg: dict, cases: list[dict], load_start: str, load_end: str) -> str:
    L = []
    L.append("# Gateway benchmark: Shoal gateway vs nginx vs direct to the node\n")
    L.append(f"Generated {datetime.datetime.now().astimezone():%Y-%m-%d %H:%M %Z} by "
             "`bench/gateway_bench.py` (`bash bench/gateway.sh`).\n")
    L.append("## Setup\n")
    L.append(f"- Machine: {machine_summary()}. Load average at start {load_start}, at end "
             f"{load_end}.")
    L.append(f"- shoal: `{cfg['shoal']}` (release), git {git_rev()}")
    L.append(f"- nginx: {cmd_version([cfg['nginx'], '-v'])}; wrk: "
             f"{cmd_version([cfg['wrk'], '-v'])}")
    L.append(f"- Backend: one `shoal node` running one instance of "
             f"`{Path(cfg['component']).relative_to(REPO) if Path(cfg['component']).is_relative_to(REPO) else cfg['component']}`"
             " (GET / answers `Hello from a wasi:http component!`, 34 bytes).")
    L.append("- Targets: **direct** = wrk to the node's port with "
             "`-H 'x-shoal-instance: <id>'`; **nginx** = wrk to nginx, `proxy_pass` to the "
             "node (upstream `keepalive 64`, HTTP/1.1, `proxy_set_header x-shoal-app "
             "default/web` and `x-shoal-instance <id>`, `access_log off`, `worker_processes "
             f"{cfg['nginx_workers']}`), set up to do the gateway's per-request work: the "
             "client's Host passed on, X-Forwarded-For/-Host/-Proto, an X-Request-Id "
             "kept or made up, sent to the node and returned (configuration below); **gateway** = wrk to `shoal gateway`, which "
             "routes by the app's `[[routes]] path = \"/\"`.")
    L.append(f"- wrk: `wrk -t{cfg['threads']} -cN -d{cfg['duration']:.0f}s --latency` "
             "(`-t1` at 1 connection), after a "
             f"{cfg['warmup']:.0f}s warm-up per target at 16 connections. Within each "
             f"connection count the three targets run one after another, {cfg['rounds']} "
             "rounds, the order rotating between rounds. Each row is the median over the "
             "rounds (req/s, p50, p99); \"each round\" lists every round's req/s, and the "
             "CPU column is from the median run.")
    L.append(f"- **All processes share {os.cpu_count()} cores**: wrk, the proxy and the "
             "node compete for them, so a proxy that burns more CPU also slows the "
             "backend and the load generator. The CPU column is each party's share of "
             f"all {os.cpu_count()} cores during the run (100 = every core busy): the proxy "
             "under test (nginx = master + workers) / the node / wrk / interrupt handling "
             "(irq + softirq: on loopback most of the kernel's TCP work lands here, charged "
             "to no process) / every other process (control plane, the idle proxy, "
             "anything else running on the machine). ⚠ marks "
             f"runs where other processes took more than {OTHER_CPU_LIMIT_PCT:.0f}% of the "
             "machine: those numbers are disturbed by other work.")
    L.append("- \"added\" = the target's latency percentile minus direct's at the same "
             "connection count (percentiles do not subtract exactly; it is the usual "
             "approximation). \"gw/nginx\" = gateway req/s ÷ nginx req/s.")
    L.append(f"- Command: `{cfg['command']}`\n")

    for i, case in enumerate(cases):
        iso = case["isolation"]
        title = "main case" if i == 0 else "second case"
        what = ("the instance is reused between requests, so the backend answers in "
                "microseconds and the proxies decide the numbers"
                if iso == "reuse" else
                "a fresh wasm instance per request, so the backend costs more and "
                "shares the cores with the proxy")
        L.append(f"## `isolation.mode = \"{iso}\"` ({title}: {what})\n")
        L += md_head(["conns", "target", "req/s", "each round", "p50", "p99", "added p50",
                      "added p99", "req/s vs nginx", "non-2xx", "socket errors",
                      "CPU % proxy / node / wrk / irq / other"], "rlrrrrrrrrlr")
        idx = by_key(case["rows"])
        for conns in sorted({r["conns"] for r in case["rows"]}):
            d = idx.get((conns, "direct"))
            n = idx.get((conns, "nginx"))
            for t in TARGETS:
                r = idx.get((conns, t))
                if r is None:
                    continue
                a50 = a99 = vs = "—"
                if t != "direct" and d:
                    a50 = fmt_delta(None if r["p50_ms"] is None or d["p50_ms"] is None
                                    else r["p50_ms"] - d["p50_ms"])
                    a99 = fmt_delta(None if r["p99_ms"] is None or d["p99_ms"] is None
                                    else r["p99_ms"] - d["p99_ms"])
                if n and n["rps"] and r["rps"] is not None:
                    vs = f"{r['rps'] / n['rps']:.2f}×"
                each = ", ".join(fmt_rps(x) for x in r.get("each_rps", []))
                L.append(md_row(conns, t, fmt_rps(r["rps"]), each, fmt_ms(r["p50_ms"]),
                                fmt_ms(r["p99_ms"]), a50, a99, vs, r["non2xx"], fmt_errors(r),
                                fmt_cpu(r["cpu"])))
        L.append("")
        L.append("Summary against the target (gateway's added latency ≤ nginx's, "
                 "throughput ≥ nginx's):\n")
        L += md_head(["conns", "gw/nginx req/s", "added p50 gateway", "added p50 nginx",
                      "added p99 gateway", "added p99 nginx", "throughput target",
                      "latency target (p50)"], "rrrrrrll")
        for s in summary_rows(case):
            tput = "n/a" if s["ratio"] is None else ("met" if s["ratio"] >= 1 else "missed")
            lat = ("n/a" if s["gw_p50"] is None or s["ngx_p50"] is None else
                   "met" if s["gw_p50"] <= s["ngx_p50"] else "missed")
            L.append(md_row(s["conns"],
                            "n/a" if s["ratio"] is None else format(s["ratio"], ".2f") + "×",
                            fmt_delta(s["gw_p50"]), fmt_delta(s["ngx_p50"]),
                            fmt_delta(s["gw_p99"]), fmt_delta(s["ngx_p99"]), tput, lat))
        L.append("")
        if case["problems"]:
            L.append("Problems seen:\n")
            for p in case["problems"]:
                L.append(f"- {p}")
            L.append("")

    if cases:
        L.append("## Configuration used\n")
        L.append("App manifest (main case):\n")
        L.append("```toml\n" + cases[0]["manifest"].strip() + "\n```\n")
        L.append("nginx configuration (paths under a temporary directory):\n")
        L.append("```nginx\n" + cases[0]["nginx_conf"].strip() + "\n```\n")
    return "\n".join(L) + "\n"


def main() -> int:
    cfg = {
        "duration": parse_duration_s(env_str("BENCH_DURATION", "10s")),
        "warmup": parse_duration_s(env_str("BENCH_WARMUP", "2s")),
        "connections": [int(x) for x in env_str("BENCH_CONNECTIONS", "1,16,64").split(",")
                        if x.strip()],
        "threads": int(env_str("BENCH_THREADS", "2")),
        "rounds": max(1, int(env_str("BENCH_ROUNDS", "3"))),
        "isolation": [x.strip() for x in env_str("BENCH_ISOLATION", "reuse,per-request")
                      .split(",") if x.strip()],
        "nginx_workers": env_str("BENCH_NGINX_WORKERS", "auto"),
        "shoal": find_bin("SHOAL_BIN", "shoal"),
        "wrk": find_bin("WRK_BIN", "wrk"),
        "nginx": find_bin("NGINX_BIN", "nginx"),
        "component": str(Path(env_str("COMPONENT", str(C_COMPONENT))).resolve()),
        "command": env_str("BENCH_COMMAND", "python3 bench/gateway_bench.py"),
    }
    for iso in cfg["isolation"]:
        if iso not in ("reuse", "per-request"):
            raise SystemExit(f"BENCH_ISOLATION: unknown mode {iso!r}")
    out_path = Path(env_str("BENCH_OUT", str(BENCH_DIR / "results" / "gateway.md")))
    tmp = Path(tempfile.mkdtemp(prefix="shoal-gateway-bench-"))
    stop_all_on_exit()
    log(f"temporary directory {tmp}")
    load_start = loadavg()
    cases = []
    failed = False
    try:
        for iso in cfg["isolation"]:
            try:
                cases.append(bench_case(cfg, tmp, iso))
            except RuntimeError as e:
                failed = True
                log(f"[{iso}] FAILED: {e}")
                cases.append({"isolation": iso, "rows": [], "problems": [f"failed: {e}"],
                              "nginx_conf": "", "manifest": ""})
            finally:
                stop_all()
    finally:
        stop_all()
        # Keep the logs next to the results, drop the rest.
        keep_logs(tmp, tmp / "logs", out_path.parent / "gateway-logs")
    write_report(out_path, render(cfg, cases, load_start, loadavg()))
    log(f"wrote {out_path}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

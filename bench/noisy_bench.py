#!/usr/bin/env python3
"""The noisy-neighbour benchmark (issue 12): does one tenant's flood of
CPU-heavy requests starve another tenant on the same node?

For each mode (BENCH_MODES, by default `on` and `off`): a control plane,
one node and a gateway on 127.0.0.1; app `quiet` (hello.wasm, a request of
a few microseconds of guest time) in namespace `b`, app `work` (work.wasm,
about 50 ms of CPU per request) in namespace `a`, both on the node.

1. B alone: a client sends B's requests at a steady light rate (one
   connection, BENCH_RATE a second, each at its scheduled time) for
   BENCH_DURATION; p50 and p99 latency.
2. A alone: wrk floods `work` with BENCH_FLOOD connections; A's req/s.
3. Both: the same flood and, at the same time, B's steady load; B's p50 and
   p99 and A's req/s.

The node runs under `nice` so that the gateway and the load generators,
which share the machine's cores with it here, are not what B waits for:
what is measured is the node's own scheduling of guests. BENCH_PIN takes
the load generators off the node's core as well (two cores or more):
`shoal` puts the control plane, the node and the gateway on one core and
wrk and B's client on another, as clients on other machines would be;
`node` puts the node alone on one core and everything else on another.
Without it (the default) every process shares every core.

Modes: `on` is `--fair-share on` (the defaults, with `--guest-threads
auto`); `off` is `--fair-share off`;
`on-1slot` is `--fair-share on --run-slots 1` (one guest executes at a time);
`on-slice0` is `--fair-share on --cpu-slice 0s` (the node's threads in the
kernel's default CPU slice rather than the node's default of 100us);
`on-guest` is `--fair-share on --guest-threads on` (guests on threads of
their own); `on-auto` is `--fair-share on --guest-threads auto` (only the
guests of apps whose requests take 2 ms of CPU or more on those threads,
the default); `on-nothreads` is `--fair-share on --guest-threads off`
(every guest on the threads that take requests in).

Environment: SHOAL_BIN, WRK_BIN, QUIET_WASM, WORK_WASM (as noisy.sh sets
them); BENCH_DURATION (15s), BENCH_RATE (50), BENCH_FLOOD (32), BENCH_HOT (10s),
BENCH_MODES (on,on-nothreads,off), BENCH_PIN (none; `shoal` or `node`),
BENCH_COMMAND (for the report). Writes
bench/results/noisy.md.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import tempfile
import threading
import time
from pathlib import Path

import sys

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchlib import (  # noqa: E402
    HOST, TOKENS, URL, Proc, env_int, env_str, find_bin, fmt_ms, fmt_rps, log,
    machine_summary, md_head, md_row, parse_duration_s, percentile, run_wrk, set_tag,
    shoal_apply, start_control_plane, start_gateway, stop_all, stop_all_on_exit,
    url_port, write_report,
)
import re  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
START_TIMEOUT_S = 120.0


def get(port: int, host: str) -> int:
    c = http.client.HTTPConnection(HOST, port, timeout=10)
    try:
        c.request("GET", "/", headers={"Host": host})
        r = c.getresponse()
        r.read()
        return r.status
    except OSError:
        return 0
    finally:
        c.close()


def wait_until(what: str, cond, timeout: float = START_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what}: not within {timeout:.0f}s")
        time.sleep(0.05)


def steady(port: int, host: str, rate: int, seconds: float) -> dict:
    """Requests at `rate` a second on one kept-alive connection, each sent at
    its scheduled time (or at once if the previous one ended late); the
    latency of each, in ms."""
    lat: list[float] = []
    errors = 0
    c = http.client.HTTPConnection(HOST, port, timeout=30)
    start = time.perf_counter()
    n = int(rate * seconds)
    for i in range(n):
        due = start + i / rate
        wait = due - time.perf_counter()
        if wait > 0:
            time.sleep(wait)
        t0 = time.perf_counter()
        try:
            c.request("GET", "/", headers={"Host": host})
            r = c.getresponse()
            r.read()
            if r.status == 200:
                lat.append((time.perf_counter() - t0) * 1000)
            else:
                errors += 1
        except (OSError, http.client.HTTPException):
            errors += 1
            c.close()
            c = http.client.HTTPConnection(HOST, port, timeout=30)
    c.close()
    return {"p50": percentile(lat, 50), "p99": percentile(lat, 99), "n": len(lat),
            "errors": errors}


# BENCH_PIN: which processes get a core of their own (see the docstring);
# None, or (what, core of the pinned processes, core of the others).
PIN: tuple[str, int, int] | None = None
PIN_WHAT = {"node": "the node alone on one core, everything else on the other",
            "shoal": "the control plane, the node and the gateway on one core, "
                     "the load generators (wrk and B's client) on the other"}


@contextlib.contextmanager
def spawning_on(which: str):
    """Processes started inside this are on the pinned core when `which`
    ("node" or "shoal") is what BENCH_PIN pins; on the others' core after."""
    if PIN is None or (which == "shoal" and PIN[0] != "shoal"):
        yield
        return
    os.sched_setaffinity(0, {PIN[1]})
    try:
        yield
    finally:
        os.sched_setaffinity(0, {PIN[2]})


# The node's flags of each mode.
MODES = {
    "on": ["--fair-share", "on"],
    "off": ["--fair-share", "off"],
    # Fair shares with one guest at a time: a core left to everything else.
    "on-1slot": ["--fair-share", "on", "--run-slots", "1"],
    "on-slice0": ["--fair-share", "on", "--cpu-slice", "0s"],
    "on-guest": ["--fair-share", "on", "--guest-threads", "on"],
    "on-auto": ["--fair-share", "on", "--guest-threads", "auto"],
    "on-nothreads": ["--fair-share", "on", "--guest-threads", "off"],
}


def start_node(shoal: str, cp_url: str, fair: str, cache: Path, log_path: Path
               ) -> tuple[Proc, str]:
    name = f"node-{fair}"
    argv = ["nice", "-n", "10", shoal, "node", "--join", cp_url, "--name", name,
            "--listen", f"{HOST}:0", "--cache-dir", str(cache), "--plain-http",
            *MODES[fair]]
    join = TOKENS.get(cp_url.rstrip("/"), (None, None))[1]
    with spawning_on("node"):
        p = Proc(name, argv, log_path, env={"SHOAL_JOIN_TOKEN": join} if join else None)
    return p, p.wait_for_line(rf"Node {re.escape(name)} serving on " + URL,
                              START_TIMEOUT_S).group(1)


def one_mode(cfg: dict, fair: str, tmp: Path) -> dict:
    set_tag(f"fair-share {fair}")
    shoal = cfg["shoal"]
    logs = tmp / "logs"
    with spawning_on("shoal"):
        cp, cp_url = start_control_plane(shoal, tmp / "cp", logs / "cp.log", START_TIMEOUT_S)
    start_node(shoal, cp_url, fair, tmp / "cache", logs / "node.log")
    with spawning_on("shoal"):
        gw, gw_url = start_gateway(shoal, cp_url, logs / "gateway.log", START_TIMEOUT_S)
    apps = (("quiet", "b", cfg["quiet"], 16), ("work", "a", cfg["work"], 256))
    for name, ns, module, conc in apps:
        m = tmp / f"{name}.toml"
        m.write_text(f'name = "{name}"\nnamespace = "{ns}"\nmodule = "{module}"\n'
                     f'replicas = 1\n\n[limits]\nconcurrency = {conc}\ntimeout = "120s"\n\n'
                     f'[[routes]]\nhost = "{name}.local"\npath = "/"\n')
        shoal_apply(shoal, cp_url, m, START_TIMEOUT_S, logs / "apply.log")
    port = url_port(gw_url)
    for host in ("quiet.local", "work.local"):
        wait_until(f"the gateway to serve {host}", lambda h=host: get(port, h) == 200)
    secs, rate = cfg["seconds"], cfg["rate"]

    log("B alone")
    steady(port, "quiet.local", rate, 2)  # warm-up
    alone = steady(port, "quiet.local", rate, secs)
    # What fair shares cost one uncontended request: B as fast as it goes.
    hot = run_wrk(cfg["wrk"], port, 1, cfg["hot"], 1, logs / "wrk.log",
                  headers=["Host: quiet.local"])

    def flood(seconds: float) -> dict:
        return run_wrk(cfg["wrk"], port, cfg["flood"], seconds, 1, logs / "wrk.log",
                       headers=["Host: work.local"])

    log("A alone")
    a_alone = flood(secs)
    log("A's flood and B")
    box: dict = {}
    t = threading.Thread(target=lambda: box.setdefault("a", flood(secs + 4)))
    t.start()
    time.sleep(2)  # the flood is on
    under = steady(port, "quiet.local", rate, secs)
    t.join()
    stop_all()
    return {"alone": alone, "under": under, "a_alone": a_alone, "a_under": box.get("a", {}),
            "hot": hot}


def render(cfg: dict, runs: dict) -> str:
    out = ["# Noisy neighbour: one node, tenant B's light load while tenant A floods it",
           "",
           f"Command: `{cfg['command']}`. Machine: {machine_summary()}.",
           f"B: `quiet` (hello.wasm) in namespace `b`, {cfg['rate']} requests a second on one "
           f"connection for {cfg['seconds']:.0f} s. A: `work` (work.wasm, about 50 ms of CPU a "
           f"request) in namespace `a`, wrk with {cfg['flood']} connections. Everything through "
           "the gateway; the node under `nice -n 10`."
           + (f" Cores (BENCH_PIN={PIN[0]}): {PIN_WHAT[PIN[0]]}." if PIN else ""),
           ""]
    out += md_head(["mode", "B alone p50", "B alone p99", "B under flood p50",
                    "B under flood p99", "p99 ratio", "A alone req/s", "A with B req/s",
                    "B errors"], "lrrrrrrrr")
    for fair, r in runs.items():
        a, u = r["alone"], r["under"]
        ratio = (f"{u['p99'] / a['p99']:.1f}x" if a["p99"] and u["p99"] else "n/a")
        out.append(md_row(fair, fmt_ms(a["p50"]), fmt_ms(a["p99"]), fmt_ms(u["p50"]),
                          fmt_ms(u["p99"]), ratio, fmt_rps(r["a_alone"].get("rps")),
                          fmt_rps(r["a_under"].get("rps")), a["errors"] + u["errors"]))
    out += ["", "One uncontended request, B alone with wrk on one connection for "
            f"{cfg['hot']:.0f} s (what a request pays for fair shares):", ""]
    out += md_head(["mode", "req/s", "p50", "p99"], "lrrr")
    for fair, r in runs.items():
        h = r["hot"]
        out.append(md_row(fair, fmt_rps(h.get("rps")), fmt_ms(h.get("p50_ms")),
                          fmt_ms(h.get("p99_ms"))))
    return "\n".join(out) + "\n"


def main() -> None:
    stop_all_on_exit()
    cfg = {
        "shoal": find_bin("SHOAL_BIN", "shoal"),
        "wrk": find_bin("WRK_BIN", "wrk"),
        "quiet": env_str("QUIET_WASM", str(REPO / "examples/wasm-apps/hello.wasm")),
        "work": env_str("WORK_WASM", str(REPO / "examples/wasm-apps/work.wasm")),
        "seconds": parse_duration_s(env_str("BENCH_DURATION", "15s")),
        "rate": env_int("BENCH_RATE", 50, positive=True),
        "flood": env_int("BENCH_FLOOD", 32, positive=True),
        "hot": parse_duration_s(env_str("BENCH_HOT", "10s")),
        "command": env_str("BENCH_COMMAND", "bash bench/noisy.sh"),
        "modes": [m.strip() for m in env_str("BENCH_MODES", "on,on-nothreads,off").split(",")
                  if m.strip()],
    }
    global PIN
    pin = env_str("BENCH_PIN", "")
    if pin:
        if pin not in PIN_WHAT:
            raise SystemExit(f"BENCH_PIN: {pin!r} is not one of {', '.join(PIN_WHAT)}")
        cores = sorted(os.sched_getaffinity(0))
        if len(cores) < 2:
            raise SystemExit("BENCH_PIN needs two cores")
        PIN = (pin, cores[1], cores[0])
        # What this process starts from here on runs on the others' core,
        # except inside spawning_on().
        os.sched_setaffinity(0, {PIN[2]})
    unknown = [m for m in cfg["modes"] if m not in MODES]
    if unknown:
        raise SystemExit(f"BENCH_MODES: unknown mode(s) {', '.join(unknown)}; "
                         f"known: {', '.join(MODES)}")
    runs = {}
    for fair in cfg["modes"]:
        with tempfile.TemporaryDirectory(prefix=f"shoal-noisy-{fair}-") as t:
            runs[fair] = one_mode(cfg, fair, Path(t))
    write_report(REPO / "bench/results/noisy.md", render(cfg, runs))


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Side-by-side load benchmark of the gateway and nginx (see shared/BENCH.md and README
"Performance"). Run it through benches/compare_nginx.sh, which builds the release binaries and
installs the tools first.

Lineup (same backend, same certificate, same load; every role is its own process, so each
proxy's CPU is its own):
  direct       the backend itself (examples/bench_backend, or a separate nginx with --backend nginx)
  nginx-tls    nginx as a plain TLS reverse proxy: upstream keepalive, access log off, http2
  nginx-auth   the same plus auth_request to the backend's whoami
               (/api/method/frappe.auth.get_logged_user)
  gateway      the gateway with its full policy: TLS, a token route with a cached key, an
               allowlist, per-key and per-IP limits that never trigger, access log to a file

Interleaved rounds (the order rotates each round) at each concurrency, HTTP/1.1 with wrk and
HTTP/2 with h2load. Per target: req/s, p50/p99 latency, CPU microseconds per request of its own
processes (utime+stime from /proc/PID/stat before and after, / requests answered; user and
system also apart). Ratios are computed per round and shown min-max (median) over rounds.

--redis runs two gateways instead, rate_limit.backend = "local" and "redis" (a redis-server on a
free loopback port), same load, and reports redis/local ratios and redis-server's own CPU.
"""

import argparse
import os
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KEY, SECRET = "0123456789abcde", "fedcba987654321"
AUTH = f"Authorization: token {KEY}:{SECRET}"
PATH = "/api/resource/ToDo"
TICK_US = 1_000_000 / os.sysconf("SC_CLK_TCK")
WHOAMI = "/api/method/frappe.auth.get_logged_user"
BODY = (
    '{"data":[{"name":"TODO-0001","status":"Open","priority":"Medium","description":"bench row one",'
    '"owner":"bench@example.com","modified":"2026-11-28 10:00:00.000000"},{"name":"TODO-0002",'
    '"status":"Open","priority":"Low","description":"bench row two","owner":"bench@example.com",'
    '"modified":"2026-11-28 10:00:00.000000"}]}'
)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, what, timeout=15.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    sys.exit(f"{what} did not listen on 127.0.0.1:{port} within {timeout:.0f}s")


def cpu_user_sys(pids):
    """User and system CPU ticks of the processes (all their threads)."""
    user = system = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            user += int(fields[11])  # utime (field 14)
            system += int(fields[12])  # stime (field 15)
        except (OSError, IndexError):
            pass
    return user, system


def cpu_ticks(pids):
    return sum(cpu_user_sys(pids))


def children_of(ppid):
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    if int(f.read().rsplit(")", 1)[1].split()[1]) == ppid:
                        out.append(int(entry))
            except (OSError, IndexError, ValueError):
                pass
    return out


def busy_jiffies():
    """Busy CPU ticks of the whole machine (all cores) and the number of cores."""
    with open("/proc/stat") as f:
        lines = f.read().splitlines()
    v = [int(x) for x in lines[0].split()[1:]]
    cores = sum(1 for l in lines if re.match(r"cpu\d", l))
    return sum(v[:8]) - v[3] - v[4], cores


def child_cpu_ticks():
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (r.ru_utime + r.ru_stime) * 1_000_000 / TICK_US


def gateway_toml(port, admin, backend_port, certs, access_log, server="", rate_limit="", per_key=True, extra=""):
    """The benchmarked gateway's configuration (benches/instructions.sh uses it too): TLS, a
    token route with an allowlist, per-key and per-IP limits that never trigger, access log to
    a file."""
    per_key_line = 'per_key = "100000000/min"\n' if per_key else ""
    if rate_limit and not rate_limit.endswith("\n"):
        rate_limit += "\n"
    return f"""
[server]
listen = "127.0.0.1:{port}"
tls_cert = "{certs}/gateway.crt"
tls_key = "{certs}/gateway.key"
{server}
[admin]
listen = "127.0.0.1:{admin}"
[upstream]
url = "http://127.0.0.1:{backend_port}"
[network]
allow = ["127.0.0.0/8", "10.0.0.0/8"]
[rate_limit]
{rate_limit}{per_key_line}per_ip = "100000000/min"
failed_auth_per_ip = "20/min"
[[route]]
path = "/api/"
auth = "token"
allow = ["127.0.0.0/8"]
[log]
access = "{access_log}"
level = "warn"
{extra}"""


def ms(text):
    m = re.match(r"([\d.]+)(us|ms|s)", text)
    value, unit = float(m.group(1)), m.group(2)
    return value * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


class Lineup:
    def __init__(self, args):
        self.args = args
        self.work = tempfile.mkdtemp(prefix="fgw-bench-")
        self.children = []  # Popen objects we started
        self.nginx_pidfiles = []
        self.targets = {}  # name -> dict(h1=url, h2=url or None, pids=callable)
        self.backend_pids = lambda: []
        self.extra = {}  # other processes whose CPU is reported (redis-server)
        self.counters = {}  # name → a function returning a running count (Redis script calls)
        self.admin_ports = {}

    # ---- processes -------------------------------------------------------------------------
    def spawn(self, argv, log, env=None):
        out = open(os.path.join(self.work, log), "wb")
        p = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        self.children.append(p)
        return p

    def stop(self):
        for pidfile in self.nginx_pidfiles:
            try:
                with open(pidfile) as f:
                    os.kill(int(f.read().strip()), signal.SIGQUIT)
            except (OSError, ValueError):
                pass
        for p in self.children:
            if p.poll() is None:
                p.terminate()
        deadline = time.monotonic() + 5
        for p in self.children:
            try:
                p.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
        if not self.args.keep:
            shutil.rmtree(self.work, ignore_errors=True)
        else:
            print(f"(kept {self.work})")

    def nginx(self, name, server_block, upstream_port, extra_http=""):
        d = os.path.join(self.work, name)
        os.makedirs(d)
        pidfile = os.path.join(d, "nginx.pid")
        upstream = ""
        if upstream_port:
            upstream = (
                f"upstream backend {{ server 127.0.0.1:{upstream_port}; keepalive 64; "
                f"keepalive_requests 1000000; keepalive_timeout 300s; }}"
            )
        conf = f"""
worker_processes {self.args.nginx_workers};
pid {pidfile};
error_log {d}/error.log warn;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  keepalive_requests 1000000;
  keepalive_timeout 300s;
  client_body_temp_path {d}; proxy_temp_path {d}; fastcgi_temp_path {d};
  uwsgi_temp_path {d}; scgi_temp_path {d};
  {upstream}
  {extra_http}
  server {{
{server_block}
  }}
}}
"""
        path = os.path.join(d, "nginx.conf")
        with open(path, "w") as f:
            f.write(conf)
        test = subprocess.run(["nginx", "-t", "-c", path, "-p", d], capture_output=True, text=True)
        if test.returncode != 0:
            sys.exit(f"nginx config for {name} rejected:\n{test.stderr}")
        subprocess.run(["nginx", "-c", path, "-p", d], check=True)
        self.nginx_pidfiles.append(pidfile)
        deadline = time.monotonic() + 10
        while not os.path.exists(pidfile):
            if time.monotonic() > deadline:
                sys.exit(f"nginx {name} did not start")
            time.sleep(0.05)
        with open(pidfile) as f:
            master = int(f.read().strip())
        # master + workers, looked up once they exist.
        return lambda: [master] + children_of(master)

    def tls_listen(self, port):
        # nginx >= 1.25.1 has `http2 on;`; older ones (Debian 12's 1.22) the listen flag.
        if self.args.nginx_http2_directive:
            return f"    listen 127.0.0.1:{port} ssl;\n    http2 on;"
        return f"    listen 127.0.0.1:{port} ssl http2;"

    def tls_lines(self):
        c = os.path.join(self.work, "certs")
        return (
            f"    ssl_certificate {c}/gateway.crt;\n    ssl_certificate_key {c}/gateway.key;\n"
            "    ssl_protocols TLSv1.2 TLSv1.3;\n    ssl_session_cache shared:SSL:10m;"
        )

    def gateway(self, name, backend_port, redis_url=None, extra="", per_key=True, binary=None):
        port, admin = free_port(), free_port()
        self.admin_ports[name] = admin
        d = os.path.join(self.work, name)
        os.makedirs(d)
        c = os.path.join(self.work, "certs")
        rl_backend = ""
        env = dict(os.environ)
        if redis_url:
            rl_backend = 'backend = "redis"\nredis_url_env = "FGW_BENCH_REDIS_URL"\nredis_timeout = "50ms"\n'
            env["FGW_BENCH_REDIS_URL"] = redis_url
        conf = gateway_toml(port, admin, backend_port, c, os.path.join(d, "access.log"),
                            rate_limit=rl_backend, per_key=per_key, extra=extra)
        path = os.path.join(d, "gateway.toml")
        with open(path, "w") as f:
            f.write(conf)
        p = self.spawn([binary or self.args.gateway_bin, "--config", path], f"{name}/gateway.err", env=env)
        wait_port(port, name)
        return port, (lambda: [p.pid])

    def floor(self, backend_port):
        """examples/floor_proxy: the gateway's stack (tokio, rustls, hyper) proxying, nothing else."""
        port = free_port()
        c = os.path.join(self.work, "certs")
        argv = [self.args.floor_bin, f"127.0.0.1:{port}", f"127.0.0.1:{backend_port}",
                f"{c}/gateway.crt", f"{c}/gateway.key", "2"]
        p = self.spawn(argv, "floor.log")
        wait_port(port, "floor")
        return port, (lambda: [p.pid])

    def start(self):
        a = self.args
        subprocess.run(
            [a.gateway_bin, "gen-cert", "--host", "localhost", "--out", os.path.join(self.work, "certs")],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        backend = free_port()
        if a.backend == "nginx":
            block = (
                f"    listen 127.0.0.1:{backend};\n"
                f"    default_type application/json;\n"
                f"    location = {WHOAMI} {{ return 200 '{{\"message\":\"bench@example.com\"}}'; }}\n"
                f"    location / {{ return 200 '{BODY}'; }}"
            )
            self.backend_pids = self.nginx("backend", block, None)
        else:
            p = self.spawn([a.backend_bin, f"127.0.0.1:{backend}"], "backend.log")
            self.backend_pids = lambda: [p.pid]
        wait_port(backend, "backend")
        direct_h2 = f"http://127.0.0.1:{backend}{PATH}" if a.backend == "hyper" else None
        self.direct = {"h1": f"http://127.0.0.1:{backend}{PATH}", "h2": direct_h2, "pids": self.backend_pids}

        if a.memory:
            extra = ('[auth]\ncache_capacity = 100000\n'
                     '[frappe]\nmax_verify_rate = "1000000/sec"\nmax_verify_concurrency = 256\n')
            port, pids = self.gateway("gateway", backend, extra=extra)
            self.targets["gateway"] = self.https(port, pids)
            # The same without the per-key limit, whose buckets (one per active key) cost too.
            port, pids = self.gateway("gateway-no-per-key", backend, extra=extra, per_key=False)
            self.targets["gateway-no-per-key"] = self.https(port, pids)
            n1 = free_port()
            proxy = (
                "      proxy_pass http://backend;\n      proxy_http_version 1.1;\n"
                '      proxy_set_header Connection "";'
            )
            block = f"{self.tls_listen(n1)}\n{self.tls_lines()}\n    location / {{\n{proxy}\n    }}"
            self.targets["nginx-tls"] = self.https(n1, self.nginx("nginx-tls", block, backend))
        elif a.redis:
            rport = free_port()
            r = self.spawn(
                ["redis-server", "--port", str(rport), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
                "redis.log",
            )
            wait_port(rport, "redis-server")
            self.extra["redis-server"] = lambda: [r.pid]
            self.counters["redis_calls"] = lambda: redis_script_calls(rport)
            url = f"redis://127.0.0.1:{rport}/0"
            gateways = [("gw-local", None, None), ("gw-redis", url, None)]
            if a.baseline_bin:
                gateways.append(("gw-redis-base", url, a.baseline_bin))
            for name, redis_url, binary in gateways:
                port, pids = self.gateway(name, backend, redis_url, binary=binary)
                self.targets[name] = self.https(port, pids)
        else:
            self.targets["direct"] = self.direct
            proxy = (
                "      proxy_pass http://backend;\n      proxy_http_version 1.1;\n"
                '      proxy_set_header Connection "";'
            )
            n1 = free_port()
            block = f"{self.tls_listen(n1)}\n{self.tls_lines()}\n    location / {{\n{proxy}\n    }}"
            self.targets["nginx-tls"] = self.https(n1, self.nginx("nginx-tls", block, backend))
            n2 = free_port()
            block = (
                f"{self.tls_listen(n2)}\n{self.tls_lines()}\n"
                f"    location / {{\n      auth_request /_whoami;\n{proxy}\n    }}\n"
                f"    location = /_whoami {{\n      internal;\n"
                f"      proxy_pass http://backend{WHOAMI};\n"
                "      proxy_pass_request_body off;\n"
                '      proxy_set_header Content-Length "";\n'
                "      proxy_http_version 1.1;\n"
                '      proxy_set_header Connection "";\n    }'
            )
            self.targets["nginx-auth"] = self.https(n2, self.nginx("nginx-auth", block, backend))
            port, pids = self.gateway("gateway", backend)
            self.targets["gateway"] = self.https(port, pids)
            if a.floor:
                port, pids = self.floor(backend)
                self.targets["floor"] = self.https(port, pids)
            if a.baseline_bin:
                port, pids = self.gateway("gateway-base", backend, binary=a.baseline_bin)
                self.targets["gateway-base"] = self.https(port, pids)
        for name, t in self.targets.items():
            check = subprocess.run(
                ["curl", "-sk", "-o", "/dev/null", "-w", "%{http_code}", "-H", AUTH, t["h1"]],
                capture_output=True,
                text=True,
            )
            if check.stdout != "200":
                sys.exit(f"{name} answers {check.stdout or check.stderr!r} to {t['h1']}, not 200 (logs: {self.work})")

    @staticmethod
    def https(port, pids):
        url = f"https://127.0.0.1:{port}{PATH}"
        return {"h1": url, "h2": url, "pids": pids}


# ---- load generators -------------------------------------------------------------------------
def run_wrk(url, conns, seconds):
    out = subprocess.run(
        ["wrk", f"-t{min(2, conns)}", f"-c{conns}", f"-d{seconds}s", "--latency", "-H", AUTH, url],
        capture_output=True,
        text=True,
    ).stdout
    reqs = int(re.search(r"(\d+) requests in", out).group(1))
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    p50 = ms(re.search(r"\s50%\s+(\S+)", out).group(1))
    p99 = ms(re.search(r"\s99%\s+(\S+)", out).group(1))
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    failed = (int(bad.group(1)) if bad else 0) + (sum(int(x) for x in errors.groups()) if errors else 0)
    return {"reqs": reqs, "rps": rps, "p50": p50, "p99": p99, "failed": failed}


def run_h2load(url, conns, seconds, streams, logdir):
    log = os.path.join(logdir, "h2load.log")
    out = subprocess.run(
        ["h2load", f"-c{conns}", f"-m{streams}", f"-t{min(2, conns)}", f"-D{seconds}", "-H", AUTH.lower(),
         f"--log-file={log}", url],
        capture_output=True,
        text=True,
    ).stdout
    m = re.search(r"requests: (\d+) total, \d+ started, (\d+) done, (\d+) succeeded, (\d+) failed", out)
    if not m:
        sys.exit(f"h2load gave no result for {url}:\n{out}")
    codes = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", out)
    elapsed = float(re.search(r"finished in ([\d.]+)s", out).group(1))
    lat = []
    with open(log) as f:
        for line in f:
            parts = line.split("\t")
            if len(parts) >= 3:
                lat.append(int(parts[2]) / 1000.0)
    os.unlink(log)
    lat.sort()
    done = int(m.group(2))
    # Failed streams plus answers that were not 2xx (a 429 would mean a limit triggered).
    failed = int(m.group(4)) + (sum(int(x) for x in codes.groups()[1:]) if codes else done)
    pct = lambda q: lat[min(len(lat) - 1, int(q * len(lat)))] if lat else float("nan")
    return {"reqs": done, "rps": done / elapsed, "p50": pct(0.50), "p99": pct(0.99), "failed": failed}


# ---- the run --------------------------------------------------------------------------------
def measure(lineup, name, proto, conns, seconds):
    """One load run against one target: its result plus the CPU per request of the target's own
    processes, of each extra process (redis-server), and the CPU the rest of the machine used."""
    t = lineup.targets[name]
    pids = t["pids"]()
    extras = {k: f() for k, f in lineup.extra.items()}
    everything = pids + lineup.backend_pids() + [p for ps in extras.values() for p in ps]
    everything = list(dict.fromkeys(everything))
    before, extra0 = cpu_user_sys(pids), {k: cpu_ticks(ps) for k, ps in extras.items()}
    counts0 = {k: f() for k, f in lineup.counters.items()}
    all0, kids0, (busy0, _) = cpu_ticks(everything), child_cpu_ticks(), busy_jiffies()
    if proto == "h1":
        r = run_wrk(t["h1"], conns, seconds)
    else:
        r = run_h2load(t["h2"], conns, seconds, lineup.args.streams, lineup.work)
    all1, kids1, (busy1, _) = cpu_ticks(everything), child_cpu_ticks(), busy_jiffies()
    after, extra1 = cpu_user_sys(pids), {k: cpu_ticks(ps) for k, ps in extras.items()}
    for k, f in lineup.counters.items():
        r[k + "_per_req"] = (f() - counts0[k]) / max(1, r["reqs"])
    per_req = lambda ticks: ticks * TICK_US / max(1, r["reqs"])
    # User space (the proxy's own code) and kernel (mostly the TCP stack, about the same for
    # every proxy making the same system calls), then their sum.
    r["user_us"] = per_req(after[0] - before[0])
    r["sys_us"] = per_req(after[1] - before[1])
    r["cpu_us"] = r["user_us"] + r["sys_us"]
    for k in extras:
        r[k + "_us"] = per_req(extra1[k] - extra0[k])
    ours = (all1 - all0) + (kids1 - kids0)
    r["other_cores"] = max(0.0, (busy1 - busy0) - ours) * TICK_US / 1e6 / seconds
    return r


def redis_script_calls(port):
    """Script calls (EVALSHA, EVAL) redis-server has run so far: `INFO commandstats`."""
    out = subprocess.run(["redis-cli", "-p", str(port), "INFO", "commandstats"],
                         capture_output=True, text=True, check=True).stdout
    calls = 0
    for line in out.splitlines():
        if line.startswith(("cmdstat_evalsha:", "cmdstat_eval:")):
            calls += int(line.split("calls=")[1].split(",")[0])
    return calls


def span(values, fmt="{:.0f}"):
    values = [v for v in values if v is not None]
    if not values:
        return "-"
    lo, hi = min(values), max(values)
    if fmt.format(lo) == fmt.format(hi):
        return fmt.format(lo)
    return f"{fmt.format(lo)}–{fmt.format(hi)}"


def span_med(values, fmt="{:.2f}"):
    values = [v for v in values if v is not None]
    if not values:
        return "-"
    return f"{span(values, fmt)} (median {fmt.format(statistics.median(values))})"


def rss_kib(pids):
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/status") as f:
                total += next(int(l.split()[1]) for l in f if l.startswith("VmRSS:"))
        except (OSError, StopIteration):
            pass
    return total


LOAD_KEYS_LUA = """
local counter = 1
local threads = {}
function setup(thread)
  thread:set("id", counter)
  counter = counter + 1
end
function init(args)
  i = id - 1
  step = %d
end
function request()
  local k = i %% %d
  i = i + step
  return wrk.format("GET", nil, {["Authorization"] = string.format("token k%%014d:s%%014d", k, k)})
end
"""


def cached_credentials(admin_port):
    out = subprocess.run(["curl", "-s", f"http://127.0.0.1:{admin_port}/metrics"], capture_output=True,
                         text=True).stdout
    m = re.search(r"^(?:\w+_)?credential_cache_entries\S*\s+(\d+)", out, re.M)
    return int(m.group(1)) if m else None


def memory(lineup, args):
    """Idle RSS of the gateway and of nginx, then the gateway's RSS once 100,000 distinct
    credentials are cached (wrk with a Lua script: one key per request, 100k keys)."""
    ng = lineup.targets["nginx-tls"]
    print(f"# {time.strftime('%Y-%m-%d %H:%M')} — memory (RSS from /proc/PID/status)")
    idle_ng = rss_kib(ng["pids"]())
    print(f"idle: nginx-tls (master + {args.nginx_workers} workers) {idle_ng / 1024:.1f} MiB")
    threads, keys = 2, args.credentials
    script = os.path.join(lineup.work, "keys.lua")
    with open(script, "w") as f:
        f.write(LOAD_KEYS_LUA % (threads, keys))
    for name in ("gateway", "gateway-no-per-key"):
        gw, admin = lineup.targets[name], lineup.admin_ports[name]
        subprocess.run(["curl", "-s", "-o", "/dev/null", f"http://127.0.0.1:{admin}/healthz"])
        idle_gw = rss_kib(gw["pids"]())
        deadline = time.monotonic() + 180
        cached = 0
        while time.monotonic() < deadline:
            subprocess.run(["wrk", f"-t{threads}", "-c16", "-d10s", "-s", script, gw["h1"]], capture_output=True)
            cached = cached_credentials(admin) or 0
            if cached >= keys * 0.99:
                break
        loaded = rss_kib(gw["pids"]())
        print(f"{name}: idle {idle_gw / 1024:.1f} MiB; with {cached} cached credentials {loaded / 1024:.1f} MiB "
              f"(+{(loaded - idle_gw) / 1024:.1f} MiB, {(loaded - idle_gw) * 1024 / max(1, cached):.0f} B per "
              "credential)")
    # The same load through nginx for comparison of RSS after load.
    subprocess.run(["wrk", f"-t{threads}", "-c16", "-d5s", "-H", AUTH, ng["h1"]], capture_output=True)
    print(f"nginx-tls after load: {rss_kib(ng['pids']()) / 1024:.1f} MiB")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="2 rounds of 1 s, 1 s warm-up: under a minute")
    ap.add_argument("--redis", action="store_true", help='gateway rate_limit.backend "redis" vs "local"')
    ap.add_argument("--memory", action="store_true",
                    help="idle RSS of the gateway and nginx, and the gateway's with --credentials cached keys")
    ap.add_argument("--credentials", type=int, default=100_000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--duration", type=int, default=5, help="seconds per measurement")
    ap.add_argument("--warmup", type=int, default=2, help="seconds of warm-up per target and protocol")
    ap.add_argument("--conns", default="8,64")
    ap.add_argument("--proto", default="h1,h2", help="h1 (wrk), h2 (h2load)")
    ap.add_argument("--streams", type=int, default=8, help="h2load -m")
    ap.add_argument("--backend", choices=["hyper", "nginx"], default="hyper",
                    help="examples/bench_backend (default) or a separate nginx answering return 200")
    ap.add_argument("--nginx-workers", type=int, default=2)
    ap.add_argument("--keep", action="store_true", help="keep the work directory (configs, logs)")
    ap.add_argument("--gateway-bin", default=os.path.join(ROOT, "target/release/frappe-gateway"))
    ap.add_argument("--baseline-bin", help="a second gateway binary (e.g. an earlier commit's) measured in the "
                    "same rounds: A/B ratios gateway / gateway-base")
    ap.add_argument("--floor", action="store_true",
                    help="also run examples/floor_proxy: the gateway's stack proxying with no policy")
    ap.add_argument("--floor-bin", default=os.path.join(ROOT, "target/release/examples/floor_proxy"))
    ap.add_argument("--backend-bin", default=os.path.join(ROOT, "target/release/examples/bench_backend"))
    args = ap.parse_args()
    if args.quick:
        args.rounds, args.duration, args.warmup = 2, 1, 1
    ver = subprocess.run(["nginx", "-v"], capture_output=True, text=True).stderr
    m = re.search(r"nginx/(\d+)\.(\d+)\.(\d+)", ver)
    args.nginx_http2_directive = bool(m) and tuple(map(int, m.groups())) >= (1, 25, 1)

    lineup = Lineup(args)
    started = time.monotonic()
    try:
        lineup.start()
        if args.memory:
            memory(lineup, args)
        else:
            run(lineup, args)
    finally:
        lineup.stop()
    print(f"\ntotal {time.monotonic() - started:.0f}s")


def run(lineup, args):
    names = list(lineup.targets)
    protos = [p for p in args.proto.split(",") if p]
    conns_list = [int(c) for c in args.conns.split(",") if c]
    with open("/proc/loadavg") as f:
        load_before = f.read().split()[:3]
    print(f"# {time.strftime('%Y-%m-%d %H:%M')} — {os.cpu_count()} cores, load average {' '.join(load_before)}")
    print(f"# {args.rounds} interleaved rounds × {args.duration}s per target, warm-up {args.warmup}s; "
          f"backend {args.backend}; nginx {args.nginx_workers} workers; gateway default workers")
    summary = []
    other = []
    for proto in protos:
        runnable = [n for n in names if lineup.targets[n].get(proto)]
        for n in runnable:  # warm up once per protocol
            measure(lineup, n, proto, max(conns_list), args.warmup)
        for conns in conns_list:
            tool = f"wrk -t2 -c{conns}" if proto == "h1" else f"h2load -c{conns} -m{args.streams} -t2"
            print(f"\n== {'HTTP/1.1' if proto == 'h1' else 'HTTP/2'}: {tool}, {args.rounds} rounds × {args.duration}s")
            rounds = []
            for r in range(args.rounds):
                order = runnable[r % len(runnable):] + runnable[: r % len(runnable)]
                res = {}
                for n in order:
                    res[n] = measure(lineup, n, proto, conns, args.duration)
                    other.append(res[n]["other_cores"])
                rounds.append(res)
            print(f"{'target':<12} {'req/s':>17} {'p50 ms':>12} {'p99 ms':>12} {'CPU µs/req':>12} "
                  f"{'user':>9} {'system':>9} {'failed':>7}")
            for n in runnable:
                col = lambda k: [rd[n][k] for rd in rounds]
                cpu = span(col("cpu_us"))
                if n == "direct":
                    cpu += " (backend)"
                print(f"{n:<12} {span(col('rps')):>17} {span(col('p50'), '{:.2f}'):>12} "
                      f"{span(col('p99'), '{:.2f}'):>12} {cpu:>12} {span(col('user_us')):>9} "
                      f"{span(col('sys_us')):>9} {sum(col('failed')):>7}")
                if sum(col("failed")):
                    print(f"  !! {n}: {sum(col('failed'))} failed or non-2xx responses")
            ratios = report_ratios(lineup, rounds, runnable, args)
            summary.append((proto, conns, ratios))
    with open("/proc/loadavg") as f:
        load_after = f.read().split()[:3]
    print(f"\n# machine: load average before {' '.join(load_before)}, after {' '.join(load_after)}; "
          f"CPU used outside this benchmark's processes during the runs: "
          f"{span(other, '{:.2f}')} cores (median {statistics.median(other) if other else 0:.2f})")
    print("\n## summary (min–max over rounds)")
    for proto, conns, ratios in summary:
        print(f"{'HTTP/1.1' if proto == 'h1' else 'HTTP/2'} c={conns}: " + "; ".join(ratios))


def ratio(rounds, a, b, key, f=lambda x, y: x / y if y else None):
    return [f(rd[a][key], rd[b][key]) for rd in rounds if a in rd and b in rd]


def report_ratios(lineup, rounds, runnable, args):
    out = []
    print("ratios per round:")
    if args.redis:
        pairs = [
            ("throughput redis / local", ratio(rounds, "gw-redis", "gw-local", "rps"), "{:.2f}"),
            ("CPU µs/req redis / local", ratio(rounds, "gw-redis", "gw-local", "cpu_us"), "{:.2f}"),
            ("added p99 redis − local, ms", ratio(rounds, "gw-redis", "gw-local", "p99", lambda x, y: x - y),
             "{:+.2f}"),
        ]
        if args.baseline_bin:
            pairs += [
                ("throughput redis-base / local", ratio(rounds, "gw-redis-base", "gw-local", "rps"), "{:.2f}"),
                ("CPU µs/req redis-base / local", ratio(rounds, "gw-redis-base", "gw-local", "cpu_us"), "{:.2f}"),
            ]
    else:
        pairs = [
            ("throughput gateway / nginx-tls", ratio(rounds, "gateway", "nginx-tls", "rps"), "{:.2f}"),
            ("throughput gateway / nginx-auth", ratio(rounds, "gateway", "nginx-auth", "rps"), "{:.2f}"),
            ("CPU µs/req gateway / nginx-tls", ratio(rounds, "gateway", "nginx-tls", "cpu_us"), "{:.2f}"),
            ("user CPU gateway / nginx-tls", ratio(rounds, "gateway", "nginx-tls", "user_us"), "{:.2f}"),
            ("system CPU gateway / nginx-tls", ratio(rounds, "gateway", "nginx-tls", "sys_us"), "{:.2f}"),
        ]
        if args.floor:
            pairs += [
                ("CPU µs/req floor / nginx-tls", ratio(rounds, "floor", "nginx-tls", "cpu_us"), "{:.2f}"),
                ("CPU µs/req gateway / floor", ratio(rounds, "gateway", "floor", "cpu_us"), "{:.2f}"),
                ("user CPU floor / nginx-tls", ratio(rounds, "floor", "nginx-tls", "user_us"), "{:.2f}"),
                ("system CPU floor / nginx-tls", ratio(rounds, "floor", "nginx-tls", "sys_us"), "{:.2f}"),
                ("throughput floor / nginx-tls", ratio(rounds, "floor", "nginx-tls", "rps"), "{:.2f}"),
            ]
        if args.baseline_bin:
            pairs += [
                ("throughput gateway / gateway-base", ratio(rounds, "gateway", "gateway-base", "rps"), "{:.2f}"),
                ("CPU µs/req gateway / gateway-base", ratio(rounds, "gateway", "gateway-base", "cpu_us"), "{:.2f}"),
            ]
        if "direct" in runnable:
            sub = lambda x, y: x - y
            pairs += [
                ("added p99 over direct, gateway ms", ratio(rounds, "gateway", "direct", "p99", sub), "{:+.2f}"),
                ("added p99 over direct, nginx-tls ms", ratio(rounds, "nginx-tls", "direct", "p99", sub), "{:+.2f}"),
                ("added p99 over direct, nginx-auth ms", ratio(rounds, "nginx-auth", "direct", "p99", sub),
                 "{:+.2f}"),
            ]
    for label, values, fmt in pairs:
        if values and all(v is not None for v in values):
            print(f"  {label:<40} {span_med(values, fmt)}")
            out.append(f"{label} {span(values, fmt)}")
    if args.redis:
        # redis-server's own CPU per request while the Redis-backed gateway ran.
        for name in ("gw-redis", "gw-redis-base"):
            if not any(name in rd for rd in rounds):
                continue
            values = [rd[name]["redis-server_us"] for rd in rounds if name in rd]
            print(f"  {f'redis-server CPU µs/req ({name} runs)':<40} {span(values)}")
            out.append(f"redis-server CPU µs/req ({name}) {span(values)}")
            calls = [rd[name].get("redis_calls_per_req") for rd in rounds if name in rd]
            print(f"  {f'Redis script calls per request ({name})':<40} {span(calls, '{:.2f}')}")
            out.append(f"Redis script calls per request ({name}) {span(calls, '{:.2f}')}")
    return out


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Memory per idle session: opens N sessions through mailbrake (plain or
implicit TLS), each greeted and then idle, and reports mailbrake's resident
memory before and after, per session, and how many sessions were greeted,
refused or left waiting. The upstream is a tiny asyncio SMTP greeter in a
process of its own that holds every connection open, so that each of the
three processes holds one descriptor per session (mailbrake two).

    python3 bench/sessions.py --mailbrake PATH --sessions 5000 [--tls]

Everything listens on 127.0.0.1. Exits non-zero when a session was not
greeted."""

import argparse
import asyncio
import os
import resource
import socket
import ssl
import subprocess
import sys
import tempfile
import time


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


async def greeter_main(port):
    """The upstream: greets and holds every connection until it closes."""
    held = []

    async def greet(reader, writer):
        writer.write(b"220 upstream ESMTP\r\n")
        await writer.drain()
        held.append(writer)
        try:
            await reader.read()  # until mailbrake closes
        except (asyncio.CancelledError, ConnectionError):
            pass

    server = await asyncio.start_server(greet, "127.0.0.1", port, backlog=4096)
    print("ready", flush=True)
    async with server:
        await server.serve_forever()


async def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--mailbrake")
    ap.add_argument("--sessions", type=int, default=5000)
    ap.add_argument("--tls", action="store_true")
    ap.add_argument("--greeter", type=int, help=argparse.SUPPRESS)
    a = ap.parse_args()
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if a.greeter:
        return await greeter_main(a.greeter)
    if not a.mailbrake:
        ap.error("--mailbrake is required")

    up_port, mb_port, admin = free_port(), free_port(), free_port()
    greeter = subprocess.Popen([sys.executable, __file__, "--greeter", str(up_port)],
                               stdout=subprocess.PIPE)
    assert greeter.stdout.readline().strip() == b"ready"
    work = tempfile.mkdtemp()
    cert, key = f"{work}/c.pem", f"{work}/k.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
         "-keyout", key, "-out", cert, "-days", "2", "-subj", "/CN=localhost",
         "-addext", "subjectAltName=DNS:localhost"],
        check=True, capture_output=True)
    tls = f'tls = "implicit"\ncert = "{cert}"\nkey = "{key}"\n' if a.tls else 'tls = "none"\n'
    with open(f"{work}/mb.toml", "w") as f:
        f.write(f"""[admin]
bind = "127.0.0.1:{admin}"
[server]
drain_timeout = "1s"
[state]
dir = "{work}/state"
[protect]
connections_per_ip = "off"
[[listener]]
name = "bench"
bind = "127.0.0.1:{mb_port}"
{tls}upstream = "127.0.0.1:{up_port}"
max_sessions = {a.sessions + 100}
""")
    log = open(f"{work}/mb.log", "w")
    mb = subprocess.Popen([a.mailbrake, "run", "-c", f"{work}/mb.toml"], stderr=log,
                          env={**os.environ, "MAILBRAKE_LOG": "warn"})
    try:
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", admin), timeout=1).close()
                break
            except OSError:
                await asyncio.sleep(0.05)
        # One session first, so lazily built state is not counted per session.
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE

        outcomes = {}

        async def session():
            """A greeted session's writer, or None (the outcome is counted)."""
            try:
                r, w = await asyncio.wait_for(asyncio.open_connection(
                    "127.0.0.1", mb_port, ssl=ctx if a.tls else None), 10)
                line = await asyncio.wait_for(r.readline(), 10)
            except (OSError, asyncio.TimeoutError) as e:
                key = f"failed: {type(e).__name__}"
                outcomes[key] = outcomes.get(key, 0) + 1
                return None
            key = "greeted (220)" if line.startswith(b"220") else f"answered {line[:60]!r}"
            outcomes[key] = outcomes.get(key, 0) + 1
            return w

        warm = await session()
        assert warm is not None, outcomes
        outcomes.clear()
        await asyncio.sleep(0.5)
        before = rss_kib(mb.pid)
        clients = []
        t0 = time.time()
        for i in range(0, a.sessions, 250):
            clients += await asyncio.gather(*[session() for _ in range(min(250, a.sessions - i))])
        opened = time.time() - t0
        await asyncio.sleep(1.0)
        after = rss_kib(mb.pid)
        greeted = outcomes.get("greeted (220)", 0)
        per = (after - before) * 1024 / max(greeted, 1)
        kind = "TLS" if a.tls else "plain"
        print(f"{kind}: {a.sessions} sessions opened in {opened:.1f} s; mailbrake RSS "
              f"{before / 1024:.1f} MiB -> {after / 1024:.1f} MiB: {per / 1024:.1f} KiB per session")
        print(f"open-file limit {resource.getrlimit(resource.RLIMIT_NOFILE)[0]}; outcomes: "
              + ", ".join(f"{k}: {v}" for k, v in sorted(outcomes.items())))
        errors = [l for l in open(f"{work}/mb.log") if "ERROR" in l or "WARN" in l]
        if errors:
            print(f"mailbrake warned {len(errors)} times, e.g. {errors[0].strip()}", file=sys.stderr)
        for w in clients + [warm]:
            if w is not None:
                w.close()
        return 0 if greeted == a.sessions else 1
    finally:
        mb.terminate()
        mb.wait(timeout=30)
        greeter.terminate()
        greeter.wait(timeout=30)


sys.exit(asyncio.run(main()))

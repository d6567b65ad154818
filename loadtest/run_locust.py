"""``make loadtest``: start ``switchboard up``, run locust headless against it, stop it.

Starts a private cluster (Redis, N gateways, router) on free loopback ports with a known JWT
secret and API key, runs ``locust --headless --processes W`` for a bounded time, writes the
HTML report and CSV statistics to ``loadtest/reports/``, then stops the cluster by its PID
(SIGINT: the supervisor drains the gateways and stops everything it started). Every wait
has a deadline; a locust that overstays its run time is stopped too.

Usage: ``python -m loadtest.run_locust [--duration 60] [--users 300] [--processes 2] ...``
"""

from __future__ import annotations

import argparse
import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

from switchboard.children import free_port

ROOT = Path(__file__).resolve().parent.parent
REPORTS = ROOT / "loadtest" / "reports"
UP_TIMEOUT = 60.0  # seconds for `switchboard up` to print its banner
STOP_GRACE = 45.0  # the supervisor drains gateways for up to 30 s


def up_argv(port: int, router_port: int, gateways: int, secret: str, key: str) -> list[str]:
    """``switchboard up``'s arguments. Secrets as ``--flag=value``: a random urlsafe one
    starts with "-" one time in 32, and argparse would take it for an option."""
    return ["up", "--port", str(port), "--router-port", str(router_port),
            "--gateways", str(gateways), f"--jwt-secret={secret}", f"--api-key={key}"]


def start_cluster(port: int, router_port: int, gateways: int, secret: str, key: str,
                  log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "switchboard.cli",
             *up_argv(port, router_port, gateways, secret, key)],
            stdout=out, stderr=subprocess.STDOUT, cwd=ROOT,
            # drop inherited SWITCHBOARD_* settings: this run's cluster is fully described here
            env={k: v for k, v in os.environ.items() if not k.startswith("SWITCHBOARD_")},
        )
    deadline = time.monotonic() + UP_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"switchboard up exited with {proc.returncode}:\n"
                             f"{log.read_text(errors='replace')}")
        if "Switchboard is up" in log.read_text(errors="replace"):
            return proc
        time.sleep(0.2)
    stop_cluster(proc)
    raise SystemExit(f"switchboard up did not come up within {UP_TIMEOUT:.0f} s; see {log}")


def stop_cluster(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)  # what Ctrl-C does: drain, then stop children
        try:
            proc.wait(STOP_GRACE)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGINT)  # a second signal skips the drain
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def run_locust(args: argparse.Namespace, env: dict[str, str], stamp: str) -> int:
    prefix = args.reports / f"locust-{stamp}"
    cmd = [sys.executable, "-m", "locust", "-f", str(ROOT / "loadtest" / "locustfile.py"),
           "--headless", "-u", str(args.users), "-r", str(args.spawn_rate),
           "-t", f"{int(args.duration)}s", "--processes", str(args.processes),
           "--stop-timeout", "5", "--html", f"{prefix}.html", "--csv", str(prefix),
           "--only-summary", "--host", env["SWITCHBOARD_ROUTER_URL"]]
    print("loadtest:", " ".join(cmd[1:]), file=sys.stderr, flush=True)
    # its own session, so the forked workers can be stopped with it if it overstays
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, start_new_session=True)
    try:
        return proc.wait(args.duration + 120)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            return proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            return proc.wait()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=60, help="seconds of load")
    parser.add_argument("--users", type=int, default=300, help="locust users in total")
    parser.add_argument("--spawn-rate", type=float, default=50, help="users started per second")
    parser.add_argument("--processes", type=int, default=2, help="locust worker processes")
    parser.add_argument("--gateways", type=int, default=2)
    parser.add_argument("--publish-rate", type=float, default=5,
                        help="requests/s per publisher user")
    parser.add_argument("--reports", type=Path, default=REPORTS,
                        help="directory for the HTML and CSV reports and the cluster log")
    args = parser.parse_args()
    args.reports.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    port, router_port = free_port(), free_port()
    secret, key = secrets.token_urlsafe(32), secrets.token_urlsafe(24)
    cluster_log = args.reports / f"cluster-{stamp}.log"
    cluster = start_cluster(port, router_port, args.gateways, secret, key, cluster_log)
    env = {
        **os.environ,
        "SWITCHBOARD_GATEWAY_URL": f"ws://127.0.0.1:{port}",
        "SWITCHBOARD_ROUTER_URL": f"http://127.0.0.1:{router_port}",
        "SWITCHBOARD_API_KEY": key,
        "SWITCHBOARD_JWT_SECRET": secret,
        "LOADTEST_USER_POOL": str(args.users),
        "LOADTEST_PUBLISH_RATE": str(args.publish_rate),
        "PYTHONPATH": str(ROOT),
    }
    try:
        code = run_locust(args, env, stamp)
    finally:
        stop_cluster(cluster)
    print(f"loadtest: reports in {args.reports}/locust-{stamp}.html and "
          f"{args.reports}/locust-{stamp}_stats.csv (cluster log {cluster_log})",
          file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())

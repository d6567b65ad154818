"""Supervised child processes: one :class:`Child` per slot, with its restart budget.

The supervisor decides *when* to start, restart or stop a child; this module only knows *how*:
spawn in a new session (so a terminal's Ctrl-C reaches the supervisor alone, which orders the
shutdown), ask Linux to SIGTERM the child should the supervisor die, and signal it only through
its ``Popen``, so a PID that was reaped and recycled is never hit; start a group and wait until
it is ready, stop a group within a grace period. Also the small probes used to decide that a
child is ready.
"""

from __future__ import annotations

import collections
import ctypes
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

log = logging.getLogger("switchboard.supervisor")

RESTART_LIMIT = 5
RESTART_WINDOW = 60.0
PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>


class StartError(Exception):
    """A child died or did not become ready while starting; the message says which."""


class Interrupted(Exception):
    """SIGINT or SIGTERM arrived while children were starting."""


class RestartBudget:
    """At most ``limit`` restarts in any ``window`` seconds, so a crash loop ends."""

    def __init__(self, limit: int = RESTART_LIMIT, window: float = RESTART_WINDOW) -> None:
        self.limit = limit
        self.window = window
        self._times: collections.deque[float] = collections.deque()

    def used(self, now: float) -> int:
        while self._times and self._times[0] <= now - self.window:
            self._times.popleft()
        return len(self._times)

    def spend(self, now: float) -> bool:
        """Record a restart at ``now`` and return True, or False if the budget is used up."""
        if self.used(now) >= self.limit:
            return False
        self._times.append(now)
        return True


def describe_exit(returncode: int) -> str:
    if returncode < 0:
        try:
            return f"was killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"was killed by signal {-returncode}"
    return f"exited with code {returncode}"


# -- probes -----------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def port_taken(host: str, port: int) -> bool:
    """True if something listens there. SO_REUSEADDR ignores TIME_WAIT leftovers; without
    SO_REUSEPORT, a gateway of an earlier ``switchboard up`` still counts as taken."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host or "0.0.0.0", port))
        except OSError:
            return True
    return False


def redis_pings(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return int(resp.status) == 200
    except (urllib.error.URLError, OSError):
        return False


# -- children ---------------------------------------------------------------------------------


def _die_with_parent(parent: int) -> Callable[[], None] | None:
    """A ``preexec_fn`` (Linux only) asking the kernel to SIGTERM the child if we die."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl  # loaded before fork, not in the child
    except (OSError, AttributeError):
        return None

    def preexec() -> None:
        prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != parent:  # we died before prctl took effect
            os._exit(1)

    return preexec


@dataclass(eq=False)
class Child:
    """One supervised slot. A restart keeps the slot's name and restart budget."""

    name: str
    command: Callable[[Child], tuple[list[str], dict[str, str]]]  # argv, env overrides
    ready: Callable[[Child], bool]
    ident: str = ""  # e.g. the gateway id of the current run, chosen by ``command``
    proc: subprocess.Popen[bytes] | None = None
    budget: RestartBudget = field(default_factory=RestartBudget)
    retire_by: float | None = None  # set when asked to stop: the SIGKILL deadline

    @property
    def pid(self) -> int:
        return self.proc.pid if self.proc else 0

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def spawn(self, environ: Mapping[str, str]) -> None:
        argv, overrides = self.command(self)
        # unbuffered, so children's logs interleave with ours in order when piped
        env = {**environ, **overrides, "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL,
                                     start_new_session=True,
                                     preexec_fn=_die_with_parent(os.getpid()))

    def signal(self, sig: int) -> None:
        # Popen.send_signal polls first and does nothing once the child was reaped
        if self.proc is not None:
            self.proc.send_signal(sig)


# -- starting and stopping a group ------------------------------------------------------------


def start_children(children: list[Child], environ: Mapping[str, str], timeout: float,
                   stop: threading.Event) -> None:
    """Spawn ``children`` and wait until each is ready; raise StartError or, once ``stop`` is
    set, Interrupted."""
    for child in children:
        child.spawn(environ)
        log.info("started %s (pid %d)", child.name, child.pid)
    waiting = list(children)
    deadline = time.monotonic() + timeout
    while waiting:
        for child in list(waiting):
            if child.proc is not None and child.proc.poll() is not None:
                raise StartError(f"{child.name} {describe_exit(child.proc.returncode)} "
                                 "while starting (its output is above)")
            if child.ready(child):
                waiting.remove(child)
        if not waiting:
            break
        if time.monotonic() > deadline:
            for child in waiting:  # a hung child counts as failed; stop it so the
                child.signal(signal.SIGKILL)  # next look at it sees it dead
                if child.proc is not None:
                    child.proc.wait()
            names = ", ".join(c.name for c in waiting)
            raise StartError(f"{names} did not become ready within {timeout:.0f} s")
        if stop.wait(0.05):
            raise Interrupted


def terminate(children: list[Child], grace: float, hurry: threading.Event) -> None:
    """SIGTERM all, wait up to ``grace`` (less once ``hurry`` is set), SIGKILL the rest."""
    for child in children:
        child.signal(signal.SIGTERM)
    deadline = time.monotonic() + grace
    while any(c.running() for c in children):
        if time.monotonic() > deadline or hurry.is_set():
            break
        hurry.wait(0.05)
    for child in children:
        if child.running():
            log.warning("%s (pid %d) did not stop in time; killing it", child.name, child.pid)
            child.signal(signal.SIGKILL)
        if child.proc is not None:
            child.proc.wait()

"""Every ``switchboard`` error is one clear line on stderr and a non-zero exit, never a
traceback, and never shows the API key or JWT secret it was given.

Each case runs the real command in a subprocess; "routers" that answer oddly are tiny local
servers, and an unreachable one is a port nobody listens on.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator

import pytest

from tests.support import ROOT, free_port

SECRET = "abcdefghij-0123456789-abcdefghij-0123456789"
KEY = "sb-live-7f3c9a1e5b2d4087"


def switchboard(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("SWITCHBOARD_")}
    return subprocess.run([sys.executable, "-m", "switchboard.cli", *args],
                          env={**clean, **env}, cwd=ROOT, capture_output=True, text=True,
                          timeout=60)


def one_line_error(done: subprocess.CompletedProcess[str], *expected: str) -> str:
    err = done.stderr
    assert "Traceback" not in err, err
    assert done.returncode != 0, (done.returncode, err)
    assert len(err.splitlines()) == 1 and err.endswith("\n"), err
    assert done.stdout == "", done.stdout
    for text in expected:
        assert text in err, (text, err)
    for secret in (SECRET, KEY):
        assert secret not in err, err
    return err


@pytest.fixture(scope="module")
def nobody() -> str:
    """A router URL where nothing listens."""
    return f"http://127.0.0.1:{free_port()}"


class CannedServer:
    """Answers every connection with the same bytes (or none), after reading its head."""

    def __init__(self, answer: bytes) -> None:
        self.answer = answer
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                conn.settimeout(5)
                data = b""
                while b"\r\n\r\n" not in data:
                    chunk = conn.recv(65536)
                    if not chunk:
                        break
                    data += chunk
                if self.answer:
                    conn.sendall(self.answer)

    def close(self) -> None:
        self.sock.close()
        self.thread.join(5)


def http(status: str, content_type: str, body: bytes) -> bytes:
    return (f"HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {len(body)}"
            f"\r\nConnection: close\r\n\r\n").encode() + body


@pytest.fixture
def canned(request: pytest.FixtureRequest) -> Iterator[str]:
    server = CannedServer(request.param)
    try:
        yield server.url
    finally:
        server.close()


@pytest.mark.parametrize(("keys", "why"), [
    ("line\nbreak-key", "line break"),
    ("carriage\rreturn", "line break"),
    ("ключ-api", "non-ASCII"),
    ("tab\tkey", "control character"),
    (f"{KEY}\x1b[0m", "control character"),
])
@pytest.mark.parametrize("command", [["status"], ["publish", "--broadcast", "hello"]])
def test_a_malformed_api_key_in_the_environment_is_one_line(
    command: list[str], keys: str, why: str, nobody: str
) -> None:
    done = switchboard(*command, "--router", nobody, SWITCHBOARD_API_KEYS=f"{keys},other")
    one_line_error(done, why, "SWITCHBOARD_API_KEYS", f"switchboard {command[0]}:")


def test_the_error_names_where_the_malformed_key_came_from(nobody: str) -> None:
    done = switchboard("status", "--router", nobody, SWITCHBOARD_API_KEY=f"{KEY}\n{KEY}")
    one_line_error(done, "line break", "SWITCHBOARD_API_KEY ")
    done = switchboard("status", "--router", nobody, "--api-key", f"{KEY}\u00e9")
    one_line_error(done, "non-ASCII", "--api-key")


def test_surrounding_whitespace_is_stripped_as_the_router_strips_it(nobody: str) -> None:
    # A key file's trailing newline used to make the header invalid (a traceback).
    done = switchboard("status", "--router", nobody, SWITCHBOARD_API_KEY=f"  {KEY}\n")
    one_line_error(done, "cannot reach the router")


def test_no_api_key_at_all_is_one_line(nobody: str) -> None:
    one_line_error(switchboard("status", "--router", nobody), "no API key")


@pytest.mark.parametrize(("url", "why"), [
    ("127.0.0.1:8000", "http:// or https://"),
    ("http://127.0.0.1:99999", "not a valid URL"),
    ("http://[::1", "not a valid URL"),
    ("http://127.0.0.1:8000/ключ", "plain ASCII"),
    ("http://127.0.0.1:8000/a b", "plain ASCII"),
    ("ftp://127.0.0.1/", "http:// or https://"),
])
def test_a_bad_router_url_is_one_line(url: str, why: str) -> None:
    one_line_error(switchboard("status", "--router", url, SWITCHBOARD_API_KEY=KEY), why)


def test_a_bad_router_url_from_the_environment_is_one_line() -> None:
    one_line_error(switchboard("publish", "--broadcast", "x", SWITCHBOARD_API_KEY=KEY,
                               SWITCHBOARD_ROUTER_URL="localhost"), "SWITCHBOARD_ROUTER_URL")


def test_an_unreachable_router_is_one_line(nobody: str) -> None:
    one_line_error(switchboard("status", "--router", nobody, SWITCHBOARD_API_KEY=KEY),
                   "cannot reach the router")


@pytest.mark.parametrize(("canned", "why"), [
    (http("200 OK", "text/html", b"<html>\n<body>\nhello\n</body>\n</html>\n"), "not JSON"),
    (http("200 OK", "application/json", b"[1, 2, 3]"), "unexpected answer"),
    (http("502 Bad Gateway", "text/html", b"<html>\n<h1>502</h1>\n</html>\n"),
     "router answered 502: <html> <h1>502</h1> </html>"),
    (b"", "no answer from the router"),  # hangs up without a word
    (b"SSH-2.0-OpenSSH_9.6\r\n", "no answer from the router"),  # not HTTP at all
], indirect=["canned"])
def test_an_odd_answer_is_one_line(canned: str, why: str) -> None:
    one_line_error(switchboard("status", "--router", canned, SWITCHBOARD_API_KEY=KEY), why)


@pytest.mark.parametrize(("args", "why"), [
    (["--ttl", "inf"], "--ttl must be a positive number"),
    (["--ttl", "nan"], "--ttl must be a positive number"),
    (["--ttl", "-5"], "--ttl must be a positive number"),
    (["--ttl", "soon"], "invalid float value"),
    (["--user", "bad\nuser"], "is not a valid user id"),
    (["--user", ""], "is not a valid user id"),
])
def test_bad_token_flags_are_one_line(args: list[str], why: str) -> None:
    done = switchboard("token", "--user", "alice", *args, SWITCHBOARD_JWT_SECRET=SECRET)
    one_line_error(done, why)


def test_a_token_secret_that_is_missing_or_not_utf8_is_one_line() -> None:
    one_line_error(switchboard("token", "--user", "alice"), "SWITCHBOARD_JWT_SECRET")
    # Undecodable bytes reach Python as lone surrogates.
    done = subprocess.run(
        [sys.executable, "-m", "switchboard.cli", "token", "--user", "alice"],
        env={**{k: v for k, v in os.environ.items() if not k.startswith("SWITCHBOARD_")},
             "SWITCHBOARD_JWT_SECRET": "s\udcffcret-0123456789-0123456789-0123456789"},
        cwd=ROOT, capture_output=True, text=True, timeout=60)
    one_line_error(done, "not valid UTF-8")


def test_a_short_token_secret_warns_in_one_line_and_still_mints() -> None:
    done = switchboard("token", "--user", "alice", "--jwt-secret", "short")
    assert done.returncode == 0 and done.stdout.count(".") == 2, done
    assert "Traceback" not in done.stderr and len(done.stderr.splitlines()) == 1
    assert "warning" in done.stderr and "32 bytes" in done.stderr


def test_bad_command_lines_are_one_line_with_exit_2() -> None:
    for args in (["status", "--bogus"], [], ["token"], ["nosuch"]):
        done = switchboard(*args)
        assert done.returncode == 2, (args, done.stderr)
        one_line_error(done, "error:", "--help")


def test_process_commands_with_bad_settings_are_one_line() -> None:
    gateway = {"SWITCHBOARD_JWT_SECRET": SECRET, "SWITCHBOARD_REDIS_URL": "redis://127.0.0.1:1"}
    one_line_error(switchboard("gateway", **gateway, SWITCHBOARD_PORT="99999"), "port")
    one_line_error(switchboard("gateway", **gateway, SWITCHBOARD_PORT="x"), "SWITCHBOARD_PORT")
    one_line_error(switchboard("gateway", **{**gateway, "SWITCHBOARD_REDIS_URL": "foo://x"}),
                   "Redis URL")
    one_line_error(switchboard("gateway", SWITCHBOARD_JWT_PUBLIC_KEY="@/nonexistent/key.pem"),
                   "/nonexistent/key.pem")
    one_line_error(switchboard("router", SWITCHBOARD_API_KEYS=KEY,
                               SWITCHBOARD_HTTP_PARSER="fast"), "--http-parser")


def test_a_minted_token_carries_the_presence_channels_it_was_given() -> None:
    from switchboard.auth import Verifier

    done = switchboard("token", "--user", "alice", "--channels", "room,news-*",
                       "--presence", " room , news-* ,", SWITCHBOARD_JWT_SECRET=SECRET)
    assert done.returncode == 0, done.stderr
    claims = Verifier(secret=SECRET).verify(done.stdout.strip())
    assert claims.presence == ("room", "news-*") and claims.wants_presence("news-eu")
    plain = switchboard("token", "--user", "bob", SWITCHBOARD_JWT_SECRET=SECRET)
    assert Verifier(secret=SECRET).verify(plain.stdout.strip()).presence == ()

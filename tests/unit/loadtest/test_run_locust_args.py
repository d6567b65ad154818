"""The locust runner's `switchboard up` command line survives secrets that look like flags."""

from __future__ import annotations

import pytest

from loadtest.run_locust import up_argv
from switchboard.cli import _parser


@pytest.mark.parametrize("secret", ["-Xy3_secret-of-the-run", "--api-key", "plain"])
def test_secrets_starting_with_a_dash_are_passed_as_values(secret: str) -> None:
    # secrets.token_urlsafe() starts with "-" one time in 32: the CLI must still parse
    args = _parser().parse_args(up_argv(8080, 8000, 2, secret, secret[::-1]))
    assert (args.jwt_secret, args.api_key) == (secret, secret[::-1])
    assert (args.port, args.router_port, args.gateways) == (8080, 8000, 2)

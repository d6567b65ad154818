"""Which Redis a URL names: one server, or a Redis Cluster by its seed nodes.

One server is any URL redis-py accepts (``redis://``, ``rediss://``, ``unix://``). A cluster
is ``redis+cluster://[[user]:password@]HOST:PORT[,HOST:PORT...][/?options]`` (``rediss+cluster``
for TLS): the seeds are where the slot map is first read; every other node is found from it.
Query options are redis-py's (``ssl_cert_reqs``, ``ssl_ca_certs``...). A cluster has one
database, so a path other than ``/`` or ``/0`` is refused rather than ignored.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import quote, unquote, urlsplit

CLUSTER_SCHEMES = {"redis+cluster": "redis", "rediss+cluster": "rediss"}


@dataclass(frozen=True)
class ClusterUrl:
    seeds: tuple[tuple[str, int], ...]
    # The same URL for one seed, in the form redis-py parses (credentials, TLS options), for
    # the parts that open a connection to a node.
    node_template: str

    def node_url(self, host: str, port: int) -> str:
        """The URL of one node, with this cluster's credentials and options."""
        parts = urlsplit(self.node_template)
        auth = parts.netloc.rpartition("@")[0]
        netloc = f"{auth}@{_hostport(host, port)}" if auth else _hostport(host, port)
        return parts._replace(netloc=netloc).geturl()


def is_cluster(url: str) -> bool:
    return url.partition("://")[0].lower() in CLUSTER_SCHEMES


def parse_cluster(url: str) -> ClusterUrl:
    """Raises ValueError with what is wrong, for a message the user can act on."""
    scheme, sep, rest = url.partition("://")
    base = CLUSTER_SCHEMES.get(scheme.lower())
    if not sep or base is None:
        raise ValueError(f"not a cluster URL (redis+cluster://HOST:PORT,...): {quote(url)!r}")
    rest, _, query = rest.partition("?")
    netloc, _, path = rest.partition("/")
    auth, at, hosts = netloc.rpartition("@")
    if path not in ("", "0"):
        raise ValueError("a Redis Cluster has only database 0: drop the /DB from the URL")
    seeds: list[tuple[str, int]] = []
    for item in hosts.split(","):
        host, port = _split_hostport(item.strip())
        seeds.append((host, port))
    if not seeds:
        raise ValueError("a cluster URL needs at least one HOST:PORT seed")
    first = _hostport(*seeds[0])
    template = f"{base}://{auth + at if at else ''}{first}/0{'?' + query if query else ''}"
    return ClusterUrl(tuple(seeds), template)


def _split_hostport(item: str) -> tuple[str, int]:
    if not item:
        raise ValueError("empty HOST:PORT in the cluster URL")
    if item.startswith("["):  # [IPv6]:PORT
        host, _, port = item[1:].partition("]:")
    else:
        host, _, port = item.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"cluster seed must be HOST:PORT, not {quote(item)!r}")
    return unquote(host), int(port)


def _hostport(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def cluster_url(seeds: list[tuple[str, int]], *, tls: bool = False) -> str:
    """The URL of a cluster with these seeds (what ``switchboard up --redis-shards`` prints)."""
    scheme = "rediss+cluster" if tls else "redis+cluster"
    return f"{scheme}://{','.join(_hostport(h, p) for h, p in seeds)}"

"""An HTTP exporter serving one :class:`Metrics` registry on ``/metrics``, on its own server thread.

Uses ``prometheus_client.start_http_server(port, addr, registry)``, which (prometheus_client >= 0.20, checked
on 0.26) returns the ``(server, thread)`` pair, so the real bound port can be read and the server shut down.
The exporter serves the text format (and OpenMetrics / gzip when the scraper asks for them) on any path;
``/metrics`` is the conventional one.
"""

from __future__ import annotations

import threading

from prometheus_client import start_http_server

from .registry import Metrics


class Exporter:
    """A running exporter; use :func:`start_exporter` to make one.

    ``host``/``port``: where it listens (``port`` is the real bound port, also when 0 was asked for);
    ``url``: the scrape URL ``http://host:port/metrics``. A context manager; :meth:`close` is idempotent.
    """

    def __init__(self, server: object, thread: threading.Thread, host: str) -> None:
        self._server = server
        self._thread = thread
        self._lock = threading.Lock()
        self._closed = False
        self.host = host
        self.port: int = int(server.server_address[1])  # type: ignore[attr-defined]

    @property
    def url(self) -> str:
        """The scrape URL, ``http://<host>:<port>/metrics`` (IPv6 hosts in brackets)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/metrics"

    @property
    def target(self) -> str:
        """``host:port`` as Prometheus (file service discovery) wants a target."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    @property
    def closed(self) -> bool:
        """True once :meth:`close` has run."""
        return self._closed

    def close(self, timeout_s: float = 5.0) -> None:
        """Stop serving and free the port; waits up to ``timeout_s`` for the server thread. Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._server.shutdown()  # type: ignore[attr-defined]
        self._server.server_close()  # type: ignore[attr-defined]
        self._thread.join(timeout_s)

    def __enter__(self) -> Exporter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Exporter({self.url!r}{', closed' if self._closed else ''})"


def start_exporter(metrics: Metrics, host: str = "127.0.0.1", port: int = 0) -> Exporter:
    """Serve ``metrics``' own registry over HTTP at ``host:port`` on a daemon thread and return the exporter.

    ``port`` 0 picks a free port (read it from ``Exporter.port``). Raises ValueError for a port outside
    0..65535, and OSError (same errno, e.g. EADDRINUSE) naming ``host:port`` when the address cannot be bound,
    e.g. because the port is taken.
    """
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        raise ValueError(f"metrics exporter port must be an int in 0..65535, got {port!r}")
    try:
        server, thread = start_http_server(port, addr=host, registry=metrics.registry)
    except OSError as e:
        raise OSError(e.errno, f"metrics exporter cannot listen on {host}:{port}: {e.strerror or e}") from e
    return Exporter(server, thread, host)

"""``likeness serve``: one local service for the creative lead's page and the pipeline's API.

* :mod:`~scanner.serve.auth`: users and hashed tokens, sessions, CSRF, rate limits;
* :mod:`~scanner.serve.worker`: private uploads, the warm scanner (reloaded when the
  index changes), the bounded pool of checks;
* :mod:`~scanner.serve.app`: the Starlette app (routes, errors, security headers);
* :mod:`~scanner.serve.openapi`: the API's OpenAPI document.

The service reuses the scanner (:class:`scanner.pipeline.Scanner`), the
report's one-asset page (:func:`scanner.report.html.render_html`) and the
decision ledger (:mod:`scanner.ledger`) as they are; it adds no judging of its own.
"""

from __future__ import annotations

import ipaddress
import logging
from pathlib import Path
from typing import Any

from scanner.errors import ParameterError

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8765


def is_loopback(host: str) -> bool:
    """Whether ``host`` binds to this machine only (``localhost``, 127.0.0.0/8, ``::1``)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a name: it may resolve anywhere


def check_bind(host: str, *, tls_cert: str | Path | None, tls_key: str | Path | None,
               insecure_http: bool) -> str | None:
    """Refuse a non-loopback address without TLS unless ``insecure_http`` says so.

    Returns
    -------
    warning : str or None
        What to tell the person when they chose plain HTTP off this machine.

    Raises
    ------
    ParameterError
        Non-loopback without ``--tls-cert/--tls-key`` or ``--insecure-http``;
        only one of the two TLS files; a TLS file that does not exist.
    """
    if (tls_cert is None) != (tls_key is None):
        raise ParameterError("--tls-cert and --tls-key go together")
    for opt, path in (("--tls-cert", tls_cert), ("--tls-key", tls_key)):
        if path is not None and not Path(path).is_file():
            raise ParameterError(f"{opt} {path}: no such file")
    if is_loopback(host) or tls_cert is not None:
        return None
    if not insecure_http:
        raise ParameterError(f"--host {host} is reachable from other machines: give --tls-cert and --tls-key, "
                             "or --insecure-http to serve tokens and outputs in clear text")
    return (f"serving plain HTTP on {host}: tokens, session cookies and uploaded outputs cross the network "
            "unencrypted (--insecure-http)")


def serve(config: Any, *, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT, tls_cert: str | Path | None = None,
          tls_key: str | Path | None = None, log_level: str = "info") -> None:
    """Run the app under uvicorn until interrupted (the caller checked the binding with :func:`check_bind`).

    Parameters
    ----------
    config : :class:`scanner.serve.app.ServeConfig`
    host, port : where to listen
    tls_cert, tls_key : PEM files; HTTPS when given (the session cookie is then ``Secure``)
    log_level : uvicorn's; the access log is off (this package logs each check without
        file names, content or tokens)
    """
    import uvicorn

    from scanner.serve.app import create_app

    logging.basicConfig(level=getattr(logging, log_level.upper(), logging.INFO),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    config.secure_cookies = tls_cert is not None
    app = create_app(config)
    uvicorn.run(app, host=host, port=port, ssl_certfile=str(tls_cert) if tls_cert else None,
                ssl_keyfile=str(tls_key) if tls_key else None, log_level=log_level, access_log=False,
                server_header=False, proxy_headers=False, timeout_graceful_shutdown=30)


__all__ = ["DEFAULT_HOST", "DEFAULT_PORT", "check_bind", "is_loopback", "serve"]

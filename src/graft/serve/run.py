"""`graft serve`: bind, say where to point a phone, run uvicorn until Ctrl-C; SIGHUP reloads the bundle."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import signal
import socket
import sys
from collections.abc import Callable
from pathlib import Path

from graft.bundle import Bundle
from graft.cpus import available_cpus
from graft.errors import GraftError, first_line
from graft.serve.limits import is_loopback
from graft.serve.settings import ServeSettings

log = logging.getLogger("graft.serve")


def serve(
    bundle: Bundle | str | Path,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    settings: ServeSettings | None = None,
    access_log: bool = False,
    say: Callable[[str], None] | None = None,
) -> None:
    """Serve `bundle` over HTTP until interrupted: the API, the phone page at /, and docs at /docs with --docs.

    The port is bound before the model loads, so a port in use is a one-line error and nothing else happens.
    Torch and ONNX Runtime use `settings.threads` (default: every core) for the forward pass.
    """
    import torch
    import uvicorn

    from graft.serve.app import create_app

    settings = (settings or ServeSettings()).validate()
    say = say or (lambda line: print(line, file=sys.stderr, flush=True))
    _log_to_stderr()
    sock = bind(host, port)
    try:
        torch.set_num_threads(settings.threads or available_cpus())
        app = create_app(bundle, settings)
        holder = app.state.holder
        loaded = holder.current
        say(f"serving {loaded.model_id} with {loaded.engine_name} ({loaded.engine_note})")
        if holder.project is not None:
            when = f"within {settings.watch_s:g} s" if settings.watch_s > 0 else "on SIGHUP or POST /v1/reload"
            say(f"following rounds project {holder.project}: a newly promoted round replaces this model {when}")
        for line in where_to_open(host, sock.getsockname()[1], settings.token is not None, docs=settings.docs):
            say(line)
        config = uvicorn_config(app, settings, access_log=access_log)
        _log_uvicorn(access_log)
        server = uvicorn.Server(config)
        asyncio.run(_run(server, sock, app.state.holder))
    finally:
        sock.close()


def uvicorn_config(app, settings: ServeSettings, *, access_log: bool = False, **extra):
    """uvicorn's configuration for `app`: its h11 protocol with a header deadline and a connection cap
    (`connections`), and an access log, when on, with tokens in query strings redacted.

    uvicorn's default `log_config` is refused (`log_config=None`): it runs `logging.config.dictConfig`, which
    shuts down every logging handler in the process, and absl's handler (absl-py's PythonHandler, imported with
    Keras) closes its stream on shutdown whenever that stream is no longer sys.stderr, so serving in-process could
    close a stream graft does not own (pytest's capture file, a notebook's). `serve` attaches uvicorn's handlers
    itself (`_log_uvicorn`)."""
    import uvicorn

    from graft.serve.connections import guarded_protocol

    extra.setdefault("log_config", None)
    config = uvicorn.Config(
        app,
        http=guarded_protocol(settings),
        log_level="info" if access_log else "warning",
        access_log=access_log,
        timeout_graceful_shutdown=max(5, int(settings.timeout_s)),
        **extra,
    )
    access = logging.getLogger("uvicorn.access")
    if not any(isinstance(f, RedactTokens) for f in access.filters):
        access.addFilter(RedactTokens())
    return config


_TOKEN_IN_QUERY = re.compile(r"([?&](?:token|access_token)=)[^&#\s]*", re.IGNORECASE)


def redact(text: str) -> str:
    """A request line or URL with the values of `token=` query parameters replaced (the page's ?token= link)."""
    return _TOKEN_IN_QUERY.sub(r"\1REDACTED", text)


class RedactTokens(logging.Filter):
    """Keeps secrets out of the access log: uvicorn logs the path with its query string."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(redact(arg) if isinstance(arg, str) else arg for arg in record.args)
        record.msg = redact(str(record.msg))
        return True


async def _run(server, sock: socket.socket, holder) -> None:
    loop = asyncio.get_running_loop()
    with contextlib.suppress(NotImplementedError, RuntimeError, AttributeError):  # no SIGHUP on Windows
        loop.add_signal_handler(signal.SIGHUP, lambda: on_sighup(holder))
    await server.serve(sockets=[sock])


def on_sighup(holder) -> asyncio.Task:
    """Reload the current bundle's directory, as `POST /v1/reload` does; a failure is logged, the model stays."""

    async def reload() -> None:
        try:
            await holder.reload()
        except (GraftError, OSError) as error:
            log.error("reload failed, still serving %s: %s", holder.current.model_id, first_line(error))
        except Exception:  # a bug: logged here, not left as "Task exception was never retrieved"
            log.exception("reload failed, still serving %s", holder.current.model_id)

    return asyncio.get_running_loop().create_task(reload())


def bind(host: str, port: int) -> socket.socket:
    """A listening socket, or a GraftError saying why not (port in use, no such address)."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except socket.gaierror as error:
        raise GraftError(f"cannot serve on {host!r}: {error.strerror}") from None
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6 and host in ("::", ""):
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.bind(address)
        sock.listen(2048)
    except OSError as error:
        sock.close()
        hint = "; choose another --port" if error.errno in (98, 48, 10048) else ""
        raise GraftError(f"cannot listen on {host}:{port}: {error.strerror or error}{hint}") from None
    sock.set_inheritable(True)
    return sock


def where_to_open(host: str, port: int, has_token: bool, *, docs: bool = False) -> list[str]:
    """The lines that tell a person which address to open, and who else can reach it."""
    token = "?token=TOKEN" if has_token else ""
    api_docs = " (API docs: /docs)" if docs else ""
    if is_loopback(host):
        return [
            f"open http://{_url_host(host)}:{port}/ on this computer{api_docs}",
            "only this computer can reach it; for a phone on the same Wi-Fi use --host 0.0.0.0 with --token SECRET",
        ]
    lines = []
    addresses = lan_addresses() if host in ("0.0.0.0", "::", "") else [host]
    for address in addresses:
        lines.append(f"open http://{_url_host(address)}:{port}/{token} on a phone on the same network")
    if not addresses:
        lines.append(
            f"open http://<this computer's address on your network>:{port}/{token} on a phone on the same network "
            "(the address was not found here: see your network settings)"
        )
    lines.append(f"on this computer: http://127.0.0.1:{port}/{api_docs}")
    if has_token:
        lines.append("predict, model and reload need the token (the page keeps it after the ?token= link)")
    else:
        lines.append("warning: anyone on this network can use the model; pass --token SECRET to require a token")
    return lines


def lan_addresses() -> list[str]:
    """This machine's non-loopback IPv4 addresses as its hostname resolves (no packets sent)."""
    try:
        infos = socket.getaddrinfo(socket.gethostname(), None, socket.AF_INET)
    except OSError:
        return []
    found = []
    for info in infos:
        address = str(info[4][0])
        if not is_loopback(address) and address not in found:
            found.append(address)
    return found


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


class _Stderr(logging.StreamHandler):
    """Writes to whatever sys.stderr is when a message comes (it may be replaced after the server starts), and
    never closes it: the process's std streams are not graft's to close."""

    name_in_sys = "stderr"

    @property  # type: ignore[override]
    def stream(self):
        return getattr(sys, self.name_in_sys)

    @stream.setter
    def stream(self, _value) -> None:
        pass


class _Stdout(_Stderr):
    """The same, for sys.stdout (uvicorn's access log goes there)."""

    name_in_sys = "stdout"


def _log_to_stderr() -> None:
    """graft.serve's reload and failure messages on stderr, once."""
    if not any(isinstance(handler, _Stderr) for handler in log.handlers):
        handler = _Stderr()
        handler.setFormatter(logging.Formatter("graft serve: %(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)


def _log_uvicorn(access_log: bool) -> None:
    """What uvicorn's default logging config would set up (errors on stderr, the access log on stdout, in its own
    formats), without `dictConfig` and its process-wide handler shutdown (see `uvicorn_config`)."""
    from uvicorn.logging import AccessFormatter, DefaultFormatter

    def attach(name: str, handler: logging.Handler) -> None:
        logger = logging.getLogger(name)
        logger.handlers = [h for h in logger.handlers if type(h) is not type(handler)] + [handler]
        logger.propagate = False

    errors = _Stderr()
    errors.setFormatter(DefaultFormatter("%(levelprefix)s %(message)s"))
    attach("uvicorn", errors)
    logging.getLogger("uvicorn").setLevel(logging.INFO)
    if access_log:
        access = _Stdout()
        access.setFormatter(AccessFormatter('%(levelprefix)s %(client_addr)s - "%(request_line)s" %(status_code)s'))
        attach("uvicorn.access", access)

"""Starting a server must not close streams it does not own.

uvicorn's default `log_config` runs `logging.config.dictConfig`, which first shuts down EVERY logging handler in
the process. absl's handler (absl.logging, imported by Keras) closes its stream on shutdown unless that stream is
sys.stderr at that moment; absl binds sys.stderr when it is imported, so when Keras was imported while pytest was
capturing (collection of the Keras tests) and a server started while `capsys` had replaced sys.stderr, pytest's own
capture file was closed and the session died with "I/O operation on closed file" / "lost sys.stderr"."""

from __future__ import annotations

import io
import logging
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

TESTS = Path(__file__).parent


class ClosesItsStream(logging.StreamHandler):
    """A handler that closes its stream when shut down, as absl's PythonHandler does."""

    def close(self) -> None:
        self.stream.close()
        super().close()


def test_serving_configuration_closes_no_other_logging_handler():
    from fastapi import FastAPI

    from graft.serve.run import uvicorn_config
    from graft.serve.settings import ServeSettings

    # The stand-in must be able to fail: a process-wide logging shutdown closes its stream.
    probe = ClosesItsStream(io.StringIO())
    logging.shutdown([lambda: probe])
    assert probe.stream.closed

    stream = io.StringIO()
    handler = ClosesItsStream(stream)  # alive, so registered in logging's process-wide handler list
    uvicorn_config(FastAPI(), ServeSettings(), access_log=True)
    assert not stream.closed, "starting the server closed another library's logging stream"
    handler.close()


def test_a_test_server_leaves_pytests_capture_open(tmp_path):
    """The crash itself, in a child pytest: absl imported during collection, then a live server in a capsys test."""
    pytest.importorskip("absl.logging", reason="absl-py (installed with keras, a dev dependency) is the culprit")
    (tmp_path / "test_child.py").write_text(
        textwrap.dedent(
            """
            import absl.logging  # binds pytest's capture stream, as importing keras at collection does
            import httpx
            from fastapi import FastAPI
            from serve_helpers import live_server

            def test_serve(capsys):
                app = FastAPI()
                app.get("/")(lambda: {"ok": True})
                with live_server(app) as url:
                    assert httpx.get(url, timeout=30).json() == {"ok": True}

            def test_after():
                print("still captured")
            """
        )
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])}
    child = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert child.returncode == 0 and "2 passed" in child.stdout, child.stdout[-3000:] + child.stderr[-3000:]
    assert "closed file" not in child.stdout + child.stderr


def test_graft_serve_still_logs_uvicorn_errors_and_the_access_log(capsys):
    """Without uvicorn's dictConfig, `graft serve` attaches the same handlers itself, on the current std streams."""
    from fastapi import FastAPI

    from graft.serve.run import _log_uvicorn, uvicorn_config
    from graft.serve.settings import ServeSettings

    saved = {name: (logging.getLogger(name).handlers[:], logging.getLogger(name).propagate) for name in NAMES}
    try:
        uvicorn_config(FastAPI(), ServeSettings(), access_log=True)
        _log_uvicorn(access_log=True)
        _log_uvicorn(access_log=True)  # twice (a second server in one process): still one line per message
        logging.getLogger("uvicorn.error").warning("port trouble")
        logging.getLogger("uvicorn.access").info('%s - "%s %s HTTP/%s" %d', "1.2.3.4:5", "GET", "/?token=x", "1.1", 200)
        out, err = capsys.readouterr()
        assert err.count("port trouble") == 1 and "WARNING" in err
        assert out.count('1.2.3.4:5 - "GET /?token=REDACTED HTTP/1.1" 200') == 1, out
    finally:
        for name, (handlers, propagate) in saved.items():
            logging.getLogger(name).handlers, logging.getLogger(name).propagate = handlers, propagate


NAMES = ("uvicorn", "uvicorn.access")

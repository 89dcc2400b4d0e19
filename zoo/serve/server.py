"""``zoo serve``: one process holds the model and the index; an HTTP API and a web page use them.

FastAPI on uvicorn. The index and its model load once at start-up, so a query costs one decode,
one forward pass and one FAISS search instead of a whole ``zoo search`` process. run_server is
what ``zoo serve`` calls: it checks the options, loads the index, binds the socket (so a missing
index or a taken port fails before anything slow), wraps the application (zoo.serve.app) in the
body limit and the Host check and runs it on guarded connections (zoo.serve.guard). spawn_server
starts one in a subprocess, for benchmarks, browser tests and notebooks.

Safe by default: it listens on 127.0.0.1 and answers only requests whose Host header names it
(no DNS rebinding), an optional bearer token guards the API, request bodies and uploads are
size-limited, uploads are decoded by content within a pixel budget and with Pillow's
decompression-bomb guard (zoo.data.load_image), files are reachable only as indexed items by id
and only inside the index's root (ZooIndex.item_file), clients that hold connections without
finishing a request are dropped (GuardedHTTP), and every error is a JSON ``{"error": ...}``,
never a traceback.
"""
from __future__ import annotations

import functools
import os
import secrets
import selectors
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Optional, Sequence

import torch
import uvicorn

from zoo.dedup.keep import DEFAULT_RULES, check_rules
from zoo.errors import ZooError
from zoo.index.core import load_index
from zoo.serve.app import create_app
from zoo.serve.guard import BodyLimit, GuardedHTTP, HostCheck, allowed_host_names, is_loopback
from zoo.serve.service import MAX_PIXELS, SearchService


def make_server(app, **guards) -> uvicorn.Server:
    """A uvicorn server of ``app`` on GuardedHTTP connections (``guards``: its timeouts and limit)."""
    config = uvicorn.Config(app, log_level="warning", access_log=False, timeout_graceful_shutdown=5,
                            timeout_keep_alive=5, http=functools.partial(GuardedHTTP, **guards))
    return uvicorn.Server(config)


# ---- start-up --------------------------------------------------------------------------------
def bind(host: str, port: int) -> socket.socket:
    """A listening socket on host:port, or a ZooError saying why not."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as e:
        raise ZooError(f"cannot listen on {host}:{port}: {e.strerror}") from None
    family, _, _, _, address = infos[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError as e:
        sock.close()
        hint = " (port taken? pick another with --port)" if e.errno == 98 else ""
        raise ZooError(f"cannot listen on {host}:{port}: {e.strerror}{hint}") from None
    if family in (socket.AF_INET, socket.AF_INET6):  # accepted sockets inherit it: no Nagle delay
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # between a response's head and body
    sock.listen(2048)  # from now on connections queue until uvicorn accepts them
    return sock


def run_server(index: str, host: str = "127.0.0.1", port: int = 8000, token: Optional[str] = None,
               duplicates: Optional[str] = None, max_upload_mb: float = 20.0, threads: int = 1,
               allowed_hosts: Sequence[str] = (), max_pixels: int = MAX_PIXELS, precision: Optional[str] = None,
               read_only: bool = False, move_to: Optional[str] = None, keep_rules: Sequence[str] = DEFAULT_RULES,
               protect: Sequence[str] = (), page: str = "", calibration: Optional[str] = None,
               runtime: str = "auto") -> None:
    """Load the index and its model once, then answer HTTP requests until interrupted.
    ``precision``: of the forward passes (default: the index's own where this CPU computes it);
    ``read_only``: refuse every write; ``move_to``, ``keep_rules``, ``protect``: the review page's
    quarantine folder, keep-best rules and protected folders; ``page``: the part of the page
    to point at (e.g. "#review"); ``calibration``: the calibration file of the upload check
    (POST /api/check); ``runtime``: what runs the forward passes (zoo.model.runtime; auto:
    compiled fp32 where installed)."""
    token = token or os.environ.get("ZOO_TOKEN") or None
    check_rules(keep_rules)
    if max_upload_mb <= 0:
        raise ZooError(f"--max_upload_mb {max_upload_mb}: must be positive")
    if threads < 1:
        raise ZooError(f"--threads {threads}: must be 1 or more")
    if max_pixels < 1:
        raise ZooError(f"--max_pixels {max_pixels}: must be 1 or more")
    allowed_host_names(host, "127.0.0.1", allowed_hosts or ())  # a bad name fails before anything slow
    # one image per forward pass: more threads than that gain little, and on a busy CPU their
    # synchronisation costs several times the forward itself; the other cores decode and serve
    torch.set_num_threads(threads)
    idx = load_index(index)  # a missing index fails before anything slow
    sock = bind(host, port)  # so does a taken port
    try:
        print(f"zoo: loading {idx.describe()} for {len(idx)} items ...", file=sys.stderr, flush=True)
        max_bytes = int(max_upload_mb * (1 << 20))
        service = SearchService(idx, index, duplicates=duplicates, max_upload_bytes=max_bytes, max_pixels=max_pixels,
                                precision=precision, quarantine=move_to, keep_rules=keep_rules, protect=protect,
                                calibration=calibration, runtime=runtime)
        write_token = token or secrets.token_urlsafe(18)  # writes need a token even on loopback
        if service.review is not None and not read_only and token is None:
            print(f"zoo: moving and undoing from the review page need this token (the page asks for it once; "
                  f"set your own with --token or ZOO_TOKEN): {write_token}", file=sys.stderr, flush=True)
        if service.copy_check is None:
            print(f"zoo: note: the upload check (/api/check) has no calibration: {service.uncalibrated}",
                  file=sys.stderr, flush=True)
        # a body holds at most two uploads (compare) plus the multipart framing
        app = BodyLimit(create_app(service, token=token, write_token=write_token, read_only=read_only),
                        max_bytes=2 * max_bytes + (64 << 10))
        shown_host, shown_port = sock.getsockname()[:2]
        app = HostCheck(app, allowed_host_names(host, shown_host, allowed_hosts or ()))
        shown_host = f"[{shown_host}]" if ":" in shown_host else shown_host
        if not is_loopback(host) and token is None:
            print("zoo: warning: listening beyond this machine without a token; anyone who can reach "
                  "it can search (set ZOO_TOKEN or --token)", file=sys.stderr)
        print(f"zoo: serving {Path(index)} at http://{shown_host}:{shown_port}/{page} (API docs at /docs"
              f"{', bearer token required' if token else ''}; queries on the CPU with {service.runtime}, precision "
              f"{service.inference.precision}{', channels_last' if service.uses_channels_last else ''}); Ctrl-C stops", file=sys.stderr, flush=True)
        make_server(app).run(sockets=[sock])
    finally:
        sock.close()


# ---- a server in a subprocess (benchmarks, browser tests, notebooks) ---------------------------------
def spawn_server(index: str | Path, *args: str, timeout: float = 180.0, env: Optional[dict] = None):
    """Start ``zoo serve --index INDEX --port 0 ARGS`` on loopback; returns (process, base URL).

    Waits until the server prints its address (it picks a free port itself, so there is no race
    for one); raises RuntimeError with the server's stderr if it exits or does not start in time.
    The caller stops it with ``process.terminate()``.
    """
    cmd = [sys.executable, "-m", "zoo", "serve", "--index", str(index), "--host", "127.0.0.1", "--port", "0", *args]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, **(env or {})})
    lines: list[str] = []
    deadline = time.monotonic() + timeout

    def fail(why: str):
        proc.kill()
        proc.wait()
        raise RuntimeError(f"zoo serve {why}:\n" + "".join(lines[-20:]))

    sel = selectors.DefaultSelector()
    sel.register(proc.stderr, selectors.EVENT_READ)
    while time.monotonic() < deadline:
        if not sel.select(timeout=max(0.0, deadline - time.monotonic())):
            break
        line = proc.stderr.readline()
        if not line:
            fail(f"exited with code {proc.wait()}")
        lines.append(line)
        if line.startswith("zoo: serving "):
            url = line.split(" at ", 1)[1].split()[0].split("#")[0].rstrip("/")
            threading.Thread(target=_drain, args=(proc.stderr,), daemon=True).start()  # keep the pipe from filling
            return proc, url
    fail(f"did not start within {timeout:.0f} s")


def _drain(stream) -> None:
    for line in stream:  # the server's own warnings and errors stay visible
        sys.stderr.write(line)

"""Files and requests built to break `zoo serve`: a tampered item table, a foreign Host header, a
pixel bomb under Pillow's limit, clients that never finish a request, an updated index whose ids
have gaps, a malformed groups.json. None may leak a file, starve other clients, or print a traceback."""
from __future__ import annotations

import http.client
import io
import json
import shutil
import socket
import sqlite3
import threading
import time
from pathlib import Path

import pytest
from PIL import Image, ImageFile

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

from conftest import save  # noqa: E402
from shapes import make_shapes  # noqa: E402
from zoo.errors import ZooError  # noqa: E402
from zoo.index.core import load_index  # noqa: E402
from zoo.serve.app import create_app  # noqa: E402
from zoo.serve.service import SearchService  # noqa: E402

# a very small random-init model: these tests are about files and requests, not features
FAST = ["--model.backbone", "timm/test_resnet", "--model.pretrained", "false",
        "--model.data_config", "{image_size: 32}", "--num_workers", "0", "--trainer.enable_progress_bar", "false"]
SECRET_COLOUR = (0, 255, 0)


def build_index(images: Path, out: Path) -> Path:
    from zoo.cli.main import main

    assert main(["index", "--images", str(images), "--out", str(out), *FAST]) == 0
    return out


def version_dir(index: Path) -> Path:
    return index / json.loads((index / "ZOO_INDEX.json").read_text())["current"]


def tamper(index: Path, *statements: tuple) -> None:
    db = sqlite3.connect(version_dir(index) / "items.sqlite")
    with db:
        for sql, *args in statements:
            db.execute(sql, args)
    db.close()


def png(size=(40, 40), colour=(200, 30, 30), mode="RGB") -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size, colour if mode == "RGB" else 0).save(buf, format="PNG")
    return buf.getvalue()


def one_error(err: str, message: str) -> None:
    lines = [line for line in err.splitlines() if line.startswith("zoo: error:")]
    assert len(lines) == 1 and message in lines[0], err
    assert "Traceback" not in err


@pytest.fixture(scope="module")
def indexed(tmp_path_factory) -> tuple[Path, Path]:
    """(images folder, index): 6 shapes; a secret image sits next to the folder, outside it."""
    root = tmp_path_factory.mktemp("hostile_serve")
    images = make_shapes(root / "shapes", per_class=2, seed=0, shapes=("circle", "square", "triangle"))
    save(Image.new("RGB", (48, 48), SECRET_COLOUR), root / "secret.jpg")
    return images, build_index(images, root / "shapes.index")


@pytest.fixture
def copy_of(indexed, tmp_path):
    """A private copy of the index (same root), to tamper with."""
    _, index = indexed
    return shutil.copytree(index, tmp_path / "copy.index")


@pytest.fixture(scope="module")
def server(indexed):
    """The real `zoo serve` process on loopback, with one more allowed name and a small pixel budget."""
    from zoo.serve.server import spawn_server

    _, index = indexed
    proc, url = spawn_server(index, "--allowed_hosts", "[zoo.example]", "--max_pixels", "1000000")
    host, port = url.removeprefix("http://").split(":")
    yield host, int(port)
    proc.terminate()
    proc.wait(timeout=30)


@pytest.fixture(scope="module")
def plain_server(indexed):
    """The real `zoo serve` process on loopback, as a plain `zoo serve --index` starts it."""
    from zoo.serve.server import spawn_server

    _, index = indexed
    proc, url = spawn_server(index)
    host, port = url.removeprefix("http://").split(":")
    yield host, int(port)
    proc.terminate()
    proc.wait(timeout=30)


def request(host: str, port: int, path: str, method: str = "GET", body: bytes | None = None, timeout: float = 10,
            **headers) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=headers)
        r = conn.getresponse()
        return r.status, r.read()
    finally:
        conn.close()


# ---- 3: every path read from an index stays inside its root --------------------------------------
def test_item_paths_outside_the_root_are_refused(indexed, copy_of):
    images, _ = indexed
    secret = images.parent / "secret.jpg"
    link = images / "circle" / "link.png"
    link.symlink_to(secret)  # inside the root, pointing outside it
    try:
        tamper(copy_of, ("UPDATE items SET path = ? WHERE id = 0", str(secret)),
               ("UPDATE items SET path = ? WHERE id = 1", "../secret.jpg"),
               ("UPDATE items SET path = ? WHERE id = 2", "circle/link.png"))
        svc = SearchService(load_index(copy_of), copy_of)
        with TestClient(create_app(svc)) as c:
            for i in (0, 1, 2):
                for url in (f"/api/items/{i}/thumbnail", f"/api/items/{i}/thumbnail?size=512"):
                    r = c.get(url)
                    assert r.status_code in (403, 404), (url, r.status_code)
                    assert r.headers["content-type"] == "application/json" and r.json()["error"]
                assert "outside the index's root" in r.json()["error"]
            r = c.post("/api/search?k=6", files={"file": ("q.png", png(), "image/png")})
            assert r.status_code == 200 and all(c.get(h["thumbnail"]).status_code == 404  # listed, never opened
                                                for h in r.json()["results"] if h["id"] in (0, 1, 2))
            r = c.get("/api/items/3/thumbnail")  # an untouched item still has its thumbnail
            assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg"
        for i in (0, 1, 2):  # the index's own rule, which every reader of its files uses
            with pytest.raises(ZooError, match="outside the index's root"):
                load_index(copy_of).item_file(i)
    finally:
        link.unlink()


# ---- the item table's types: one line, never a traceback -------------------------------------------
def test_blob_path_or_label_is_refused_not_a_traceback(indexed, copy_of, zoo_cli, capsys):
    images, _ = indexed
    tamper(copy_of, ("UPDATE items SET path = CAST(path AS BLOB) WHERE id = 3",),
           ("UPDATE items SET label = X'ff00fe' WHERE id = 4",))
    svc = SearchService(load_index(copy_of), copy_of)
    with TestClient(create_app(svc)) as c:
        for url in ("/api/items/3", "/api/items/3/thumbnail", "/api/items/4", "/api/items/4/similar"):
            r = c.get(url)
            assert r.status_code == 404 and "damaged" in r.json()["error"], (url, r.text)
        r = c.post("/api/search?k=6", files={"file": ("q.png", png(), "image/png")})  # every item is a hit
        assert r.status_code == 500 and "damaged" in r.json()["error"] and "items.sqlite" in r.json()["error"]
        assert c.get("/api/items/5").status_code == 200
    one_error(capsys.readouterr().err, "is damaged")  # the server's log: one line, no traceback
    code, out, err = zoo_cli("search", "--query", images / "circle" / "000.png", "--index", copy_of, "-k", "6")
    assert code == 2
    one_error(err, "is damaged")


# ---- 5: the Host header must name this server ---------------------------------------------------------
def test_foreign_host_header_is_refused(server):
    host, port = server
    for path in ("/api/info", "/api/items/0/thumbnail", "/"):
        status, body = request(host, port, path, Host="evil.example")
        assert status == 400 and "not a name of this server" in json.loads(body)["error"], path
        status, _ = request(host, port, path, Host=f"evil.example:{port}")
        assert status == 400
    for name in (f"127.0.0.1:{port}", "127.0.0.1", "localhost", f"localhost:{port}", "zoo.example",
                 f"ZOO.example:{port}"):
        status, body = request(host, port, "/api/info", Host=name)
        assert status == 200 and json.loads(body)["count"] == 6, name
        assert request(host, port, "/api/items/0/thumbnail", Host=name)[0] == 200


def test_allowed_host_names():
    from zoo.serve.guard import allowed_host_names, host_name

    assert set(allowed_host_names("127.0.0.1", "127.0.0.1")) == {"127.0.0.1", "localhost", "[::1]"}
    assert "photos.lan" in allowed_host_names("127.0.0.1", "127.0.0.1", ["Photos.LAN"])
    assert set(allowed_host_names("192.0.2.7", "192.0.2.7")) == {"192.0.2.7"}  # not loopback: only itself
    assert "localhost" in allowed_host_names("0.0.0.0", "0.0.0.0") and "0.0.0.0" in allowed_host_names("0.0.0.0", "0.0.0.0")
    assert host_name("[::1]:8000") == host_name("::1") == "[::1]" and host_name("a b") is None
    with pytest.raises(ZooError, match="not a host name"):
        allowed_host_names("127.0.0.1", "127.0.0.1", ["bad name"])


# ---- 6: a pixel budget, checked from the header ---------------------------------------------------------
def test_pixel_bomb_under_pillows_limit_is_refused_without_decoding(indexed, monkeypatch):
    _, index = indexed
    bomb = png(size=(9400, 9400), mode="1")  # 88 megapixels under Pillow's 89 M limit, a few KiB of PNG
    assert len(bomb) < 100_000 and 9400 * 9400 < Image.MAX_IMAGE_PIXELS
    svc = SearchService(load_index(index), index, max_upload_bytes=4 << 20, max_pixels=1_000_000)
    decoded = []
    load = ImageFile.ImageFile.load
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda im: (decoded.append(im.size), load(im))[1])
    with TestClient(create_app(svc)) as c:
        start = time.monotonic()
        r = c.post("/api/search", files={"file": ("bomb.png", bomb, "image/png")})
        took = time.monotonic() - start
        assert r.status_code == 413 and r.headers["content-type"] == "application/json"
        assert "9400 x 9400" in r.json()["error"] and "limit is 1,000,000" in r.json()["error"]
        assert "\n" not in r.json()["error"]
        assert (9400, 9400) not in decoded and took < 2.0
        # a big photo is measured after its draft reduction: 6 megapixels decode as 0.1
        buf = io.BytesIO()
        Image.new("RGB", (3000, 2000), (90, 120, 200)).save(buf, format="JPEG", quality=80)
        r = c.post("/api/search?k=2", files={"file": ("photo.jpg", buf.getvalue(), "image/jpeg")})
        assert r.status_code == 200, r.text
        w, h = r.json()["query"]["decoded_size"]
        assert w * h <= 1_000_000 and (3000, 2000) not in decoded
        r = c.post("/api/search?k=2", files={"file": ("small.png", png(), "image/png")})  # an ordinary upload
        assert r.status_code == 200 and r.json()["k"] == 2
        assert c.get("/api/info").json()["max_pixels"] == 1_000_000


def test_max_pixels_flag_reaches_the_server(server):
    host, port = server
    boundary = "zoo-test-boundary"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"bomb.png\"\r\n"
            f"Content-Type: image/png\r\n\r\n").encode() + png(size=(2000, 2000), mode="1") + f"\r\n--{boundary}--\r\n".encode()
    status, answer = request(host, port, "/api/search", "POST", body, **{"Content-Type": f"multipart/form-data; boundary={boundary}"})
    assert status == 413 and "2000 x 2000" in json.loads(answer)["error"]


# ---- 7: clients that never finish a request ---------------------------------------------------------------
def test_half_open_connections_do_not_starve_others(plain_server):
    host, port = plain_server
    assert host == "127.0.0.1"
    socks = []
    try:
        for _ in range(70):
            s = socket.create_connection((host, port), timeout=5)
            s.sendall(b"GET /api/info HTTP/1.1\r\nHost: 127.0.0.1")  # the head never ends
            socks.append(s)
        start = time.monotonic()
        status, body = request(host, port, "/api/info", timeout=10)
        assert status == 200 and json.loads(body)["count"] == 6
        assert time.monotonic() - start < 5
    finally:
        for s in socks:
            s.close()


def closed_within(s: socket.socket, seconds: float) -> bool:
    """True if the server closes ``s`` within ``seconds`` (whatever it sends first)."""
    s.settimeout(seconds)
    deadline = time.monotonic() + seconds
    try:
        while time.monotonic() < deadline:
            if not s.recv(4096):
                return True
    except ConnectionResetError:
        return True
    except socket.timeout:
        return False
    return False


def test_slow_heads_and_stalled_bodies_time_out(indexed):
    """A real uvicorn server (in a thread, loopback) with 1-second guards: a head that does not end,
    a body that stops, a connection that sends nothing are all closed; a normal request is answered."""
    from zoo.serve.server import bind, make_server

    _, index = indexed
    svc = SearchService(load_index(index), index)
    sock = bind("127.0.0.1", 0)
    server = make_server(create_app(svc), head_timeout=1.0, body_timeout=1.0)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 20
        while not server.started and time.monotonic() < deadline:
            time.sleep(0.05)
        port = sock.getsockname()[1]
        silent = socket.create_connection(("127.0.0.1", port), timeout=5)
        slow_head = socket.create_connection(("127.0.0.1", port), timeout=5)
        slow_head.sendall(b"GET /api/info HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        stalled = socket.create_connection(("127.0.0.1", port), timeout=5)
        stalled.sendall(b"POST /api/search HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 100000\r\n"
                        b"Content-Type: multipart/form-data; boundary=x\r\n\r\n" + b"-" * 100)
        for s in (silent, slow_head, stalled):
            assert closed_within(s, 4), s
            s.close()
        status, body = request("127.0.0.1", port, "/api/health")
        assert status == 200 and json.loads(body)["count"] == 6
    finally:
        server.should_exit = True
        thread.join(timeout=15)
        sock.close()


# ---- 8: the index's ids as they are, after an update ----------------------------------------------------
def test_ids_after_update_and_duplicates(tmp_path, zoo_cli):
    from zoo.cli.main import main

    images = make_shapes(tmp_path / "shapes", per_class=2, seed=3, shapes=("circle", "square"))
    index = build_index(images, tmp_path / "shapes.index")
    before = {r["path"]: r["id"] for r in load_index(index).store.rows()}
    (images / "circle" / "001.png").unlink()
    shutil.copy(images / "square" / "000.png", images / "square" / "copy_a.png")
    shutil.copy(images / "square" / "000.png", images / "square" / "copy_b.png")
    assert main(["index", "--out", str(index), "--update", *FAST]) == 0
    removed = before["circle/001.png"]
    code, _, err = zoo_cli("duplicates", "--index", index, "--out", tmp_path / "dups", "--threshold", "0.999")
    assert code == 0, err

    idx = load_index(index)
    ids = sorted(r["id"] for r in idx.store.rows())
    assert len(ids) == 5 and max(ids) >= len(ids) and removed not in ids  # ids have a gap now
    statements = []
    idx.store.db.set_trace_callback(statements.append)
    svc = SearchService(idx, index, duplicates=tmp_path / "dups")
    idx.store.db.set_trace_callback(None)
    assert len([s for s in statements if "FROM items" in s]) <= 2, statements  # not a query per item
    with TestClient(create_app(svc)) as c:
        for i in ids:
            for url in (f"/api/items/{i}", f"/api/items/{i}/thumbnail", f"/api/items/{i}/similar?k=3"):
                assert c.get(url).status_code == 200, url
        for url in (f"/api/items/{removed}", f"/api/items/{removed}/thumbnail", f"/api/items/{removed}/similar"):
            r = c.get(url)
            assert r.status_code == 404 and "no item" in r.json()["error"], url
        groups = c.get("/api/duplicates").json()["groups"]
        copies = {str((images / "square" / n).resolve()) for n in ("000.png", "copy_a.png", "copy_b.png")}
        group = next(g for g in groups if copies <= {m["path"] for m in g["items"]})
        for m in group["items"]:
            assert m["id"] in ids and c.get(m["thumbnail"]).status_code == 200
        assert {m["id"] for m in group["items"]} & set(ids[-2:])  # the newest items are there


# ---- a groups.json of the wrong shape: one line at start-up ------------------------------------------------
@pytest.mark.parametrize("groups, message", [
    ({"exact_groups": {"a": 1}, "near_groups": []}, "exact_groups"),
    ({"exact_groups": [[1, 2]], "near_groups": []}, "exact group 0"),
    ({"exact_groups": [], "near_groups": [{"paths": ["a"], "min_similarity": "x", "max_similarity": 1}]}, "near group 0"),
    ({"exact_groups": [], "near_groups": [["a", "b"]]}, "near group 0"),
])
def test_bad_groups_json_is_one_line_at_start(indexed, tmp_path, zoo_cli, groups, message):
    _, index = indexed
    (tmp_path / "groups.json").write_text(json.dumps(groups))
    code, _, err = zoo_cli("serve", "--index", index, "--port", "0", "--duplicates", tmp_path / "groups.json")
    assert code == 2
    one_error(err, message)

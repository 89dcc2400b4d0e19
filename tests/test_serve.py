"""`zoo serve`: the HTTP API through FastAPI's TestClient, on an index of the shapes set (tiny model)."""
from __future__ import annotations

import io
import json
import re
import socket
import threading
from pathlib import Path

import pytest
from PIL import Image

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

from shapes import make_shapes  # noqa: E402
from conftest import TINY  # noqa: E402
from zoo.index.core import load_index  # noqa: E402
from zoo.serve.app import STATIC, create_app  # noqa: E402
from zoo.serve.service import SearchService  # noqa: E402


@pytest.fixture(scope="module")
def indexed(tmp_path_factory) -> tuple[Path, Path]:
    """(images folder, index folder): 12 shapes indexed by a random-init model at 64 px."""
    from zoo.cli.main import main

    root = tmp_path_factory.mktemp("serve")
    images = make_shapes(root / "shapes", per_class=4, seed=0, shapes=("circle", "square", "triangle"))
    assert main(["index", "--images", str(images), "--out", str(root / "shapes.index"),
                 "--trainer.enable_progress_bar", "false", *TINY]) == 0
    return images, root / "shapes.index"


@pytest.fixture(scope="module")
def service(indexed) -> SearchService:
    _, index = indexed
    return SearchService(load_index(index), index, max_upload_bytes=200_000)


@pytest.fixture(scope="module")
def client(service):
    with TestClient(create_app(service)) as c:
        yield c


def tolerance(service) -> float:
    """How far an upload's cosine may be from the index's: float rounding where the index is
    fp32; where it was built in bf16 (on a GPU) and the upload runs in fp32, bf16's rounding."""
    return 1e-5 if service.idx.precision == "32-true" else 1e-3


def upload(path: Path, name: str | None = None, field: str = "file") -> dict:
    return {field: (name or path.name, path.read_bytes(), "application/octet-stream")}


def png_bytes(size=(40, 40), colour=(200, 30, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, format="PNG")
    return buf.getvalue()


# ---- search ------------------------------------------------------------------------------------
def test_upload_finds_itself_first(client, indexed):
    images, _ = indexed
    query = images / "square" / "002.png"
    r = client.post("/api/search?k=5", files=upload(query))
    assert r.status_code == 200, r.text
    data = r.json()
    assert data["k"] == 5 and [h["rank"] for h in data["results"]] == [1, 2, 3, 4, 5]
    first = data["results"][0]
    assert first["path"] == str(query.resolve()) and first["label"] == "square"
    assert first["cosine"] == pytest.approx(1.0, abs=1e-5)
    assert first["thumbnail"] == f"/api/items/{first['id']}/thumbnail"
    cosines = [h["cosine"] for h in data["results"]]
    assert cosines == sorted(cosines, reverse=True)
    for h in data["results"]:
        assert h["score"] == pytest.approx((1 + h["cosine"]) / 2, abs=1e-6)


def test_content_decides_not_the_name(client, indexed):
    images, _ = indexed
    query = images / "circle" / "001.png"
    r = client.post("/api/search?k=1", files=upload(query, name="notes.txt"))
    assert r.status_code == 200 and r.json()["results"][0]["path"] == str(query.resolve())


def test_more_like_this_matches_upload(client, service, indexed):
    images, _ = indexed
    query = images / "triangle" / "003.png"
    by_upload = client.post("/api/search?k=6", files=upload(query)).json()["results"]
    item_id = by_upload[0]["id"]
    r = client.get(f"/api/items/{item_id}/similar?k=6")
    assert r.status_code == 200
    data = r.json()
    assert data["query"]["id"] == item_id and data["query"]["path"] == str(query.resolve())
    assert [h["id"] for h in data["results"]] == [h["id"] for h in by_upload]
    assert [h["cosine"] for h in data["results"]] == pytest.approx([h["cosine"] for h in by_upload], abs=tolerance(service))


def test_k_is_capped_by_the_index_size(client, indexed):
    images, _ = indexed
    data = client.post("/api/search?k=50", files=upload(images / "circle" / "000.png")).json()
    assert data["k"] == 12 and sorted(h["id"] for h in data["results"]) == list(range(12))


# ---- compare -----------------------------------------------------------------------------------
def test_compare_image_with_itself_is_exactly_one(client, indexed):
    images, _ = indexed
    a = images / "circle" / "000.png"
    r = client.post("/api/compare", files={**upload(a, field="a"), **upload(a, field="b")})
    assert r.status_code == 200, r.text
    assert r.json()["score"] == 1.0 and r.json()["cosine"] == 1.0


def test_compare_two_images_matches_zoo_compare(client, service, indexed):
    from zoo.dedup.compare import cosine_matrix, similarity_score

    images, _ = indexed
    a, b = images / "circle" / "000.png", images / "square" / "000.png"
    data = client.post("/api/compare", files={**upload(a, field="a"), **upload(b, field="b")}).json()
    ids = {service.item(i)["path"]: i for i in range(len(service))}
    vectors = service.idx.index.reconstruct_n(0, len(service))
    cos = cosine_matrix(vectors[[ids[str(a.resolve())], ids[str(b.resolve())]]])[0, 1]
    assert data["cosine"] == pytest.approx(float(cos), abs=tolerance(service))
    assert data["score"] == pytest.approx(float(similarity_score(cos)), abs=tolerance(service))
    assert data["score"] < 1.0


# ---- bad requests: 4xx with a JSON error, never a traceback -----------------------------------
def test_text_named_jpg_is_a_clear_4xx(client):
    files = {"file": ("photo.jpg", b"this is not an image, whatever its name says\n" * 20, "image/jpeg")}
    r = client.post("/api/search", files=files)
    assert r.status_code == 422
    assert r.headers["content-type"] == "application/json"
    assert "not a usable image" in r.json()["error"] and "photo.jpg" in r.json()["error"]
    assert "Traceback" not in r.text


@pytest.mark.parametrize("files, status, message", [
    ({"file": ("empty.png", b"", "image/png")}, 400, "empty"),
    ({"other": ("x.png", png_bytes(), "image/png")}, 422, "file"),
    ({"file": ("cut.png", png_bytes()[:60], "image/png")}, 422, "not a usable image"),
])
def test_other_bad_uploads(client, files, status, message):
    r = client.post("/api/search", files=files)
    assert r.status_code == status and message in r.json()["error"]


def test_oversized_upload_is_413(client, service):
    big = png_bytes(size=(600, 600)) + b"\0" * service.max_upload_bytes  # over the per-upload limit
    r = client.post("/api/search", files={"file": ("big.png", big, "image/png")})
    assert r.status_code == 413 and "limit" in r.json()["error"]


def test_oversized_body_is_refused_before_parsing(service):
    app = create_app(service)
    from zoo.serve.guard import BodyLimit

    with TestClient(BodyLimit(app, max_bytes=10_000)) as c:
        r = c.post("/api/search", files={"file": ("x.png", b"\0" * 20_000, "image/png")})
        assert r.status_code == 413 and "request body over 10000 bytes" in r.json()["error"]
        # a chunked body (no Content-Length) is counted as it arrives
        r = c.post("/api/search", content=iter([b"\0" * 6000, b"\0" * 6000]),
                   headers={"content-type": "multipart/form-data; boundary=x"})
        assert r.status_code == 413


def test_decompression_bomb_is_refused(client, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 500)  # 40 x 40 = 1600 > 2 x 500: a "bomb"
    r = client.post("/api/search", files={"file": ("bomb.png", png_bytes(), "image/png")})
    assert r.status_code == 413 and "decompression-bomb" in r.json()["error"]


def test_unknown_item_is_404(client, service):
    n = len(service)
    for url in (f"/api/items/{n}", f"/api/items/{n}/similar", f"/api/items/{n}/thumbnail", "/api/items/99999/thumbnail"):
        r = client.get(url)
        assert r.status_code == 404, url
        assert f"no item with id {url.split('/')[3]} in this index" in r.json()["error"]
    assert client.get("/api/items/-1").status_code == 422
    assert client.get("/api/items/abc/thumbnail").status_code == 422


def test_duplicates_404_without_a_result(client):
    r = client.get("/api/duplicates")
    assert r.status_code == 404 and "--duplicates" in r.json()["error"]


# ---- thumbnails: indexed items by id only -----------------------------------------------------
def test_thumbnail_of_an_item(client, service):
    r = client.get("/api/items/3/thumbnail?size=128")
    assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg"
    im = Image.open(io.BytesIO(r.content))
    source = Image.open(service.item(3)["path"])
    assert im.format == "JPEG" and im.size == source.size  # 48 px shapes are not enlarged
    assert client.get("/api/items/3/thumbnail?size=100").status_code == 422


def test_no_path_traversal(client):
    secret = Path(__file__).resolve()
    for url in ("/api/items/..%2F..%2F..%2Fetc%2Fpasswd/thumbnail", "/api/items/%2Fetc%2Fpasswd/thumbnail",
                f"/api/items/{secret}/thumbnail", "/static/..%2F..%2Fpyproject.toml", "/static/../serve.py",
                "/static/%2e%2e/serve.py", "/api/thumbnail?path=/etc/passwd"):
        r = client.get(url)
        assert r.status_code in (404, 422), (url, r.status_code)
        assert "root:" not in r.text and "import " not in r.text and "[project]" not in r.text


# ---- token -----------------------------------------------------------------------------------------
def test_token_required_when_set(service, indexed):
    images, _ = indexed
    with TestClient(create_app(service, token="s3cret")) as c:
        assert c.get("/api/health").status_code == 200  # liveness stays open
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret"}):
            r = c.get("/api/info", headers=headers)
            assert r.status_code == 401 and "bearer token" in r.json()["error"]
            assert r.headers["www-authenticate"] == "Bearer"
        assert c.post("/api/search", files=upload(images / "circle" / "000.png")).status_code == 401
        assert c.get("/api/items/0/thumbnail").status_code == 401
        ok = {"Authorization": "Bearer s3cret"}
        assert c.get("/api/info", headers=ok).status_code == 200
        assert c.post("/api/search", files=upload(images / "circle" / "000.png"), headers=ok).status_code == 200
        assert c.get("/").status_code == 200  # the page itself asks for the token


# ---- info, page, duplicates ------------------------------------------------------------------------
def test_info_names_model_and_count(client, service):
    data = client.get("/api/info").json()
    assert data["count"] == 12 and data["architecture"] == "resnet50+frozen"
    assert data["weights"] == "random init (seed 0)" and data["dim"] == service.idx.dim
    assert client.get("/api/health").json() == {"status": "ok", "count": 12}
    assert "/api/search" in client.get("/openapi.json").json()["paths"]


def test_page_is_served_and_self_contained(client):
    r = client.get("/")
    assert r.status_code == 200 and 'id="query-file"' in r.text
    assert "default-src 'self'" in r.headers["content-security-policy"]
    for f in STATIC.iterdir():  # nothing from outside: no CDN scripts, styles or fonts
        assert not re.search(r"(https?:)?//[a-z0-9.-]+\.[a-z]{2,}/", f.read_text()), f
        assert client.get(f"/static/{f.name}").status_code == 200


def test_duplicate_groups(indexed, tmp_path):
    images, index = indexed
    a, b = (str((images / "circle" / n).resolve()) for n in ("000.png", "001.png"))
    outside = str(tmp_path / "elsewhere.png")
    groups = {"source": str(images), "threshold": 0.9, "model": "m",
              "exact_groups": [[a, outside]], "near_groups": [{"paths": [a, b], "min_similarity": 0.93, "max_similarity": 0.95}]}
    (tmp_path / "dups").mkdir()
    (tmp_path / "dups" / "groups.json").write_text(json.dumps(groups))
    svc = SearchService(load_index(index), index, duplicates=tmp_path / "dups")
    with TestClient(create_app(svc)) as c:
        data = c.get("/api/duplicates").json()
        assert c.get("/api/info").json()["duplicates"] is True
    exact, near = data["groups"]
    ids = {svc.item(i)["path"]: i for i in range(len(svc))}
    assert exact["kind"] == "exact" and [m["id"] for m in exact["items"]] == [ids[a], None]
    assert exact["items"][1]["thumbnail"] is None  # not in the index: no file is served for it
    assert near["kind"] == "near" and near["min_similarity"] == 0.93
    assert [m["thumbnail"] for m in near["items"]] == [f"/api/items/{ids[a]}/thumbnail", f"/api/items/{ids[b]}/thumbnail"]


def test_bad_duplicates_file_is_a_zoo_error(indexed, tmp_path):
    from zoo.errors import ZooError

    _, index = indexed
    (tmp_path / "groups.json").write_text("[1, 2]")
    with pytest.raises(ZooError, match="no such duplicates result"):
        SearchService(load_index(index), index, duplicates=tmp_path / "missing" / "groups.json")
    with pytest.raises(ZooError, match="is not a `zoo duplicates` groups.json"):
        SearchService(load_index(index), index, duplicates=tmp_path / "groups.json")


# ---- concurrency: one model, many requests ----------------------------------------------------------
def test_concurrent_searches_agree(client, indexed):
    images, _ = indexed
    queries = sorted(images.rglob("*.png"))
    expected = {q: client.post("/api/search?k=3", files=upload(q)).json()["results"][0]["path"] for q in queries}
    got, errors = {}, []

    def worker(qs):
        try:
            for q in qs:
                got[q] = client.post("/api/search?k=3", files=upload(q)).json()["results"][0]["path"]
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(queries[i::4],)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and got == expected
    assert all(expected[q] == str(q.resolve()) for q in queries)


# ---- the command line ----------------------------------------------------------------------------
def test_cli_errors_are_one_line(zoo_cli, indexed, tmp_path):
    _, index = indexed
    code, out, err = zoo_cli("serve", "--index", tmp_path / "missing.index")
    assert code == 2 and "zoo: error:" in err and "is not a zoo index" in err
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen(1)
    port = taken.getsockname()[1]
    try:
        code, out, err = zoo_cli("serve", "--index", index, "--port", port)
    finally:
        taken.close()
    errors = [line for line in err.splitlines() if line.startswith("zoo: error:")]
    assert code == 2 and len(errors) == 1, err
    assert f"cannot listen on 127.0.0.1:{port}" in errors[0] and "port taken" in errors[0]
    assert "Traceback" not in err


def test_served_over_http_with_token_from_env(indexed):
    """The real server process: loopback, token from ZOO_TOKEN, keep-alive answers without delay."""
    import http.client

    from zoo.serve.server import spawn_server

    images, index = indexed
    proc, url = spawn_server(index, env={"ZOO_TOKEN": "from-env"})
    try:
        host, port = url.removeprefix("http://").split(":")
        assert host == "127.0.0.1"
        conn = http.client.HTTPConnection(host, int(port), timeout=30)

        def get(path, **headers):
            conn.request("GET", path, headers=headers)
            r = conn.getresponse()
            return r.status, json.loads(r.read())

        assert get("/api/health") == (200, {"status": "ok", "count": 12})
        assert get("/api/info")[0] == 401
        status, info = get("/api/info", Authorization="Bearer from-env")
        assert status == 200 and info["count"] == 12
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_bound_socket_listens_without_nagle():
    """Listening before the address is printed (no refused connections), and TCP_NODELAY, which
    accepted sockets inherit: without it each keep-alive response waits ~40 ms for a delayed ACK."""
    from zoo.serve.server import bind

    sock = bind("127.0.0.1", 0)
    try:
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1
        client = socket.create_connection(sock.getsockname()[:2], timeout=5)  # queued, not refused
        accepted, _ = sock.accept()
        assert accepted.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1
        accepted.close()
        client.close()
    finally:
        sock.close()


def test_video_frames_carry_frame_and_time(tmp_path):
    """A video index: results name the frame and its time; a frame's thumbnail is that frame."""
    from test_compare_video import make_video
    from zoo.cli.main import main
    from zoo.data.video import read_frame

    clip = tmp_path / "clip.mp4"
    make_video(clip)
    out = tmp_path / "v.index"
    assert main(["index", "--video", str(clip), "--every", "3", "--out", str(out),
                 "--trainer.enable_progress_bar", "false", *TINY]) == 0
    buf = io.BytesIO()
    read_frame(clip, 9).save(buf, format="PNG")
    with TestClient(create_app(SearchService(load_index(out), out))) as c:
        best = c.post("/api/search?k=2", files={"file": ("frame.png", buf.getvalue(), "image/png")}).json()["results"][0]
        assert best["frame"] == 9 and best["time"] == pytest.approx(0.9) and best["path"] == str(clip.resolve())
        thumb = Image.open(io.BytesIO(c.get(f"{best['thumbnail']}?size=128").content))
    import numpy as np

    def diff(a, b):
        return float(np.abs(np.asarray(a.convert("RGB"), float) - np.asarray(b, float)).mean())

    assert thumb.size == (64, 64) and diff(thumb, read_frame(clip, 9)) < 8 < diff(thumb, read_frame(clip, 0))

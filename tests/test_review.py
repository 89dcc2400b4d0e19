"""The review page's API (zoo.serve.review, zoo.serve.review_api): pages of groups with facts, pair
scores and the member to keep; dry run, move and undo through the quarantine; and every refusal
(no token, wrong token, another Origin, read-only, a file outside the root, a link, a protected
folder, an unknown id, a removed file, an oversized request)."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from PIL import Image

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

from shapes import make_shapes  # noqa: E402
from zoo.index.core import load_index  # noqa: E402
from zoo.serve.app import create_app  # noqa: E402
from zoo.serve.review import MAX_MOVE_FILES  # noqa: E402
from zoo.serve.service import SearchService  # noqa: E402

FAST = ["--model.backbone", "timm/test_resnet", "--model.pretrained", "false",
        "--model.data_config", "{image_size: 32}", "--num_workers", "0", "--trainer.enable_progress_bar", "false"]
TOKEN = "t0ken-for-tests"
WRITE = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def library(tmp_path):
    """(images, index, groups.json, quarantine, protected folder): a tiny indexed folder with a
    group of three (a PNG and two JPEG copies), a protected copy, and a link to a file."""
    from zoo.cli.main import main

    images = make_shapes(tmp_path / "photos", per_class=2, seed=5, shapes=("circle", "square"))
    src = images / "circle" / "000.png"
    Image.open(src).save(images / "circle" / "000_q40.jpg", quality=40)
    Image.open(src).resize((24, 24)).save(images / "circle" / "000_small.png")
    (images / "keepers").mkdir()
    shutil.copy(images / "square" / "000.png", images / "keepers" / "sq.png")
    assert main(["index", "--images", str(images), "--out", str(tmp_path / "i"), *FAST]) == 0
    p = lambda *parts: str(images.joinpath(*parts))  # noqa: E731
    groups = {"source": str(images), "threshold": 0.9, "model": "m",
              "exact_groups": [[p("square", "000.png"), p("keepers", "sq.png")]],
              "near_groups": [
                  {"paths": [p("circle", "000_q40.jpg"), p("circle", "000.png"), p("circle", "000_small.png")],
                   "min_similarity": 0.95, "max_similarity": 0.99, "pairs": [[0, 1, 0.99], [1, 2, 0.95]]},
                  {"paths": [p("square", "001.png"), p("circle", "001.png")], "min_similarity": 0.91,
                   "max_similarity": 0.91}]}  # an old groups.json entry: no pairs
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "groups.json").write_text(json.dumps(groups))
    return images, tmp_path / "i", tmp_path / "d" / "groups.json", tmp_path / "q", images / "keepers"


def client_for(library, read_only=False, **kw):
    images, index, groups, quarantine, protected = library
    svc = SearchService(load_index(index), index, duplicates=groups, quarantine=quarantine, protect=[protected], **kw)
    return TestClient(create_app(svc, write_token=TOKEN, read_only=read_only))


def ids_by_name(page: dict) -> dict[str, int]:
    return {m["path"].split("photos/")[1]: m["id"] for g in page["groups"] for m in g["members"]}


# ---- reading ------------------------------------------------------------------------------------
def test_pages_in_review_order_with_facts_pairs_and_keep(library):
    images = library[0]
    with client_for(library) as c:
        page = c.get("/api/review?offset=0&limit=2").json()
        assert page["total"] == 3 and [g["group"] for g in page["groups"]] == [1, 0]  # largest first, then most similar
        near = page["groups"][0]
        assert [m["name"] for m in near["members"]] == ["000_q40.jpg", "000.png", "000_small.png"]
        assert near["pairs"] == [[0, 1, 0.99], [1, 2, 0.95]]
        facts = near["members"][0]["facts"]
        assert facts["format"] == "JPEG" and 35 <= facts["quality"] <= 45 and facts["pixels"] == 48 * 48
        assert facts["bytes"] == (images / "circle" / "000_q40.jpg").stat().st_size and facts["sharpness"] > 0
        assert near["keep"]["index"] == 1 and near["keep"]["reasons"][0] == "most pixels: 48×48 (others 24×24)"
        assert near["keep"]["reasons"][1].startswith("least compressed: lossless PNG (others JPEG quality ~")
        exact = page["groups"][1]
        assert exact["pairs"] == [[0, 1, 1.0]]
        assert exact["keep"]["index"] == 1 and exact["keep"]["reasons"] == ["in a protected folder"]
        assert exact["members"][1]["protected"] and exact["members"][1]["unmovable"].startswith("in the protected folder")
        assert c.get(exact["members"][0]["thumbnail"]).status_code == 200
        rest = c.get("/api/review?offset=2&limit=2").json()["groups"]
        assert [g["group"] for g in rest] == [2] and rest[0]["pairs"][0][:2] == [0, 1]  # old file: from the vectors
        assert -1.0 <= rest[0]["pairs"][0][2] <= 1.0
        assert c.get("/api/review?limit=500").status_code == 422  # pages are bounded


def test_a_page_reads_only_its_own_files(library, monkeypatch, tmp_path):
    import zoo.serve.review as review

    images, index, _, quarantine, _ = library
    paths = [str(p) for p in sorted(images.rglob("*.png"))]
    many = {"exact_groups": [], "near_groups": [{"paths": [paths[i % len(paths)], paths[(i + 1) % len(paths)]],
                                                  "min_similarity": 0.9, "max_similarity": 0.9 + i * 1e-6}
                                                 for i in range(3000)]}
    (tmp_path / "many.json").write_text(json.dumps(many))
    read = []
    monkeypatch.setattr(review, "file_facts", lambda p: read.append(p) or review.FileFacts(path=str(p), format=None))
    svc = SearchService(load_index(index), index, duplicates=tmp_path / "many.json", quarantine=quarantine)
    with TestClient(create_app(svc)) as c:
        page = c.get("/api/review?offset=0&limit=10").json()
    assert page["total"] == 3000 and [g["group"] for g in page["groups"]] == list(range(2999, 2989, -1))
    assert len(read) <= 20  # ten groups of two: no file outside the page was read


# ---- moving and undoing ---------------------------------------------------------------------------
def test_dry_run_move_undo_round_trip(library):
    images, quarantine = library[0], library[3]
    before = snapshot(images)
    with client_for(library) as c:
        ids = ids_by_name(c.get("/api/review?limit=10").json())
        choice = {"groups": [{"group": 1, "keep": ids["circle/000_small.png"]}]}  # the user keeps another
        plan = c.post("/api/review/plan", json=choice, headers=WRITE).json()
        assert sorted(m["path"].split("photos/")[1] for m in plan["moves"]) == ["circle/000.png", "circle/000_q40.jpg"]
        assert plan["refused"] == [] and plan["bytes"] == sum(len(before[k]) for k in ("circle/000.png", "circle/000_q40.jpg"))
        assert snapshot(images) == before  # a dry run changes nothing
        done = c.post("/api/review/move", json=choice, headers=WRITE).json()
        assert sorted(m["id"] for m in done["moved"]) == sorted([ids["circle/000.png"], ids["circle/000_q40.jpg"]])
        assert not (images / "circle" / "000.png").exists() and (images / "circle" / "000_small.png").exists()
        assert (quarantine / done["batch"] / "circle" / "000.png").read_bytes() == before["circle/000.png"]
        group = next(g for g in c.get("/api/review?limit=10").json()["groups"] if g["group"] == 1)
        assert [m["gone"] for m in group["members"]] == [True, True, False]  # shown as gone
        assert group["keep"]["id"] == ids["circle/000_small.png"] and group["members"][0]["thumbnail"] is None
        batches = c.get("/api/review/batches").json()["batches"]
        assert batches == [{"batch": done["batch"], "files": 2, "in_quarantine": 2}]
        assert c.post("/api/review/undo", json={"batch": done["batch"]}, headers=WRITE).json()["restored"] == 2
        assert c.get("/api/review/batches").json()["batches"][0]["in_quarantine"] == 0
    assert snapshot(images) == before  # every byte back at its own path


def test_refusals_of_writes(library):
    images = library[0]
    before = snapshot(images)
    with client_for(library) as c:
        ids = ids_by_name(c.get("/api/review?limit=10").json())
        body = {"groups": [{"group": 1, "keep": ids["circle/000.png"]}]}
        for url in ("/api/review/plan", "/api/review/move", "/api/review/undo"):
            r = c.post(url, json=body)
            assert r.status_code == 401 and "token" in r.json()["error"], url  # even on loopback
        r = c.post("/api/review/move", json=body, headers={**WRITE, "Authorization": "Bearer wrong"})
        assert r.status_code == 401
        r = c.post("/api/review/move", json=body, headers={**WRITE, "Origin": "http://evil.example"})
        assert r.status_code == 403 and "Origin" in r.json()["error"]
        r = c.post("/api/review/move", json=body, headers={**WRITE, "Sec-Fetch-Site": "cross-site"})
        assert r.status_code == 403
        r = c.post("/api/review/move", content=json.dumps(body), headers={**WRITE, "Content-Type": "text/plain"})
        assert r.status_code == 415
        assert c.post("/api/review/move", json=body, headers={**WRITE, "Origin": "http://testserver"}).status_code == 200
        c.post("/api/review/undo", json={"batch": c.get("/api/review/batches").json()["batches"][0]["batch"]},
               headers=WRITE)
        for bad, status, words in [
            ({"groups": [{"group": 99, "keep": 0}]}, 404, "no group 99"),
            ({"groups": [{"group": 1, "keep": ids["square/001.png"]}]}, 404, "is not a member of group 1"),
            ({"groups": [{"group": 1, "keep": ids["circle/000.png"], "move": [ids["circle/000.png"]]}]}, 422,
             "both kept and moved"),
            ({"groups": [{"group": 1, "keep": ids["circle/000.png"], "move": [123456]}]}, 404, "item 123456"),
            ({"groups": [{"group": 1, "keep": ids["circle/000.png"], "move": [0] * (MAX_MOVE_FILES + 1)}]}, 422, ""),
            ({"groups": [{"group": 1, "keep": ids["circle/000.png"]}] * 600}, 413, "at most 1000 files"),
        ]:
            r = c.post("/api/review/plan", json=bad, headers=WRITE)
            assert r.status_code == status and words in r.json()["error"], (bad, r.json())
        r = c.post("/api/review/undo", json={"batch": "../../etc"}, headers=WRITE)
        assert r.status_code == 422
        r = c.post("/api/review/undo", json={"batch": "20990101-000000-000000"}, headers=WRITE)
        assert r.status_code == 404
    with client_for(library, read_only=True) as c:
        for url in ("/api/review/plan", "/api/review/move", "/api/review/undo"):
            r = c.post(url, json=body, headers=WRITE)
            assert r.status_code == 403 and r.json() == {"error": "this server is read-only (--read_only); nothing was changed"}
        assert c.get("/api/info").json()["read_only"] is True and c.get("/api/review").status_code == 200
    assert snapshot(images) == before


def test_files_that_must_not_move(library, tmp_path):
    images, index, groups_file, quarantine, protected = library
    outside = tmp_path / "outside"
    outside.mkdir()
    shutil.copy(images / "circle" / "001.png", outside / "o.png")
    with client_for(library) as c:
        ids = ids_by_name(c.get("/api/review?limit=10").json())
        # a removed file, a file swapped for a link, a protected file: each refused with why
        (images / "circle" / "000_q40.jpg").unlink()
        (images / "circle" / "000_small.png").unlink()
        (images / "circle" / "000_small.png").symlink_to(images / "circle" / "001.png")
        plan = c.post("/api/review/plan", json={"groups": [
            {"group": 1, "keep": ids["circle/000.png"]},
            {"group": 0, "keep": ids["square/000.png"], "move": [ids["keepers/sq.png"]]}]}, headers=WRITE).json()
        why = {r["path"].split("photos/")[1]: r["why"] for r in plan["refused"]}
        assert plan["moves"] == [] and why["circle/000_q40.jpg"] == "gone" and why["circle/000_small.png"] == "a link"
        assert why["keepers/sq.png"].startswith("in the protected folder")
        done = c.post("/api/review/move", json={"groups": [{"group": 1, "keep": ids["circle/000.png"]}]},
                      headers=WRITE).json()
        assert done["batch"] is None and done["moved"] == [] and (images / "circle" / "000_small.png").is_symlink()
        # the file to keep is gone: nothing of its group moves
        (images / "circle" / "000_small.png").unlink()
        shutil.copy(images / "circle" / "001.png", images / "circle" / "000_small.png")
        os.rename(images / "circle" / "000.png", tmp_path / "away.png")
        plan = c.post("/api/review/plan", json={"groups": [{"group": 1, "keep": ids["circle/000.png"]}]},
                      headers=WRITE).json()
        assert plan["moves"] == [] and {r["why"] for r in plan["refused"]} == {"the file to keep is gone"}
    # a groups.json naming a file outside the index's root: shown, never read, never moved
    data = json.loads(groups_file.read_text())
    data["near_groups"].append({"paths": [str(images / "square" / "001.png"), str(outside / "o.png")],
                                "min_similarity": 0.99, "max_similarity": 0.99})
    groups_file.write_text(json.dumps(data))
    with client_for(library) as c:
        group = next(g for g in c.get("/api/review?limit=10").json()["groups"] if g["group"] == 3)
        assert group["members"][1]["id"] is None and group["members"][1]["facts"] == {}
        assert group["members"][1]["unmovable"] == "not in the index"
        r = c.post("/api/review/plan", json={"groups": [{"group": 3, "keep": group["members"][0]["id"]}]},
                   headers=WRITE).json()
        assert r["moves"] == []  # only members the index holds can be named
    from zoo.dedup.quarantine import check_movable

    assert check_movable(str(outside / "o.png"), Path(os.path.realpath(images)))[1].startswith("outside")
    linked = images / "linked"
    linked.symlink_to(outside, target_is_directory=True)
    assert check_movable(str(linked / "o.png"), Path(os.path.realpath(images)))[1].startswith("outside")
    inner = tmp_path / "photos" / "inner-link"
    inner.symlink_to(images / "square", target_is_directory=True)
    assert check_movable(str(inner / "001.png"), Path(os.path.realpath(images)))[1] == "reached through a linked folder"


def test_ids_after_update_and_removed_files(library):
    from zoo.cli.main import main

    images, index = library[0], library[1]
    before = {r["path"]: r["id"] for r in load_index(index).store.rows()}
    (images / "circle" / "000_q40.jpg").unlink()
    shutil.copy(images / "circle" / "001.png", images / "circle" / "late.png")
    assert main(["index", "--out", str(index), "--update", *FAST]) == 0
    after = {r["path"]: r["id"] for r in load_index(index).store.rows()}
    assert "circle/000_q40.jpg" not in after and after["circle/late.png"] > max(before.values())
    with client_for(library) as c:
        group = next(g for g in c.get("/api/review?limit=10").json()["groups"] if g["group"] == 1)
        assert [m["id"] for m in group["members"]] == [None, after["circle/000.png"], after["circle/000_small.png"]]
        assert group["members"][0]["gone"] and group["keep"]["index"] == 1
        for m in group["members"][1:]:
            assert c.get(m["thumbnail"]).status_code == 200
        plan = c.post("/api/review/plan", json={"groups": [{"group": 1, "keep": after["circle/000.png"]}]},
                      headers=WRITE).json()
        assert [m["id"] for m in plan["moves"]] == [after["circle/000_small.png"]]


# ---- `zoo duplicates --images DIR --review`: find, then serve the page ----------------------------------
def test_duplicates_review_serves_the_page_with_a_printed_token(tmp_path):
    import selectors
    import subprocess
    import sys
    import time

    import httpx

    images = make_shapes(tmp_path / "photos", per_class=2, seed=5, shapes=("circle", "square"))
    shutil.copy(images / "circle" / "000.png", images / "circle" / "copy.png")
    cmd = [sys.executable, "-m", "zoo", "duplicates", "--images", str(images), "--out", str(tmp_path / "d"),
           "--threshold", "0.9999", "--review", "--port", "0", "--protect", str(images / "square"),
           "--protect", str(images / "circle"), *FAST]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "ZOO_TOKEN": ""})
    try:
        lines, url, token = [], None, None
        sel = selectors.DefaultSelector()
        sel.register(proc.stderr, selectors.EVENT_READ)
        deadline = time.monotonic() + 120
        while url is None and time.monotonic() < deadline and sel.select(timeout=deadline - time.monotonic()):
            line = proc.stderr.readline()
            assert line, "".join(lines)
            lines.append(line)
            if "need this token" in line:
                token = line.rsplit(": ", 1)[1].strip()
            if line.startswith("zoo: serving "):
                url = line.split(" at ", 1)[1].split()[0]
        assert url and url.endswith("/#review") and token, "".join(lines)
        assert sum("need this token" in x for x in lines) == 1  # printed once
        base = url.split("#")[0].rstrip("/")
        page = httpx.get(f"{base}/api/review").json()
        group = page["groups"][0]
        assert page["total"] == 1 and group["kind"] == "exact" and {m["name"] for m in group["members"]} == {"000.png", "copy.png"}
        assert all(m["id"] is not None for m in group["members"])  # OUT/index holds identical copies too
        assert page["protect"] == [str(images / "square"), str(images / "circle")]
        assert page["quarantine"] == str(tmp_path / "d" / "quarantine")
        body = {"groups": [{"group": 0, "keep": group["members"][0]["id"]}]}
        assert httpx.post(f"{base}/api/review/plan", json=body).status_code == 401
        r = httpx.post(f"{base}/api/review/plan", json=body, headers={"Authorization": f"Bearer {token}"})
        assert r.status_code == 200 and r.json()["refused"][0]["why"].startswith("in the protected folder")
        keep = json.loads((tmp_path / "d" / "groups.json").read_text())["exact_keep"][0]
        assert keep["path"] == str(images / "circle" / "000.png")  # the same choice as the page's
        assert group["members"][group["keep"]["index"]]["path"] == keep["path"]
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    assert (tmp_path / "d" / "index" / "ZOO_INDEX.json").is_file()


def test_review_options_that_cannot_work_are_one_line(shapes_dir, tmp_path, zoo_cli):
    code, _, err = zoo_cli("duplicates", "--images", shapes_dir, "--out", tmp_path / "d", "--exact_only", "--review")
    assert code == 2 and err.strip().endswith("--review of a folder needs the model's vectors (for the page's index); "
                                              "drop --exact_only")
    code, _, err = zoo_cli("duplicates", "--images", shapes_dir, "--out", tmp_path / "d", "--keep_rules", "size")
    assert code == 2 and "--keep_rules size: one of pixels, compression, sharpness, date" in err
    assert not (tmp_path / "d").exists()  # refused before anything ran

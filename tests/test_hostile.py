"""Files built to break zoo: none may run code, lose or move a user's file, or print a traceback."""
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import zoo
from zoo.errors import ZooError
from conftest import save

# a very small random-init model: these tests are about files, not features
MODEL = ["--model.backbone", "timm/test_resnet", "--model.pretrained", "false", "--model.data_config", "{image_size: 32}"]
FAST = [*MODEL, "--num_workers", "0"]
FAST_FIT = [*MODEL, "--model.head", "triplet", "--trainer.max_epochs", "1", "--trainer.enable_progress_bar", "false"]


def fast_model(**kw):
    return zoo.ZooModel("timm/test_resnet", pretrained=False, data_config={"image_size": 32}, **kw)


class Payload:
    """Unpickling this runs a shell command that creates the marker file."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def evil_file(path: Path, marker: Path) -> Path:
    torch.save({"state_dict": {}, "hyper_parameters": {"backbone": "resnet50"}, "x": Payload(marker)}, path)
    return path


def snapshot(folder: Path) -> dict:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def one_error(err: str, message: str) -> None:
    lines = [l for l in err.splitlines() if l.startswith("zoo: error:")]
    assert len(lines) == 1 and message in lines[0], err
    assert "Traceback" not in err


def zoo_process(*args, cwd=None, **kw):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.run([sys.executable, "-m", "zoo", *map(str, args)], capture_output=True, text=True,
                          timeout=300, cwd=cwd, env=env, **kw)


@pytest.fixture
def index_dir(shapes_dir, tmp_path, zoo_cli):
    out = tmp_path / "shapes.index"
    code, _, err = zoo_cli("index", "--images", shapes_dir, "--out", out, *FAST)
    assert code == 0, err
    return out


def version_dir(index: Path) -> Path:
    return index / json.loads((index / "ZOO_INDEX.json").read_text())["current"]


# ---- 1-3: no code runs from a file ------------------------------------------------------------
def test_crafted_checkpoint_is_refused_everywhere(shapes_dir, index_dir, tmp_path, zoo_cli):
    marker = tmp_path / "pwned"
    ckpt = evil_file(tmp_path / "evil.ckpt", marker)
    q = shapes_dir / "circle" / "000.png"
    for args in (("index", "--images", shapes_dir, "--out", tmp_path / "x.index"),
                 ("search", "--query", q, "--index", index_dir),
                 ("compare", "--images", q, shapes_dir / "square" / "000.png"),
                 ("duplicates", "--images", shapes_dir, "--out", tmp_path / "d"),
                 ("benchmark", "--images", shapes_dir, "--out", tmp_path / "b")):
        code, _, err = zoo_cli(*args, "--checkpoint", ckpt, *(MODEL if args[0] == "search" else FAST))
        assert code == 2, (args, err)
        one_error(err, f"refusing to load {ckpt}: it holds Python objects")
        assert not marker.exists(), args
    with pytest.raises(ZooError, match="refusing to load"):
        zoo.load_model(str(ckpt))
    assert not marker.exists()
    code, _, err = zoo_cli("fit", "--data.root", shapes_dir, "--ckpt_path", ckpt, "--trainer.default_root_dir", tmp_path / "r",
                           "--trainer.logger", "false", "--data.num_workers", "0", *FAST_FIT)
    assert code == 2 and not marker.exists(), err  # Lightning's resume reads it with weights_only=True
    one_error(err, "refusing to load the checkpoint: it holds Python objects")


def test_a_checkpoint_that_does_not_fit_the_model_is_a_one_line_error_on_resume(shapes_dir, tmp_path, zoo_cli):
    """--ckpt_path with tensors of another shape, missing or unexpected, in the weights Lightning
    loads (state_dict) or in the trained weights weight interpolation resumes from
    (current_model_state): one line, exit 2, no traceback."""
    runs = tmp_path / "runs"
    fit = ["fit", "--data.root", shapes_dir, "--data.num_workers", "0", "--data.batch_size", "6", "--data.samples_per_class", "2",
           "--trainer.default_root_dir", runs, "--trainer.logger", "false", "--model.weight_interpolation", "0.5", *FAST_FIT]
    code, _, err = zoo_cli(*fit)
    assert code == 0, err
    good = torch.load(next(runs.rglob("last.ckpt")), map_location="cpu", weights_only=True)
    name = next(k for k in good["state_dict"] if k.startswith("head.") and k.endswith(".weight"))
    for key, edit, says in (("current_model_state", lambda sd: sd.update({name: torch.zeros(3, 3)}), f"of another shape 1 ({name})"),
                            ("state_dict", lambda sd: sd.pop(name), f"missing 1 ({name})"),
                            ("state_dict", lambda sd: sd.update({"extra.weight": torch.zeros(1)}), "unexpected 1 (extra.weight)")):
        bad = {**good, key: dict(good[key])}
        edit(bad[key])
        torch.save(bad, tmp_path / "bad.ckpt")
        code, _, err = zoo_cli(*fit, "--trainer.max_epochs", "2", "--ckpt_path", tmp_path / "bad.ckpt")
        assert code == 2, err
        one_error(err, f"the checkpoint's {key} does not fit the model: tensors {says}")


def test_edited_index_metadata_cannot_point_zoo_at_other_files(shapes_dir, index_dir, tmp_path, zoo_cli):
    marker = tmp_path / "pwned"
    evil = evil_file(tmp_path / "evil.pth", marker)
    meta_path = version_dir(index_dir) / "meta.json"
    meta = json.loads(meta_path.read_text())
    meta["model"]["hparams"]["weights"] = str(evil)  # the index never reads weights from a path
    meta["model"]["checkpoint"] = str(evil)
    meta_path.write_text(json.dumps(meta))
    code, out, err = zoo_cli("search", "--query", shapes_dir / "circle" / "000.png", "--index", index_dir, "-k", "1")
    assert code == 0, err
    assert str(shapes_dir / "circle" / "000.png") in out and not marker.exists()
    # weights that claim to be a file the index does not hold are refused, not looked for
    meta["model"]["weights"] = f"file:{evil.name} sha256:00"
    meta_path.write_text(json.dumps(meta))
    code, _, err = zoo_cli("search", "--query", shapes_dir / "circle" / "000.png", "--index", index_dir)
    assert code == 2 and not marker.exists()
    one_error(err, "holds no copy of them; rebuild the index")


def test_hostile_weights_files_and_sidecars(tmp_path, zoo_cli, shapes_dir):
    marker = tmp_path / "pwned"
    evil = evil_file(tmp_path / "evil.pth", marker)
    code, _, err = zoo_cli("index", "--images", shapes_dir, "--out", tmp_path / "i", *FAST, "--model.weights", evil)
    assert code == 2 and not marker.exists()
    one_error(err, "cannot read weights file")
    good = tmp_path / "w.pth"
    net = fast_model().build()
    torch.save(net.backbone.model.state_dict(), good)
    cases = {
        "[1, 2]": "must hold a JSON object",
        "{not json": "is not valid JSON",
        '{"model_kwargs": [1]}': "model_kwargs must be a JSON object",
        '{"model_kwargs": {"no_such_arg": 1}}': "cannot build test_resnet with model_kwargs",
        '{"pretrained_cfg_overlay": {"file": "/etc/passwd"}}': "unknown key(s) file",
    }
    for text, message in cases.items():
        good.with_suffix(".json").write_text(text)
        code, _, err = zoo_cli("index", "--images", shapes_dir, "--out", tmp_path / "i", *FAST, "--model.weights", good)
        assert code == 2, text
        one_error(err, message)
    assert not (tmp_path / "i").exists()


# ---- 4: --overwrite replaces only an index ------------------------------------------------------
def test_overwrite_never_replaces_user_folders(shapes_dir, tmp_path, zoo_cli):
    before = snapshot(shapes_dir)
    for out in (shapes_dir, tmp_path):  # the input folder, and a folder that holds it
        code, _, err = zoo_cli("index", "--images", shapes_dir, "--out", out, "--overwrite", *FAST)
        assert code == 2
        one_error(err, "is the input folder or holds it")
    mine = tmp_path / "mine"
    save(Image.new("RGB", (8, 8)), mine / "photo.png")
    (mine / "meta.json").write_text("{}")  # looks a little like an old index
    (mine / "index.faiss").write_text("x")
    code, _, err = zoo_cli("index", "--images", shapes_dir, "--out", mine, "--overwrite", *FAST)
    assert code == 2
    one_error(err, "is an index of an older zoo (format 1)")
    assert snapshot(shapes_dir) == before and (mine / "photo.png").exists()
    # an index with a user's file put inside is no longer zoo's to replace
    code, _, err = zoo_cli("index", "--images", shapes_dir / "circle", "--out", tmp_path / "ok.index", *FAST)
    assert code == 0, err
    (tmp_path / "ok.index" / "notes.txt").write_text("mine")
    code, _, err = zoo_cli("index", "--images", shapes_dir / "circle", "--out", tmp_path / "ok.index", "--overwrite", *FAST)
    assert code == 2
    one_error(err, "holds files that are not part of a zoo index; refusing to replace it")
    assert (tmp_path / "ok.index" / "notes.txt").read_text() == "mine"


# ---- 5-6: quarantine keeps one of every group; undo trusts nothing ------------------------------
def test_quarantine_same_names_overlapping_groups_and_undo(tmp_path, zoo_cli):
    from zoo.dedup.quarantine import components, quarantine, undo_quarantine

    photos = tmp_path / "photos"
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 255, (24, 24, 3), dtype=np.uint8)
    for folder in ("a", "b", "c"):  # three different files, all named x.png
        save(Image.fromarray(np.roll(pixels, ord(folder), axis=0)), photos / folder / "x.png")
    big = save(Image.fromarray(pixels).resize((48, 48)), photos / "d" / "big.png")
    before = snapshot(photos)
    a, b, c = (str(photos / f / "x.png") for f in "abc")
    # an exact group {a, b} and a near group {b, c, big} overlap in b: one component of four
    assert components([[a, b], [b, c, str(big)]]) == [sorted([a, b, c, str(big)])]
    manifest = quarantine([[a, b], [b, c, str(big)]], tmp_path / "q", photos)
    assert (photos / "d" / "big.png").exists()  # the best file (most pixels) stays
    moved = json.loads(manifest.read_text())["moves"]
    assert sorted(Path(m["from"]).relative_to(photos).as_posix() for m in moved) == ["a/x.png", "b/x.png", "c/x.png"]
    assert len({m["to"] for m in moved}) == 3  # same names, unique targets
    for m in moved:
        assert (tmp_path / "q" / m["to"]).read_bytes() == before[Path(m["from"]).relative_to(photos).as_posix()]
    assert undo_quarantine(manifest) == 3
    assert snapshot(photos) == before  # every byte back at its own path


def test_edited_manifest_moves_nothing_outside(tmp_path, zoo_cli):
    from zoo.dedup.quarantine import quarantine

    photos, etc = tmp_path / "photos", tmp_path / "etc-copy"
    save(Image.new("RGB", (8, 8), (1, 2, 3)), photos / "a.png")
    shutil.copy(photos / "a.png", photos / "b.png")
    save(Image.new("RGB", (8, 8), (9, 9, 9)), etc / "passwd.png")
    manifest = quarantine([[str(photos / "a.png"), str(photos / "b.png")]], tmp_path / "q", photos)
    data = json.loads(manifest.read_text())
    entry = data["moves"][0]
    outside_before = snapshot(etc)
    for edit in ({"from": str(etc / "planted.png")},  # plant a quarantined file elsewhere
                 {"to": "../etc-copy/passwd.png"},  # pull a file from outside the quarantine
                 {"to": f"{data['batch']}/../../etc-copy/passwd.png", "from": str(photos / "stolen.png")}):
        manifest.write_text(json.dumps({**data, "moves": [{**entry, **edit}]}))
        code, out, err = zoo_cli("duplicates", "--undo", manifest)
        assert code == 2 and "signature does not match" in err  # an edited manifest is refused whole
        assert snapshot(etc) == outside_before and not (photos / "stolen.png").exists()
    # never over a file that came back meanwhile
    manifest.write_text(json.dumps(data))
    shutil.copy(photos / "a.png", Path(entry["from"]))
    code, out, err = zoo_cli("duplicates", "--undo", manifest)
    assert "restored 0 of 1" in out and "exists again" in err
    code, _, err = zoo_cli("duplicates", "--undo", tmp_path / "q" / "nope.json")
    one_error(err, "no such manifest")


def test_index_duplicates_move_only_files_under_the_indexed_root(shapes_dir, tmp_path, zoo_cli, capsys):
    shutil.copy(shapes_dir / "circle" / "000.png", shapes_dir / "circle" / "copy.png")
    outside = tmp_path / "outside.png"
    shutil.copy(shapes_dir / "circle" / "000.png", outside)
    out = tmp_path / "i"
    assert zoo_cli("index", "--images", shapes_dir, "--out", out, *FAST)[0] == 0
    db = sqlite3.connect(version_dir(out) / "items.sqlite")
    db.execute("UPDATE items SET path = '../outside.png' WHERE path = 'circle/copy.png'")
    db.commit()
    db.close()
    code, _, err = zoo_cli("duplicates", "--index", out, "--threshold", "0.9999", "--out", tmp_path / "d",
                           "--move-to", tmp_path / "q")
    assert code == 0, err
    manifest = json.loads(next((tmp_path / "q").glob("manifest-*.json")).read_text())
    assert outside.exists() and str(outside) not in [m["from"] for m in manifest["moves"]]
    # the same group where the file outside is not the one to keep: it is named, and stays
    from zoo.dedup.quarantine import quarantine

    big = save(Image.open(outside).resize((96, 96)), shapes_dir / "big.png")
    manifest = quarantine([[str(big), str(outside)]], tmp_path / "q2", shapes_dir)
    assert outside.exists() and json.loads(manifest.read_text())["moves"] == []
    assert f"{outside} is outside {shapes_dir}; not moved" in capsys.readouterr().err


# ---- 7-8: one writer at a time, atomic switch, clean-up -----------------------------------------
def test_second_writer_waits_for_the_lock(shapes_dir, index_dir, tmp_path):
    from filelock import FileLock

    save(Image.new("RGB", (32, 32), (200, 10, 10)), shapes_dir / "square" / "late.png")
    lock = FileLock(str(index_dir / ".lock"))
    lock.acquire()
    log = open(tmp_path / "err.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "zoo", "index", "--out", str(index_dir), "--update", "--num_workers", "0"],
                            stdout=subprocess.PIPE, stderr=log, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        deadline = time.time() + 120
        while "waiting for it to finish" not in (tmp_path / "err.log").read_text() and time.time() < deadline:
            assert proc.poll() is None, (tmp_path / "err.log").read_text()
            time.sleep(0.5)
        assert "being written by another zoo process" in (tmp_path / "err.log").read_text()
        time.sleep(1)
        assert proc.poll() is None  # still waiting: it has not written behind the holder's back
    finally:
        lock.release()
    assert proc.wait(timeout=300) == 0, (tmp_path / "err.log").read_text()
    assert len(zoo.load_index(index_dir)) == 13
    assert sorted(p.name for p in index_dir.iterdir()) == [".lock", "ZOO_INDEX.json", "v-000002"]


def test_crash_during_a_switch_keeps_the_old_index_and_is_cleaned_later(shapes_dir, index_dir, monkeypatch):
    from zoo.index import folder as indexdir

    before = zoo.load_index(index_dir).paths
    save(Image.new("RGB", (32, 32), (0, 200, 0)), shapes_dir / "circle" / "new.png")
    real_replace = os.replace

    def crash(src, dst):
        if str(dst).endswith("ZOO_INDEX.json"):
            raise KeyboardInterrupt  # killed between writing the new version and switching to it
        return real_replace(src, dst)

    monkeypatch.setattr(indexdir.os, "replace", crash)
    with pytest.raises(KeyboardInterrupt):
        zoo.build_index(None, out=index_dir, update=True)
    monkeypatch.setattr(indexdir.os, "replace", real_replace)
    assert zoo.load_index(index_dir).paths == before  # still the complete old version
    leftovers = {p.name for p in index_dir.iterdir()} - {".lock", "ZOO_INDEX.json", "v-000001"}
    assert leftovers  # what the crash left behind ...
    zoo.build_index(None, out=index_dir, update=True)
    assert sorted(p.name for p in index_dir.iterdir()) == [".lock", "ZOO_INDEX.json", "v-000002"]  # ... is gone
    assert len(zoo.load_index(index_dir)) == 13


# ---- 9-12: wrong results -------------------------------------------------------------------------
def test_symlink_loop_is_followed_once(tmp_path):
    from zoo.data.images import scan_folder

    root = tmp_path / "pics"
    for i in range(3):
        save(Image.new("RGB", (8, 8), (i, 0, 0)), root / "sub" / f"{i}.png")
    os.symlink(root, root / "sub" / "loop")  # sub/loop -> pics: a cycle
    os.symlink(root / "sub", root / "again")  # a second way into sub
    records = scan_folder(root)
    assert sorted(Path(r.path).name for r in records) == ["0.png", "1.png", "2.png"]


def test_search_results_stay_with_their_query(shapes_dir, index_dir, tmp_path, zoo_cli):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not an image")
    good = shapes_dir / "square" / "002.png"
    code, out, err = zoo_cli("search", "--query", bad, good, "--index", index_dir, "-k", "1", "--json")
    assert code == 0, err
    result = json.loads(out)
    assert [r["query"] for r in result] == [str(good)] and result[0]["results"][0]["path"] == str(good)
    assert "bad.jpg: not an image" in err
    code, out, err = zoo_cli("search", "--query", shapes_dir / "triangle", "--index", index_dir, "-k", "1", "--json")
    result = json.loads(out)
    assert len(result) == 4 and all(r["results"][0]["path"] == r["query"] for r in result)


def test_update_follows_deleted_changed_and_bad_files(shapes_dir, index_dir, capsys):
    gone, changed = shapes_dir / "circle" / "001.png", shapes_dir / "square" / "003.png"
    idx = zoo.load_index(index_dir)
    old_vec = {it["path"]: idx.index.reconstruct(it["id"]) for it in idx.items}
    gone.unlink()
    Image.new("RGB", (48, 48), (250, 250, 0)).save(changed)
    os.utime(changed, ns=(time.time_ns(), time.time_ns() + 10**9))
    (shapes_dir / "broken.png").write_bytes(b"\x89PNG broken")
    capsys.readouterr()
    zoo.build_index(None, out=index_dir, update=True)
    err = capsys.readouterr().err
    assert "1 new, 1 changed, 1 removed file(s)" in err and "broken.png: not an image" in err
    idx = zoo.load_index(index_dir)
    assert len(idx) == 11 and str(gone) not in idx.paths and str(changed) in idx.paths
    new_vec = {it["path"]: idx.index.reconstruct(it["id"]) for it in idx.items}
    assert not np.allclose(new_vec[str(changed)], old_vec[str(changed)])  # embedded again
    assert np.allclose(new_vec[str(shapes_dir / "circle" / "000.png")], old_vec[str(shapes_dir / "circle" / "000.png")])
    zoo.build_index(None, out=index_dir, update=True)  # nothing changed: the bad file is not read again
    err = capsys.readouterr().err
    assert "0 new, 0 changed, 0 removed" in err and "1 unusable file(s) unchanged" in err and "not an image" not in err


def test_float_tiff_in_unit_range_is_not_black(tmp_path):
    from zoo.data.images import load_image

    a = np.tile(np.linspace(0.0, 1.0, 16, dtype=np.float32), (16, 1))
    Image.fromarray(a, mode="F").save(tmp_path / "f.tif")
    rgb = np.asarray(load_image(tmp_path / "f.tif"))
    assert rgb[0, 0, 0] == 0 and rgb[0, -1, 0] == 255 and abs(rgb[..., 0].mean() - 127.5) < 2


# ---- 13: checkpoints and indexes stand alone ---------------------------------------------------
def test_checkpoint_and_index_do_not_need_the_weights_file_or_the_working_directory(tmp_path, shapes_dir, zoo_cli):
    wdir = tmp_path / "weights"
    wdir.mkdir()
    net = zoo.ZooModel("timm/test_resnet", pretrained=False, seed=3).build()
    torch.save(net.backbone.model.state_dict(), wdir / "w.pth")
    # the sidecar changes the preprocessing: it must survive without the file
    (wdir / "w.json").write_text(json.dumps({"pretrained_cfg_overlay": {"mean": [0.5] * 3, "std": [0.5] * 3, "input_size": [3, 32, 32]}}))
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        code, out, err = zoo_cli("fit", "--model.backbone", "timm/test_resnet", "--model.head", "triplet",
                               "--model.weights", "weights/w.pth", "--data.root", shapes_dir, "--data.batch_size", "6",
                               "--data.samples_per_class", "2", "--data.num_workers", "0", "--trainer.max_epochs", "1",
                               "--trainer.enable_progress_bar", "false", "--trainer.logger.init_args.save_dir", tmp_path / "runs",
                               "--trainer.default_root_dir", tmp_path / "runs")
        assert code == 0, err
        assert f"zoo: best checkpoint (val/map = " in out and f"zoo: last checkpoint (resume with --ckpt_path): {tmp_path / 'runs'}" in out
        code, out, err = zoo_cli("index", "--images", shapes_dir, "--out", "rel.index", "--num_workers", "0",
                                 "--model.backbone", "timm/test_resnet", "--model.weights", "weights/w.pth")
        assert code == 0, err
    finally:
        os.chdir(cwd)
    ckpt = next((tmp_path / "runs").rglob("last.ckpt"))
    a = zoo.load_model(str(ckpt))
    shutil.move(wdir, tmp_path / "moved")  # the weights file is gone
    b = zoo.load_model(str(ckpt))
    assert b.data_config["mean"] == (0.5, 0.5, 0.5) and b.data_config["input_size"] == (3, 32, 32)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(a(x), b(x))
    # the index made from a relative weights path works from another folder, without the file
    q = shapes_dir / "circle" / "000.png"
    code, out, err = zoo_cli("search", "--query", q, "--index", tmp_path / "rel.index", "-k", "1")
    assert code == 0, err
    assert f"   1   1.0000  {q}" in out


# ---- errors, not tracebacks ----------------------------------------------------------------------
def test_bad_values_and_unwritable_outputs_are_one_line_errors(shapes_dir, index_dir, tmp_path, zoo_cli):
    q = shapes_dir / "circle" / "000.png"
    ro = Path("/sys")  # not writable, even for root
    cases = [
        (("search", "--query", q, "--index", index_dir, "-k", "0"), "-k 0: the number of results must be 1 or more"),
        (("search", "--query", q, "--index", index_dir, "-k", "-3"), "-k -3"),
        (("index", "--images", shapes_dir, "--out", ro / "x.index", *FAST), "cannot write"),
        (("duplicates", "--images", shapes_dir, "--out", ro / "d", *FAST), "cannot write --out"),
        (("compare", "--images", q, q, "--matrix", ro / "m", *FAST), "cannot write"),
        (("search", "--query", q, "--index", index_dir, "--grid", ro / "g.png"), "cannot write"),
        (("duplicates", "--images", shapes_dir, "--out", tmp_path / "d", "--move-to", ro / "q", *FAST), "cannot write --move-to"),
        (("index", "--images", shapes_dir, "--out", tmp_path / "f.index", "--factory", "IVF16,PQ8x", *FAST),
         "could not parse code description PQ8x in IVF16,PQ8x"),
    ]
    for args, message in cases:
        code, _, err = zoo_cli(*args)
        assert code == 2, (args, err)
        one_error(err, message)


def test_damaged_index_files(index_dir, shapes_dir, zoo_cli):
    q = shapes_dir / "circle" / "000.png"
    meta = version_dir(index_dir) / "meta.json"
    good = meta.read_text()
    for text, message in (("{bad json", "meta.json is damaged"), ("[1, 2]", "meta.json is damaged"),
                          ('{"model": {}}', "meta.json is damaged (missing factory")):
        meta.write_text(text)
        code, _, err = zoo_cli("search", "--query", q, "--index", index_dir)
        assert code == 2
        one_error(err, message)
    meta.write_text(good)
    faiss_file = version_dir(index_dir) / "index.faiss"
    data = faiss_file.read_bytes()
    for broken in (data[: len(data) // 2], b"\x00" * 64, b""):
        faiss_file.write_bytes(broken)
        code, _, err = zoo_cli("search", "--query", q, "--index", index_dir)
        assert code == 2
        one_error(err, "index.faiss is damaged")
    (index_dir / "ZOO_INDEX.json").write_text("[]")
    code, _, err = zoo_cli("search", "--query", q, "--index", index_dir)
    one_error(err, "ZOO_INDEX.json is damaged")


def test_file_names_that_are_not_utf8_are_reported_and_skipped(shapes_dir, tmp_path, zoo_cli):
    name = os.fsencode(str(shapes_dir / "circle")) + b"/caf\xe9.png"
    shutil.copy(shapes_dir / "circle" / "000.png", name)
    code, out, err = zoo_cli("index", "--images", shapes_dir, "--out", tmp_path / "u.index", *FAST)
    assert code == 0, err
    assert "not valid UTF-8" in err and "caf\\xe9.png" in err and "indexed 12 items" in out


def test_read_only_working_directory_and_no_logs_in_it(index_dir, shapes_dir, tmp_path):
    q = shapes_dir / "circle" / "000.png"
    r = zoo_process("search", "--query", q, "--index", index_dir, "-k", "1", cwd="/sys")
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[0].startswith("index: ") and "Predicting" not in r.stdout  # progress is on stderr
    r = zoo_process("index", "--images", shapes_dir, *FAST, cwd="/sys")
    assert r.returncode == 2
    one_error(r.stderr, "cannot write")
    work = tmp_path / "work"
    work.mkdir()
    r = zoo_process("compare", "--images", q, shapes_dir / "square" / "000.png", *FAST, cwd=work)
    assert r.returncode == 0, r.stderr
    assert list(work.iterdir()) == []  # no runs/lightning_logs/version_N


def test_interrupt_exits_130_with_one_line(tmp_path):
    from shapes import make_shapes

    many = make_shapes(tmp_path / "many", per_class=150, seed=0, size=96)
    proc = subprocess.Popen([sys.executable, "-m", "zoo", "index", "--images", str(many), "--out", str(tmp_path / "i"),
                             "--model.backbone", "vgg16", "--model.pretrained", "false", "--num_workers", "2",
                             "--batch_size", "4"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    err = ""
    deadline = time.time() + 120
    while time.time() < deadline:  # wait until it is embedding
        time.sleep(1)
        assert proc.poll() is None
        if list(tmp_path.glob("i")):
            break
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert err.rstrip().endswith("zoo: interrupted") and "Traceback" not in err
    assert not (tmp_path / "i").exists()  # nothing half-written is left


def test_an_interrupt_python_ignores_prints_no_traceback(capsys):
    """A Ctrl-C that lands where Python ignores exceptions (here a __del__; in a run, logging's
    fork hooks) goes through sys.unraisablehook: after a Ctrl-C zoo's hook keeps it quiet,
    anything else still reaches the usual report."""
    import gc

    from zoo.cli.main import INTERRUPTED, quiet_ignored_interrupts

    class RaisesOnDel:
        def __init__(self, exc):
            self.exc = exc

        def __del__(self):
            raise self.exc

    saved, reported = sys.unraisablehook, []
    sys.unraisablehook = quiet_ignored_interrupts(lambda u: reported.append(type(u.exc_value)))
    try:
        INTERRUPTED.set()
        RaisesOnDel(KeyboardInterrupt())
        RaisesOnDel(ValueError("other"))
        INTERRUPTED.clear()
        RaisesOnDel(KeyboardInterrupt())  # no Ctrl-C was seen: reported as usual
        gc.collect()
    finally:
        sys.unraisablehook = saved
        INTERRUPTED.clear()
    assert reported == [ValueError, KeyboardInterrupt]
    assert "Traceback" not in capsys.readouterr().err


def test_an_interrupt_inside_logging_lock_bookkeeping_waits_for_the_next_batch():
    """Raised inside logging's fork hook (between taking and releasing its lock) the interrupt
    could leave the lock held and hang the shutdown: there it is only remembered."""
    import logging
    from types import SimpleNamespace

    from zoo.cli.main import INTERRUPTED, on_sigint

    INTERRUPTED.clear()
    try:
        on_sigint(signal.SIGINT, SimpleNamespace(f_globals=vars(logging)))
        assert INTERRUPTED.is_set()
        INTERRUPTED.clear()
        with pytest.raises(KeyboardInterrupt):
            on_sigint(signal.SIGINT, SimpleNamespace(f_globals={"__name__": "zoo.index.build"}))
        assert INTERRUPTED.is_set()
    finally:
        INTERRUPTED.clear()


def test_an_interrupt_python_swallowed_stops_the_run_at_the_next_batch():
    """Ctrl-C raised inside code whose exceptions Python ignores (logging's fork hooks, while
    loader workers start) is lost; the command's callback raises it again at the next batch."""
    from zoo.cli.main import INTERRUPTED, StopWhenInterrupted

    stop = StopWhenInterrupted()
    INTERRUPTED.clear()
    stop.on_predict_batch_end(None, None, None, None, 0)  # no Ctrl-C: nothing happens
    INTERRUPTED.set()
    try:
        for hook in (stop.on_predict_batch_end, stop.on_train_batch_end, stop.on_validation_batch_end):
            with pytest.raises(KeyboardInterrupt):
                hook(None, None, None, None, 0)
    finally:
        INTERRUPTED.clear()

"""Hostile files, round two: planted links where zoo takes a lock, forged or edited quarantine
manifests, named pipes and device links in photo folders, malformed calibration files."""
import hashlib
import hmac
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from conftest import TINY, save
from zoo.errors import ZooError

FAST = ["--model.backbone", "timm/test_resnet", "--model.pretrained", "false", "--model.data_config",
        "{image_size: 32}", "--num_workers", "0"]
CAL_MODEL = ["--backbone", "test_resnet", *TINY]  # the model of the calibrate test in test_copydetect.py
CAL_KEY = "test_resnet+frozen | random init (seed 0)"


def one_error(err: str, message: str) -> None:
    lines = [l for l in err.splitlines() if l.startswith("zoo: error:")]
    assert len(lines) == 1 and message in lines[0], err
    assert "Traceback" not in err


def zoo_process(*args, timeout=120):
    """`python -m zoo ARGS` that cannot hang the test run: a hang fails as TimeoutExpired."""
    return subprocess.run([sys.executable, "-m", "zoo", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "PYTHONUNBUFFERED": "1"})


def snapshot(folder: Path) -> dict:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def document(tmp_path) -> Path:
    """A user's file that a planted link points at."""
    doc = tmp_path / "thesis.txt"
    doc.write_text("four years of work\n")
    return doc


# ---- 1: a lock file is never opened through a link, nor truncated --------------------------------
def test_calibration_lock_planted_as_a_link_is_refused(tmp_path, document):
    from zoo.evaluate.calibration import save_entry

    handed = tmp_path / "handed"
    handed.mkdir()
    os.symlink(document, handed / ".zoo-calibration.json.lock")
    with pytest.raises(ZooError, match=r"\.zoo-calibration\.json\.lock is a link"):
        save_entry(handed / "zoo-calibration.json", "a | w", {"threshold": 0.8}, overwrite=False)
    assert document.read_text() == "four years of work\n"
    assert not (handed / "zoo-calibration.json").exists()


def test_index_lock_planted_as_a_link_is_refused(shapes_dir, tmp_path, zoo_cli, document):
    out = tmp_path / "handed.index"
    out.mkdir()
    os.symlink(document, out / ".lock")
    code, _, err = zoo_cli("index", "--images", shapes_dir, "--out", out, *FAST)
    assert code == 2
    one_error(err, f"{out / '.lock'} is a link")
    assert document.read_text() == "four years of work\n"
    assert sorted(p.name for p in out.iterdir()) == [".lock"]  # nothing was written
    # a dangling link is refused too (O_CREAT would otherwise create its target)
    (out / ".lock").unlink()
    os.symlink(tmp_path / "created-elsewhere", out / ".lock")
    code, _, err = zoo_cli("index", "--images", shapes_dir, "--out", out, *FAST)
    assert code == 2 and not (tmp_path / "created-elsewhere").exists()
    one_error(err, "is a link")


def test_the_lock_is_shared_with_other_flock_holders(tmp_path):
    from zoo.io import file_lock

    lock = tmp_path / ".lock"
    lock.write_text("kept")  # an existing lock file is not truncated
    with file_lock(lock):
        held = subprocess.run([sys.executable, "-c", "import fcntl,sys; f=open(sys.argv[1]); "
                               "fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)", str(lock)], capture_output=True, text=True)
        assert held.returncode == 1 and "BlockingIOError" in held.stderr
    assert lock.read_text() == "kept"
    os.mkfifo(tmp_path / "pipe.lock")
    with pytest.raises(ZooError, match="is not a regular file"):
        with file_lock(tmp_path / "pipe.lock"):
            pass


# ---- 2: undo puts back only what zoo moved, only where it came from ------------------------------
def two_pairs(photos: Path) -> None:
    """Two exact-duplicate pairs in two sub-folders."""
    for folder, colour in (("sub", (10, 20, 30)), ("other", (200, 100, 0))):
        a = save(Image.new("RGB", (8, 8), colour), photos / folder / "a.png")
        shutil.copy(a, photos / folder / "a-copy.png")


def test_forged_manifest_plants_nothing(tmp_path, zoo_cli):
    site = tmp_path / "site-packages"  # stands for a folder on Python's path
    site.mkdir()
    handed = tmp_path / "handed"
    (handed / "b1").mkdir(parents=True)
    (handed / "b1" / "zoo-evil.pth").write_text("import os; os.system('touch pwned')\n")
    body = {"root": str(site), "batch": "b1",
            "moves": [{"from": str(site / "zoo-evil.pth"), "to": "b1/zoo-evil.pth", "kept": str(site / "x.pth")}]}
    manifest = handed / "manifest-b1.json"
    for forged in (body, {**body, "signature": hmac.new(b"guess", json.dumps(body, sort_keys=True).encode(),
                                                         hashlib.sha256).hexdigest()}):
        manifest.write_text(json.dumps(forged))
        code, out, err = zoo_cli("duplicates", "--undo", manifest)
        assert code == 2
        one_error(err, "was not written by this user's `zoo duplicates --move-to`")
        assert list(site.iterdir()) == [] and (handed / "b1" / "zoo-evil.pth").exists()


def test_edited_genuine_manifest_is_refused(tmp_path, zoo_cli):
    photos, other = tmp_path / "photos", tmp_path / "other-root"
    two_pairs(photos)
    other.mkdir()
    (other / "sub").mkdir()
    code, _, err = zoo_cli("duplicates", "--images", photos, "--exact_only", "--out", tmp_path / "d",
                           "--move-to", tmp_path / "q")
    assert code == 0, err
    manifest = next((tmp_path / "q").glob("manifest-*.json"))
    genuine = json.loads(manifest.read_text())
    assert len(genuine["moves"]) == 2
    batch = tmp_path / "q" / genuine["batch"]
    quarantined = snapshot(batch)
    entry = genuine["moves"][0]
    rel = Path(entry["from"]).relative_to(photos)
    for edited in ({**genuine, "root": str(other), "moves": [{**entry, "from": str(other / rel)}]},
                   {**genuine, "moves": [{**entry, "from": str(photos / rel.parent / "renamed.png")}]},
                   {**genuine, "moves": genuine["moves"][:1]}):
        manifest.write_text(json.dumps(edited))
        code, out, err = zoo_cli("duplicates", "--undo", manifest)
        assert code == 2
        one_error(err, "was not written by this user's `zoo duplicates --move-to`")
        assert snapshot(batch) == quarantined and list(other.rglob("*.png")) == []
        assert not (photos / rel.parent / "renamed.png").exists()
    manifest.write_text(json.dumps(genuine))  # the genuine manifest still works
    code, out, err = zoo_cli("duplicates", "--undo", manifest)
    assert code == 0 and "restored 2 of 2" in out, err


def test_undo_never_writes_through_a_folder_swapped_for_a_link(tmp_path, zoo_cli):
    photos, elsewhere = tmp_path / "photos", tmp_path / "elsewhere"
    two_pairs(photos)
    elsewhere.mkdir()
    code, _, err = zoo_cli("duplicates", "--images", photos, "--exact_only", "--out", tmp_path / "d",
                           "--move-to", tmp_path / "q")
    assert code == 0, err
    manifest = next((tmp_path / "q").glob("manifest-*.json"))
    moved = {Path(m["from"]).relative_to(photos).as_posix() for m in json.loads(manifest.read_text())["moves"]}
    assert {m.split("/")[0] for m in moved} == {"sub", "other"}
    shutil.move(photos / "sub", tmp_path / "sub-was-here")
    os.symlink(elsewhere, photos / "sub")  # the scanned sub-folder is now a link
    code, out, err = zoo_cli("duplicates", "--undo", manifest)
    assert code == 0 and "restored 1 of 2" in out, err
    assert f"{photos / 'sub'} is not a real folder" in err  # skipped with a report, the rest restored
    assert list(elsewhere.iterdir()) == []
    assert all((photos / m).is_file() for m in moved if m.startswith("other/"))
    # the skipped file stays in the quarantine; with the folder back, a second undo restores it
    os.unlink(photos / "sub")
    shutil.move(tmp_path / "sub-was-here", photos / "sub")
    code, out, err = zoo_cli("duplicates", "--undo", manifest)
    assert code == 0 and "restored 1 of 2" in out and "is gone" in err  # the other one is back already
    assert all((photos / m).is_file() for m in moved)


def test_quarantined_file_replaced_in_the_quarantine_is_not_restored(tmp_path, zoo_cli):
    photos = tmp_path / "photos"
    two_pairs(photos)
    code, _, err = zoo_cli("duplicates", "--images", photos, "--exact_only", "--out", tmp_path / "d",
                           "--move-to", tmp_path / "q")
    assert code == 0, err
    manifest = next((tmp_path / "q").glob("manifest-*.json"))
    first, second = json.loads(manifest.read_text())["moves"]
    (tmp_path / "q" / first["to"]).write_bytes(b"not what zoo moved")
    (tmp_path / "q" / second["to"]).unlink()
    os.symlink(tmp_path / "d" / "groups.json", tmp_path / "q" / second["to"])
    code, out, err = zoo_cli("duplicates", "--undo", manifest)
    assert code == 0 and "restored 0 of 2" in out, err
    assert "is not the file zoo moved" in err and "is not a regular file" in err
    assert not Path(first["from"]).exists() and not Path(second["from"]).exists()


# ---- 9: only regular files inside the folder are read --------------------------------------------
def plant_pipe_and_links(folder: Path, tmp_path: Path) -> None:
    os.mkfifo(folder / "x.jpg")  # reading it waits for a writer for ever
    os.symlink("/dev/zero", folder / "zero.jpg")  # reading it never ends
    outside = save(Image.new("RGB", (8, 8), (1, 2, 3)), tmp_path / "private" / "secret.png")
    os.symlink(outside, folder / "secret.png")  # a file outside the folder
    os.symlink(outside.parent, folder / "private")  # a folder outside the folder


def test_listing_skips_pipes_devices_and_links_that_leave_the_folder(tmp_path, capsys):
    from zoo.data.images import scan_folder

    photos = tmp_path / "photos"
    for i in range(3):
        save(Image.new("RGB", (8, 8), (i, 0, 0)), photos / f"{i}.png")
    os.symlink(photos / "0.png", photos / "inside-link.png")  # a link that stays inside is kept
    plant_pipe_and_links(photos, tmp_path)
    records = scan_folder(photos)
    assert sorted(Path(r.path).name for r in records) == ["0.png", "1.png", "2.png", "inside-link.png"]
    err = capsys.readouterr().err
    assert "skipped 4 entr" in err
    for name, reason in (("x.jpg", "named pipe"), ("zero.jpg", "character device"), ("secret.png", "outside"),
                         ("private", "outside")):
        assert any(name in l and reason in l for l in err.splitlines()), err


@pytest.mark.timeout(200)
def test_duplicates_does_not_hang_on_a_pipe_or_dev_zero(tmp_path):
    photos = tmp_path / "photos"
    for i in range(3):
        save(Image.new("RGB", (8, 8), (i, 0, 0)), photos / f"{i}.png")
    shutil.copy(photos / "0.png", photos / "copy.png")
    plant_pipe_and_links(photos, tmp_path)
    r = zoo_process("duplicates", "--images", photos, "--exact_only", "--out", tmp_path / "d", timeout=60)
    assert r.returncode == 0, r.stderr
    assert "x.jpg (named pipe" in r.stderr and "zero.jpg (character device" in r.stderr
    groups = json.loads((tmp_path / "d" / "groups.json").read_text())["exact_groups"]
    assert groups == [[str(photos / "0.png"), str(photos / "copy.png")]]


def test_hasher_refuses_what_is_not_a_regular_file(tmp_path):
    from zoo.io import sha256_file

    os.mkfifo(tmp_path / "pipe")
    for path in (tmp_path / "pipe", Path("/dev/zero"), tmp_path):
        with pytest.raises(ValueError, match="not a regular file"):
            sha256_file(path)


@pytest.mark.timeout(300)
def test_calibrate_does_not_hang_on_a_pipe_or_dev_zero(shapes_dir, tmp_path):
    plant_pipe_and_links(shapes_dir, tmp_path)
    cal = tmp_path / "cal.json"
    r = zoo_process("calibrate", "--images", shapes_dir, "--sample", "20", "--copies", "2", "--precision", "0.9",
                    "--calibration", cal, *CAL_MODEL, timeout=150)
    assert r.returncode == 0, r.stderr
    assert "x.jpg (named pipe" in r.stderr and "zero.jpg (character device" in r.stderr
    assert json.loads(cal.read_text())["models"][CAL_KEY]["images"] == 12


# ---- a calibration file whose entries are not objects --------------------------------------------
def test_calibration_entries_that_are_not_objects(shapes_dir, tmp_path, zoo_cli):
    cal = tmp_path / "cal.json"
    for models in ({CAL_KEY: 5}, {CAL_KEY: [0.9]}, {"other | w": "x"}, []):
        cal.write_text(json.dumps({"version": 1, "models": models}))
        before = cal.read_bytes()
        code, _, err = zoo_cli("duplicates", "--images", shapes_dir, "--threshold", "auto", "--calibration", cal,
                               "--out", tmp_path / "d", *CAL_MODEL)
        assert code == 2
        one_error(err, f"{cal} is not a zoo calibration file")
        code, _, err = zoo_cli("calibrate", "--images", shapes_dir, "--sample", "4", "--calibration", cal,
                               "--overwrite", *CAL_MODEL)
        assert code == 2
        one_error(err, f"{cal} is not a zoo calibration file")
        assert cal.read_bytes() == before

import io

import numpy as np
import pytest
from PIL import Image

from zoo.data.images import load_image, records_from, scan_folder
from zoo.errors import ZooError
from conftest import save


def test_decodes_by_content_not_extension(tmp_path):
    rgb = Image.new("RGB", (20, 10), (10, 200, 30))
    png_as_jpg = save(rgb, tmp_path / "a.jpg", format="PNG")
    webp_as_jpg = save(rgb, tmp_path / "b.jpg", format="WEBP", lossless=True)
    for p in (png_as_jpg, webp_as_jpg):
        im = load_image(p)
        assert im.mode == "RGB" and im.size == (20, 10) and im.getpixel((5, 5)) == (10, 200, 30)


def test_modes_become_rgb(tmp_path):
    cmyk = save(Image.new("CMYK", (8, 8), (0, 255, 255, 0)), tmp_path / "cmyk.jpg", quality=100)
    assert load_image(cmyk).getpixel((4, 4))[0] > 200  # red
    sixteen = save(Image.fromarray(np.full((8, 8), 65535, dtype=np.uint16)), tmp_path / "16.png")
    assert load_image(sixteen).getpixel((1, 1)) == (255, 255, 255)
    pal = Image.new("P", (8, 8), 1)
    pal.putpalette([0, 0, 0, 0, 0, 255] + [0] * 762)
    assert load_image(save(pal, tmp_path / "p.png")).getpixel((1, 1)) == (0, 0, 255)
    rgba = save(Image.new("RGBA", (8, 8), (255, 0, 0, 0)), tmp_path / "rgba.png")
    assert load_image(rgba).getpixel((1, 1)) == (255, 255, 255)  # transparent -> white
    gray = save(Image.new("L", (8, 8), 77), tmp_path / "g.png")
    assert load_image(gray).getpixel((1, 1)) == (77, 77, 77)


def test_exif_rotation_applied(tmp_path):
    im = Image.new("RGB", (30, 10), (0, 0, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees on display
    p = tmp_path / "rot.jpg"
    im.save(p, exif=exif.tobytes())
    assert load_image(p).size == (10, 30)


def test_bad_files_give_reasons(tmp_path, monkeypatch):
    (tmp_path / "empty.jpg").write_bytes(b"")
    (tmp_path / "text.png").write_text("not an image at all")
    buf = io.BytesIO()
    Image.new("RGB", (64, 64), (1, 2, 3)).save(buf, format="JPEG")
    (tmp_path / "trunc.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    with pytest.raises(ValueError, match="empty file"):
        load_image(tmp_path / "empty.jpg")
    with pytest.raises(ValueError, match="not an image"):
        load_image(tmp_path / "text.png")
    with pytest.raises(ValueError, match="corrupt or truncated"):
        load_image(tmp_path / "trunc.jpg")
    big = save(Image.new("RGB", (100, 100)), tmp_path / "big.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # the guard stays on
    with pytest.raises(ValueError, match="decompression-bomb"):
        load_image(big)


def test_scan_folder_labels_from_parent(tmp_path):
    save(Image.new("RGB", (4, 4)), tmp_path / "cats" / "sub" / "x.png")
    save(Image.new("RGB", (4, 4)), tmp_path / "dogs" / "y.png")
    save(Image.new("RGB", (4, 4)), tmp_path / "root.png")
    (tmp_path / ".hidden.png").write_bytes(b"")
    recs = scan_folder(tmp_path)
    labels = {r.path.split("/")[-1]: r.label for r in recs}
    assert labels == {"root.png": None, "x.png": "sub", "y.png": "dogs"}
    with pytest.raises(ZooError, match="no such file or folder"):
        records_from([tmp_path / "missing"])

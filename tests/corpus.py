"""A corpus of good-but-awkward and bad image files, generated on demand (nothing binary in git).

`write_corpus(directory)` writes every item and returns {file name: Item}. Each item says
whether the toolkit must score it (`good`) or report it as an error (`bad`), and for some
good items what the decoded pixels must look like. Used by the robustness tests for
`load_image`, `nima predict` and `nima train`.
"""

from __future__ import annotations

import io
import os
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

RED, BLUE = (255, 0, 0), (0, 0, 255)
# b"caf\xe9" is "cafe" with e-acute in Latin-1: not valid UTF-8; Python keeps it as a surrogate.
NON_UTF8_NAME = os.fsdecode(b"caf\xe9_latin1.jpg")


@dataclass(frozen=True)
class Item:
    good: bool
    why: str


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return (struct.pack(">I", len(data)) + kind + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))


def bomb_png(width: int = 30000, height: int = 30000) -> bytes:
    """A valid PNG header declaring width x height 8-bit grayscale pixels, a few bytes of data.

    Decoding it would need width*height bytes (900 MB for the default); it must be refused
    from the header alone.
    """
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\x00" * (width + 1))  # the first row only: the rest is "missing"
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", idat)
            + _png_chunk(b"IEND", b""))


def half_red_jpeg(orientation: int) -> bytes:
    """48x32 stored pixels: left half red, right half blue, with an EXIF Orientation tag."""
    arr = np.zeros((32, 48, 3), np.uint8)
    arr[:, :24] = RED
    arr[:, 24:] = BLUE
    exif = Image.Exif()
    exif[0x0112] = orientation
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "JPEG", quality=95, exif=exif.tobytes())
    return buf.getvalue()


def _save(img: Image.Image, fmt: str, **kwargs) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kwargs)
    return buf.getvalue()


def _noise(size=(40, 56), seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (*size, 3), dtype=np.uint8)


def write_corpus(directory: str | Path, unreadable: bool = True, non_utf8_name: bool = True
                 ) -> dict[str, Item]:
    """Write the corpus into `directory` (created); return {file name: Item}.

    Also creates a subfolder `loop/` holding a symlink back to `directory` (a symlink loop)
    and, when `unreadable` and not running as root, a chmod-000 JPEG (root reads it anyway,
    so it is left out there rather than mis-labelled).
    """
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    items: dict[str, Item] = {}
    good_jpeg = _save(Image.fromarray(_noise()), "JPEG", quality=90)
    good_png = _save(Image.fromarray(_noise(seed=1)), "PNG")

    def put(name: str, data: bytes, good: bool, why: str) -> None:
        (d / name).write_bytes(data)
        items[name] = Item(good, why)

    # --- bad: must each give an error entry, never stop the run ---------------------------
    put("zero_bytes.jpg", b"", False, "empty file")
    put("truncated.jpg", good_jpeg[: len(good_jpeg) // 2], False, "JPEG cut in half")
    corrupt = bytearray(good_png)
    mid = len(corrupt) // 2  # inside IDAT: the chunk CRC no longer matches
    corrupt[mid:mid + 16] = bytes(16)
    put("corrupt.png", bytes(corrupt), False, "PNG with zeroed bytes inside its pixel data")
    put("text.jpg", b"this is not an image\n" * 10, False, "text file named .jpg")
    put("page.png", b"<!DOCTYPE html><html><body><p>404 Not Found</p></body></html>\n",
        False, "HTML saved as .png")
    put("bomb.png", bomb_png(), False, "30000x30000 declared in a small file")

    # --- good but awkward: must each get a score ---------------------------------------------
    put("plain.jpg", good_jpeg, True, "ordinary RGB JPEG")
    cmyk = Image.fromarray(_noise(seed=2)).convert("CMYK")
    put("cmyk.jpg", _save(cmyk, "JPEG"), True, "CMYK JPEG")
    gray16 = (np.linspace(0, 65535, 40 * 56).reshape(40, 56)).astype(np.uint16)
    put("gray16.png", _save(Image.fromarray(gray16), "PNG"), True,
        "16-bit grayscale PNG")
    put("gray.png", _save(Image.fromarray(_noise(seed=3)[..., 0]), "PNG"), True,
        "8-bit grayscale PNG")
    put("palette.gif", _save(Image.fromarray(_noise(seed=4)).convert("P"), "GIF"), True,
        "palette GIF")
    rgba = np.dstack([_noise(seed=5), np.tile(np.arange(56, dtype=np.uint8) * 4, (40, 1))])
    put("rgba.png", _save(Image.fromarray(rgba), "PNG"), True,
        "RGBA PNG with a transparency gradient")
    put("rotated6.jpg", half_red_jpeg(6), True, "EXIF orientation 6: left half red -> top red")
    put("one_pixel.png", _save(Image.new("RGB", (1, 1), (10, 200, 30)), "PNG"), True, "1x1")
    frames = [Image.new("RGB", (32, 32), c) for c in (RED, BLUE, (0, 255, 0))]
    put("animated.gif", _save(frames[0], "GIF", save_all=True, append_images=frames[1:],
                              duration=100, loop=0), True, "animated GIF: first frame is red")
    # A name that is not valid UTF-8: the file system allows it, the output must survive it.
    if non_utf8_name:
        put(NON_UTF8_NAME, good_jpeg, True, "file name in Latin-1, not UTF-8")

    # A symlink loop: loop/back -> .. ; the walk must not recurse forever.
    (d / "loop").mkdir(exist_ok=True)
    link = d / "loop" / "back"
    if not link.is_symlink():
        link.symlink_to("..", target_is_directory=True)

    # Special files named like images: a dangling symlink, and a FIFO (opening one for reading
    # blocks until a writer comes: a walk that opened it would hang forever).
    (d / "dangling.jpg").symlink_to("no_such_target.jpg")
    items["dangling.jpg"] = Item(False, "symlink to a missing file")
    os.mkfifo(d / "fifo.jpg")
    items["fifo.jpg"] = Item(False, "named pipe called .jpg")

    if unreadable and os.geteuid() != 0:
        put("unreadable.jpg", good_jpeg, False, "chmod 000")
        (d / "unreadable.jpg").chmod(0)
    return items

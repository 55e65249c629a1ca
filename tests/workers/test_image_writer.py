"""workers.pipeline.common.ImageWriter: a stage's images stored in the background, every one before the stage
returns, errors raised, callbacks on the stage's thread."""

from __future__ import annotations

import io
import threading

import pytest
from PIL import Image

from workers.pipeline import common


class Recording:
    def __init__(self, fail_on: str = "") -> None:
        self.objects: dict[str, bytes] = {}
        self.threads: set[str] = set()
        self.fail_on = fail_on

    def put(self, key: str, data: bytes, content_type: str) -> None:
        if key == self.fail_on:
            raise OSError(f"disk full writing {key}")
        self.threads.add(threading.current_thread().name)
        self.objects[key] = data


def _image(shade: int) -> Image.Image:
    return Image.new("RGB", (64, 48), (shade, 255 - shade, 128))


def test_every_image_is_stored_before_the_block_ends(monkeypatch: pytest.MonkeyPatch) -> None:
    storage = Recording()
    monkeypatch.setattr(common, "get_storage", lambda: storage)
    stored_on: list[tuple[str, str, int]] = []
    with common.ImageWriter(backlog=3) as writer:
        for i in range(10):  # more than the backlog: the writer waits for older writes instead of piling up
            key = writer.put_png(
                f"c/{i}.png",
                _image(i * 20),
                lambda data, i=i: stored_on.append((f"c/{i}.png", threading.current_thread().name, len(data))),
            )
            assert key == f"c/{i}.png"
            assert len(writer._pending) <= 3
    assert sorted(storage.objects) == sorted(f"c/{i}.png" for i in range(10))
    assert all(name.startswith("onbrand-store") for name in storage.threads)  # encoded and stored off the stage
    assert {name for _, name, _ in stored_on} == {threading.current_thread().name}  # callbacks on the stage's
    assert [key for key, *_ in stored_on] == [f"c/{i}.png" for i in range(10)]
    assert Image.open(io.BytesIO(storage.objects["c/3.png"])).getpixel((0, 0)) == (60, 195, 128)  # lossless
    assert all(size == len(storage.objects[key]) for key, _, size in stored_on)


def test_a_failed_write_fails_the_stage(monkeypatch: pytest.MonkeyPatch) -> None:
    storage = Recording(fail_on="c/2.png")
    monkeypatch.setattr(common, "get_storage", lambda: storage)
    with pytest.raises(OSError, match="disk full"), common.ImageWriter() as writer:
        for i in range(4):
            writer.put_png(f"c/{i}.png", _image(i))

"""A loss curve as a PNG, with nothing but zlib and struct (no plotting dependency).

Grey: the training loss per step; blue: its moving average; red dots: the
validation loss.  The frame spans [0, last step] x [min loss, max loss]; the
ranges are written to ``train_log.jsonl`` and the model card, not into the image.
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

WHITE, GREY, BLUE, RED, BLACK, LIGHT = (255, 255, 255), (190, 190, 190), (31, 87, 180), (210, 40, 40), (0, 0, 0), (235, 235, 235)


class Canvas:
    def __init__(self, width: int, height: int):
        self.w, self.h = width, height
        self.px = bytearray(bytes(WHITE) * (width * height))

    def set(self, x: int, y: int, color) -> None:
        if 0 <= x < self.w and 0 <= y < self.h:
            o = (y * self.w + x) * 3
            self.px[o:o + 3] = bytes(color)

    def line(self, x0: int, y0: int, x1: int, y1: int, color, width: int = 1) -> None:
        dx, dy = abs(x1 - x0), -abs(y1 - y0)
        sx, sy = (1 if x0 < x1 else -1), (1 if y0 < y1 else -1)
        err = dx + dy
        r = width // 2
        while True:
            for ox in range(-r, width - r):
                for oy in range(-r, width - r):
                    self.set(x0 + ox, y0 + oy, color)
            if x0 == x1 and y0 == y1:
                break
            e2 = 2 * err
            if e2 >= dy:
                err += dy
                x0 += sx
            if e2 <= dx:
                err += dx
                y0 += sy

    def dot(self, x: int, y: int, color, r: int = 3) -> None:
        for ox in range(-r, r + 1):
            for oy in range(-r, r + 1):
                if ox * ox + oy * oy <= r * r:
                    self.set(x + ox, y + oy, color)

    def png(self) -> bytes:
        raw = b"".join(b"\x00" + bytes(self.px[y * self.w * 3:(y + 1) * self.w * 3]) for y in range(self.h))

        def chunk(kind: bytes, data: bytes) -> bytes:
            return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

        return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", self.w, self.h, 8, 2, 0, 0, 0))
                + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b""))


def ema(values: list[float], alpha: float) -> list[float]:
    out, cur = [], None
    for v in values:
        cur = v if cur is None else alpha * v + (1 - alpha) * cur
        out.append(cur)
    return out


def loss_png(path: str | Path, train: list[tuple[int, float]], val: list[tuple[int, float]] = (),
             width: int = 640, height: int = 400) -> None:
    """Draw the curves and write ``path``; an empty history gives an empty frame."""
    c = Canvas(width, height)
    left, right, top, bottom = 40, width - 15, 15, height - 30
    points = list(train) + list(val)
    if points:
        xmax = max(1, max(s for s, _ in points))
        lo, hi = min(v for _, v in points), max(v for _, v in points)
        if hi - lo < 1e-6:
            lo, hi = lo - 0.5, hi + 0.5

        def xy(step: float, loss: float) -> tuple[int, int]:
            x = left + round((right - left) * step / xmax)
            y = bottom - round((bottom - top) * (loss - lo) / (hi - lo))
            return x, y

        for k in range(1, 5):  # horizontal grid at quarters
            y = bottom - round((bottom - top) * k / 4)
            c.line(left, y, right, y, LIGHT)
        steps = [s for s, _ in train]
        for series, color, w in ((list(zip(steps, [v for _, v in train])), GREY, 1),
                                 (list(zip(steps, ema([v for _, v in train], 0.05))), BLUE, 2)):
            for (s0, v0), (s1, v1) in zip(series, series[1:]):
                c.line(*xy(s0, v0), *xy(s1, v1), color, w)
        for s, v in val:
            c.dot(*xy(s, v), RED)
    c.line(left, top, left, bottom, BLACK)
    c.line(left, bottom, right, bottom, BLACK)
    Path(path).write_bytes(c.png())

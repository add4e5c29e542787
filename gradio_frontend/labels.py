"""Where to put each face's number on the picture so that no two numbers overlap (pure geometry, no drawing)."""

from __future__ import annotations

from collections.abc import Sequence

Rect = tuple[float, float, float, float]


def _overlaps(a: Rect, b: Rect) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def _clamp(x: float, y: float, w: float, h: float, size: tuple[int, int]) -> Rect:
    x = min(max(0.0, x), max(0.0, size[0] - w))
    y = min(max(0.0, y), max(0.0, size[1] - h))
    return (x, y, x + w, y + h)


def place_labels(
    boxes: Sequence[Sequence[float]], sizes: Sequence[tuple[float, float]], image_size: tuple[int, int]
) -> list[Rect]:
    """One rectangle per box for a label of the given ``(width, height)``, none overlapping another.

    Placed in order (the most prominent face first, so it gets its preferred spot): the box's top-left
    corner inside, then above it, below it, the top-right corner, either side; when all of those are taken,
    the free spot nearest to the corner on a grid of half a label. Every spot is kept within the image;
    only a picture with no free spot left at all (far more labels than fit) gets an overlap.
    """
    placed: list[Rect] = []
    for (x0, y0, x1, y1), (w, h) in zip(boxes, sizes, strict=True):
        candidates = [(x0, y0), (x0, y0 - h), (x0, y1), (x1 - w, y0), (x0 - w, y0), (x1, y0), (x1 - w, y1 - h)]
        spot = next(
            (
                rect
                for rect in (_clamp(x, y, w, h, image_size) for x, y in candidates)
                if not any(_overlaps(rect, other) for other in placed)
            ),
            None,
        )
        if spot is None:
            spot = _nearest_free(x0, y0, w, h, image_size, placed)
        placed.append(spot)
    return placed


def _nearest_free(x0: float, y0: float, w: float, h: float, size: tuple[int, int], placed: list[Rect]) -> Rect:
    step_x, step_y = max(1.0, w / 2), max(1.0, h / 2)
    grid = [
        _clamp(i * step_x, j * step_y, w, h, size)
        for i in range(int(size[0] // step_x) + 1)
        for j in range(int(size[1] // step_y) + 1)
    ]
    free = [rect for rect in grid if not any(_overlaps(rect, other) for other in placed)]
    if not free:
        return _clamp(x0, y0, w, h, size)
    return min(free, key=lambda r: (r[0] - x0) ** 2 + (r[1] - y0) ** 2)

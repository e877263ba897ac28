"""The demo's product pictures: each family's shape in its colour, darker and larger along the family order."""

from __future__ import annotations

import colorsys
import math
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from pipeline.data.sources.demo.catalogue import DemoCatalogue, rng_stream
from pipeline.progress import progress_bar

if TYPE_CHECKING:
    from PIL import Image

SHAPES = ("circle", "square", "triangle", "diamond", "star", "cross", "ring", "hexagon")


def family_style(family: int) -> tuple[float, str]:
    """(hue in [0, 1), shape name) of a family: hues spread by the golden ratio, shapes in turn."""
    return (family * 0.6180339887) % 1.0, SHAPES[family % len(SHAPES)]


def _shape_points(shape: str, cx: float, cy: float, r: float) -> list[tuple[float, float]]:
    corners = {"triangle": (3, -90.0), "diamond": (4, 0.0), "hexagon": (6, 0.0)}
    if shape in corners:
        k, start = corners[shape]
        return [(cx + r * math.cos(math.radians(start + 360 * j / k)), cy + r * math.sin(math.radians(start + 360 * j / k)))
                for j in range(k)]  # fmt: skip
    if shape == "star":
        return [(cx + (r if j % 2 == 0 else r * 0.45) * math.cos(math.radians(-90 + 36 * j)),
                 cy + (r if j % 2 == 0 else r * 0.45) * math.sin(math.radians(-90 + 36 * j))) for j in range(10)]  # fmt: skip
    raise ValueError(shape)


def render_item_image(
    family: int, shade: float, size: int, jitter: tuple[float, float] = (0.0, 0.0)
) -> Image.Image:
    """A small product picture: the family's shape in the family's colour on a light background.

    Args:
        family: family index (fixes hue and shape).
        shade: 0..1 position along the family order: darker and larger towards 1.
        size: image side in pixels.
        jitter: centre offset in fractions of the side.

    Returns:
        A PIL RGB image.
    """
    from PIL import Image, ImageDraw  # only needed when writing images

    hue, shape = family_style(family)
    colour = tuple(int(round(255 * c)) for c in colorsys.hsv_to_rgb(hue, 0.8, 0.95 - 0.45 * shade))
    img = Image.new("RGB", (size, size), (246, 244, 240))
    draw = ImageDraw.Draw(img)
    cx, cy = size * (0.5 + jitter[0]), size * (0.5 + jitter[1])
    r = size * (0.24 + 0.14 * shade)
    box = (cx - r, cy - r, cx + r, cy + r)
    if shape == "circle":
        draw.ellipse(box, fill=colour)
    elif shape == "square":
        draw.rectangle((cx - 0.85 * r, cy - 0.85 * r, cx + 0.85 * r, cy + 0.85 * r), fill=colour)
    elif shape == "ring":
        draw.ellipse(box, outline=colour, width=max(2, int(r / 2.5)))
    elif shape == "cross":
        w = r / 2.8
        draw.rectangle((cx - w, cy - r, cx + w, cy + r), fill=colour)
        draw.rectangle((cx - r, cy - w, cx + r, cy + w), fill=colour)
    else:
        draw.polygon(_shape_points(shape, cx, cy, r), fill=colour)
    return img


def write_images(cat: DemoCatalogue, images_dir: Path, size: int, seed: int = 0) -> None:
    """One PNG per item, ``images_dir/<asin>.png``."""
    rng = rng_stream(seed, 5)
    images_dir.mkdir(parents=True, exist_ok=True)
    jitter = rng.uniform(-0.06, 0.06, size=(cat.n_items, 2))
    shade = cat.position / np.maximum(cat.family_size[cat.family] - 1, 1)
    for j in progress_bar(range(cat.n_items), desc="demo images", unit=" img", mininterval=2.0, disable=None):
        img = render_item_image(
            int(cat.family[j]), float(shade[j]), size, (float(jitter[j, 0]), float(jitter[j, 1]))
        )
        path = images_dir / f"{cat.asin[j]}.png"
        try:
            img.save(path, format="PNG")
        except OSError as err:  # a full disk: write() names no file, so name the image
            if err.filename is not None:
                raise
            raise OSError(err.errno, f"cannot write ({err.strerror or err})", str(path)) from err

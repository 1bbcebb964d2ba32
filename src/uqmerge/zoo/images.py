"""Drawing primitives for the synthetic task images: a black canvas and flat, aliased shapes.

Shapes are drawn without anti-aliasing, so every pixel is either the background or exactly the
shape's colour; tests (and users) can check an image's answer by reading pixels back.
"""

from __future__ import annotations

from PIL import Image, ImageDraw

from uqmerge.core.errors import ConfigError

IMAGE_SIZE = 32
BACKGROUND: tuple[int, int, int] = (0, 0, 0)

# Three neighbouring warm hues and green: at any brightness each is told apart by its channel ratios
# (green: G > R; red, orange and yellow: G/R about 0.18, 0.55 and 0.91), not by which channels are high.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "orange": (235, 130, 30),
    "yellow": (235, 215, 40),
    "green": (40, 190, 60),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "cross")


def new_canvas(size: int = IMAGE_SIZE) -> Image.Image:
    """A ``size``×``size`` RGB image filled with :data:`BACKGROUND`."""
    return Image.new("RGB", (size, size), BACKGROUND)


def draw_shape(image: Image.Image, shape: str, x0: int, y0: int, side: int, colour: tuple[int, int, int]) -> None:
    """Draw ``shape`` filling the square box with top-left ``(x0, y0)`` and edge ``side`` pixels.

    square: the whole box; circle: the inscribed ellipse; triangle: apex at the top centre, base on
    the bottom edge; cross: a plus sign with arms about ``side / 3`` wide. The box must lie inside
    the image.
    """
    width, height = image.size
    if side < 1 or x0 < 0 or y0 < 0 or x0 + side > width or y0 + side > height:
        raise ConfigError(f"shape box ({x0}, {y0}, side {side}) does not fit a {width}×{height} image")
    draw = ImageDraw.Draw(image)
    x1, y1 = x0 + side - 1, y0 + side - 1
    if shape == "square":
        draw.rectangle((x0, y0, x1, y1), fill=colour)
    elif shape == "circle":
        draw.ellipse((x0, y0, x1, y1), fill=colour)
    elif shape == "triangle":
        draw.polygon([(x0 + (side - 1) // 2, y0), (x0, y1), (x1, y1)], fill=colour)
    elif shape == "cross":
        arm = max(1, round(side / 3))
        offset = (side - arm) // 2
        draw.rectangle((x0, y0 + offset, x1, y0 + offset + arm - 1), fill=colour)
        draw.rectangle((x0 + offset, y0, x0 + offset + arm - 1, y1), fill=colour)
    else:
        raise ConfigError(f"unknown shape {shape!r}; known shapes: {', '.join(SHAPES)}")

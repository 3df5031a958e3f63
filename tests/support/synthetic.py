"""A synthetic YOLOv5-format soccer dataset (simple coloured shapes per class) for tests and benchmarks."""

from __future__ import annotations

import io
import random
import zipfile
from pathlib import Path

from PIL import Image, ImageDraw

CLASS_NAMES = ["ball", "goalkeeper", "player", "referee"]
# One look per class, so a model can learn it: (shape, colour).
_LOOKS = [
    ("ellipse", (250, 250, 250)),  # ball: white disc
    ("rectangle", (255, 200, 0)),  # goalkeeper: yellow box
    ("rectangle", (220, 30, 30)),  # player: red box
    ("triangle", (20, 20, 20)),  # referee: black triangle
]


def _draw_object(draw: ImageDraw.ImageDraw, cls: int, box: tuple[int, int, int, int]) -> None:
    shape, colour = _LOOKS[cls]
    x1, y1, x2, y2 = box
    if shape == "ellipse":
        draw.ellipse(box, fill=colour)
    elif shape == "rectangle":
        draw.rectangle(box, fill=colour)
    else:
        draw.polygon([((x1 + x2) // 2, y1), (x2, y2), (x1, y2)], fill=colour)


def _make_image(rng: random.Random, size: int, hard: bool = False) -> tuple[Image.Image, list[str]]:
    image = Image.new("RGB", (size, size), (40, 140, 60))  # pitch green
    draw = ImageDraw.Draw(image)
    if hard:  # a busier camera: pitch markings and specks that are no object
        for _ in range(rng.randint(4, 8)):
            x, y = rng.randrange(size), rng.randrange(size)
            draw.line((x, y, x + rng.randint(-size // 3, size // 3), y + rng.randint(-size // 3, size // 3)),
                      fill=(200, 220, 200), width=1)
    lines = []
    # Smaller, farther players (4-8 px in a 64 px image: near what a stride-8 detector resolves).
    low, high = (size // 16, size // 8) if hard else (size // 6, size // 3)
    for _ in range(rng.randint(3, 6) if hard else rng.randint(1, 3)):
        cls = rng.randrange(len(CLASS_NAMES))
        w = rng.randint(low, high)
        h = rng.randint(low, high)
        x1 = rng.randint(0, size - w - 1)
        y1 = rng.randint(0, size - h - 1)
        _draw_object(draw, cls, (x1, y1, x1 + w, y1 + h))
        xc, yc = (x1 + w / 2) / size, (y1 + h / 2) / size
        lines.append(f"{cls} {xc:.6f} {yc:.6f} {w / size:.6f} {h / size:.6f}")
    return image, lines


def make_dataset(root: Path, *, n_train: int = 16, n_valid: int = 4, n_test: int = 4,
                 size: int = 64, seed: int = 0, hard: bool = False, prefix: str = "") -> Path:
    """Write a YOLOv5-format dataset (Roboflow's yolov5pytorch layout) under `root`; return `root`.

    `hard`: more, smaller objects among distracting lines (a harder exam for the same classes);
    `prefix` names the files, so two sets can share a folder (a project that grew)."""
    root = Path(root)
    rng = random.Random(seed)
    for split, count in (("train", n_train), ("valid", n_valid), ("test", n_test)):
        images, labels = root / split / "images", root / split / "labels"
        images.mkdir(parents=True, exist_ok=True)
        labels.mkdir(parents=True, exist_ok=True)
        for i in range(count):
            image, lines = _make_image(rng, size, hard)
            image.save(images / f"{prefix}{split}_{i:04d}.jpg", quality=95)
            (labels / f"{prefix}{split}_{i:04d}.txt").write_text("\n".join(lines) + "\n")
    names = ", ".join(CLASS_NAMES)
    (root / "data.yaml").write_text(
        "train: ../train/images\nval: ../valid/images\ntest: ../test/images\n\n"
        f"nc: {len(CLASS_NAMES)}\nnames: [{names}]\n"
    )
    return root


def zip_dataset(directory: Path) -> bytes:
    """The folder as a zip (paths relative to it), like a Roboflow export download."""
    directory = Path(directory)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for path in sorted(directory.rglob("*")):
            if path.is_file():
                archive.write(path, path.relative_to(directory).as_posix())
    return buffer.getvalue()

"""Contact sheets: a grid of retrieved faces with a label under each.

Used by ``clipprobe retrieve --grid``, ``clipprobe figures --word`` and the HTML
report. A face that could not be read is passed as ``None`` and drawn as a grey
placeholder, so one unreadable file does not lose the sheet.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Callable, Sequence

from clipprobe._io import atomic_path
from clipprobe.errors import ClipprobeError

log = logging.getLogger(__name__)

MSG_LENGTHS = "contact sheet needs one label per image: got {n_images} images and {n_labels} labels"
MSG_BAD_SIZE = "contact sheet {what} must be a positive integer, got {value!r}"

BACKGROUND = (255, 255, 255)
PLACEHOLDER = (215, 215, 215)
TEXT = (30, 30, 30)
TITLE_COLOR = (0, 0, 0)
PAD = 4


def _font(size: int):
    from PIL import ImageFont

    return ImageFont.load_default(size=size)


def _fit_text(draw, text: str, font, width: int) -> str:
    """``text`` shortened with an ellipsis until it fits ``width`` pixels."""
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength(text + "…", font=font) > width:
        text = text[:-1]
    return text + "…"


def contact_sheet(images: Sequence, labels: Sequence[str], *, columns: int = 10, thumb: int = 96,
                  title: str | None = None):
    """Return a PIL image: ``images`` in rows of ``columns``, each ``thumb`` px square.

    Each label is drawn under its face; a label may hold several lines
    separated by ``"\\n"`` (e.g. rank, then group labels), and lines too wide
    for the thumbnail are shortened with an ellipsis. ``None`` images are drawn
    as grey placeholders. Images are centre-cropped to a square.
    """
    from PIL import Image, ImageDraw, ImageOps

    if len(images) != len(labels):
        raise ClipprobeError(MSG_LENGTHS.format(n_images=len(images), n_labels=len(labels)))
    for what, value in (("columns", columns), ("thumb", thumb)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ClipprobeError(MSG_BAD_SIZE.format(what=what, value=value))

    font_size = max(8, min(13, thumb // 8))
    font = _font(font_size)
    title_font = _font(font_size + 3)
    line_h = font_size + 3
    n_lines = max((len(str(label).split("\n")) for label in labels), default=0)
    cell_w = thumb + PAD
    cell_h = thumb + PAD + n_lines * line_h + (PAD if n_lines else 0)
    n = len(images)
    cols = max(1, min(columns, n)) if n else 1
    rows = (n + cols - 1) // cols if n else 0
    title_h = (font_size + 3) + 2 * PAD if title else 0
    width = max(cols * cell_w + PAD, 160 if title else 1)
    height = title_h + rows * cell_h + PAD
    sheet = Image.new("RGB", (width, max(height, title_h + PAD, 1)), BACKGROUND)
    draw = ImageDraw.Draw(sheet)
    if title:
        draw.text((PAD, PAD), _fit_text(draw, title, title_font, width - 2 * PAD), font=title_font,
                  fill=TITLE_COLOR)
    for i, (img, label) in enumerate(zip(images, labels)):
        x = PAD + (i % cols) * cell_w
        y = title_h + PAD + (i // cols) * cell_h
        if img is None:
            draw.rectangle((x, y, x + thumb - 1, y + thumb - 1), fill=PLACEHOLDER)
            draw.text((x + thumb / 2, y + thumb / 2), "missing", font=font, fill=TEXT, anchor="mm")
        else:
            face = ImageOps.fit(img.convert("RGB"), (thumb, thumb), method=Image.Resampling.BICUBIC)
            sheet.paste(face, (x, y))
        for j, line in enumerate(str(label).split("\n")):
            draw.text((x, y + thumb + 2 + j * line_h), _fit_text(draw, line, font, thumb), font=font, fill=TEXT)
    return sheet


def save_image(image, path, *, quality: int = 88) -> Path:
    """Write a PIL image atomically, the format from the suffix (.png, .jpg, .webp; none: PNG)."""
    path = Path(path)
    fmt = {".jpg": "JPEG", ".jpeg": "JPEG", ".png": "PNG", ".webp": "WEBP", "": "PNG"}.get(path.suffix.lower())
    if fmt is None:
        raise ClipprobeError(f"contact sheet {path}: unknown image suffix {path.suffix!r}; use .png, .jpg or .webp")
    with atomic_path(path, suffix=path.suffix) as tmp:
        image.save(tmp, format=fmt, **({"quality": quality} if fmt != "PNG" else {}))
    return path


def save_contact_sheet(path, images: Sequence, labels: Sequence[str], *, columns: int = 10, thumb: int = 96,
                       title: str | None = None, quality: int = 88) -> Path:
    """Draw a contact sheet and write it atomically (format from the suffix: .png, .jpg, .webp)."""
    return save_image(contact_sheet(images, labels, columns=columns, thumb=thumb, title=title), path,
                      quality=quality)


class DatasetImageLoader:
    """Open images by their path relative to a dataset root; count failures.

    Calling the loader returns a PIL image, or ``None`` for a file that is
    missing, outside the root or unreadable (counted in ``failed``, logged once
    per file at debug level).
    """

    def __init__(self, root) -> None:
        self.root = Path(root).resolve()
        self.failed = 0
        self.loaded = 0

    def __call__(self, relative: str):
        from PIL import Image, UnidentifiedImageError

        path = (self.root / str(relative)).resolve()
        if not path.is_relative_to(self.root):
            log.debug("image %r lies outside the dataset root %s", relative, self.root)
            self.failed += 1
            return None
        try:
            with Image.open(path) as img:
                img.load()
                self.loaded += 1
                return img.copy()
        except (OSError, UnidentifiedImageError, ValueError) as err:
            log.debug("cannot read image %s: %s", path, err)
            self.failed += 1
            return None


def load_images(loader: Callable, files: Sequence[str]) -> tuple[list, int]:
    """``loader(file)`` for each file; a file whose loader fails becomes ``None``.

    Returns the images and the number of failures. Any error of the loader (a
    missing key, an unreadable file) is counted and logged at debug level, so
    one bad face never loses a sheet.
    """
    images, failed = [], 0
    for name in files:
        try:
            img = loader(name)
        except Exception as err:  # a caller's loader may raise anything for one bad file
            log.debug("cannot load image %r: %s: %s", name, type(err).__name__, err)
            img = None
        failed += img is None
        images.append(img)
    return images, failed


def dataset_loader(run: dict) -> DatasetImageLoader | None:
    """An image loader for the dataset root recorded in a report's run.json, or None.

    None when run.json records no root or the root is not a folder on this machine.
    """
    root = (run.get("dataset") or {}).get("root") if isinstance(run.get("dataset"), dict) else None
    if not root or not os.path.isdir(root):
        return None
    return DatasetImageLoader(root)


def word_sheet(report, word: str, *, attribute: str | None = None, image_loader: Callable | None = None,
               label_for: Callable[[str], str] | None = None, n: int | None = None, columns: int = 10,
               thumb: int = 96):
    """Contact sheet of one word's top-k faces from a report, in rank order.

    Labels are ``#rank`` then ``label_for(file)`` when given (e.g. the face's
    group labels). Returns the PIL image; raises when the word is not in the
    report.
    """
    from clipprobe.errors import one_of

    words = report.words
    rows = words[words["word"] == word]
    if rows.empty:
        raise one_of(word, sorted(set(words["word"])), "word")
    if attribute is not None:
        rows = rows[rows["attribute"] == attribute]
        if rows.empty:
            raise one_of(attribute, sorted(set(words.loc[words["word"] == word, "attribute"])), "attribute")
    files = [str(f) for f in rows.iloc[0]["top_files"]]
    if n is not None:
        files = files[:n]
    loader = image_loader or dataset_loader(report.run)
    if loader is None:
        raise ClipprobeError(f"no images for word {word!r}: the report's dataset root is not available here")
    images, failed = load_images(loader, files)
    if failed:
        log.warning("%d of %d faces of %r could not be read", failed, len(files), word)
    labels = [f"#{i + 1}" + (f"\n{label_for(f)}" if label_for else "") for i, f in enumerate(files)]
    return contact_sheet(images, labels, columns=columns, thumb=thumb, title=f"{word}: top {len(files)} faces")

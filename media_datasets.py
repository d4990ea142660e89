"""Image and video datasets for ``vistok-eval`` and ``vistok-tokenize``.

DATA is a local folder (``datasets``' ``imagefolder`` when it holds image files, ``videofolder`` when it holds only
video files) or a Hub dataset id. The media column is found by its feature type (``datasets.Image`` or
``datasets.Video``). Images are decoded here, one row at a time, so an unreadable file is named. Video cells are read
without decoding (``Video(decode=False)``: ``datasets`` decodes videos with torchcodec, which needs system FFmpeg) and
handed to the model's video processor as file paths, which it decodes with PyAV; a cell that holds only bytes (a
parquet dataset with embedded videos) is written to a temporary file first (`video_files`).

```python
>>> from vistok.media_datasets import iter_examples, load_media_dataset
>>> dataset, column, split, kind = load_media_dataset("path/to/clips", max_items=8)      # kind: "image" | "video"
>>> for example in iter_examples(dataset, column, kind):
...     example.row, example.name, example.value       # dataset index, file name, PIL image or video cell
```
"""

import contextlib
import io
import logging
import os
import tempfile
from dataclasses import dataclass

from PIL import Image


logger = logging.getLogger("vistok.media_datasets")

IMAGE, VIDEO = "image", "video"
VIDEO_EXTENSIONS = (".mp4", ".mkv", ".avi", ".mov", ".mpeg", ".webm")


def _looks_like_path(data: str) -> bool:
    return data.startswith(("/", "./", "../", "~", ".\\")) or "\\" in data or data.count("/") > 1 or data in (".", "..")


def folder_media_kind(folder: str) -> str | None:
    """``"image"`` when `folder` (or a sub-folder) holds an image file, else ``"video"`` when it holds a video file
    (extensions of ``VIDEO_EXTENSIONS``), else None."""
    image_extensions = {ext.lower() for ext in Image.registered_extensions()}
    found_video = False
    for _, _, files in os.walk(folder):
        extensions = {os.path.splitext(name)[1].lower() for name in files}
        if extensions & image_extensions:
            return IMAGE
        found_video = found_video or bool(extensions & set(VIDEO_EXTENSIONS))
    return VIDEO if found_video else None


def _media_kind(feature) -> str | None:
    import datasets

    if isinstance(feature, datasets.Image):
        return IMAGE
    video_feature = getattr(datasets, "Video", None)  # datasets >= 3.2
    if video_feature is not None and isinstance(feature, video_feature):
        return VIDEO
    return None


def find_media_column(features, column: str | None = None) -> tuple[str, str]:
    """`(name, kind)` of the column holding images (`datasets.Image`) or videos (`datasets.Video`): `column` when
    given (checked), else the first such column. `kind` is ``"image"`` or ``"video"``."""
    if features is None:
        raise ValueError("the dataset does not declare its features, so its image or video column is unknown.")
    if column is not None:
        if column not in features:
            raise ValueError(f"image column {column!r} not found (nor a video column of that name); the dataset has "
                             f"columns {list(features)}.")
        kind = _media_kind(features[column])
        if kind is None:
            raise ValueError(f"column {column!r} is a {type(features[column]).__name__}, not a `datasets.Image` or "
                             "`datasets.Video` feature.")
        return column, kind
    for name, feature in features.items():
        if _media_kind(feature) is not None:
            return name, _media_kind(feature)
    found = {name: type(feature).__name__ for name, feature in features.items()}
    raise ValueError(f"the dataset has no image column (a `datasets.Image` feature) or video column (a "
                     f"`datasets.Video` feature); got columns {found}.")


def find_image_column(features, image_column: str | None = None) -> str:
    """Name of the column holding images (`datasets.Image` feature); `image_column` checks a user's choice."""
    import datasets

    if features is None:
        if image_column is not None:
            return image_column
        raise ValueError("the dataset does not declare its features, so the image column is unknown; pass it with "
                         "--image-column.")
    if image_column is not None:
        if image_column not in features:
            raise ValueError(f"image column {image_column!r} not found; the dataset has columns {list(features)}.")
        return image_column
    image_columns = [name for name, feature in features.items() if isinstance(feature, datasets.Image)]
    if not image_columns:
        found = {name: type(feature).__name__ for name, feature in features.items()}
        raise ValueError(f"the dataset has no image column (a `datasets.Image` feature); got columns {found}.")
    return image_columns[0]


def load_media_dataset(
    data: str,
    split: str | None = None,
    max_items: int | None = None,
    column: str | None = None,
    streaming: bool = False,
):
    """Loads an image or video folder, or a Hub dataset, and finds its media column.

    Args:
        data: a local folder (`load_dataset("imagefolder" | "videofolder", data_dir=data)`; sub-folders become labels
            or splits as `datasets` defines) or a Hub dataset id (`load_dataset(data, split=split)`).
        split: the split to read; default: `validation`, else `test`, else `train`, else the first split.
        max_items: keep only the first `max_items` rows.
        column: the column to read; default: the first `datasets.Image` or `datasets.Video` column.
        streaming: stream a Hub dataset instead of downloading it whole (useful with `max_items`).

    Returns: `(dataset, column, split, kind)`; `kind` is ``"image"`` or ``"video"``. Video columns are cast to
    `Video(decode=False)`: their cells are `{"path", "bytes"}` dicts (see `video_files`). With a `datasets` that
    has no `Video` feature (< 3.2), a video folder becomes a `video` column of file paths.
    """
    import datasets

    if max_items is not None and max_items < 1:
        raise ValueError(f"max_images must be a positive integer, got {max_items}.")
    expanded = os.path.expanduser(data)
    if os.path.isdir(expanded):
        kind = folder_media_kind(expanded)
        if kind is None:
            raise ValueError(f"no image files found in folder {data!r} (or its sub-folders), and no video files "
                             f"({', '.join(VIDEO_EXTENSIONS)}).")
        path, kwargs = f"{kind}folder", {"data_dir": expanded}
    elif os.path.exists(expanded):
        raise ValueError(f"DATA must be an image folder or a Hub dataset id, got the file {data!r}.")
    elif _looks_like_path(data):
        raise ValueError(f"image folder {data!r} does not exist.")
    else:
        path, kwargs = data, {}

    if path == "videofolder" and getattr(datasets, "Video", None) is None:  # datasets < 3.2: a column of paths
        return _video_paths_dataset(expanded, split, max_items)
    loaded = datasets.load_dataset(path, split=split, streaming=streaming, **kwargs)
    if split is None:
        names = list(loaded.keys())
        split = next((name for name in ("validation", "test", "train") if name in names), names[0])
        loaded = loaded[split]
    column, kind = find_media_column(loaded.features, column)
    if kind == VIDEO:
        loaded = loaded.cast_column(column, datasets.Video(decode=False))
    if max_items is not None:
        loaded = loaded.take(max_items) if streaming else loaded.select(range(min(max_items, len(loaded))))
    if not streaming and len(loaded) == 0:
        raise ValueError(f"split {split!r} of {data!r} has no rows.")
    return loaded, column, split, kind


def _video_paths_dataset(folder: str, split: str | None, max_items: int | None):
    """The video files under `folder` (sorted) as a `video` column of paths, for `datasets` without `Video`."""
    import datasets

    paths = sorted(os.path.join(root, name) for root, _, files in os.walk(folder) for name in files
                   if os.path.splitext(name)[1].lower() in VIDEO_EXTENSIONS)
    dataset = datasets.Dataset.from_dict({"video": paths[:max_items]})
    return dataset, "video", split or "train", VIDEO


def load_image_dataset(
    data: str,
    split: str | None = None,
    max_images: int | None = None,
    image_column: str | None = None,
    streaming: bool = False,
):
    """`load_media_dataset` for images only: returns `(dataset, image_column, split)`; a video dataset is a
    ValueError."""
    dataset, column, split, kind = load_media_dataset(data, split, max_images, image_column, streaming)
    if kind != IMAGE:
        raise ValueError(f"{data!r} holds videos (column {column!r}); expected images.")
    return dataset, column, split


@dataclass
class Example:
    """One dataset row: `row` (its index in the split), `name` (file name when known) and `value` (a PIL image, or
    a video cell: a path or a `{"path", "bytes"}` dict)."""

    row: int
    name: str | None
    value: object


def _cell_name(value) -> str | None:
    path = value.get("path") if isinstance(value, dict) else value if isinstance(value, str) else None
    return os.path.basename(path) if path else None


def iter_examples(dataset, column: str, kind: str = IMAGE, skip_corrupt: bool = False, skipped: list | None = None):
    """Yields an `Example` per row of `dataset[column]`. Images are decoded here, so an unreadable one is named: a
    ValueError with its path, or (`skip_corrupt`) a warning, its name appended to `skipped`, and the next row. Video
    cells are yielded as they are (decoded later by the video processor)."""
    import datasets

    features = getattr(dataset, "features", None)
    if kind == IMAGE and features is not None and isinstance(features.get(column), datasets.Image):
        dataset = dataset.cast_column(column, datasets.Image(decode=False))
    for index, row in enumerate(dataset):
        value = row[column]
        if kind == VIDEO or not isinstance(value, dict):
            yield Example(index, _cell_name(value) or getattr(value, "filename", None) or None, value)
            continue
        name = value.get("path") or f"row {index}"
        try:
            image = Image.open(io.BytesIO(value["bytes"]) if value.get("bytes") else value["path"])
            image.load()
        except Exception as error:  # PIL.UnidentifiedImageError, OSError on truncated files, ...
            if not skip_corrupt:
                raise ValueError(
                    f"could not read image {name} (row {index}): {error}. Fix or remove the file, or pass "
                    "--skip-corrupt to skip unreadable images."
                ) from None
            logger.warning("skipping unreadable image %s (row %d): %s", name, index, error)
            if skipped is not None:
                skipped.append(name)
            continue
        image.filename = value.get("path") or ""
        yield Example(index, _cell_name(value), image)


def iter_images(dataset, column: str, skip_corrupt: bool = False, skipped: list | None = None):
    """Yields the PIL images of `dataset[column]` (see `iter_examples`)."""
    for example in iter_examples(dataset, column, IMAGE, skip_corrupt, skipped):
        yield example.value


@contextlib.contextmanager
def video_files(cells):
    """Local file paths for video cells (paths, or `{"path", "bytes"}` dicts of `Video(decode=False)`): a cell with
    bytes is written to a temporary file (same extension), removed on exit; a path is used as it is."""
    paths, temporary = [], []
    try:
        for cell in cells:
            if isinstance(cell, str):
                paths.append(cell)
                continue
            if not isinstance(cell, dict) or not (cell.get("bytes") or cell.get("path")):
                raise ValueError(f"expected a video file path or a {{'path', 'bytes'}} dict, got {type(cell).__name__}.")
            if cell.get("bytes"):
                suffix = os.path.splitext(cell.get("path") or "")[1] or ".mp4"
                handle, path = tempfile.mkstemp(suffix=suffix, prefix="vistok-video-")
                with os.fdopen(handle, "wb") as file:
                    file.write(cell["bytes"])
                temporary.append(path)
                paths.append(path)
            else:
                paths.append(cell["path"])
        yield paths
    finally:
        for path in temporary:
            os.unlink(path)


__all__ = [
    "Example",
    "IMAGE",
    "VIDEO",
    "find_image_column",
    "find_media_column",
    "folder_media_kind",
    "iter_examples",
    "iter_images",
    "load_image_dataset",
    "load_media_dataset",
    "video_files",
]

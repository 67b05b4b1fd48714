"""Data sets, never downloaded: scikit-learn's digits (shipped), CIFAR-10 and ImageNet from
a local path.

Every split is held as a uint8 image tensor plus int64 labels, so it can sit on the
training device and be normalised and augmented there (decoding files every epoch would
dominate an episode on a GPU). HAQ's search uses a split of the *training*
set: a search-train part to finetune on and a held-out search-val part to reward on
(Section 4: 20k / 10k images of ImageNet); the real validation set is the test split.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import pickle
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

log = logging.getLogger(__name__)

DATASETS = ("digits", "cifar10", "imagenet", "imagenet100", "folder")
IMAGE_SUFFIXES = (".jpeg", ".jpg", ".png", ".bmp", ".webp")


@dataclasses.dataclass
class ImageSplit:
    """uint8 images (N, C, H, W) and int64 labels (N,), on any device."""

    images: torch.Tensor
    labels: torch.Tensor

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.ndim != 4:
            raise ValueError(f"images must be a uint8 (N, C, H, W) tensor, got {self.images.dtype} {tuple(self.images.shape)}")
        if self.labels.shape != (self.images.shape[0],):
            raise ValueError(f"labels must have shape ({self.images.shape[0]},), got {tuple(self.labels.shape)}")
        self.labels = self.labels.long()

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def to(self, device: str | torch.device) -> ImageSplit:
        return ImageSplit(self.images.to(device), self.labels.to(device))

    def subset(self, index: torch.Tensor | Sequence[int]) -> ImageSplit:
        index = torch.as_tensor(index, device=self.images.device)
        return ImageSplit(self.images[index], self.labels[index])


@dataclasses.dataclass
class SearchData:
    """The three splits of a search and how to read them."""

    name: str
    train: ImageSplit
    val: ImageSplit
    test: ImageSplit
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    augment: str = "none"
    source_classes: int | None = None  # classes in the folder the splits' classes came from (None: num_classes)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return tuple(self.train.images.shape[1:])  # type: ignore[return-value]

    def to(self, device: str | torch.device) -> SearchData:
        return dataclasses.replace(self, train=self.train.to(device), val=self.val.to(device), test=self.test.to(device))


# ----------------------------------------------------------------------------- batches
def normalize(images: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """uint8 (N, C, H, W) -> float, scaled to [0, 1] and standardised per channel."""
    x = images.float().div_(255.0)
    m = torch.tensor(mean, device=x.device, dtype=x.dtype).view(1, -1, 1, 1)
    s = torch.tensor(std, device=x.device, dtype=x.dtype).view(1, -1, 1, 1)
    return (x - m) / s


def augment_batch(images: torch.Tensor, mode: str, generator: torch.Generator, pad: int = 4) -> torch.Tensor:
    """Per-sample random crop (zero padding `pad`) and, for ``"crop-flip"``, horizontal flip, on
    the images' device."""
    if mode == "none":
        return images
    if mode not in ("crop", "crop-flip"):
        raise ValueError(f"augment must be 'none', 'crop' or 'crop-flip', got {mode!r}")
    n, _, h, w = images.shape
    dev = images.device
    padded = F.pad(images, (pad, pad, pad, pad))
    off = torch.randint(0, 2 * pad + 1, (2, n), generator=generator, device=generator.device).to(dev)
    rows = (torch.arange(h, device=dev).view(1, -1) + off[0].view(-1, 1))
    cols = (torch.arange(w, device=dev).view(1, -1) + off[1].view(-1, 1))
    if mode == "crop-flip":
        flip = torch.rand(n, generator=generator, device=generator.device).to(dev) < 0.5
        cols = torch.where(flip.view(-1, 1), cols.flip(1), cols)
    idx = torch.arange(n, device=dev).view(-1, 1, 1)
    out = padded.permute(0, 2, 3, 1)[idx, rows.view(n, h, 1), cols.view(n, 1, w)]
    return out.permute(0, 3, 1, 2).contiguous()


def batches(
    split: ImageSplit, data: SearchData, batch_size: int, *, shuffle: bool = False,
    generator: torch.Generator | None = None, augment: bool = False, drop_last: bool = False,
    with_index: bool = False,
) -> Iterator[tuple[torch.Tensor, ...]]:
    """Normalised float batches (x, y) on the split's device; (x, y, index into the split)
    with `with_index`."""
    n = len(split)
    if shuffle:
        if generator is None:
            raise ValueError("shuffle=True needs a torch.Generator for reproducibility")
        order = torch.randperm(n, generator=generator, device=generator.device).to(split.images.device)
    else:
        order = torch.arange(n, device=split.images.device)
    stop = n - n % batch_size if drop_last else n
    for start in range(0, stop, batch_size):
        idx = order[start:start + batch_size]
        imgs = split.images[idx]
        if augment and data.augment != "none":
            assert generator is not None
            imgs = augment_batch(imgs, data.augment, generator)
        if with_index:
            yield normalize(imgs, data.mean, data.std), split.labels[idx], idx
        else:
            yield normalize(imgs, data.mean, data.std), split.labels[idx]


# ----------------------------------------------------------------------------- split helper
def _split_indices(labels: np.ndarray, sizes: Sequence[int], seed: int) -> list[np.ndarray]:
    """Disjoint random index sets of the given sizes, stratified by label."""
    bad = [n for n in sizes if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0]
    if bad:
        raise ValueError(f"split sizes must be whole numbers >= 0 (data: n_train, n_val), got {list(sizes)}")
    total = sum(sizes)
    if total > len(labels):
        raise ValueError(f"asked for {total} images ({' + '.join(map(str, sizes))}) but only {len(labels)} are available")
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(labels))
    # stable sort by label, then interleave classes so any prefix is near-stratified
    by_class = [order[labels[order] == c] for c in np.unique(labels)]
    interleaved = []
    for i in range(max(len(b) for b in by_class)):
        interleaved.extend(b[i] for b in by_class if i < len(b))
    interleaved = np.asarray(interleaved)
    out, start = [], 0
    for size in sizes:
        out.append(np.sort(interleaved[start:start + size]))
        start += size
    return out


# ----------------------------------------------------------------------------- digits
DIGITS_SIZE = 16


def load_digits_data(seed: int = 0, n_train: int = 1100, n_val: int = 350, size: int = DIGITS_SIZE) -> SearchData:
    """scikit-learn's digits (1,797 8x8 images, shipped with the package), upscaled to
    `size` x `size` (16 by default; 32 for CIFAR-sized networks).

    Split (stratified, fixed seed): search-train `n_train`, search-val `n_val`, test the rest.
    """
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = torch.tensor(bunch.images, dtype=torch.float32).unsqueeze(1) / 16.0
    x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    images = (x.clamp(0, 1) * 255).round().to(torch.uint8)
    labels = np.asarray(bunch.target)
    n_test = len(labels) - n_train - n_val
    tr, va, te = _split_indices(labels, [n_train, n_val, n_test], seed)
    lab = torch.tensor(labels)
    mean = float(images[tr].float().mean() / 255)
    std = float(images[tr].float().std() / 255)
    return SearchData("digits", ImageSplit(images[tr], lab[tr]), ImageSplit(images[va], lab[va]),
                      ImageSplit(images[te], lab[te]), 10, (mean,), (std,), augment="none")


# ----------------------------------------------------------------------------- CIFAR-10
CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)


CIFAR_PICKLE_GLOBALS = frozenset({
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
    ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode")})
"""What a CIFAR-10 python batch may name: NumPy's array rebuilders, and bytes as Python 2 wrote them."""


class _CifarUnpickler(pickle.Unpickler):
    """Reads the dicts of arrays, lists and bytes a CIFAR-10 batch holds; refuses every other
    global, so a crafted batch file cannot run code."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in CIFAR_PICKLE_GLOBALS:
            raise pickle.UnpicklingError(f"refused {module}.{name}: a CIFAR-10 batch holds only arrays, lists and "
                                         "bytes")
        return super().find_class(module, name)


def _read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    if not path.is_file():
        raise FileNotFoundError(f"CIFAR-10 file {path} is missing; expected the python version "
                                "(data_batch_1..5 and test_batch in one folder)")
    try:
        with open(path, "rb") as fh:
            d = _CifarUnpickler(fh, encoding="bytes").load()
        data = np.asarray(d[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
        labels = np.asarray(d[b"labels"], dtype=np.int64)
    except (pickle.UnpicklingError, KeyError, ValueError, EOFError, TypeError, IndexError) as exc:
        raise ValueError(f"{path}: not a CIFAR-10 python batch ({exc})") from None
    return data, labels


def load_cifar10(root: str | os.PathLike[str], n_train: int = 45000, n_val: int = 5000, seed: int = 0) -> SearchData:
    """CIFAR-10 from its python batch format in `root` (or `root/cifar-10-batches-py`).

    Search-train and search-val are disjoint stratified parts of the training batches;
    the test split is ``test_batch``.
    """
    root = Path(root)
    if (root / "cifar-10-batches-py").is_dir():
        root = root / "cifar-10-batches-py"
    if not root.is_dir():
        raise FileNotFoundError(f"CIFAR-10 folder {root} does not exist")
    parts = [_read_cifar_batch(root / f"data_batch_{i}") for i in range(1, 6)]
    x = np.concatenate([p[0] for p in parts])
    y = np.concatenate([p[1] for p in parts])
    xt, yt = _read_cifar_batch(root / "test_batch")
    tr, va = _split_indices(y, [n_train, n_val], seed)
    t = torch.from_numpy
    return SearchData("cifar10", ImageSplit(t(x[tr]), t(y[tr])), ImageSplit(t(x[va]), t(y[va])),
                      ImageSplit(t(xt), t(yt)), 10, CIFAR_MEAN, CIFAR_STD, augment="crop-flip")


# ----------------------------------------------------------------------------- ImageNet
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def list_image_folder(root: Path, max_classes: int | None = None) -> tuple[list[str], list[tuple[Path, int]]]:
    """Classes (sorted folder names) and (file, label) pairs of a class-per-folder tree."""
    if not root.is_dir():
        raise FileNotFoundError(f"image folder {root} does not exist (expected one sub-folder per class)")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir())
    if not classes:
        raise ValueError(f"image folder {root} has no class sub-folders")
    if max_classes is not None:
        classes = classes[:max_classes]
    items = []
    for label, cls in enumerate(classes):
        files = sorted(p for p in (root / cls).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        items.extend((f, label) for f in files)
    if not items:
        raise ValueError(f"image folder {root} has no images ({', '.join(IMAGE_SUFFIXES)})")
    return classes, items


def decode_images(files: Sequence[Path], size: int, resize: int | None = None, threads: int | None = None) -> torch.Tensor:
    """Decode, resize the shorter side to `resize` (default size * 8 / 7) and centre-crop to
    `size`; returns uint8 (N, 3, size, size). Files are decoded on `threads` threads (default:
    one per core, at most 32; PIL releases the GIL while decoding): the same pixels as one."""
    from PIL import Image

    resize = resize or int(round(size * 8 / 7))
    out = np.empty((len(files), 3, size, size), dtype=np.uint8)

    def decode(i: int) -> None:
        f = files[i]
        try:
            with Image.open(f) as im:
                im = im.convert("RGB")
                w, h = im.size
                scale = resize / min(w, h)
                im = im.resize((max(size, round(w * scale)), max(size, round(h * scale))), Image.BILINEAR)
                w, h = im.size
                left, top = (w - size) // 2, (h - size) // 2
                im = im.crop((left, top, left + size, top + size))
                out[i] = np.asarray(im, dtype=np.uint8).transpose(2, 0, 1)
        except OSError as exc:
            raise ValueError(f"cannot decode image {f}: {exc}") from exc

    threads = threads or min(32, os.cpu_count() or 1)
    if len(files) >= 1000:
        log.info("decoding %d images at %d px on %d threads", len(files), size, threads)
    with ThreadPoolExecutor(threads) as pool:
        for done, _ in enumerate(pool.map(decode, range(len(files))), 1):  # in order: the first failure is raised
            if done % 5000 == 0:
                log.info("decoded %d / %d images", done, len(files))
    return torch.from_numpy(out)


def _cached_decode(files: Sequence[Path], size: int, cache_dir: Path | None) -> torch.Tensor:
    if cache_dir is None:
        return decode_images(files, size)
    key = hashlib.sha1(("\n".join(map(str, files)) + f"|{size}").encode()).hexdigest()[:16]
    path = cache_dir / f"decoded-{key}.pt"
    if path.is_file():
        return torch.load(path, weights_only=True)
    images = decode_images(files, size)
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(images, tmp)
    tmp.replace(path)
    return images


def load_imagenet(
    root: str | os.PathLike[str], *, num_classes: int | None = None, n_train: int = 20000, n_val: int = 10000,
    n_test: int | None = None, size: int = 224, seed: int = 0, cache_dir: str | os.PathLike[str] | None = None,
) -> SearchData:
    """ImageNet (or any class-per-folder tree) from `root` with ``train/`` and ``val/``.

    `num_classes=100` gives ImageNet-100: the first 100 classes in sorted order. The
    search split (`n_train` / `n_val`, the paper's 20k / 10k) is drawn from ``train/``;
    the test split is ``val/`` (first `n_test` images if given). Images are decoded once
    (optionally cached as tensors under `cache_dir`).
    """
    root = Path(root)
    classes, train_items = list_image_folder(root / "train", num_classes)
    labels = np.array([lbl for _, lbl in train_items])
    tr, va = _split_indices(labels, [n_train, n_val], seed)
    cache = Path(cache_dir) if cache_dir else None
    files = [train_items[i][0] for i in np.concatenate([tr, va])]
    decoded = _cached_decode(files, size, cache)
    y = torch.from_numpy(labels)
    train = ImageSplit(decoded[: len(tr)], y[tr])
    val = ImageSplit(decoded[len(tr):], y[va])
    val_dir = root / "val"
    if val_dir.is_dir():
        test_classes, test_items = list_image_folder(val_dir, num_classes)
        if test_classes != classes:
            raise ValueError(f"{val_dir}: class folders differ from {root / 'train'}")
        test_items = test_items[:n_test] if n_test else test_items
        test = ImageSplit(_cached_decode([f for f, _ in test_items], size, cache),
                          torch.tensor([lbl for _, lbl in test_items]))
    else:
        log.warning("%s has no val/ folder; the test split is the search-val split", root)
        test = val
    source = sum(1 for p in (root / "train").iterdir() if p.is_dir())
    return SearchData("imagenet", train, val, test, len(classes), IMAGENET_MEAN, IMAGENET_STD, augment="crop-flip",
                      source_classes=source)


def load_image_folder(root: str | os.PathLike[str], *, size: int, channels: int = 3, val_fraction: float = 0.2,
                      test_fraction: float = 0.2, seed: int = 0) -> SearchData:
    """Any class-per-folder tree of images (one sub-folder per class, sorted names are the labels),
    decoded once at the model's input (`size` px square, `channels` 1 or 3).

    With ``train/`` (and ``val/``) inside `root`, the search splits come from ``train/`` and the test
    split is ``val/``; otherwise the images are split into search-train, search-val and test,
    stratified by class (`val_fraction` and `test_fraction` of them for the last two). Normalised by
    the search-train split's own per-channel mean and std; no augmentation.
    """
    root = Path(root)
    if channels not in (1, 3):
        raise ValueError(f"an image folder gives 1 or 3 channels, the model wants {channels}")
    if not 0 < val_fraction < 1 or not 0 <= test_fraction < 1 or val_fraction + test_fraction >= 1:
        raise ValueError(f"val_fraction and test_fraction must leave images to train on, got {val_fraction}, "
                         f"{test_fraction}")
    has_train = (root / "train").is_dir()
    classes, items = list_image_folder(root / "train" if has_train else root)
    labels = np.array([lbl for _, lbl in items])
    n_test = 0 if has_train else int(round(test_fraction * len(items)))
    n_val = int(round(val_fraction * len(items)))
    if min(n_val, len(items) - n_val - n_test) < len(classes) or (not has_train and n_test < 1):
        raise ValueError(f"image folder {root} has {len(items)} images in {len(classes)} classes: too few to split "
                         "into search-train, search-val and test (give each class a few images more)")
    tr, va, te = _split_indices(labels, [len(items) - n_val - n_test, n_val, n_test], seed)

    def split(index: np.ndarray, files: Sequence[tuple[Path, int]]) -> ImageSplit:
        images = decode_images([f for f, _ in files], size)
        if channels == 1:  # ITU-R 601-2 luma in PIL's fixed-point arithmetic: its convert("L"), exactly
            weights = torch.tensor([19595, 38470, 7471], dtype=torch.int64).view(1, 3, 1, 1)
            images = (((images.long() * weights).sum(1, keepdim=True) + 32768) >> 16).to(torch.uint8)
        return ImageSplit(images, torch.tensor([lbl for _, lbl in files], dtype=torch.int64))

    train, val = (split(i, [items[k] for k in i]) for i in (tr, va))
    if has_train and (root / "val").is_dir():
        test_classes, test_items = list_image_folder(root / "val")
        if test_classes != classes:
            raise ValueError(f"{root / 'val'}: class folders differ from {root / 'train'}")
        test = split(np.arange(len(test_items)), test_items)
    else:
        test = split(te, [items[k] for k in te]) if len(te) else val
    pixels = train.images.double().div(255)
    mean = tuple(float(m) for m in pixels.mean(dim=(0, 2, 3)))
    std = tuple(max(float(v), 1e-3) for v in pixels.std(dim=(0, 2, 3)))
    return SearchData("folder", train, val, test, len(classes), mean, std)


def load_dataset(name: str, root: str | os.PathLike[str] | None = None, **kwargs: object) -> SearchData:
    """Load a data set by name: ``digits`` (shipped), ``cifar10``, ``imagenet``, ``imagenet100`` or
    ``folder`` (`load_image_folder`; give ``size`` and ``channels``)."""
    if name == "digits":
        if root is not None:
            raise ValueError(f"the digits data set is shipped with the engine; --data-root {root} is not read: drop it, "
                             "or give --dataset folder (or cifar10, imagenet) to read that folder")
        return load_digits_data(**kwargs)  # type: ignore[arg-type]
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; known: {', '.join(DATASETS)}")
    if root is None:
        raise ValueError(f"dataset {name!r} is read from a local folder: pass --data-root PATH "
                         "(the engine never downloads data)")
    if name == "cifar10":
        return load_cifar10(root, **kwargs)  # type: ignore[arg-type]
    if name == "folder":
        return load_image_folder(root, **kwargs)  # type: ignore[arg-type]
    if name == "imagenet100":
        kwargs.setdefault("num_classes", 100)
    return load_imagenet(root, **kwargs)  # type: ignore[arg-type]

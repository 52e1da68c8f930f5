"""Pair scans with their masks by file name and folder layout.

One rule set, used by discovery (:func:`medres.io.discover.discover`: inspect, predict,
convert) and by training (:func:`medres.training.datasets.scan_image_pairs`). A file is a
mask when:

* its stem ends in the mask suffix and it sits beside its image: ``x_mask.png`` is the
  mask of ``x.png`` (``x_mask.nii.gz`` of ``x.nii.gz``);
* it sits in a **mask folder**: ``masks/``, ``mask/``, ``labels/``, ``label/``,
  ``annotations/``, ``gt/``, ``ground_truth/``, ``segmentations/`` (any case), or a folder
  whose name ends in ``_mask``, ``_masks``, ``_label``, ``_labels`` (or ``-mask``...), or
  one level below such a folder (``masks/a/x.png``). Its image has the same stem (the mask
  suffix removed: ``case_mask/x_mask.bmp`` is the mask of ``case_image/x.bmp``) in a
  sibling folder of the mask folder, at the same depth (``images/a/x.png``);
* it sits in a Decathlon / nnU-Net ``labelsTr/`` (``labelsTs/``): its image is
  ``imagesTr/<case>`` (or the first channel file ``imagesTr/<case>_0000``).

A mask folder counts only below the searched folder (searching ``masks/`` itself lists
its files as scans). A mask with no image, or with several, is not used; its
:class:`~medres.io.scan_refs.SkippedFile` says why. Extensions need not agree
(``images/x.jpg`` + ``masks/x.png``).

Example:
    >>> from pathlib import Path
    >>> files = [Path("d/images/x.png"), Path("d/masks/x.png"), Path("d/masks/y.png")]
    >>> found = pair_masks(files, root=Path("d"))
    >>> [(str(p.image), str(p.mask)) for p in found.pairs]
    [('d/images/x.png', 'd/masks/x.png')]
    >>> found.skipped[0].reason
    "mask without an image: no image named 'y' in a folder beside masks/ (looked in images/)"
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from medres.io.order import natural_path_key
from medres.io.scan_refs import SkippedFile

#: Folder names (compared in lower case) whose files are masks of a sibling folder's images.
MASK_FOLDER_NAMES = frozenset(
    {
        "masks",
        "mask",
        "labels",
        "label",
        "annotations",
        "gt",
        "ground_truth",
        "segmentations",
    }
)
#: ``case_mask``, ``case-labels``...: a folder holding the masks of a sibling folder.
_MASK_FOLDER_END = re.compile(r".[_-](masks?|labels?)$", re.IGNORECASE)
#: Decathlon / nnU-Net: the labels folder and the one image folder it labels.
DECATHLON_LABELS = {"labelsTr": "imagesTr", "labelsTs": "imagesTs"}
#: nnU-Net names the first channel ``case_0000``; its label is ``labelsTr/case``.
_FIRST_CHANNEL = "_0000"


def is_mask_folder(name: str) -> bool:
    """Whether a folder of this name holds masks (``masks``, ``GT``, ``case_mask``, ``labelsTr``).

    Example:
        >>> [is_mask_folder(n) for n in ("Masks", "case-labels", "images", "labelsTr")]
        [True, True, False, True]
    """
    return (
        name.lower() in MASK_FOLDER_NAMES
        or name in DECATHLON_LABELS
        or bool(_MASK_FOLDER_END.search(name))
    )


def has_mask_suffix(stem: str, mask_suffix: str) -> bool:
    """Whether a file stem ends in the mask suffix (``case_mask`` with ``_mask``)."""
    return bool(mask_suffix) and stem.endswith(mask_suffix) and len(stem) > len(mask_suffix)


@dataclass(frozen=True)
class ImagePair:
    """One image and its mask.

    Attributes:
        image: The image file.
        mask: Its mask, or None.
        images_folder: The folder playing the images role of a layout with a mask folder
            (``d/images`` for ``d/images/a/x.png``, ``d/case/case_image``); None for an
            image outside such a layout.
        mask_folder: The one mask folder beside ``images_folder`` (where a missing mask
            is expected), or None.
    """

    image: Path
    mask: Path | None = None
    images_folder: Path | None = None
    mask_folder: Path | None = None

    @property
    def expected_mask(self) -> Path | None:
        """Where the image's mask would be in its mask folder (None outside such a layout)."""
        if self.images_folder is None or self.mask_folder is None:
            return None
        return self.mask_folder / self.image.relative_to(self.images_folder)

    def parts_below(self, root: Path) -> tuple[str, ...]:
        """The image's path below ``root`` without its images folder, which names a role,
        not a patient: ``images/a/x.png`` -> ``("a", "x.png")``, ``case/case_image/x.bmp``
        -> ``("case", "x.bmp")``."""
        parts = list(self.image.relative_to(root).parts)
        if self.images_folder is not None and _below(self.images_folder, root):
            del parts[len(self.images_folder.relative_to(root).parts) - 1]
        return tuple(parts)


@dataclass
class Pairing:
    """What :func:`pair_masks` found: images (with or without a mask) and masks not used."""

    pairs: list[ImagePair] = field(default_factory=list)
    skipped: list[SkippedFile] = field(default_factory=list)


#: A folder and the sub-folders between it and a file (``(d/images, ("a",))``).
_Place = tuple[Path, tuple[str, ...]]


@dataclass(frozen=True)
class _FolderMask:
    """A mask in a mask folder: where its image is looked for."""

    path: Path
    folder: Path  # the mask folder
    sub: tuple[str, ...]  # folders between the mask folder and the file
    stem: str  # the image stem looked for


def _below(folder: Path, root: Path) -> bool:
    """Whether ``folder`` lies strictly inside ``root`` (paths as walked, not resolved)."""
    return root in folder.parents


def _mask_folder_of(path: Path, root: Path) -> _Place | None:
    """The mask folder holding ``path`` (its parent, or grandparent) and the sub-path."""
    parent = path.parent
    if _below(parent, root) and is_mask_folder(parent.name):
        return parent, ()
    grand = parent.parent
    if _below(grand, root) and is_mask_folder(grand.name) and grand.name not in DECATHLON_LABELS:
        return grand, (parent.name,)
    return None


def _image_place(image: Path, mask_parents: set[Path]) -> _Place | None:
    """The images folder of an image beside a mask folder, and the sub-path below it."""
    parent = image.parent
    if parent.parent in mask_parents and not is_mask_folder(parent.name):
        return parent, ()
    grand = parent.parent
    if grand.parent in mask_parents and not is_mask_folder(grand.name):
        return grand, (parent.name,)
    return None


@dataclass
class _ImageIndex:
    """Images by where a mask folder's mask looks for them."""

    places: dict[Path, _Place | None]
    #: ``(parent of the images folder, sub-path, stem)`` -> images
    by_place: dict[tuple[Path, tuple[str, ...], str], list[Path]]
    #: parent -> names of the images folders in it
    folders: dict[Path, set[str]]

    @classmethod
    def build(
        cls, images: list[Path], mask_parents: set[Path], stem_of: Callable[[Path], str]
    ) -> _ImageIndex:
        index = cls({}, defaultdict(list), defaultdict(set))
        for image in images:
            place = _image_place(image, mask_parents)
            index.places[image] = place
            if place is not None:
                index.by_place[(place[0].parent, place[1], stem_of(image))].append(image)
                index.folders[place[0].parent].add(place[0].name)
        return index

    def candidates(self, entry: _FolderMask) -> list[Path]:
        """Images of the mask's stem at its depth in the folders beside its mask folder."""
        only = DECATHLON_LABELS.get(entry.folder.name)
        for stem in (entry.stem, entry.stem + _FIRST_CHANNEL):
            found = [
                image
                for image in self.by_place.get((entry.folder.parent, entry.sub, stem), [])
                if only is None or self._folder_name(image) == only
            ]
            if found:
                return sorted(found)
        return []

    def _folder_name(self, image: Path) -> str:
        place = self.places[image]
        return place[0].name if place else ""


def pair_masks(
    files: Sequence[Path],
    *,
    root: Path,
    mask_suffix: str = "_mask",
    stem_of: Callable[[Path], str] = lambda p: p.stem,
) -> Pairing:
    """Split files of one kind (2D images, or NIfTI) into images with their masks.

    Args:
        files: The candidate files (all of one format family), e.g. from
            :func:`medres.io.discover.iter_files`.
        root: The searched folder: mask folders count only below it.
        mask_suffix: Stem suffix of a mask beside its image (``""``: no suffix rule;
            masks in mask folders still pair by stem).
        stem_of: File name without its extension (``nifti_stem`` for ``.nii.gz``).

    Returns:
        Every image, sorted by path, with its mask or None, and every mask not used with
        its reason (no image of its name, several, or a second mask for one image).
    """
    images: list[Path] = []
    beside: list[tuple[Path, str]] = []
    in_folders: list[_FolderMask] = []
    for path in files:
        stem = stem_of(path)
        place = _mask_folder_of(path, root)
        if place is not None:
            image_stem = stem[: -len(mask_suffix)] if has_mask_suffix(stem, mask_suffix) else stem
            in_folders.append(_FolderMask(path, place[0], place[1], image_stem))
        elif has_mask_suffix(stem, mask_suffix):
            beside.append((path, stem[: -len(mask_suffix)]))
        else:
            images.append(path)
    index = _ImageIndex.build(images, {m.folder.parent for m in in_folders}, stem_of)
    by_folder_stem: dict[tuple[Path, str], list[Path]] = defaultdict(list)
    for image in images:
        by_folder_stem[(image.parent, stem_of(image))].append(image)
    found = Pairing()
    masks: dict[Path, Path] = {}
    for mask, stem in sorted(beside):
        candidates = sorted(by_folder_stem.get((mask.parent, stem), []))
        reason = _pair_or_reason(mask, candidates, masks) or _beside_reason(stem, candidates)
        if reason:
            found.skipped.append(SkippedFile(str(mask), reason))
    for entry in sorted(in_folders, key=lambda m: m.path):
        candidates = index.candidates(entry)
        reason = _pair_or_reason(entry.path, candidates, masks) or _folder_reason(
            entry, candidates, index.folders.get(entry.folder.parent, set())
        )
        if reason:
            found.skipped.append(SkippedFile(str(entry.path), reason))
    mask_folders = _mask_folders_by_parent(in_folders)
    for image in sorted(images, key=natural_path_key):
        where = index.places[image]
        folder = where[0] if where else None
        beside_masks = mask_folders.get(folder.parent, []) if folder else []
        found.pairs.append(
            ImagePair(
                image=image,
                mask=masks.get(image),
                images_folder=folder,
                mask_folder=beside_masks[0] if len(beside_masks) == 1 else None,
            )
        )
    return found


def _mask_folders_by_parent(in_folders: list[_FolderMask]) -> dict[Path, list[Path]]:
    by_parent: dict[Path, set[Path]] = defaultdict(set)
    for entry in in_folders:
        by_parent[entry.folder.parent].add(entry.folder)
    return {parent: sorted(folders) for parent, folders in by_parent.items()}


def _pair_or_reason(mask: Path, candidates: list[Path], masks: dict[Path, Path]) -> str:
    """Pair ``mask`` with its one candidate image (``""``), or say why it cannot be.

    Returns ``""`` also when there is no single candidate: the caller then gives the
    reason of its layout.
    """
    if len(candidates) != 1:
        return ""
    image = candidates[0]
    if image in masks:
        return (
            f"second mask of {image.name}, which already has {masks[image].name}; the mask "
            "is not used (keep one mask per image)"
        )
    masks[image] = mask
    return ""


def _beside_reason(stem: str, candidates: list[Path]) -> str:
    """Why a ``x_mask`` file has no image beside it, or too many (``""``: it was paired)."""
    if len(candidates) == 1:
        return ""
    if not candidates:
        return f"mask without an image named '{stem}' beside it"
    return (
        f"mask with several images: {', '.join(c.name for c in candidates)} beside it are "
        f"all named '{stem}'; the mask is not used (rename or move one)"
    )


def _folder_reason(entry: _FolderMask, candidates: list[Path], looked: set[str]) -> str:
    """Why a mask in a mask folder has no image, or too many (``""``: it was paired)."""
    if len(candidates) == 1:
        return ""
    name = "/".join((*entry.sub, entry.stem))
    if candidates:
        shown = ", ".join(str(c.relative_to(entry.folder.parent)) for c in candidates)
        return (
            f"mask with several images: '{name}' is in more than one folder beside "
            f"{entry.folder.name}/ ({shown}); the mask is not used (rename or move one)"
        )
    only = DECATHLON_LABELS.get(entry.folder.name)
    if only is not None:
        return f"mask without an image: no image named '{name}' in {only}/"
    where = f"looked in {', '.join(f'{n}/' for n in sorted(looked))}" if looked else "none found"
    return (
        f"mask without an image: no image named '{name}' in a folder beside "
        f"{entry.folder.name}/ ({where})"
    )


__all__ = [
    "DECATHLON_LABELS",
    "MASK_FOLDER_NAMES",
    "ImagePair",
    "Pairing",
    "has_mask_suffix",
    "is_mask_folder",
    "pair_masks",
]

"""Prepares MS-COCO, MIRFLICKR-25K and NUS-WIDE from their official downloads.

    python prepare.py coco --annotations DIR --images DIR [--images DIR ...]
    python prepare.py flickr --root mirflickr --annotations mirflickr25k_annotations_v080
    python prepare.py nuswide --root NUS-WIDE --images Flickr

Each writes data/DATASET.h5 (or --out FILE.h5), where `python train.py --dataset DATASET` looks.

Each writes ONE HDF5 file in the DCMH layout that `utils.data.dcmh.read_dcmh`
reads, and the layout of the authors' files: arrays stored as MATLAB v7.3 stores
them (axes reversed), the images 224 x 224 x 3 x n in MATLAB terms, so h5py sees
`images` as (n, 3, 224, 224) uint8 (the SSAH program's transpose (0, 3, 2, 1)
gives n x 224 x 224 x 3), `YAll` (d, n) and `LAll` (c, n) uint8 0/1,
plus `mean_image` (3, 224, 224) float32 (the dataset's own mean image, used only
when no network weight file supplies one), `vocabulary` and `label_names`.
Beside FILE.h5: FILE.vocab.json (the text and label vocabularies),
FILE.manifest.json (counts, source files, settings; also kept inside the file as
the attribute `manifest`) and, with --split-sizes, FILE.split.npz.

Images: the whole image, no crop, resized to 224 x 224 (aspect ratio not kept)
with PIL's bilinear filter, which widens its support when shrinking (an
antialiased resize, like MATLAB's imresize that produced the DCMH-family files);
converted to RGB; EXIF orientation is not applied (annotations refer to the
stored pixels).

Resumable: the file grows as FILE.h5.partial with the number of finished rows
in its `rows_done` attribute; a rerun with the same inputs and settings continues
from there, and the finished file is renamed onto FILE.h5 atomically at the end.
"""
import argparse
import collections
import concurrent.futures
import contextlib
import dataclasses
import glob
import hashlib
import io as stdio
import json
import os
import re
import sys
import typing

import h5py
import numpy as np

from utils import io
from utils.config import add_config_arguments, config_from_args, setting
from utils.data import SPLIT_SIZES, prepared_path, sidecar_paths
from utils.data.splits import permutation_split
from utils.errors import UserError
from utils.optional import optional_module
from utils.run import progress

IMAGE_SIZE = 224
FORMAT_VERSION = 2  # 2: images 224 x 224 x 3 x n in MATLAB terms, as the authors' files (1: n first)

# A standard English stop-word list (function words, pronouns, auxiliaries, common
# contractions split at the apostrophe), written for this project.
STOP_WORDS = frozenset("""
a about above across after afterwards again against all almost alone along already also although
always am among amongst an and another any anybody anyhow anyone anything anyway anywhere are
aren around as at be became because become becomes becoming been before beforehand behind being
below beside besides between beyond both but by can cannot could couldn d did didn do does doesn
doing don done down during each either else elsewhere enough etc even ever every everybody
everyone everything everywhere except few for former formerly from further had hadn has hasn have
haven having he hence her here hereafter hereby herein hers herself him himself his how however i
if in indeed into is isn it its itself just latter latterly least less ll m many may me meanwhile
might mine more moreover most mostly much must mustn my myself namely neither never nevertheless
next no nobody none noone nor not nothing now nowhere o of off often on once one only onto or other
others otherwise our ours ourselves out over own per perhaps please quite rather re s same shall
shan she should shouldn since so some somebody somehow someone something sometime sometimes
somewhere still such t than that the their theirs them themselves then thence there thereafter
thereby therefore therein these they this those though through throughout thru thus to together
too toward towards under until up upon us ve very via was wasn we well were weren what whatever
when whence whenever where whereafter whereas whereby wherein whereupon wherever whether which
while whither who whoever whole whom whose why will with within without won would wouldn y yet
you your yours yourself yourselves
""".split())

RESIZE_FILTERS = ("bilinear", "bicubic")

WORD_PATTERN = re.compile(r"[a-z]+")


# --------------------------------------------------------------------------- settings

@dataclasses.dataclass
class OutputSettings:
    """How the file is written (shared by every dataset)."""
    out: str = setting("", "the HDF5 file to write; empty: data/DATASET.h5 in the repository (or "
                           "$ADVHASH_DATA/DATASET.h5), where train.py --dataset DATASET looks without --data")
    overwrite: bool = setting(False, "replace an existing finished file")
    resize_filter: str = setting("bilinear", "PIL filter for the resize of the whole image to 224 x 224 "
                                             "(antialiased when shrinking)", choices=RESIZE_FILTERS)
    workers: int = setting(4, "threads decoding and resizing images")
    chunk_rows: int = setting(256, "images written per step; the resume marker advances after each step")
    split_sizes: tuple[int, ...] = setting((), "QUERY,TRAIN: also write FILE.split.npz (seeded DCMH "
                                               "permutation; database = all but the queries) for train.py "
                                               "--split-file, e.g. for a subset smaller than the standard "
                                               "split")
    split_seed: int = setting(0, "seed of the permutation of --split-sizes")


@dataclasses.dataclass
class CocoSettings:
    annotations: str = setting("", "folder with the official instances_*.json and captions_*.json files")
    vocab: int = setting(2000, "text vocabulary size: the most frequent caption words (fewer when fewer "
                               "exist)")
    min_word_length: int = setting(2, "caption words shorter than this are dropped (single letters carry no "
                                      "meaning)")
    text_values: str = setting("binary", "bag-of-words entries: binary (word in any caption of the image; "
                                         "the DCMH family's 0/1 matrices) or count (occurrences, capped at "
                                         "255)", choices=("binary", "count"))


@dataclasses.dataclass
class FlickrSettings:
    root: str = setting("", "the unpacked mirflickr folder: im1.jpg .. imN.jpg and meta/tags/tags1.txt ..")
    annotations: str = setting("", "the mirflickr25k_annotations_v080 folder (one file per concept listing "
                                   "image ids)")
    num_images: int = setting(25000, "number of images im1..imN")
    min_tag_count: int = setting(20, "a tag enters the vocabulary when at least this many images of the "
                                     "whole collection carry it (20: the DCMH/SSAH rule; their file has "
                                     "1,386 tags)")


@dataclasses.dataclass
class NuswideSettings:
    root: str = setting("", "folder holding the official NUS-WIDE lists (searched recursively): "
                            "Imagelist.txt, AllTags1k.txt, TagList1k.txt, Concepts81.txt, "
                            "Labels_<concept>.txt")
    images: str = setting("", "the image folder (Flickr/<concept folder>/<file>.jpg as in Imagelist.txt)")
    num_concepts: int = setting(21, "keep the most frequent concepts as labels, and the images carrying one "
                                    "of them")
    require_tag: bool = setting(False, "also drop images none of whose tags is among the 1,000 (false: every "
                                       "image with a top concept counts, which is how the DCMH family's "
                                       "195,834 is described)")
    skip_missing_images: bool = setting(False, "skip (and count) images listed in Imagelist.txt but absent "
                                               "from --images instead of stopping")


@dataclasses.dataclass
class PreparedData:
    """What a dataset reader hands to the writer: everything but the pixels."""
    dataset: str
    image_paths: list
    texts: np.ndarray        # (n, d) uint8
    labels: np.ndarray       # (n, c) uint8 multi-hot
    vocabulary: list         # d words / tags, in column order
    label_names: list        # c names, in column order
    counts: dict             # images considered, skipped (by reason), ...
    sources: list            # input files read
    settings: dict


# --------------------------------------------------------------------------- small helpers

def _require_file(path, what):
    if not os.path.isfile(path):
        raise UserError(f"{what} {path} is missing; check the path (see README, Dataset preparation)")
    return path


def _require_dir(path, what, option):
    if not path:
        raise UserError(f"no {what} given; pass {option} DIR")
    if not os.path.isdir(path):
        raise UserError(f"{what} {path} is not a folder; pass {option} with the right folder")
    return path


def _read_lines(path, what, errors="strict"):
    _require_file(path, what)
    try:
        with open(path, encoding="utf-8", errors=errors) as f:
            return f.read().splitlines()
    except UnicodeDecodeError as error:
        raise UserError(f"{what} {path} is not UTF-8 text ({error.reason} at byte {error.start}); "
                        f"re-download the file") from None


def tokenize(text, min_word_length=2):
    """Lowercase runs of letters a-z, stop words and too-short words removed."""
    return [w for w in WORD_PATTERN.findall(text.lower())
            if len(w) >= min_word_length and w not in STOP_WORDS]


def most_frequent(counter, limit=None, min_count=1):
    """Keys by falling count, ties in alphabetical order (a fixed, documented column order)."""
    ranked = sorted((k for k, c in counter.items() if c >= min_count), key=lambda k: (-counter[k], k))
    return ranked if limit is None else ranked[:limit]


def _label_stats(labels):
    per_image = labels.sum(1)
    return {"labels_per_image_mean": round(float(per_image.mean()), 6) if len(labels) else 0.0,
            "labels_per_image_min": int(per_image.min()) if len(labels) else 0,
            "labels_per_image_max": int(per_image.max()) if len(labels) else 0,
            "label_counts": [int(x) for x in labels.sum(0)]}


# --------------------------------------------------------------------------- MS-COCO

class CocoFile(typing.NamedTuple):
    """One COCO annotation file, indexed as pycocotools' COCO indexes it."""
    images: dict  # image id -> image entry
    annotations: dict  # image id -> its annotation entries in file order
    categories: typing.Optional[dict]  # category id -> name; None when the file has no category list


def _coco_with_pycocotools(coco_module, path):
    with contextlib.redirect_stdout(stdio.StringIO()):  # pycocotools prints progress lines
        coco = coco_module.COCO(path)
    categories = ({cat_id: cat["name"] for cat_id, cat in coco.cats.items()}
                  if "categories" in coco.dataset else None)
    return CocoFile(coco.imgs, coco.imgToAnns, categories)


def _coco_with_json(path):
    """The same index as pycocotools' COCO builds: the file must be one JSON object; its lists
    `images`, `annotations` and `categories` are optional."""
    with open(path, "rb") as f:
        dataset = json.load(f)
    if not isinstance(dataset, dict):
        raise ValueError(f"the file holds a JSON {type(dataset).__name__}, not an object")
    annotations = collections.defaultdict(list)
    for annotation in dataset.get("annotations", []):
        annotations[annotation["image_id"]].append(annotation)
    images = {image["id"]: image for image in dataset.get("images", [])}
    categories = ({cat["id"]: cat["name"] for cat in dataset["categories"]}
                  if "categories" in dataset else None)
    return CocoFile(images, annotations, categories)


def _load_coco(path):
    """The annotation file as a CocoFile, read by pycocotools when installed, else by the
    project's own JSON reader (same contents)."""
    coco_module = optional_module("pycocotools.coco", "COCO annotations are read by the project's own "
                                  "JSON reader (same contents)", "pycocotools")
    try:
        return _coco_with_json(path) if coco_module is None else _coco_with_pycocotools(coco_module, path)
    except Exception as error:  # json errors, missing keys, format assertions
        detail = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise UserError(f"annotation file {path} is malformed ({detail}); re-download the official "
                        f"COCO annotation file") from None


def read_coco(settings, image_dirs):
    """Labelled image-caption pairs of every instances_*.json / captions_*.json pair."""
    folder = _require_dir(settings.annotations, "annotation folder", "--annotations")
    if settings.vocab < 1:
        raise UserError(f"--vocab must be at least 1, got {settings.vocab}")
    if not image_dirs:
        raise UserError("no image folder given; pass --images DIR (repeat it for train and val folders)")
    for image_dir in image_dirs:
        _require_dir(image_dir, "image folder", "--images")
    instance_files = sorted(glob.glob(os.path.join(folder, "instances_*.json")))
    if not instance_files:
        raise UserError(f"no instances_*.json in {folder}; pass --annotations with the folder of the "
                        f"official COCO annotation files")
    on_disk = {}
    for image_dir in image_dirs:
        for entry in sorted(os.scandir(image_dir), key=lambda e: e.name):
            if entry.is_file() and entry.name.lower().endswith((".jpg", ".jpeg", ".png")):
                on_disk.setdefault(entry.name, entry.path)

    categories, sources = None, []
    paths, captions, label_sets, listed = [], [], [], set()
    skipped_no_category, without_captions, missing = 0, 0, []
    for instances_path in instance_files:
        part = os.path.basename(instances_path)[len("instances_"):-len(".json")]
        captions_path = os.path.join(folder, f"captions_{part}.json")
        _require_file(captions_path, f"caption file for {os.path.basename(instances_path)}")
        instances, caps = _load_coco(instances_path), _load_coco(captions_path)
        sources += [instances_path, captions_path]
        if instances.categories is None:
            raise UserError(f"annotation file {instances_path} is malformed (no category list); "
                            f"re-download the official COCO annotation file")
        these = sorted(instances.categories.items())
        if categories is None:
            categories = these
        elif these != categories:
            raise UserError(f"{instances_path} lists other categories than {instance_files[0]}; "
                            f"use annotation files of one COCO release")
        for image_id in sorted(instances.images):
            file_name = instances.images[image_id]["file_name"]
            listed.add(file_name)
            category_ids = {a["category_id"] for a in instances.annotations.get(image_id, [])}
            unknown = category_ids - {cat_id for cat_id, _ in categories}
            if unknown:
                raise UserError(f"annotation file {instances_path} is malformed (image {image_id} has "
                                f"category ids {sorted(unknown)} that its category list lacks); re-download it")
            if not category_ids:
                skipped_no_category += 1
                continue
            if file_name not in on_disk:
                missing.append(file_name)
                continue
            texts = [a["caption"] for a in caps.annotations.get(image_id, [])]
            without_captions += not texts
            paths.append(on_disk[file_name])
            captions.append(texts)
            label_sets.append(category_ids)
    if missing:
        raise UserError(f"{len(missing)} annotated images are missing from the image folders "
                        f"{list(image_dirs)} (first: {missing[0]}); pass every image folder with --images")
    if not paths:
        raise UserError(f"no image with a category in {folder}; check the annotation files")

    column = {cat_id: j for j, (cat_id, _) in enumerate(categories)}
    labels = np.zeros((len(paths), len(categories)), np.uint8)
    for i, ids in enumerate(label_sets):
        labels[i, [column[c] for c in ids]] = 1

    # Two passes over the captions (count, then fill) instead of keeping every token list.
    word_counts = collections.Counter(w for texts in captions for t in texts
                                      for w in tokenize(t, settings.min_word_length))
    vocabulary = most_frequent(word_counts, settings.vocab)
    word_column = {w: j for j, w in enumerate(vocabulary)}
    text = np.zeros((len(paths), len(vocabulary)), np.uint8)
    for i, texts in enumerate(captions):
        found = collections.Counter(w for t in texts for w in tokenize(t, settings.min_word_length)
                                    if w in word_column)
        for word, count in found.items():
            text[i, word_column[word]] = 1 if settings.text_values == "binary" else min(count, 255)

    counts = {"images": len(paths),
              "skipped": {"no_category": skipped_no_category,
                          "not_in_annotations": sum(name not in listed for name in on_disk)},
              "without_captions": without_captions,
              "empty_text": int((text.sum(1) == 0).sum()),
              "vocabulary_size": len(vocabulary), "distinct_words": len(word_counts),
              "labels": len(categories), **_label_stats(labels)}
    return PreparedData("coco", paths, text, labels, vocabulary, [name for _, name in categories],
                        counts, sources, dataclasses.asdict(settings) | {"images": list(image_dirs)})


# --------------------------------------------------------------------------- MIRFLICKR-25K

def _read_id_list(path, num_images):
    ids = set()
    for number, line in enumerate(_read_lines(path, "annotation file"), 1):
        if not line.strip():
            continue
        try:
            image_id = int(line.strip())
        except ValueError:
            raise UserError(f"annotation file {path} line {number} is not an image id ({line.strip()!r}); "
                            f"re-download the annotation files") from None
        if not 1 <= image_id <= num_images:
            raise UserError(f"annotation file {path} line {number}: image id {image_id} is outside "
                            f"1..{num_images}; set --num-images to the collection size")
        ids.add(image_id)
    return ids


def read_flickr(settings):
    """The DCMH/SSAH selection: images with at least one of the 24 concepts and at least one
    tag among those carried by >= min_tag_count images of the whole collection."""
    root = _require_dir(settings.root, "MIRFLICKR folder", "--root")
    annotations = _require_dir(settings.annotations, "annotation folder", "--annotations")
    tag_dir = os.path.join(root, "meta", "tags")
    _require_dir(tag_dir, "tag folder (meta/tags inside --root)", "--root")
    concept_files = sorted(p for p in glob.glob(os.path.join(annotations, "*.txt"))
                           if not os.path.basename(p).lower().startswith("readme")
                           and not p.endswith("_r1.txt"))  # *_r1: the "relevant" subsets, not concepts
    if not concept_files:
        raise UserError(f"no concept files (*.txt) in {annotations}; pass --annotations with the "
                        f"mirflickr25k_annotations_v080 folder")
    n = settings.num_images
    image_paths = [_require_file(os.path.join(root, f"im{i}.jpg"), "image") for i in range(1, n + 1)]
    label_names = [os.path.basename(p)[:-len(".txt")] for p in concept_files]
    all_labels = np.zeros((n, len(concept_files)), np.uint8)
    for j, path in enumerate(concept_files):
        all_labels[np.fromiter(_read_id_list(path, n), np.int64) - 1, j] = 1

    tag_files = [os.path.join(tag_dir, f"tags{i}.txt") for i in range(1, n + 1)]
    # User tags: a stray non-UTF-8 byte becomes U+FFFD rather than stopping the preparation.
    image_tags = [sorted({t.strip() for t in _read_lines(p, "tag file", errors="replace") if t.strip()})
                  for p in progress(tag_files, desc="tags")]
    tag_counts = collections.Counter(t for tags in image_tags for t in tags)
    vocabulary = most_frequent(tag_counts, min_count=settings.min_tag_count)
    column = {t: j for j, t in enumerate(vocabulary)}
    all_text = np.zeros((n, len(vocabulary)), np.uint8)
    for i, tags in enumerate(image_tags):
        all_text[i, [column[t] for t in tags if t in column]] = 1

    has_label, has_tag = all_labels.any(1), all_text.any(1)
    keep = np.flatnonzero(has_label & has_tag)
    if not len(keep):
        raise UserError(f"no image has both a concept and a frequent tag; check --root, --annotations "
                        f"and --min-tag-count")
    labels = all_labels[keep]
    counts = {"images": len(keep), "collection": n,
              "skipped": {"no_label": int((~has_label).sum()),
                          "no_frequent_tag": int((has_label & ~has_tag).sum())},
              "vocabulary_size": len(vocabulary), "distinct_tags": len(tag_counts),
              "labels": len(label_names), **_label_stats(labels)}
    return PreparedData("flickr", [image_paths[i] for i in keep], all_text[keep], labels, vocabulary,
                        label_names, counts, concept_files + [tag_dir], dataclasses.asdict(settings))


# --------------------------------------------------------------------------- NUS-WIDE

NUSWIDE_FILES = ("Imagelist.txt", "AllTags1k.txt", "TagList1k.txt", "Concepts81.txt")


def _find_files(root, names):
    """First path (in sorted walk order) of each file name under root; AllLabels preferred."""
    found = {}
    for folder, subfolders, files in sorted(os.walk(root)):
        subfolders.sort()
        for name in files:
            if name in names and (name not in found or "AllLabels" in folder):
                found[name] = os.path.join(folder, name)
    return found


def _read_binary_rows(path, num_rows, num_columns, what):
    """A whitespace-separated matrix of single 0/1 digits (the NUS-WIDE lists), parsed as bytes
    in blocks of lines: AllTags1k.txt holds 270 million values."""
    _require_file(path, what)
    out = np.zeros((num_rows, num_columns), np.uint8)
    row = 0
    allowed = np.zeros(256, bool)
    allowed[list(b"01 \t\r\n")] = True
    with open(path, "rb") as f:
        while True:
            lines = [line.rstrip(b"\r\n") + b"\n" for line in f.readlines(1 << 24) if line.strip()]
            if not lines:
                break
            raw = np.frombuffer(b"".join(lines), np.uint8)
            digit = (raw == ord("0")) | (raw == ord("1"))
            ends = np.flatnonzero(raw == ord("\n"))
            per_line = np.diff(np.concatenate([[0], np.cumsum(digit)[ends]]))
            if not allowed[raw].all() or (per_line != num_columns).any() or row + len(lines) > num_rows:
                raise UserError(f"{what} {path} is malformed: expected {num_rows} lines of {num_columns} "
                                f"0/1 values; re-download it")
            out[row:row + len(lines)] = (raw[digit] - ord("0")).reshape(len(lines), num_columns)
            row += len(lines)
    if row != num_rows:
        raise UserError(f"{what} {path} has {row} lines but Imagelist.txt lists {num_rows} images; "
                        f"use files of one NUS-WIDE release")
    return out


def _nuswide_relative_path(line):
    """Imagelist.txt holds Windows paths like C:\\ImageData\\Flickr\\actor\\0001_2124494179.jpg."""
    parts = [p for p in re.split(r"[\\/]", line.strip()) if p]
    if "Flickr" in parts:
        return os.path.join(*parts[parts.index("Flickr") + 1:])
    return os.path.join(*parts[-2:])


def read_nuswide(settings):
    root = _require_dir(settings.root, "NUS-WIDE folder", "--root")
    images_dir = _require_dir(settings.images, "image folder", "--images")
    concepts_path = _find_files(root, {"Concepts81.txt"}).get("Concepts81.txt")
    if concepts_path is None:
        raise UserError(f"Concepts81.txt is missing under {root}; unpack the official ConceptsList")
    concepts = [c.strip() for c in _read_lines(concepts_path, "concept list") if c.strip()]
    wanted = set(NUSWIDE_FILES) | {f"Labels_{c}.txt" for c in concepts}
    found = _find_files(root, wanted)
    for name in sorted(wanted - set(found)):
        raise UserError(f"{name} is missing under {root}; unpack the official NUS-WIDE lists "
                        f"(ImageList, NUS_WID_Tags, Groundtruth/AllLabels, ConceptsList) there")

    image_lines = [line for line in _read_lines(found["Imagelist.txt"], "image list") if line.strip()]
    n = len(image_lines)
    tag_names = [t.strip() for t in _read_lines(found["TagList1k.txt"], "tag list") if t.strip()]
    texts = _read_binary_rows(found["AllTags1k.txt"], n, len(tag_names), "tag file")
    all_labels = np.zeros((n, len(concepts)), np.uint8)
    for j, concept in enumerate(progress(concepts, desc="labels")):
        all_labels[:, j] = _read_binary_rows(found[f"Labels_{concept}.txt"], n, 1, "label file")[:, 0]

    frequency = collections.Counter({c: int(all_labels[:, j].sum()) for j, c in enumerate(concepts)})
    top = set(most_frequent(frequency, settings.num_concepts))
    columns = [j for j, c in enumerate(concepts) if c in top]  # official Concepts81 order
    labels = all_labels[:, columns]
    keep = labels.any(1)
    skipped = {"no_top_concept": int((~keep).sum())}
    if settings.require_tag:
        skipped["no_tag"] = int((keep & ~texts.any(1)).sum())
        keep &= texts.any(1)
    paths = [os.path.join(images_dir, _nuswide_relative_path(image_lines[i])) for i in np.flatnonzero(keep)]
    present = np.array([os.path.isfile(p) for p in paths], bool)
    if not present.all():
        absent = [p for p, ok in zip(paths, present) if not ok]
        if not settings.skip_missing_images:
            raise UserError(f"{len(absent)} listed images are missing under {images_dir} (first: {absent[0]}); "
                            f"fix --images or pass --skip-missing-images true")
        skipped["missing_image"] = len(absent)
        kept_rows = np.flatnonzero(keep)[present]
        keep = np.zeros(n, bool)
        keep[kept_rows] = True
        paths = [p for p, ok in zip(paths, present) if ok]
    if not keep.any():
        raise UserError(f"no image carries one of the {settings.num_concepts} most frequent concepts; "
                        f"check the label files under {root}")
    labels = labels[keep]
    counts = {"images": int(keep.sum()), "collection": n, "skipped": skipped,
              "vocabulary_size": len(tag_names), "labels": len(columns),
              "empty_text": int((texts[keep].sum(1) == 0).sum()), **_label_stats(labels)}
    return PreparedData("nuswide", paths, texts[keep], labels, tag_names,
                        [concepts[j] for j in columns], counts,
                        [found[k] for k in sorted(found)], dataclasses.asdict(settings))


# --------------------------------------------------------------------------- the writer

def pil_image():
    """PIL.Image; Pillow has no fallback here (it decodes and resizes every image)."""
    try:
        from PIL import Image
    except ImportError:
        raise UserError("preparing an image dataset needs Pillow to decode the images: pip install Pillow") from None
    return Image


def load_image(path, resize_filter="bilinear"):
    """uint8 (224, 224, 3) RGB: the whole image resized, no crop."""
    Image = pil_image()
    filters = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC}
    try:
        with Image.open(path) as image:
            image = image.convert("RGB").resize((IMAGE_SIZE, IMAGE_SIZE), filters[resize_filter])
            return np.asarray(image, np.uint8)
    except FileNotFoundError:
        raise UserError(f"image {path} is missing; restore it and run the same command again "
                        f"(the work done so far is kept)") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        raise UserError(f"image {path} cannot be decoded ({error}); replace the file and run the same "
                        f"command again (the work done so far is kept)") from None


def _fingerprint(prepared, output):
    digest = hashlib.sha256()
    for part in (json.dumps([prepared.image_paths, prepared.vocabulary, prepared.label_names,
                             prepared.settings, output.resize_filter, FORMAT_VERSION], default=str),
                 prepared.texts.tobytes(), prepared.labels.tobytes()):
        digest.update(part.encode() if isinstance(part, str) else part)
    return digest.hexdigest()


def create_dcmh_datasets(f, num_images, texts, labels):
    """`images` (empty, filled row by row), `YAll`, `LAll` in MATLAB order (axes reversed),
    the images with the items on MATLAB's last axis as in the authors' files.

    One image per chunk, so reading a row touches exactly one contiguous chunk."""
    f.create_dataset("images", (num_images, 3, IMAGE_SIZE, IMAGE_SIZE), np.uint8,
                     chunks=(1, 3, IMAGE_SIZE, IMAGE_SIZE))
    f.create_dataset("YAll", data=np.ascontiguousarray(np.asarray(texts, np.uint8).T), compression="gzip")
    f.create_dataset("LAll", data=np.ascontiguousarray(np.asarray(labels, np.uint8).T), compression="gzip")
    return f["images"]


def write_image_rows(images, start, block):
    """Writes (k, h, w, 3) images as rows start.. of the MATLAB-order dataset (h5py: k x 3 x w x h),
    one chunk each."""
    for offset, image in enumerate(block):
        images[start + offset] = np.ascontiguousarray(image.T)


def _open_partial(path, prepared, fingerprint):
    """Reopens a matching partial file (returns it and its finished rows) or starts a new one."""
    if os.path.exists(path):
        try:
            f = h5py.File(path, "a")
            if f.attrs.get("fingerprint") == fingerprint and "images" in f:
                return f, int(f.attrs["rows_done"])
            f.close()
            print(f"{path} belongs to other inputs or settings; starting over", file=sys.stderr)
        except OSError:  # a file cut off while being written: start over
            print(f"{path} is unreadable (interrupted while writing?); starting over", file=sys.stderr)
    f = h5py.File(path, "w")
    create_dcmh_datasets(f, len(prepared.image_paths), prepared.texts, prepared.labels)
    f.attrs["fingerprint"] = fingerprint
    f.attrs["rows_done"] = 0
    f.flush()
    return f, 0


def _image_sum(images, start, stop):
    """float64 sum of rows [start, stop) of a MATLAB-order image dataset, as (h, w, 3)."""
    total = np.zeros((IMAGE_SIZE, IMAGE_SIZE, 3), np.float64)
    for row in range(start, stop):  # row by row: one chunk per read (see write_image_rows)
        total += images[row].T
    return total


def write_dcmh_file(prepared, output):
    """Writes FILE.h5 (via FILE.h5.partial, resumable) and its vocabulary and manifest files."""
    out = output.out
    if not out:
        raise UserError("no output file given; pass --out FILE.h5")
    if os.path.exists(out) and not output.overwrite:
        raise UserError(f"{out} already exists; pass --overwrite true to replace it or choose another --out")
    if output.workers < 1 or output.chunk_rows < 1:
        raise UserError("--workers and --chunk-rows must be at least 1")
    pil_image()  # before any file is written
    split = None
    if output.split_sizes:
        if len(output.split_sizes) != 2:
            raise UserError(f"--split-sizes takes QUERY,TRAIN (two numbers), got {output.split_sizes}")
        split = permutation_split(len(prepared.image_paths), *output.split_sizes, seed=output.split_seed)
    os.makedirs(os.path.dirname(os.path.abspath(out)) or ".", exist_ok=True)
    partial = out + ".partial"
    n = len(prepared.image_paths)
    f, done = _open_partial(partial, prepared, _fingerprint(prepared, output))
    try:
        images = f["images"]
        pixel_sum = _image_sum(images, 0, done)  # recomputed from what is on disk, so always consistent
        if done:
            print(f"resuming {partial} at image {done} of {n}", file=sys.stderr)
        with concurrent.futures.ThreadPoolExecutor(output.workers) as pool, \
                progress(total=n, initial=done, desc=f"{prepared.dataset} images") as bar:
            for start in range(done, n, output.chunk_rows):
                stop = min(start + output.chunk_rows, n)
                block = np.stack(list(pool.map(lambda p: load_image(p, output.resize_filter),
                                               prepared.image_paths[start:stop])))
                write_image_rows(images, start, block)
                pixel_sum += block.sum(0, dtype=np.float64)
                f.flush()
                f.attrs["rows_done"] = stop  # the marker moves only after the rows are on disk
                f.flush()
                bar.update(stop - start)
        manifest = {
            "dataset": prepared.dataset, "format": "DCMH layout (MATLAB v7.3 axis order, images 224x224x3xN), prepare.py",
            "format_version": FORMAT_VERSION, "counts": prepared.counts,
            "arrays": {"images": [n, IMAGE_SIZE, IMAGE_SIZE, 3], "YAll": list(prepared.texts.shape),
                       "LAll": list(prepared.labels.shape)},
            "image_resize": f"whole image, no crop, PIL {output.resize_filter} to "
                            f"{IMAGE_SIZE}x{IMAGE_SIZE} (antialiased when shrinking), RGB",
            "sources": [os.path.abspath(p) for p in prepared.sources],
            "settings": prepared.settings,
            "output_settings": dataclasses.asdict(output),
            "split": {"file": os.path.basename(sidecar_paths(out)[2]) if split else None,
                      "seed": output.split_seed if split else None,
                      "sizes": {k: len(getattr(split, k)) for k in ("query", "train", "database")} if split else None,
                      "standard_sizes": dict(zip(("query", "train"), SPLIT_SIZES.get(prepared.dataset, ()))),
                      "note": "without a split file, utils.data.load_dataset draws the standard split with "
                              "--seed; database = every row but the queries"},
        }
        if "mean_image" in f:
            del f["mean_image"]
        f["mean_image"] = np.ascontiguousarray((pixel_sum / n).astype(np.float32).T)
        for key, names in (("vocabulary", prepared.vocabulary), ("label_names", prepared.label_names)):
            if key in f:
                del f[key]
            f.create_dataset(key, data=np.array(names, dtype=object), dtype=h5py.string_dtype())
        f.attrs["manifest"] = json.dumps(manifest, sort_keys=True)
        f.attrs["complete"] = True
    finally:
        f.close()
    vocab_path, manifest_path, split_path = sidecar_paths(out)
    io.save_json(vocab_path, {"vocabulary": prepared.vocabulary, "label_names": prepared.label_names})
    if split:
        split.save(split_path)
    io.save_json(manifest_path, manifest)
    os.replace(partial, out)  # atomic: FILE.h5 only ever appears finished
    return manifest


# --------------------------------------------------------------------------- command line

READERS = {"coco": (CocoSettings, "MS-COCO from instances/captions json and JPEG folders"),
           "flickr": (FlickrSettings, "MIRFLICKR-25K from the official download layout"),
           "nuswide": (NuswideSettings, "NUS-WIDE from the official lists and the image folder")}


def build_parser():
    parser = argparse.ArgumentParser(prog="python prepare.py", description=__doc__.split("\n\n")[0])
    subparsers = parser.add_subparsers(dest="dataset", required=True)
    for name, (settings_class, help_text) in READERS.items():
        sub = subparsers.add_parser(name, help=help_text, description=help_text)
        add_config_arguments(sub, settings_class)
        add_config_arguments(sub, OutputSettings)
        if name == "coco":
            sub.add_argument("--images", action="append", default=[],
                             help="a folder of COCO JPEGs (repeat for train and val folders)")
    return parser


def prepare(dataset, settings, output, image_dirs=()):
    pil_image()  # before the annotations are read (minutes at full scale)
    if dataset == "coco":
        prepared = read_coco(settings, list(image_dirs))
    elif dataset == "flickr":
        prepared = read_flickr(settings)
    else:
        prepared = read_nuswide(settings)
    return write_dcmh_file(prepared, output)


def main(argv=None):
    args = build_parser().parse_args(argv)
    settings = config_from_args(READERS[args.dataset][0], args)
    output = config_from_args(OutputSettings, args)
    if not output.out:
        output = dataclasses.replace(output, out=prepared_path(args.dataset))
    try:
        manifest = prepare(args.dataset, settings, output, getattr(args, "images", ()))
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"interrupted; run the same command again to continue {output.out}.partial", file=sys.stderr)
        return 130
    counts = manifest["counts"]
    print(f"wrote {output.out}: {counts['images']} images, {counts['vocabulary_size']}-d text, "
          f"{counts['labels']} labels, skipped {counts['skipped']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

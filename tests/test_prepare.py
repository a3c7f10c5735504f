"""Dataset preparation from the official raw layouts: real COCO subset and tiny files written here."""
import collections
import json
import os
import re

import h5py
import numpy as np
import pytest
from PIL import Image

import prepare
from tests.conftest import shared_path
from utils.data import load_dataset
from utils.data.dcmh import HDF5Images, read_dcmh
from utils.errors import UserError


def run_prepare(argv):
    """Runs the command line in-process; UserError propagates (main() would print it)."""
    args = prepare.build_parser().parse_args(argv)
    settings = prepare.config_from_args(prepare.READERS[args.dataset][0], args)
    output = prepare.config_from_args(prepare.OutputSettings, args)
    return prepare.prepare(args.dataset, settings, output, getattr(args, "images", ()))


def save_jpeg(path, pixels):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(pixels).save(path, quality=95)


def two_colour_image(height=60, width=90, top=(255, 0, 0), bottom=(0, 0, 255)):
    """Top half one colour, bottom half another: shows whether rows and columns were swapped."""
    pixels = np.zeros((height, width, 3), np.uint8)
    pixels[:height // 2] = top
    pixels[height // 2:] = bottom
    return pixels


# --------------------------------------------------------------------------- real COCO subset

def independent_words(text):
    """The documented rule, written without the module's tokenizer: letter runs, lowercased,
    at least 2 letters, not a stop word."""
    words = re.sub(r"[^a-z]+", " ", text.lower()).split()
    return [w for w in words if len(w) >= 2 and w not in prepare.STOP_WORDS]


@pytest.mark.slow
def test_real_coco_mini_counts_match_the_annotation_files(tmp_path):
    root = shared_path("data", "coco-mini")
    out = str(tmp_path / "coco.h5")
    manifest = run_prepare(["coco", "--annotations", os.path.join(root, "annotations"),
                            "--images", os.path.join(root, "train2017"),
                            "--images", os.path.join(root, "val2017"), "--out", out, "--workers", "2",
                            "--split-sizes", "20,80", "--split-seed", "3"])

    # The annotation files read with json, independently of pycocotools and the module.
    expected_labels, expected_words, listed = [], [], set()
    for part in ("train2017", "val2017"):
        with open(os.path.join(root, "annotations", f"instances_{part}.json")) as f:
            instances = json.load(f)
        with open(os.path.join(root, "annotations", f"captions_{part}.json")) as f:
            captions = json.load(f)
        category_order = sorted(c["id"] for c in instances["categories"])
        cats, caps = collections.defaultdict(set), collections.defaultdict(list)
        for a in instances["annotations"]:
            cats[a["image_id"]].add(a["category_id"])
        for a in captions["annotations"]:
            caps[a["image_id"]].append(a["caption"])
        for image in sorted(instances["images"], key=lambda im: im["id"]):
            listed.add(image["file_name"])
            if cats[image["id"]]:
                expected_labels.append([int(c in cats[image["id"]]) for c in category_order])
                expected_words.append({w for c in caps[image["id"]] for w in independent_words(c)})
    expected_labels = np.array(expected_labels)
    on_disk = os.listdir(os.path.join(root, "train2017")) + os.listdir(os.path.join(root, "val2017"))
    vocabulary = sorted(set().union(*expected_words))  # fewer than 2,000 distinct words: all of them

    assert len(expected_labels) == 159 and len(on_disk) == 239  # what the data README states
    counts = manifest["counts"]
    assert counts["images"] == 159
    assert counts["skipped"] == {"no_category": 0, "not_in_annotations": 239 - len(listed)} == \
        {"no_category": 0, "not_in_annotations": 80}
    assert counts["labels"] == 80 and counts["vocabulary_size"] == len(vocabulary)
    assert counts["labels_per_image_mean"] == pytest.approx(expected_labels.sum(1).mean())

    images, texts, labels, mean_image = read_dcmh(out)
    assert isinstance(images, HDF5Images) and images.shape == (159, 224, 224, 3)
    np.testing.assert_array_equal(labels, expected_labels)  # per image, official category order
    with open(prepare.sidecar_paths(out)[0]) as f:
        saved_vocabulary = json.load(f)["vocabulary"]
    assert sorted(saved_vocabulary) == vocabulary and texts.shape == (159, len(vocabulary))
    for i in (0, 80, 158):
        assert {saved_vocabulary[j] for j in np.flatnonzero(texts[i])} == expected_words[i]
    all_pixels = images[np.arange(159)].astype(np.float64)
    np.testing.assert_allclose(mean_image, all_pixels.mean(0), atol=1e-3)
    with open(prepare.sidecar_paths(out)[1]) as f:
        assert json.load(f)["counts"] == counts
    assert not os.path.exists(out + ".partial")
    split_file = prepare.sidecar_paths(out)[2]
    assert manifest["split"]["sizes"] == {"query": 20, "train": 80, "database": 139}
    data = load_dataset("coco", out, split_file=split_file)  # what train.py --split-file does
    assert data.image_kind == "images" and data.num_classes == 80
    assert sorted(np.concatenate([data.split.query, data.split.database])) == list(range(159))


# --------------------------------------------------------------------------- tiny COCO layout

def write_tiny_coco(root):
    """Two parts; categories listed out of id order; an unannotated image; an image with no
    captions; a grayscale image; a file on disk that no annotation file lists."""
    rng = np.random.RandomState(0)
    categories = [{"id": 7, "name": "train", "supercategory": "x"},
                  {"id": 2, "name": "bicycle", "supercategory": "x"},
                  {"id": 5, "name": "airplane", "supercategory": "x"}]
    parts = {
        "trainX": {  # image id: (categories, captions)
            11: ([2], ["A red bicycle by the wall.", "The bike is red."]),
            10: ([7, 5], ["An airplane above a train", "Trains and planes!"]),
            12: ([], ["nothing labelled here"]),
        },
        "valX": {
            30: ([5], []),
            31: ([2, 2, 7], ["a bicycle on a train; bicycle's wheel"]),
        },
    }
    os.makedirs(os.path.join(root, "annotations"))
    for part, entries in parts.items():
        images, annotations, captions = [], [], []
        for image_id, (cats, caps) in entries.items():
            file_name = f"{image_id:012d}.jpg"
            images.append({"id": image_id, "file_name": file_name, "height": 40, "width": 50})
            pixels = two_colour_image(40, 50) if image_id == 10 else rng.randint(0, 256, (40, 50, 3)).astype(np.uint8)
            if image_id == 31:
                pixels = pixels[..., 0]  # grayscale JPEG
            save_jpeg(os.path.join(root, part, file_name), pixels)
            for c in cats:
                annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": c,
                                    "bbox": [0, 0, 1, 1], "area": 1.0, "iscrowd": 0, "segmentation": []})
            for text in caps:
                captions.append({"id": len(captions) + 1, "image_id": image_id, "caption": text})
        common = {"info": {}, "licenses": [], "images": images}
        with open(os.path.join(root, "annotations", f"instances_{part}.json"), "w") as f:
            json.dump({**common, "annotations": annotations, "categories": categories}, f)
        with open(os.path.join(root, "annotations", f"captions_{part}.json"), "w") as f:
            json.dump({**common, "annotations": captions}, f)
    save_jpeg(os.path.join(root, "valX", "000000000099.jpg"), np.zeros((8, 8, 3), np.uint8))


def coco_args(root, out, *extra):
    return ["coco", "--annotations", os.path.join(root, "annotations"), "--images", os.path.join(root, "trainX"),
            "--images", os.path.join(root, "valX"), "--out", out, "--workers", "2", *extra]


def test_tiny_coco_labels_vocabulary_and_pixels(tmp_path):
    root, out = str(tmp_path / "coco"), str(tmp_path / "tiny.h5")
    write_tiny_coco(root)
    manifest = run_prepare(coco_args(root, out, "--vocab", "3"))
    counts = manifest["counts"]
    assert counts["images"] == 4  # ids 10, 11 (trainX, sorted by id), then 30, 31
    assert counts["skipped"] == {"no_category": 1, "not_in_annotations": 1}
    assert counts["without_captions"] == 1 and counts["vocabulary_size"] == 3
    images, texts, labels, mean_image = read_dcmh(out)
    # Category columns in id order (bicycle 2, airplane 5, train 7), whatever the json order.
    np.testing.assert_array_equal(labels, [[0, 1, 1], [1, 0, 0], [0, 1, 0], [1, 0, 1]])
    with open(prepare.sidecar_paths(out)[0]) as f:
        vocab = json.load(f)
    assert vocab["label_names"] == ["bicycle", "airplane", "train"]
    # Word counts: bicycle 3, red 2, train 2 (tie with red: alphabetical), then airplane/bike/... 1.
    assert vocab["vocabulary"] == ["bicycle", "red", "train"]
    np.testing.assert_array_equal(texts, [[0, 0, 1], [1, 1, 0], [0, 0, 0], [1, 0, 1]])  # binary: present or not
    # Pixels: image 10 (top red, bottom blue) keeps its orientation through the MATLAB-order file.
    first = images[np.array([0])][0].astype(int)
    assert first.shape == (224, 224, 3)
    assert (first[:100, :, 0] > 200).all() and (first[:100, :, 2] < 50).all()
    assert (first[124:, :, 2] > 200).all() and (first[124:, :, 0] < 50).all()
    gray = images[np.array([3])][0]
    np.testing.assert_array_equal(gray[..., 0], gray[..., 2])  # grayscale became RGB
    np.testing.assert_allclose(mean_image, images[np.arange(4)].mean(0), atol=1e-3)
    # The authors' layout: MATLAB 224 x 224 x 3 x N, which h5py shows as N x 3 x 224 x 224 and
    # the SSAH program reads with transpose(0, 3, 2, 1); it sees the same pixels as read_dcmh.
    with h5py.File(out, "r") as f:
        assert f["images"].shape == (4, 3, 224, 224)
        np.testing.assert_array_equal(f["images"][()].transpose(0, 3, 2, 1), images[np.arange(4)])

    counted = run_prepare(coco_args(root, str(tmp_path / "count.h5"), "--vocab", "3", "--text-values", "count"))
    assert counted["counts"]["images"] == 4
    _, count_texts, _, _ = read_dcmh(str(tmp_path / "count.h5"))
    np.testing.assert_array_equal(count_texts[3], [2, 0, 1])  # "bicycle" twice in image 31's caption


def test_coco_bad_inputs_are_named_and_leave_no_output(tmp_path):
    root, out = str(tmp_path / "coco"), str(tmp_path / "tiny.h5")
    write_tiny_coco(root)
    os.remove(os.path.join(root, "valX", "000000000031.jpg"))
    with pytest.raises(UserError, match="000000000031.jpg"):
        run_prepare(coco_args(root, out))
    instances_path = os.path.join(root, "annotations", "instances_trainX.json")
    with open(instances_path) as f:
        instances = json.load(f)
    instances["annotations"][0]["category_id"] = 99
    with open(instances_path, "w") as f:
        json.dump(instances, f)
    with pytest.raises(UserError, match=r"instances_trainX.json is malformed \(image 11 has category ids \[99\]"):
        run_prepare(coco_args(root, out))
    write_tiny_coco(str(tmp_path / "fresh"))
    with open(os.path.join(tmp_path, "fresh", "annotations", "captions_valX.json"), "w") as f:
        f.write('{"images": [')
    with pytest.raises(UserError, match="captions_valX.json is malformed"):
        run_prepare(coco_args(str(tmp_path / "fresh"), out))
    os.remove(os.path.join(tmp_path, "fresh", "annotations", "captions_valX.json"))
    with pytest.raises(UserError, match="captions_valX.json is missing"):
        run_prepare(coco_args(str(tmp_path / "fresh"), out))
    for sub in ("annotations", "trainX", "valX"):
        os.makedirs(tmp_path / "empty" / sub)
    with pytest.raises(UserError, match="no instances_"):
        run_prepare(coco_args(str(tmp_path / "empty"), out))
    assert not os.path.exists(out)


def test_interrupted_run_resumes_and_matches_a_clean_run(tmp_path, monkeypatch):
    root = str(tmp_path / "coco")
    write_tiny_coco(root)
    clean = str(tmp_path / "clean.h5")
    run_prepare(coco_args(root, clean, "--chunk-rows", "2"))

    out = str(tmp_path / "resumed.h5")
    target = os.path.join(root, "valX", "000000000030.jpg")  # row 2, in the second chunk
    with open(target, "rb") as f:
        good_bytes = f.read()
    with open(target, "wb") as f:
        f.write(b"\xff\xd8 not a jpeg")
    with pytest.raises(UserError, match="000000000030.jpg cannot be decoded"):
        run_prepare(coco_args(root, out, "--chunk-rows", "2"))
    assert not os.path.exists(out)  # never a half-written file where the finished one belongs
    with h5py.File(out + ".partial", "r") as f:
        assert f.attrs["rows_done"] == 2

    with open(target, "wb") as f:
        f.write(good_bytes)
    loaded = []
    original = prepare.load_image
    monkeypatch.setattr(prepare, "load_image", lambda path, *a: loaded.append(path) or original(path, *a))
    run_prepare(coco_args(root, out, "--chunk-rows", "2"))
    assert len(loaded) == 2  # only the rows after the marker were decoded again
    assert not os.path.exists(out + ".partial")
    for a, b in zip(read_dcmh(clean), read_dcmh(out)):
        if isinstance(a, HDF5Images):
            a, b = a[np.arange(len(a))], b[np.arange(len(b))]
        np.testing.assert_array_equal(a, b)

    with pytest.raises(UserError, match="already exists"):
        run_prepare(coco_args(root, out))


def test_partial_from_other_settings_or_cut_off_is_started_over(tmp_path, capsys):
    root = str(tmp_path / "coco")
    write_tiny_coco(root)
    out = str(tmp_path / "x.h5")
    with h5py.File(out + ".partial", "w") as f:
        f.attrs["fingerprint"] = "something else"
        f.attrs["rows_done"] = 3
    run_prepare(coco_args(root, out))
    assert read_dcmh(out)[0].shape[0] == 4 and "belongs to other inputs" in capsys.readouterr().err
    with open(out + ".partial", "wb") as f:  # what a killed writer can leave behind
        f.write(b"\x89HDF\r\n\x1a\n" + b"\0" * 50)
    run_prepare(coco_args(root, out, "--overwrite", "true"))
    assert read_dcmh(out)[0].shape[0] == 4 and "unreadable" in capsys.readouterr().err


# --------------------------------------------------------------------------- tiny MIRFLICKR layout

FLICKR_TAGS = {  # image id -> tags; counts: sky 4, sea 3, dog 2, rare 1, odd 1
    1: ["sky", "sea"], 2: ["sky", "rare"], 3: ["dog"], 4: [], 5: ["sky", "dog", "sea"],
    6: ["sky"], 7: ["sea"], 8: ["odd"],
}
FLICKR_CONCEPTS = {"animals": [3, 5, 8], "clouds": [1, 2, 4, 6], "sea": [1, 7], "baby": []}


def write_tiny_flickr(root):
    rng = np.random.RandomState(1)
    os.makedirs(os.path.join(root, "mirflickr", "meta", "tags"))
    for i, tags in FLICKR_TAGS.items():
        save_jpeg(os.path.join(root, "mirflickr", f"im{i}.jpg"), rng.randint(0, 256, (30, 20, 3)).astype(np.uint8))
        with open(os.path.join(root, "mirflickr", "meta", "tags", f"tags{i}.txt"), "w") as f:
            f.write("".join(t + "\r\n" for t in tags))
    annotations = os.path.join(root, "mirflickr25k_annotations_v080")
    os.makedirs(annotations)
    for concept, ids in FLICKR_CONCEPTS.items():
        with open(os.path.join(annotations, f"{concept}.txt"), "w") as f:
            f.write("".join(f"{i}\n" for i in ids))
    with open(os.path.join(annotations, "clouds_r1.txt"), "w") as f:  # "relevant" variant: not a concept
        f.write("7\n")
    with open(os.path.join(annotations, "README.txt"), "w") as f:
        f.write("annotations\n")
    return os.path.join(root, "mirflickr"), annotations


def flickr_args(folder, annotations, out, min_tag_count=2):
    return ["flickr", "--root", folder, "--annotations", annotations, "--out", out, "--num-images", "8",
            "--min-tag-count", str(min_tag_count), "--workers", "1"]


def test_tiny_flickr_follows_the_dcmh_selection_rule(tmp_path):
    folder, annotations = write_tiny_flickr(str(tmp_path))
    out = str(tmp_path / "flickr.h5")
    counts = run_prepare(flickr_args(folder, annotations, out))["counts"]
    # Vocabulary: tags carried by >= 2 images, most frequent first ("rare" is out).
    # Kept: a concept and a vocabulary tag. 4: no tag; 8: only "odd"; 2 keeps "sky".
    kept = [1, 2, 3, 5, 6, 7]
    assert counts["images"] == len(kept) and counts["vocabulary_size"] == 3
    assert counts["skipped"] == {"no_label": 0, "no_frequent_tag": 2}
    images, texts, labels, _ = read_dcmh(out)
    with open(prepare.sidecar_paths(out)[0]) as f:
        vocab = json.load(f)
    assert vocab["vocabulary"] == ["sky", "sea", "dog"]
    assert vocab["label_names"] == ["animals", "baby", "clouds", "sea"]  # _r1 and README ignored
    np.testing.assert_array_equal(texts, [[int(t in FLICKR_TAGS[i]) for t in ("sky", "sea", "dog")] for i in kept])
    np.testing.assert_array_equal(labels, [[int(i in FLICKR_CONCEPTS[c]) for c in vocab["label_names"]]
                                           for i in kept])
    with Image.open(os.path.join(folder, "im3.jpg")) as im:
        expected = np.asarray(im.convert("RGB").resize((224, 224), Image.Resampling.BILINEAR))
    np.testing.assert_array_equal(images[np.array([2])][0], expected)

    # A stricter rule drops more: with min tag count 4 only "sky" remains.
    strict = run_prepare(flickr_args(folder, annotations, str(tmp_path / "strict.h5"), min_tag_count=4))["counts"]
    assert strict["images"] == 4 and strict["vocabulary_size"] == 1


def test_flickr_bad_inputs_are_named(tmp_path):
    folder, annotations = write_tiny_flickr(str(tmp_path))
    out = str(tmp_path / "flickr.h5")
    with open(os.path.join(annotations, "sea.txt"), "a") as f:
        f.write("seven\n")
    with pytest.raises(UserError, match=r"sea.txt line 3 is not an image id"):
        run_prepare(flickr_args(folder, annotations, out))
    with open(os.path.join(annotations, "sea.txt"), "w") as f:
        f.write("1\n9\n")
    with pytest.raises(UserError, match="outside 1..8"):
        run_prepare(flickr_args(folder, annotations, out))
    os.remove(os.path.join(annotations, "sea.txt"))
    os.remove(os.path.join(folder, "meta", "tags", "tags6.txt"))
    with pytest.raises(UserError, match="tags6.txt is missing"):
        run_prepare(flickr_args(folder, annotations, out))
    os.remove(os.path.join(folder, "im5.jpg"))
    with pytest.raises(UserError, match="im5.jpg is missing"):
        run_prepare(flickr_args(folder, annotations, out))
    assert not os.path.exists(out)


# --------------------------------------------------------------------------- tiny NUS-WIDE layout

NUS_CONCEPTS = ["animal", "beach", "clouds", "dog", "sky"]
NUS_LABELS = np.array([  # rows: images; columns: NUS_CONCEPTS. Frequencies 3, 1, 4, 2, 5.
    [1, 0, 1, 0, 1],
    [0, 1, 0, 0, 0],
    [0, 0, 1, 1, 1],
    [0, 0, 0, 0, 0],
    [1, 0, 1, 0, 1],
    [0, 0, 0, 1, 0],
    [1, 0, 1, 0, 1],
    [0, 0, 0, 0, 1],
])
NUS_TAGS = np.array([[1, 0, 0, 1], [0, 0, 1, 0], [0, 0, 0, 0], [1, 1, 0, 0],
                     [0, 1, 0, 0], [0, 0, 0, 1], [1, 0, 0, 0], [0, 0, 0, 0]])


def write_tiny_nuswide(root):
    rng = np.random.RandomState(2)
    lists, images = os.path.join(root, "lists"), os.path.join(root, "Flickr")
    for sub in ("ImageList", "NUS_WID_Tags", "ConceptsList", "Groundtruth/AllLabels", "Groundtruth/TrainTestLabels"):
        os.makedirs(os.path.join(lists, sub))
    lines = []
    for i in range(len(NUS_LABELS)):
        folder = "actor" if i % 2 else "zebra"
        name = f"{i:04d}_{1000 + i}.jpg"
        save_jpeg(os.path.join(images, folder, name), rng.randint(0, 256, (25, 35, 3)).astype(np.uint8))
        lines.append(f"C:\\ImageData\\Flickr\\{folder}\\{name}")
    with open(os.path.join(lists, "ImageList", "Imagelist.txt"), "w") as f:
        f.write("\r\n".join(lines) + "\r\n")
    with open(os.path.join(lists, "NUS_WID_Tags", "AllTags1k.txt"), "w") as f:
        f.write("".join("\t".join(str(v) for v in row) + "\t\n" for row in NUS_TAGS))
    with open(os.path.join(lists, "NUS_WID_Tags", "TagList1k.txt"), "w") as f:
        f.write("sun\nwater\nnight\nblue\n")
    with open(os.path.join(lists, "ConceptsList", "Concepts81.txt"), "w") as f:
        f.write("\n".join(NUS_CONCEPTS) + "\n")
    for j, concept in enumerate(NUS_CONCEPTS):
        with open(os.path.join(lists, "Groundtruth", "AllLabels", f"Labels_{concept}.txt"), "w") as f:
            f.write("".join(f"{v}\n" for v in NUS_LABELS[:, j]))
        with open(os.path.join(lists, "Groundtruth", "TrainTestLabels", f"Labels_{concept}_Train.txt"), "w") as f:
            f.write("1\n")  # a decoy with another name: never read
    return lists, images


def nuswide_args(lists, images, out, *extra):
    return ["nuswide", "--root", lists, "--images", images, "--out", out, "--num-concepts", "3",
            "--workers", "1", *extra]


def test_tiny_nuswide_top_concepts_and_tags(tmp_path):
    lists, images = write_tiny_nuswide(str(tmp_path))
    out = str(tmp_path / "nus.h5")
    counts = run_prepare(nuswide_args(lists, images, out))["counts"]
    top = [0, 2, 4]  # animal 3, clouds 4, sky 5: the 3 most frequent, in Concepts81 order
    kept = np.flatnonzero(NUS_LABELS[:, top].any(1))  # rows 0, 2, 4, 6, 7
    assert counts["images"] == len(kept) == 5 and counts["skipped"] == {"no_top_concept": 3}
    images_out, texts, labels, _ = read_dcmh(out)
    np.testing.assert_array_equal(labels, NUS_LABELS[kept][:, top])
    np.testing.assert_array_equal(texts, NUS_TAGS[kept])
    with open(prepare.sidecar_paths(out)[0]) as f:
        vocab = json.load(f)
    assert vocab["label_names"] == ["animal", "clouds", "sky"] and vocab["vocabulary"] == ["sun", "water", "night", "blue"]
    with Image.open(os.path.join(images, "actor", "0007_1007.jpg")) as im:  # row 7, the last kept
        expected = np.asarray(im.convert("RGB").resize((224, 224), Image.Resampling.BILINEAR))
    np.testing.assert_array_equal(images_out[np.array([4])][0], expected)

    tagged = run_prepare(nuswide_args(lists, images, str(tmp_path / "tagged.h5"), "--require-tag", "true"))
    assert tagged["counts"]["images"] == 3 and tagged["counts"]["skipped"]["no_tag"] == 2  # rows 2 and 7


def test_nuswide_missing_files_are_named(tmp_path):
    lists, images = write_tiny_nuswide(str(tmp_path))
    out = str(tmp_path / "nus.h5")
    os.remove(os.path.join(images, "zebra", "0004_1004.jpg"))
    with pytest.raises(UserError, match="0004_1004.jpg"):
        run_prepare(nuswide_args(lists, images, out))
    counts = run_prepare(nuswide_args(lists, images, out, "--skip-missing-images", "true"))["counts"]
    assert counts["images"] == 4 and counts["skipped"]["missing_image"] == 1
    with open(os.path.join(lists, "NUS_WID_Tags", "AllTags1k.txt"), "a") as f:
        f.write("1\t0\n")
    with pytest.raises(UserError, match="AllTags1k.txt is malformed"):
        run_prepare(nuswide_args(lists, images, str(tmp_path / "b.h5")))
    os.remove(os.path.join(lists, "Groundtruth", "AllLabels", "Labels_dog.txt"))
    with pytest.raises(UserError, match="Labels_dog.txt is missing"):
        run_prepare(nuswide_args(lists, images, str(tmp_path / "b.h5")))
    assert not os.path.exists(str(tmp_path / "b.h5"))


def test_command_line_prints_one_line_errors(tmp_path, capsys):
    assert prepare.main(["flickr", "--root", str(tmp_path / "nowhere"), "--annotations", str(tmp_path),
                         "--out", str(tmp_path / "x.h5")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: MIRFLICKR folder") and "\n" not in err

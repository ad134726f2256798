"""Emotion anchors: k-means per class, backends, padding of small classes, build_anchors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from srs_core import store
from srs_core.data.ser30k import EMOTIONS
from srs_core.emotion.anchors import (
    FaissKMeans,
    KMeansResult,
    anchor_uris,
    build_anchors,
    cluster_classes,
    get_backend,
    inertia,
    kmcuda_available,
    kmeans_plusplus,
)
from srs_core.errors import ConfigError, DataError


def _clustered(per_class: int, dim: int, blobs: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(len(EMOTIONS)), per_class)
    centers = np.maximum(rng.normal(size=(len(EMOTIONS), blobs, dim)), 0) * 3
    member = rng.integers(blobs, size=len(labels))
    noise = rng.normal(size=(len(labels), dim)) * rng.uniform(0.3, 1.0, size=(len(labels), 1))
    features = np.maximum(centers[labels, member] + noise, 0).astype(np.float32)
    return features, labels


def test_inertia_matches_a_hand_computed_value() -> None:
    features = np.array([[0, 0], [2, 0], [10, 10]], dtype=np.float32)
    centroids = np.array([[1, 0], [10, 11]], dtype=np.float32)
    assert inertia(features, centroids) == pytest.approx(1 + 1 + 1)


def test_kmeans_plusplus_picks_distinct_points_and_is_seeded() -> None:
    features, _ = _clustered(50, 16, 4, seed=1)
    seeds = kmeans_plusplus(features, 6, seed=3)
    assert seeds.shape == (6, 16)
    assert len({row.tobytes() for row in seeds}) == 6
    assert np.array_equal(seeds, kmeans_plusplus(features, 6, seed=3))
    assert not np.array_equal(seeds, kmeans_plusplus(features, 6, seed=4))


def test_anchors_shape_order_and_determinism() -> None:
    features, labels = _clustered(120, 32, 6, seed=0)
    k = 5
    anchors, stats = cluster_classes(features, labels, k, FaissKMeans(), iterations=30, seed=7)
    assert anchors.shape == (7 * k, 32) and anchors.dtype == np.float32
    again, _ = cluster_classes(features, labels, k, FaissKMeans(), iterations=30, seed=7)
    assert np.array_equal(anchors, again)
    other, _ = cluster_classes(features, labels, k, FaissKMeans(), iterations=30, seed=8)
    assert not np.array_equal(anchors, other)
    for c, name in enumerate(EMOTIONS):
        block = anchors[c * k:(c + 1) * k]
        members = features[labels == c]
        # each class block is made of that class's clusters: close to its own members
        assert inertia(members, block) == pytest.approx(stats["inertia"][name], rel=1e-5)
        assert inertia(members, block) < inertia(members, anchors[((c + 1) % 7) * k:][:k])
    assert stats["padded"] == {} and stats["non_finite_zeroed"] == 0


def test_cpu_backend_inertia_within_one_percent_of_sklearn() -> None:
    from sklearn.cluster import KMeans

    features, labels = _clustered(600, 128, 30, seed=2)
    k = 12
    _, stats = cluster_classes(features, labels, k, FaissKMeans(), iterations=50, seed=0)
    reference = 0.0
    for c in range(len(EMOTIONS)):
        members = features[labels == c]
        fitted = KMeans(n_clusters=k, n_init=1, random_state=c).fit(members)
        reference += inertia(members, fitted.cluster_centers_)
    assert sum(stats["inertia"].values()) <= 1.01 * reference


def test_class_with_fewer_images_than_k_repeats_them() -> None:
    features, labels = _clustered(40, 8, 3, seed=4)
    keep = (labels != 2) | (np.arange(len(labels)) % 40 < 3)  # Disgust keeps 3 images
    features, labels = features[keep], labels[keep]
    anchors, stats = cluster_classes(features, labels, 5, FaissKMeans(), iterations=10, seed=0)
    block = anchors[2 * 5:3 * 5]
    members = features[labels == 2]
    assert np.array_equal(block, members[[0, 1, 2, 0, 1]])
    assert stats["padded"] == {"Disgust": 3}
    assert stats["inertia"]["Disgust"] == pytest.approx(0.0, abs=1e-3)


def test_class_without_images_is_a_clear_error() -> None:
    features, labels = _clustered(20, 8, 2, seed=5)
    keep = labels != 6
    with pytest.raises(DataError, match="Neutral"):
        cluster_classes(features[keep], labels[keep], 3, FaissKMeans(), iterations=5)


class _NanBackend:
    """A backend double whose first centroid is NaN, as libKMCUDA leaves empty clusters."""

    name, detail = "nan", "test double"

    def fit(self, features, k, iterations, seed):
        centroids = features[:k].copy()
        centroids[0] = np.nan
        return KMeansResult(centroids, iterations)


def test_nan_centroids_become_zero() -> None:
    features, labels = _clustered(20, 8, 2, seed=6)
    anchors, stats = cluster_classes(features, labels, 3, _NanBackend(), iterations=1)
    assert np.isfinite(anchors).all()
    assert not anchors[0].any() and stats["non_finite_zeroed"] == 7 * 8


def test_non_finite_features_are_zeroed_and_counted_before_kmeans() -> None:
    features, labels = _clustered(30, 8, 2, seed=7)
    broken = features.copy()
    happy = np.flatnonzero(labels == 1)
    broken[happy[:3], 0] = np.nan  # three Happiness rows with a NaN, one Anger row with +inf
    broken[np.flatnonzero(labels == 5)[0], 4] = np.inf
    anchors, stats = cluster_classes(broken, labels, 3, FaissKMeans(), iterations=10, seed=1)
    assert np.isfinite(anchors).all()
    assert stats["non_finite_rows"] == {"Happiness": 3, "Anger": 1}
    assert all(np.isfinite(v) for v in stats["inertia"].values())
    # the same anchors as clustering the features with those values set to 0
    zeroed = np.nan_to_num(broken, nan=0.0, posinf=0.0, neginf=0.0)
    expected, _ = cluster_classes(zeroed, labels, 3, FaissKMeans(), iterations=10, seed=1)
    assert np.array_equal(anchors, expected)
    assert np.isnan(broken).sum() == 3  # the caller's array is left as it was


def test_class_whose_features_are_all_non_finite_is_an_error_naming_it() -> None:
    features, labels = _clustered(20, 8, 2, seed=8)
    features[labels == 3] = -np.inf
    features[labels == 4, 2] = np.nan
    with pytest.raises(DataError, match=r"class\(es\) Fear, Sadness is NaN or infinite"):
        cluster_classes(features, labels, 3, FaissKMeans(), iterations=5)


def test_teacher_with_non_finite_weights_is_refused_naming_the_tensor(
    teacher_weights: Path, tmp_path: Path
) -> None:
    from srs_core.emotion.teacher import load_teacher

    state = torch.load(teacher_weights, weights_only=True)
    state["layer2.0.bn1.running_var"][5] = float("nan")
    state["layer3.1.conv2.weight"].view(-1)[:4] = float("inf")
    path = tmp_path / "diverged.pth"
    torch.save(state, path)
    with pytest.raises(ConfigError, match=r"diverged.pth: tensor 'layer2.0.bn1.running_var' "
                                          r"has 1 non-finite value\(s\)"):
        load_teacher(str(path), "cpu")
    assert load_teacher(str(teacher_weights), "cpu") is not None


def test_backend_selection() -> None:
    assert get_backend("cpu").name == "cpu"
    assert get_backend("auto").name == ("kmcuda" if kmcuda_available() else "cpu")
    with pytest.raises(ConfigError, match="not one of"):
        get_backend("sklearn")
    if not kmcuda_available():
        with pytest.raises(ConfigError, match="libKMCUDA"):
            get_backend("kmcuda")


def test_anchor_uris_with_and_without_suffix() -> None:
    assert anchor_uris("s3://b/anchors-k60") == ("s3://b/anchors-k60.npy", "s3://b/anchors-k60.json")
    assert anchor_uris("/x/a.npy") == ("/x/a.npy", "/x/a.json")


# ----------------------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def ser30k(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Tiny SER30K with one undecodable image and one label out of range."""
    from srs_core.data.synth import write_ser30k

    root = tmp_path_factory.mktemp("ser30k")
    write_ser30k(str(root), seed=1, images=56, image_size=32)
    annotations = root / "Annotations" / "image-level" / "train.json"
    document = json.loads(annotations.read_text("utf-8"))
    entries = document["annotations"]
    (root / "Images" / entries[0]["topic"] / entries[0]["file_name"]).write_bytes(b"not an image")
    entries[1]["anno"] = 9
    annotations.write_text(json.dumps(document), "utf-8")
    return root


@pytest.fixture(scope="module")
def teacher_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random-init teacher backbone, saved as `srs emotion train` saves it."""
    from srs_core.emotion.teacher import backbone_state_dict, create_teacher_model

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("teacher") / "teacher.pth"
    torch.save(backbone_state_dict(create_teacher_model()), path)
    return path


def test_build_anchors_end_to_end_counts_bad_images(
    ser30k: Path, teacher_weights: Path, tmp_path: Path
) -> None:
    out = str(tmp_path / "anchors-k2")
    sidecar = build_anchors(str(ser30k), str(teacher_weights), 2, out, backend="cpu", seed=3,
                            image_size=32, iterations=10, batch_size=16)
    anchors = np.load(out + ".npy", allow_pickle=False)
    assert anchors.shape == (14, 2048) and anchors.dtype == np.float32
    assert np.isfinite(anchors).all()
    assert json.loads(Path(out + ".json").read_text("utf-8")) == sidecar
    assert sidecar["shape"] == [14, 2048] and sidecar["backend"] == "cpu"
    assert sum(sidecar["counts"].values()) == 54  # 56 images, one undecodable, one bad label
    problems = sidecar["skipped"]["problems"]
    assert problems["image_corrupt"]["count"] == 1 and problems["bad_label"]["count"] == 1
    assert set(sidecar["inertia"]) == set(EMOTIONS) and sidecar["non_finite_rows"] == {}
    again = build_anchors(str(ser30k), str(teacher_weights), 2, str(tmp_path / "again.npy"),
                          backend="cpu", seed=3, image_size=32, iterations=10, batch_size=16)
    assert np.array_equal(anchors, np.load(tmp_path / "again.npy", allow_pickle=False))
    assert again["inertia"] == sidecar["inertia"]


def test_build_anchors_through_s3(ser30k: Path, teacher_weights: Path, s3_server: str) -> None:
    store.copy_tree(str(ser30k), store.join(s3_server, "ser30k"), progress=False)
    store.upload(teacher_weights, store.join(s3_server, "teacher", "teacher.pth"))
    out = store.join(s3_server, "anchors", "anchors-k1.npy")
    features = store.join(s3_server, "anchors", "features.npz")
    sidecar = build_anchors(store.join(s3_server, "ser30k"),
                            store.join(s3_server, "teacher", "teacher.pth"), 1, out,
                            backend="cpu", image_size=32, iterations=5, features_uri=features)
    assert sidecar["anchors"] == out
    anchors = np.load(store.fetch(out), allow_pickle=False)
    assert anchors.shape == (7, 2048)
    assert json.loads(store.read_text(store.join(s3_server, "anchors", "anchors-k1.json")))
    saved = np.load(store.fetch(features), allow_pickle=False)
    assert saved["features"].shape == (54, 2048) and saved["labels"].shape == (54,)


def test_build_anchors_without_teacher_is_a_config_error(ser30k: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="teacher"):
        build_anchors(str(ser30k), "", 2, str(tmp_path / "a.npy"))


def test_k_beyond_what_the_data_holds_is_refused_before_allocating(
    ser30k: Path, teacher_weights: Path, tmp_path: Path
) -> None:
    with pytest.raises(ConfigError, match=r"k=10000000 anchors per class is outside 1\.\.4096"):
        build_anchors(str(ser30k), str(teacher_weights), 10_000_000, str(tmp_path / "a.npy"))
    with pytest.raises(ConfigError, match=r"k=0 anchors per class is outside"):
        build_anchors(str(ser30k), str(teacher_weights), 0, str(tmp_path / "a.npy"))
    # 54 usable images over 7 classes: no class has 100, every anchor would be a repeat.
    with pytest.raises(ConfigError, match="no class has more than"):
        build_anchors(str(ser30k), str(teacher_weights), 100, str(tmp_path / "a.npy"),
                      backend="cpu", image_size=32, batch_size=16)
    assert not (tmp_path / "a.npy").exists()

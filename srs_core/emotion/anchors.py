"""Emotion anchors: k-means per emotion class over the teacher's SER30K features.

``build_anchors`` writes ``[7*K, 2048]`` float32 (class blocks in ``EMOTIONS`` order, NaN and
infinities -> 0) as ``.npy`` plus a JSON sidecar. NaN and infinities in the teacher's features
are set to 0 before clustering too, and the rows that had them counted per class
(``non_finite_rows``); a class whose every feature is non-finite is an error.

Two k-means backends share one interface:

- ``kmcuda``: libKMCUDA's ``kmeans_cuda`` (the authors' choice) when it imports and a GPU is
  visible;
- ``cpu``: greedy k-means++ seeding (as scikit-learn's, in float32) followed by faiss's Lloyd
  iterations (multi-threaded BLAS), best of 2 restarts; ``auto`` takes kmcuda when possible,
  else this.

A class with no usable training image is an error. A class with at most K images cannot have
K distinct centroids: its images themselves are its centroids, repeated in order to fill the
K rows (never zeros, so the class keeps its weight in the softmax over ``e·Aᵀ``); the sidecar
lists such classes under ``padded``. The same seed gives the same anchors on the same machine.
"""

from __future__ import annotations

import io
import json
import logging
import time
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from srs_core import store
from srs_core.data.report import Report
from srs_core.data.ser30k import EMOTIONS
from srs_core.errors import ConfigError, DataError

log = logging.getLogger(__name__)

BACKENDS = ("auto", "kmcuda", "cpu")


@dataclass
class KMeansResult:
    centroids: np.ndarray  # [k, D] float32
    iterations: int | None  # None when the backend does not say (kmcuda stops on tolerance)


class KMeansBackend(Protocol):
    name: str
    detail: str

    def fit(self, features: np.ndarray, k: int, iterations: int, seed: int) -> KMeansResult:
        """Cluster ``features [N, D]`` (N > k) into ``k`` centroids."""
        ...


def kmeans_plusplus(features: np.ndarray, k: int, seed: int, trials: int = 0) -> np.ndarray:
    """Greedy k-means++ seeds ``[k, D]`` (``2 + ln k`` candidates per step, as scikit-learn)."""
    rng = np.random.default_rng(seed)
    n = len(features)
    trials = trials or 2 + int(np.log(k))
    squared = np.einsum("ij,ij->i", features, features)
    centers = np.empty((k, features.shape[1]), dtype=np.float32)
    first = int(rng.integers(n))
    centers[0] = features[first]
    closest = np.maximum(squared - 2 * features @ features[first] + squared[first], 0)
    potential = float(closest.sum(dtype=np.float64))
    for i in range(1, k):
        cumulative = np.cumsum(closest, dtype=np.float64)
        picks = np.searchsorted(cumulative, rng.random(trials) * potential)
        picks = np.minimum(picks, n - 1)
        distances = squared[picks, None] - 2 * features[picks] @ features.T + squared[None]
        candidates = np.minimum(closest[None], np.maximum(distances, 0))  # [trials, N]
        potentials = candidates.sum(axis=1, dtype=np.float64)
        best = int(np.argmin(potentials))
        closest, potential = candidates[best], float(potentials[best])
        centers[i] = features[picks[best]]
    return centers


def inertia(features: np.ndarray, centroids: np.ndarray, block: int = 8192) -> float:
    """Sum of squared distances of every feature to its nearest centroid (float64 sum)."""
    centroids = np.nan_to_num(np.asarray(centroids, dtype=np.float32))
    center_sq = np.einsum("ij,ij->i", centroids, centroids)
    total = 0.0
    for start in range(0, len(features), block):
        part = np.asarray(features[start:start + block], dtype=np.float32)
        distances = np.einsum("ij,ij->i", part, part)[:, None] - 2 * part @ centroids.T
        total += float(np.maximum(distances + center_sq[None], 0).min(axis=1).sum(
            dtype=np.float64))
    return total


class FaissKMeans:
    """CPU backend: k-means++ seeds, then ``iterations`` faiss Lloyd steps; the best of
    ``restarts`` such runs (k-means has local minima: one run's inertia varies by a few %)."""

    name = "cpu"

    def __init__(self, restarts: int = 2) -> None:
        import faiss

        self._faiss = faiss
        self.restarts = max(1, restarts)
        self.detail = f"faiss {faiss.__version__} Lloyd + greedy k-means++, best of {restarts}"

    def fit(self, features: np.ndarray, k: int, iterations: int, seed: int) -> KMeansResult:
        features = np.ascontiguousarray(features, dtype=np.float32)
        best, best_inertia = None, np.inf
        for restart in range(self.restarts):
            run_seed = int(np.random.SeedSequence([seed, restart]).generate_state(1)[0])
            kmeans = self._faiss.Kmeans(
                features.shape[1], k, niter=iterations, seed=run_seed % (2**31), verbose=False,
                # no subsampling (faiss keeps 256 points per centroid by default)
                max_points_per_centroid=len(features), min_points_per_centroid=1,
            )
            kmeans.train(features, init_centroids=kmeans_plusplus(features, k, run_seed))
            centroids = np.asarray(kmeans.centroids, dtype=np.float32)
            value = inertia(features, centroids)
            if value < best_inertia:
                best, best_inertia = centroids, value
        return KMeansResult(best, iterations)


class KmcudaKMeans:
    """GPU backend: libKMCUDA's ``kmeans_cuda`` (k-means++ init, Yinyang refinement)."""

    name = "kmcuda"
    tolerance = 0.01  # libKMCUDA's default: stop when fewer than 1% of points move

    def __init__(self) -> None:
        from libKMCUDA import kmeans_cuda

        self._kmeans = kmeans_cuda
        self.detail = f"libKMCUDA kmeans_cuda (tolerance {self.tolerance})"

    def fit(self, features: np.ndarray, k: int, iterations: int, seed: int) -> KMeansResult:
        # libKMCUDA has no iteration limit: it stops on `tolerance`
        centroids, _ = self._kmeans(
            np.ascontiguousarray(features, dtype=np.float32), k, tolerance=self.tolerance,
            init="k-means++", seed=seed % (2**32), device=0, verbosity=0,
        )
        return KMeansResult(np.asarray(centroids, dtype=np.float32), None)


def kmcuda_available() -> bool:
    """libKMCUDA imports and a CUDA device is visible."""
    try:
        import libKMCUDA  # noqa: F401
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


def get_backend(name: str = "auto") -> KMeansBackend:
    """The named backend; ``auto`` prefers kmcuda and falls back to the CPU backend."""
    if name not in BACKENDS:
        raise ConfigError(f"k-means backend {name!r} is not one of {', '.join(BACKENDS)}")
    if name == "kmcuda" or (name == "auto" and kmcuda_available()):
        if not kmcuda_available():
            raise ConfigError("backend kmcuda needs libKMCUDA (built for this GPU; see "
                              "images/) and a visible CUDA device; use --backend cpu")
        return KmcudaKMeans()
    try:
        return FaissKMeans()
    except ImportError:
        raise ConfigError("the cpu k-means backend needs faiss: pip install faiss-cpu") from None


def _class_seed(seed: int, label: int) -> int:
    return int(np.random.SeedSequence([seed, label]).generate_state(1)[0])


def finite_features(
    features: np.ndarray, labels: np.ndarray
) -> tuple[np.ndarray, dict[str, int]]:
    """Features with NaN/inf set to 0, and per class how many rows had such values.

    A NaN crashes faiss and turns every distance into NaN, so none may reach k-means. A class
    whose every row is non-finite has nothing left to cluster: DataError naming it.
    """
    bad = ~np.isfinite(features).all(axis=1)
    if not bad.any():
        return features, {}
    per_class: dict[str, int] = {}
    lost: list[str] = []
    for c, name in enumerate(EMOTIONS):
        members = labels == c
        if n := int(bad[members].sum()):
            per_class[name] = n
            if n == int(members.sum()):
                lost.append(name)
    if lost:
        raise DataError(f"every teacher feature of class(es) {', '.join(lost)} is NaN or "
                        "infinite: the teacher weights or its input images are broken; retrain "
                        "or check the teacher")
    log.warning("%d of %d teacher feature rows hold NaN/inf (set to 0): %s", int(bad.sum()),
                len(features), per_class)
    return np.nan_to_num(features, nan=0.0, posinf=0.0, neginf=0.0), per_class


def cluster_classes(
    features: np.ndarray,
    labels: np.ndarray,
    k: int,
    backend: KMeansBackend,
    iterations: int = 100,
    seed: int = 0,
) -> tuple[np.ndarray, dict[str, Any]]:
    """Anchors ``[7*k, D]`` (class blocks in ``EMOTIONS`` order) and per-class statistics."""
    if k < 1:
        raise ConfigError(f"k must be positive, got {k}")
    counts = [int((labels == c).sum()) for c in range(len(EMOTIONS))]
    empty = [EMOTIONS[c] for c, n in enumerate(counts) if n == 0]
    if empty:
        raise DataError(f"no training features for class(es) {', '.join(empty)}; every emotion "
                        "needs at least one usable SER30K training image")
    features, non_finite = finite_features(features, labels)
    anchors = np.zeros((len(EMOTIONS) * k, features.shape[1]), dtype=np.float32)
    stats: dict[str, Any] = {"inertia": {}, "iterations": {}, "padded": {},
                             "seconds_per_class": {}, "non_finite_rows": non_finite}
    for c, name in enumerate(EMOTIONS):
        members = np.ascontiguousarray(features[labels == c], dtype=np.float32)
        started = time.time()
        if len(members) <= k:
            # every image is its own centroid; cycle them to fill the K rows
            centroids, steps = members[np.arange(k) % len(members)], 0
            stats["padded"][name] = len(members)
            log.warning("class %s has %d image(s) <= K=%d: its anchors repeat them", name,
                        len(members), k)
        else:
            result = backend.fit(members, k, iterations, _class_seed(seed, c))
            centroids, steps = result.centroids, result.iterations
        anchors[c * k:(c + 1) * k] = centroids
        stats["inertia"][name] = inertia(members, centroids)
        stats["iterations"][name] = steps
        stats["seconds_per_class"][name] = round(time.time() - started, 3)
    non_finite = int((~np.isfinite(anchors)).sum())
    stats["non_finite_zeroed"] = non_finite  # kmcuda leaves empty clusters as NaN
    anchors = np.nan_to_num(anchors, nan=0.0, posinf=0.0, neginf=0.0)
    return anchors, stats


def anchor_uris(out_uri: str) -> tuple[str, str]:
    """``(anchors .npy, sidecar .json)`` for an output URI given with or without ``.npy``."""
    stem = out_uri[: -len(".npy")] if out_uri.endswith(".npy") else out_uri
    return stem + ".npy", stem + ".json"


MAX_K = 4096  # anchors per class: 7 x 4096 x 2048 float32 = 235 MB


def load_anchors(uri: str, mmap: bool = False) -> np.ndarray:
    """The ``[7*K, D]`` anchors ``.npy`` at ``uri`` (memory-mapped with ``mmap``).

    A truncated or corrupt file, another kind of file (a torch checkpoint, pickled objects) or
    an array of another shape is one line naming ``uri``: a DataError for a damaged file, a
    ConfigError for the wrong one.
    """
    hint = "give the anchors .npy written by `srs emotion anchors` (emotion.anchors)"
    path = store.fetch(uri)
    try:
        anchors = np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except (ValueError, EOFError, OSError) as exc:
        if isinstance(exc, OSError) and exc.errno is not None:
            raise  # a file-system error names the path itself
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        with open(path, "rb") as handle:
            magic = handle.read(6)
        if magic and magic != b"\x93NUMPY":
            raise ConfigError(f"{uri}: not an anchors .npy array (no NumPy header: another kind "
                              f"of file, e.g. a checkpoint); {hint}") from None
        raise DataError(f"{uri}: anchors .npy is truncated or corrupt ({reason}); re-create it "
                        "with `srs emotion anchors`") from None
    if not isinstance(anchors, np.ndarray) or anchors.ndim != 2 or not len(anchors) \
            or anchors.shape[0] % len(EMOTIONS):
        shape = list(getattr(anchors, "shape", []))
        raise ConfigError(f"{uri}: anchors must be [7*K, D], got shape {shape}; {hint}")
    return anchors


def _check_request(teacher_uri: str, k: int, out_uri: str) -> None:
    """Refuse, before any work, what `build_anchors` could not finish."""
    if not teacher_uri:
        raise ConfigError("no teacher weights given: pass --teacher URI (teacher.pth from "
                          "`srs emotion train`) or set emotion.teacher")
    if not 1 <= k <= MAX_K:  # 7 * K rows of 2048 floats: refuse before any allocation
        raise ConfigError(f"k={k} anchors per class is outside 1..{MAX_K} (the paper uses 60)")
    if store.local_path(out_uri) is None:  # `s3://bucket` alone names no object to write
        store.check_object_uri(out_uri)


def build_anchors(
    ser30k_uri: str,
    teacher_uri: str,
    k: int,
    out_uri: str,
    backend: str = "auto",
    seed: int = 0,
    image_size: int = 128,
    iterations: int = 100,
    batch_size: int = 256,
    features_uri: str = "",
) -> dict[str, Any]:
    """Teacher features of SER30K train -> k-means per class -> ``<out>.npy`` + ``<out>.json``.

    ``features_uri`` (optional) also saves the features and labels as ``.npz``. Returns the
    sidecar.
    """
    from srs_core.emotion.features import teacher_features
    from srs_core.emotion.teacher import load_teacher
    from srs_core.runtime.device import select_device

    _check_request(teacher_uri, k, out_uri)
    started = time.time()
    chosen = get_backend(backend)  # fail before the feature pass, not after it
    report = Report()
    teacher = load_teacher(teacher_uri, select_device())
    features, labels, _ = teacher_features(ser30k_uri, teacher, "train", image_size, batch_size,
                                           report)
    feature_seconds = time.time() - started
    if features_uri:
        buffer = io.BytesIO()
        np.savez(buffer, features=features, labels=labels)
        store.write_bytes(features_uri, buffer.getvalue())
    largest = int(np.bincount(labels, minlength=len(EMOTIONS)).max()) if len(labels) else 0
    if k > largest:
        raise ConfigError(f"k={k} anchors per class, but no class has more than {largest} "
                          "training images: every anchor would be a repeated image; lower k")
    anchors, stats = cluster_classes(features, labels, k, chosen, iterations, seed)
    npy_uri, json_uri = anchor_uris(out_uri)
    buffer = io.BytesIO()
    np.save(buffer, anchors, allow_pickle=False)
    store.write_bytes(npy_uri, buffer.getvalue())
    sidecar = {
        "anchors": npy_uri, "shape": list(anchors.shape), "k": k, "classes": list(EMOTIONS),
        "backend": chosen.name, "backend_detail": chosen.detail, "max_iterations": iterations,
        "seed": seed, "image_size": image_size, "teacher": teacher_uri, "ser30k": ser30k_uri,
        "counts": {name: int((labels == c).sum()) for c, name in enumerate(EMOTIONS)},
        **stats, "skipped": report.as_dict(),
        "seconds": {"features": round(feature_seconds, 2),
                    "kmeans": round(sum(stats["seconds_per_class"].values()), 2),
                    "total": round(time.time() - started, 2)},
    }
    store.write_text(json_uri, json.dumps(sidecar, indent=2, ensure_ascii=False))
    log.info("anchors %s -> %s (%s, %.1fs)", anchors.shape, npy_uri, chosen.detail,
             time.time() - started)
    return sidecar

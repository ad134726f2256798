"""Anchor k-means: our CPU backend (k-means++ seeds + faiss Lloyd) vs scikit-learn's KMeans.

Both cluster the same features per emotion class (default: synthetic clustered, ReLU'd features
like pooled ResNet ones, 30k x 2048 -> 7 x 60 centroids; ``--features F.npz`` from
``srs emotion anchors --features-out`` uses real ones). Inertia of both is computed by the same
function on their final centroids. With libKMCUDA and a GPU present, kmcuda runs too. Prints
JSON: seconds, inertia, time ratio (sklearn / ours: > 1 means ours is faster) and inertia
ratio (ours / sklearn; the target is <= 1.01).
Usage: ``python bench/anchors.py [--samples 30000] [--dim 2048] [--k 60] [--features F.npz]``.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np

from srs_core.data.ser30k import EMOTIONS
from srs_core.emotion.anchors import (
    FaissKMeans,
    KmcudaKMeans,
    cluster_classes,
    inertia,
    kmcuda_available,
)


def synthetic_features(samples: int, dim: int, blobs: int, seed: int):
    """Per class ``blobs`` Gaussian clusters of nonnegative features; labels balanced."""
    rng = np.random.default_rng(seed)
    labels = np.arange(samples) % len(EMOTIONS)
    features = np.empty((samples, dim), dtype=np.float32)
    for c in range(len(EMOTIONS)):
        index = np.flatnonzero(labels == c)
        centers = np.maximum(rng.normal(0.0, 1.0, (blobs, dim)), 0).astype(np.float32)
        spread = rng.uniform(0.3, 0.8, blobs).astype(np.float32)  # clusters of unequal width
        member = rng.integers(blobs, size=len(index))
        noise = rng.normal(0.0, 1.0, (len(index), dim)).astype(np.float32)
        features[index] = np.maximum(centers[member] + spread[member, None] * noise, 0)
    return features, labels


def sklearn_classes(features, labels, k: int, seed: int) -> tuple[np.ndarray, float]:
    from sklearn.cluster import KMeans

    started, blocks = time.perf_counter(), []
    for c in range(len(EMOTIONS)):
        model = KMeans(n_clusters=k, n_init=1, random_state=seed + c).fit(features[labels == c])
        blocks.append(model.cluster_centers_.astype(np.float32))
    return np.concatenate(blocks), time.perf_counter() - started


def total_inertia(features, labels, anchors, k: int) -> float:
    return sum(inertia(features[labels == c], anchors[c * k:(c + 1) * k])
               for c in range(len(EMOTIONS)))


def compare_backends(features, labels, k: int, iterations: int, seed: int) -> dict:
    """Our CPU backend vs scikit-learn (and kmcuda where it runs): seconds and inertia."""
    started = time.perf_counter()
    ours, _ = cluster_classes(features, labels, k, FaissKMeans(), iterations, seed)
    ours_seconds = time.perf_counter() - started
    baseline, sklearn_seconds = sklearn_classes(features, labels, k, seed)
    ours_inertia = total_inertia(features, labels, ours, k)
    sklearn_inertia = total_inertia(features, labels, baseline, k)
    result = {
        "k": k, "classes": len(EMOTIONS), "cores": len(os.sched_getaffinity(0)),
        "baseline_sklearn": {"seconds": round(sklearn_seconds, 2), "inertia": sklearn_inertia},
        "ours_cpu": {"backend": FaissKMeans().detail, "iterations": iterations,
                     "seconds": round(ours_seconds, 2), "inertia": ours_inertia},
        "time_ratio_sklearn_over_ours": round(sklearn_seconds / ours_seconds, 2),
        "inertia_ratio_ours_over_sklearn": round(ours_inertia / sklearn_inertia, 5),
    }
    result["within_1pct"] = result["inertia_ratio_ours_over_sklearn"] <= 1.01
    if kmcuda_available():
        started = time.perf_counter()
        gpu, _ = cluster_classes(features, labels, k, KmcudaKMeans(), iterations, seed)
        gpu_seconds = time.perf_counter() - started
        result["kmcuda"] = {"seconds": round(gpu_seconds, 2),
                            "inertia": total_inertia(features, labels, gpu, k)}
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=30000)
    parser.add_argument("--dim", type=int, default=2048)
    parser.add_argument("--k", type=int, default=60)
    parser.add_argument("--blobs", type=int, default=80, help="true clusters per class")
    parser.add_argument("--iterations", type=int, default=100, help="our Lloyd iterations")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--features", help=".npz with 'features' [N, D] and 'labels' [N]")
    args = parser.parse_args()

    if args.features:
        data = np.load(args.features, allow_pickle=False)
        features, labels = data["features"].astype(np.float32), data["labels"]
        source = args.features
    else:
        features, labels = synthetic_features(args.samples, args.dim, args.blobs, args.seed)
        source = f"synthetic: {args.blobs} blobs per class"

    result = {"features": list(features.shape), "source": source}
    result.update(compare_backends(features, labels, args.k, args.iterations, args.seed))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

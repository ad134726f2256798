"""The SER30K emotion teacher: metrics, weight formats, training, resume, the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from srs_core.config import load_config
from srs_core.data.ser30k import EMOTIONS
from srs_core.emotion.metrics import classification_metrics
from srs_core.emotion.teacher import (
    backbone_state_dict,
    create_teacher_model,
    load_init_weights,
    load_teacher,
    train_teacher,
)
from srs_core.errors import ConfigError, DataError, StoreError


def test_classification_metrics_hand_computed() -> None:
    labels = np.array([0, 0, 1, 1, 1, 2])
    predictions = np.array([0, 1, 1, 1, 2, 2])
    metrics = classification_metrics(labels, predictions)
    assert metrics["accuracy"] == pytest.approx(4 / 6)
    confusion = np.array(metrics["confusion"])
    assert confusion.shape == (7, 7) and confusion.sum() == 6
    assert confusion[0, 1] == 1 and confusion[1, 2] == 1 and confusion[1, 1] == 2
    per_class = metrics["per_class_accuracy"]
    assert per_class["Surprise"] == 0.5 and per_class["Happiness"] == pytest.approx(2 / 3)
    assert per_class["Disgust"] == 1.0 and per_class["Neutral"] is None
    # F1: class 0: 2*1/(2+1) ; class 1: 2*2/(3+3) ; class 2: 2*1/(1+2); absent classes ignored
    assert metrics["macro_f1"] == pytest.approx(np.mean([2 / 3, 4 / 6, 2 / 3]))


def test_backbone_weights_load_strictly_into_timm_without_classifier(tmp_path: Path) -> None:
    import timm

    torch.manual_seed(0)
    model = create_teacher_model()
    path = tmp_path / "teacher.pth"
    torch.save(backbone_state_dict(model), path)
    plain = timm.create_model("resnet50", pretrained=False, num_classes=0)
    plain.load_state_dict(torch.load(path, weights_only=True), strict=True)
    teacher = load_teacher(str(path), "cpu")
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        features = teacher(images)
        assert features.shape == (2, 2048)
        model.eval()
        assert torch.allclose(features, model.forward_head(model.forward_features(images),
                                                           pre_logits=True), atol=1e-5)


def test_load_teacher_takes_a_whole_classifier_checkpoint(tmp_path: Path) -> None:
    """The authors' ResNet50_SER30K.pth is a 7-class timm classifier: its fc is dropped."""
    torch.manual_seed(2)
    model = create_teacher_model().eval()
    path = tmp_path / "ResNet50_SER30K.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in model.state_dict().items()},
                "epoch": 99}, path)
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = model.forward_head(model.forward_features(images), pre_logits=True)
        assert torch.allclose(load_teacher(str(path), "cpu")(images), expected, atol=1e-5)


def test_channels_last_is_a_switch_of_the_teacher(tmp_path: Path) -> None:
    """``emotion.memory_format``: channels-last on GPU by default, forced or refused anywhere;
    the frozen teacher gives the same features and the trained one feeds NHWC images."""
    from srs_core.emotion.teacher import build_teacher, train_epoch
    from srs_core.runtime.device import memory_format_for

    cpu, cuda, nhwc = torch.device("cpu"), torch.device("cuda"), torch.channels_last
    assert memory_format_for(cuda) == nhwc and memory_format_for(cpu) == torch.contiguous_format
    assert memory_format_for(cuda, "contiguous") == torch.contiguous_format
    assert memory_format_for(cpu, "channels_last") == nhwc
    assert load_config(preset="tiny").emotion.memory_format == "auto"
    with pytest.raises(ConfigError, match="not one of"):
        load_config(overrides=["emotion.memory_format=nhwc"])

    torch.manual_seed(0)
    path = tmp_path / "teacher.pth"
    torch.save(backbone_state_dict(create_teacher_model()), path)
    plain, fast = load_teacher(str(path), "cpu"), load_teacher(str(path), "cpu", "channels_last")
    assert fast.conv1.weight.is_contiguous(memory_format=nhwc)
    assert not plain.conv1.weight.is_contiguous(memory_format=nhwc)
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(fast(images), plain(images), rtol=1e-4, atol=1e-4)

    model, _ = build_teacher(0, "", cpu, "channels_last")
    seen = []
    model.register_forward_pre_hook(lambda _, args: seen.append(
        args[0].is_contiguous(memory_format=nhwc)))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    loader = [(torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 3]))]
    result = train_epoch(model, loader, optimizer, scheduler, cpu, "fp32", "channels_last")
    assert np.isfinite(result["train_loss"]) and seen == [True]
    assert model.conv1.weight.is_contiguous(memory_format=nhwc)


def test_load_teacher_rejects_other_files(tmp_path: Path) -> None:
    path = tmp_path / "partial.pth"
    state = create_teacher_model().state_dict()
    del state["layer4.2.conv3.weight"]
    torch.save(state, path)
    with pytest.raises(ConfigError, match="not a teacher backbone.*layer4.2.conv3.weight"):
        load_teacher(str(path), "cpu")
    resnet18 = tmp_path / "other.pth"
    torch.save({k: v[..., :1] if v.ndim == 4 else v for k, v in state.items()}, resnet18)
    with pytest.raises(ConfigError, match="not a teacher backbone"):
        load_teacher(str(resnet18), "cpu")
    pickled = tmp_path / "pickled.pth"
    torch.save({"model": object()}, pickled)
    with pytest.raises(StoreError, match="weights-only"):
        load_teacher(str(pickled), "cpu")


def test_init_weights_skip_a_classifier_of_another_shape(tmp_path: Path) -> None:
    torch.manual_seed(1)
    imagenet = create_teacher_model(num_classes=1000)
    path = tmp_path / "resnet50_imagenet.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in imagenet.state_dict().items()}}, path)
    model = create_teacher_model()
    report = load_init_weights(model, str(path))
    assert report["shape_mismatch_skipped"] == ["fc.bias", "fc.weight"]
    # the classifier stays randomly initialised, and the report says so
    assert sorted(report["missing"]) == ["fc.bias", "fc.weight"] and report["unexpected"] == []
    assert torch.equal(model.conv1.weight, imagenet.conv1.weight)
    other = tmp_path / "other.pth"
    torch.save({"weight": torch.zeros(3)}, other)
    with pytest.raises(ConfigError, match="not timm resnet50 weights"):
        load_init_weights(create_teacher_model(), str(other))


# ----------------------------------------------------------------------------- training


def _ser30k(root: Path, images: int, seed: int = 0) -> Path:
    from srs_core.data.synth import write_ser30k

    write_ser30k(str(root), seed=seed, images=images, image_size=32)
    return root


def _config(ser30k: Path, *overrides: str):
    return load_config([], [f"emotion.ser30k={ser30k}", *overrides], preset="tiny")


def test_class_without_training_images_is_a_clear_error(tmp_path: Path) -> None:
    root = _ser30k(tmp_path / "ser30k", images=14)
    annotations = root / "Annotations" / "image-level" / "train.json"
    document = json.loads(annotations.read_text("utf-8"))
    document["annotations"] = [a for a in document["annotations"] if a["anno"] != 4]
    annotations.write_text(json.dumps(document), "utf-8")
    with pytest.raises(DataError, match="Fear"):
        train_teacher(_config(root), str(tmp_path / "out"))


@pytest.mark.slow
def test_resume_after_an_epoch_matches_an_uninterrupted_run(tmp_path: Path) -> None:
    root = _ser30k(tmp_path / "ser30k", images=48)
    cfg = _config(root, "emotion.epochs=2", "emotion.batch_size=16")
    reference = train_teacher(cfg, str(tmp_path / "reference"))

    out = tmp_path / "resumed"

    def interrupt(epoch: int) -> None:  # dies after epoch 1's checkpoint, like a kill
        if epoch == 1:
            raise RuntimeError(f"injected failure after epoch {epoch}")

    with pytest.raises(RuntimeError, match="injected"):
        train_teacher(cfg, str(out), on_epoch_end=interrupt)
    assert (out / "checkpoints" / "ckpt-000000001.pt").exists()
    assert not (out / "teacher.pth").exists()
    resumed = train_teacher(cfg, str(out))
    assert [h["epoch"] for h in resumed["history"]] == [1, 2]
    assert resumed["history"] == reference["history"]
    expected = torch.load(tmp_path / "reference" / "teacher.pth", weights_only=True)
    got = torch.load(out / "teacher.pth", weights_only=True)
    assert all(torch.equal(expected[k], got[k]) for k in expected)


@pytest.mark.slow
def test_teacher_beats_chance_on_demo_data(tmp_path: Path) -> None:
    import timm

    root = _ser30k(tmp_path / "ser30k", images=280, seed=2)
    out = tmp_path / "teacher"
    metrics = train_teacher(_config(root, "emotion.epochs=3", "emotion.batch_size=16"), str(out))
    assert metrics["test"]["accuracy"] > 2 / 7, metrics["test"]  # chance is 1/7
    assert metrics["best_epoch"] == 1 + int(np.argmax([h["val_accuracy"]
                                                       for h in metrics["history"]]))
    saved = json.loads((out / "metrics.json").read_text("utf-8"))
    assert saved["test"] == metrics["test"] and saved["classes"] == list(EMOTIONS)
    assert np.array(saved["val"]["confusion"]).sum() == saved["images"]["val"]
    backbone = timm.create_model("resnet50", pretrained=False, num_classes=0)
    backbone.load_state_dict(torch.load(out / "teacher.pth", weights_only=True), strict=True)
    with torch.no_grad():
        assert backbone.eval()(torch.randn(3, 3, 32, 32)).shape == (3, 2048)

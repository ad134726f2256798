"""PBR losses against hand-computed values and explicit loop implementations."""

from __future__ import annotations

import math
import os
import socket

import pytest
import torch

from srs_core.config import LossConfig
from srs_core.model.losses import (
    all_gather_with_grad,
    emotion_kl,
    image_polarity,
    ita_loss,
    itm_loss,
    negative_weights,
    nt_xent,
    polarity_affinity,
    sample_hard_negatives,
    text_polarity,
    total_loss,
)


def _ce(logits: list[float], target: int) -> float:
    """Cross-entropy written out: -log(exp(x_t) / sum_j exp(x_j))."""
    return -math.log(math.exp(logits[target]) / sum(math.exp(x) for x in logits))


def _dot(a: torch.Tensor, b: torch.Tensor) -> float:
    return sum(float(x) * float(y) for x, y in zip(a, b, strict=True))


def test_ita_hand_computed_2x2() -> None:
    # Orthogonal unit vectors: every correct pair scores 1/0.5 = 2, every wrong pair 0.
    text = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    images = torch.tensor([[[1.0, 0.0], [0.0, 1.0]], [[0.0, 1.0], [1.0, 0.0]]])
    expected = math.log(1 + math.exp(-2))  # -log(e^2 / (e^2 + e^0)) in both directions
    assert ita_loss(text, images, 0.5).item() == pytest.approx(expected, rel=1e-6)


def test_ita_matches_loops() -> None:
    torch.manual_seed(0)
    b, c, tau = 3, 4, 0.07
    text = torch.nn.functional.normalize(torch.randn(b, 5), dim=-1)
    images = torch.nn.functional.normalize(torch.randn(b, c, 5), dim=-1)
    t2i = [_ce([_dot(text[i], images[i, j]) / tau for j in range(c)], 0) for i in range(b)]
    i2t = [_ce([_dot(images[i, 0], text[k]) / tau for k in range(b)], i) for i in range(b)]
    expected = (sum(t2i) / b + sum(i2t) / b) / 2
    assert ita_loss(text, images, torch.tensor(tau)).item() == pytest.approx(expected, rel=1e-5)


def test_nt_xent_hand_computed() -> None:
    # Views equal to the items, tau 1: each anchor sees its partner at 1 and two others at 0.
    z = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    expected = -math.log(math.e / (math.e + 2))
    assert nt_xent(z, z.clone(), 1.0).item() == pytest.approx(expected, rel=1e-6)


def _nt_xent_loop(z1: torch.Tensor, z2: torch.Tensor, tau: float) -> float:
    z = [v / v.norm() for v in [*z1, *z2]]
    n = len(z1)
    total = 0.0
    for i in range(2 * n):
        partner = (i + n) % (2 * n)
        others = [k for k in range(2 * n) if k != i]
        logits = [_dot(z[i], z[k]) / tau for k in others]
        total += _ce(logits, others.index(partner))
    return total / (2 * n)


def test_nt_xent_groups_are_independent() -> None:
    torch.manual_seed(1)
    z1, z2 = torch.randn(2, 3, 4), torch.randn(2, 3, 4)  # 2 dialogs x 3 candidates
    intra = (_nt_xent_loop(z1[0], z2[0], 0.1) + _nt_xent_loop(z1[1], z2[1], 0.1)) / 2
    assert nt_xent(z1, z2, 0.1).item() == pytest.approx(intra, rel=1e-5)
    inter = _nt_xent_loop(z1.flatten(0, 1), z2.flatten(0, 1), 0.1)
    assert nt_xent(z1.flatten(0, 1), z2.flatten(0, 1), 0.1).item() == pytest.approx(
        inter, rel=1e-5
    )


def test_emotion_kl_hand_computed() -> None:
    student = torch.tensor([[0.0, 0.0], [1.0, 2.0]])
    target = torch.tensor([[math.log(3.0), 0.0], [1.0, 2.0]])
    # Row 0: p = (3/4, 1/4), q = (1/2, 1/2); row 1: identical distributions, KL 0.
    kl = 0.75 * math.log(0.75 / 0.5) + 0.25 * math.log(0.25 / 0.5)
    assert emotion_kl(student, target).item() == pytest.approx(kl / 2, rel=1e-6)


def test_emotion_kl_is_zero_only_for_matching_distributions() -> None:
    logits = torch.randn(4, 14)
    assert emotion_kl(logits, logits + 3.0).item() == pytest.approx(0.0, abs=1e-6)
    assert emotion_kl(logits, -logits).item() > 0


def test_text_polarity() -> None:
    got = text_polarity(torch.tensor([[3.0, 1.0], [0.0, 0.0]]))
    assert got[0].tolist() == pytest.approx([3 / 4.0001, 1 / 4.0001])
    assert got[1].tolist() == [0.0, 0.0]


def test_image_polarity_hand_computed() -> None:
    means = [1.0, 3.0, 0.0, 2.0, -1.0, 0.0, 5.0]  # Neutral (5.0) must not count
    k = 2
    logits = torch.tensor([[m - 1.0, m + 1.0] for m in means]).flatten()[None]  # [1, 7K]
    positive, negative = 3.0, 2.0  # max over classes 0-1 and 2-5 of the per-class means
    expected = [math.exp(positive) / (math.exp(positive) + math.exp(negative)),
                math.exp(negative) / (math.exp(positive) + math.exp(negative))]
    assert logits.shape == (1, 7 * k)
    assert image_polarity(logits)[0].tolist() == pytest.approx(expected, rel=1e-6)


def test_polarity_affinity_hand_computed() -> None:
    query = torch.tensor([[1.0, 0.0]])
    candidates = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.5, 0.5]])
    raw = [2 - 0.0, 2 - 2.0, 2 - 1.0]  # 2 - L1 distance
    expected = [math.exp(x) / sum(math.exp(y) for y in raw) for x in raw]
    assert polarity_affinity(query, candidates)[0].tolist() == pytest.approx(expected, rel=1e-6)


def test_negative_weights_mask_the_positive() -> None:
    similarity = torch.tensor([[1.0, 2.0, 3.0], [0.0, 0.0, 5.0]])
    affinity = torch.tensor([[0.0, 1.0, 0.0], [0.0, 0.0, 0.0]])
    positive = torch.tensor([0, 2])
    hard = negative_weights(similarity, positive, affinity)
    assert hard[0].tolist() == pytest.approx([0.0, 0.5, 0.5])  # logits 2+1 and 3+0
    assert hard[1].tolist() == pytest.approx([0.5, 0.5, 0.0])
    plain = negative_weights(similarity, positive)
    e2, e3 = math.exp(2), math.exp(3)
    assert plain[0].tolist() == pytest.approx([0.0, e2 / (e2 + e3), e3 / (e2 + e3)])
    uniform = negative_weights(similarity, positive, affinity, hard=False)
    assert uniform.flatten().tolist() == pytest.approx([0.0, 0.5, 0.5, 0.5, 0.5, 0.0])


def test_sampling_follows_the_weights_and_is_reproducible() -> None:
    similarity = torch.tensor([[0.0, 0.0, math.log(3.0), 9.0]]).repeat(20000, 1)
    positive = torch.full((20000,), 3)
    draws = sample_hard_negatives(similarity, positive, generator=torch.Generator().manual_seed(5))
    assert not (draws == 3).any()
    share = torch.bincount(draws, minlength=4).float() / len(draws)
    assert share.tolist() == pytest.approx([0.2, 0.2, 0.6, 0.0], abs=0.02)
    again = sample_hard_negatives(similarity, positive, generator=torch.Generator().manual_seed(5))
    assert torch.equal(draws, again)


def test_itm_loss_hand_computed() -> None:
    logits = torch.tensor([[0.0, math.log(3.0)], [0.0, math.log(3.0)]])
    labels = torch.tensor([1, 0])
    expected = (-math.log(3 / 4) - math.log(1 / 4)) / 2
    assert itm_loss(logits, labels).item() == pytest.approx(expected, rel=1e-6)


def test_total_loss_weights_and_absent_terms() -> None:
    cfg = LossConfig(simclr_weight=0.5, emotion_weight=0.25)
    terms = {name: torch.tensor(value) for name, value in
             [("ita", 1.0), ("itm", 2.0), ("simclr_intra", 3.0), ("simclr_inter", 5.0),
              ("emotion", 8.0)]}
    assert total_loss(terms, cfg).item() == pytest.approx(1 + 2 + 0.5 * 8 + 0.25 * 8)
    assert total_loss({"itm": torch.tensor(2.0)}, cfg).item() == pytest.approx(2.0)


def test_gather_is_identity_without_distributed() -> None:
    x = torch.randn(3, 2, requires_grad=True)
    assert all_gather_with_grad(x) is x


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _gather_worker(rank: int, world: int, port: int, z1: torch.Tensor, z2: torch.Tensor,
                   queue) -> None:
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    n = len(z1) // world
    local1 = z1[rank * n:(rank + 1) * n].clone().requires_grad_()
    local2 = z2[rank * n:(rank + 1) * n].clone().requires_grad_()
    loss = nt_xent(all_gather_with_grad(local1), all_gather_with_grad(local2), 0.1)
    loss.backward()
    # DDP would average gradients over ranks; do the same to compare with one process.
    # Plain lists: tensors sent through a queue need the sender alive when they are read.
    queue.put((rank, loss.item(), (local1.grad / world).tolist(), (local2.grad / world).tolist()))
    dist.destroy_process_group()


@pytest.mark.slow
def test_inter_topic_gather_gives_the_global_gradient() -> None:
    """Two gloo processes on loopback reproduce the single-process loss and gradients."""
    import torch.multiprocessing as mp

    torch.manual_seed(2)
    z1, z2 = torch.randn(8, 4), torch.randn(8, 4)
    ref1, ref2 = z1.clone().requires_grad_(), z2.clone().requires_grad_()
    reference = nt_xent(ref1, ref2, 0.1)
    reference.backward()

    context = mp.get_context("spawn")
    queue = context.SimpleQueue()
    mp.start_processes(_gather_worker, args=(2, _free_port(), z1, z2, queue), nprocs=2,
                       start_method="spawn")
    results = sorted(queue.get() for _ in range(2))
    for rank, loss, grad1, grad2 in results:
        assert loss == pytest.approx(reference.item(), rel=1e-5)
        assert torch.allclose(torch.tensor(grad1), ref1.grad[rank * 4:(rank + 1) * 4], atol=1e-6)
        assert torch.allclose(torch.tensor(grad2), ref2.grad[rank * 4:(rank + 1) * 4], atol=1e-6)


# ----------------------------------------------------------------------------- bf16 autocast


def _bf16(*shape: int) -> torch.Tensor:
    return torch.randn(*shape).bfloat16()


def _normal(*shape: int) -> torch.Tensor:
    return torch.nn.functional.normalize(torch.randn(*shape), dim=-1).bfloat16()


@pytest.mark.parametrize("name", ["ita", "itm", "simclr_intra", "simclr_inter", "emotion",
                                  "mining"])
def test_losses_are_fp32_islands_under_bf16_autocast(name: str) -> None:
    """Each loss on bf16 inputs inside a CPU bf16 autocast equals, in float32, the loss of the
    same (bf16-rounded) inputs computed without autocast: autocast must not run its softmax
    inputs' matmuls in bf16."""
    from srs_core.model.losses import mining_similarities

    torch.manual_seed(0)
    temperature = torch.tensor(0.07)
    positive = torch.arange(4) * 10
    calls = {
        "ita": lambda t, i: ita_loss(t, i, temperature),
        "itm": itm_loss,
        "simclr_intra": lambda z1, z2: nt_xent(z1, z2, 0.1),
        "simclr_inter": lambda z1, z2: nt_xent(z1, z2, 0.1),
        "emotion": emotion_kl,
        "mining": lambda t, i: torch.cat(
            [s.flatten() for s in mining_similarities(t, i, positive, temperature)]),
    }
    inputs = {
        "ita": (_normal(4, 64), _normal(4, 10, 64)),
        "itm": (_bf16(12, 2) * 3, torch.randint(0, 2, (12,))),
        "simclr_intra": (_bf16(4, 10, 32), _bf16(4, 10, 32)),
        "simclr_inter": (_bf16(40, 32), _bf16(40, 32)),
        "emotion": (_bf16(40, 28) * 5, _bf16(40, 28) * 300),  # teacher-like magnitudes
        "mining": (_normal(4, 64), _normal(40, 64)),
    }[name]
    loss = calls[name]
    reference = loss(*(x.float() if x.is_floating_point() else x for x in inputs))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = loss(*inputs)
    assert mixed.dtype == torch.float32
    torch.testing.assert_close(mixed, reference, rtol=1e-6, atol=1e-6)

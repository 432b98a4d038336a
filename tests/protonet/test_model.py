"""protonet.model: the loss against a hand computation, prototypes are class means, tasks together as alone."""

import math

import pytest
import torch

from protonet.model import ProtoNet, predict, proto_logits, proto_loss, prototypes, squared_distances


def test_prototypes_are_the_class_means_of_the_support_embeddings():
    g = torch.Generator().manual_seed(0)
    z, y = torch.randn(9, 4, generator=g, dtype=torch.float64), torch.tensor([2, 0, 1, 0, 2, 1, 0, 2, 2])
    expected = torch.stack([z[y == w].mean(0) for w in range(3)])
    torch.testing.assert_close(prototypes(z, y, 3), expected)
    batched = prototypes(torch.stack([z, 2 * z]), torch.stack([y, y]), 3)  # tasks of one shape together
    torch.testing.assert_close(batched, torch.stack([expected, 2 * expected]))


def test_loss_equals_a_hand_computation():
    # prototypes (1, 0) and (3, 1); squared distances of the queries: (2, 0) -> 1, 2; (2, 1) -> 2, 1; (1, 1) -> 1, 4
    zs = torch.tensor([[0.0, 0.0], [2.0, 0.0], [3.0, 0.0], [3.0, 2.0]], dtype=torch.float64)
    ys = torch.tensor([0, 0, 1, 1])
    zq = torch.tensor([[2.0, 0.0], [2.0, 1.0], [1.0, 1.0]], dtype=torch.float64)
    yq = torch.tensor([0, 1, 1])
    torch.testing.assert_close(squared_distances(zq, prototypes(zs, ys, 2)),
                               torch.tensor([[1.0, 2.0], [2.0, 1.0], [1.0, 4.0]], dtype=torch.float64))
    # -log softmax(-d)[y]: the first two queries are nearer their own prototype by 1, the last farther by 3
    expected = (2 * math.log(1 + math.exp(-1)) + 3 + math.log(1 + math.exp(-3))) / 3
    loss, acc = proto_loss(zs, ys, zq, yq, ways=2)
    assert loss.item() == pytest.approx(expected, rel=1e-12) and acc == pytest.approx(2 / 3)
    assert proto_logits(zs, ys, zq, 2).argmax(-1).tolist() == [0, 1, 0]


def test_the_loss_trains_the_whole_backbone():
    torch.manual_seed(0)
    model = ProtoNet("conv4", 1, 8, 28)
    z = model(torch.rand(10, 1, 28, 28))
    loss, _ = proto_loss(z[:5], torch.arange(5), z[5:], torch.arange(5), ways=5)
    loss.backward()
    assert torch.isfinite(loss) and all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())
    assert model.arch == dict(backbone="conv4", in_channels=1, hidden=8, image_size=28)


def test_prediction_of_tasks_together_is_that_of_each_alone():
    torch.manual_seed(1)
    model = ProtoNet("conv4", 1, 8, 28).eval()
    xs, ys, xq = torch.rand(3, 10, 1, 28, 28), torch.arange(5).repeat(2).expand(3, 10), torch.rand(3, 7, 1, 28, 28)
    together = predict(model, xs, ys, xq, ways=5)
    assert together.shape == (3, 7) and int(together.max()) < 5
    for t in range(3):
        assert torch.equal(predict(model, xs[t:t + 1], ys[t:t + 1], xq[t:t + 1], ways=5)[0], together[t])
        with torch.no_grad():
            z = model(torch.cat([xs[t], xq[t]]))
        assert torch.equal(proto_logits(z[:10], ys[t], z[10:], 5).argmax(-1), together[t])

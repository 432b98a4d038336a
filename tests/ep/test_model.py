"""ep.model: rotations, and which parts of the network each loss trains."""

import torch

from ep.model import EPNet, episode_loss, predict, pretrain_loss, rotations


def tiny(classes=6):
    torch.manual_seed(0)
    return EPNet("conv4", 1, 8, 28, classes)


def grads(model):
    return {name: p.grad is not None and bool(p.grad.abs().sum() > 0) for name, p in model.named_parameters()}


def test_rotations_are_the_four_quarter_turns():
    x = torch.arange(2 * 9, dtype=torch.float32).view(2, 1, 3, 3)
    x4, r = rotations(x)
    assert x4.shape == (8, 1, 3, 3) and r.tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    assert torch.equal(x4[2], torch.rot90(x[0], 1, dims=(1, 2))) and torch.equal(x4[7], torch.rot90(x[1], 3, (1, 2)))


def test_pretraining_trains_backbone_classifier_and_rotation_head():
    model = tiny()
    x, y = torch.rand(8, 1, 28, 28), torch.arange(8) % 6
    loss, acc = pretrain_loss(model, x, y)
    loss.backward()
    g = grads(model)
    assert torch.isfinite(loss) and 0 <= acc <= 1
    assert g["classifier.weight"] and g["rotation.weight"] and g["backbone.blocks.0.0.weight"]
    model.zero_grad(set_to_none=True)
    pretrain_loss(model, x, y, rotation_weight=0)[0].backward()
    assert not grads(model)["rotation.weight"]


def test_fine_tuning_trains_the_classifier_only_with_its_weight():
    model = tiny()
    xs, ys = torch.rand(5, 1, 28, 28), torch.arange(5)
    xq, yq = torch.rand(10, 1, 28, 28), torch.arange(10) % 5
    cs, cq = torch.arange(5), torch.arange(10) % 5
    loss, acc = episode_loss(model, xs, ys, xq, yq, cs, cq, ways=5)
    loss.backward()
    assert torch.isfinite(loss) and 0 <= acc <= 1 and grads(model)["classifier.weight"]
    model.zero_grad(set_to_none=True)
    episode_loss(model, xs, ys, xq, yq, cs, cq, ways=5, classifier_weight=0)[0].backward()
    g = grads(model)
    assert not g["classifier.weight"] and not g["rotation.weight"] and g["backbone.blocks.0.0.weight"]


def test_prediction_of_tasks_together_is_that_of_each_alone():
    model = tiny().eval()
    xs, ys, xq = torch.rand(3, 5, 1, 28, 28), torch.arange(5).expand(3, 5), torch.rand(3, 7, 1, 28, 28)
    for xu in (torch.zeros(3, 0, 1, 28, 28), torch.rand(3, 10, 1, 28, 28)):
        together = predict(model, xs, ys, xq, xu, ways=5)
        assert together.shape == (3, 7) and int(together.max()) < 5
        for t in range(3):
            alone = predict(model, xs[t:t + 1], ys[t:t + 1], xq[t:t + 1], xu[t:t + 1], ways=5)
            assert torch.equal(alone[0], together[t])

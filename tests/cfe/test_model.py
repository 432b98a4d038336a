"""cfe.model: CFE's queue (enqueue, wrap-around, pointer), the key encoder's momentum update, the forward pass (the
key encoder never receives a gradient; with split BatchNorm, shuffled keys and one loss per split), each backbone, the
choice of loss (CFE's or MoCo's, recorded in arch), and load_cfe."""

import copy

import pytest
import torch
import torch.nn.functional as F

from cfe.loss import cfe_loss, moco_loss
from cfe.model import CFE, load_cfe
from fewshot.backbones import BACKBONES, Conv4
from fewshot.checkpoint import save_checkpoint
from fewshot.errors import UserError


def tiny(queue_size=16, momentum=0.9, seed=0):
    torch.manual_seed(seed)
    return CFE(in_channels=1, hidden=4, image_size=28, dim=8, mlp=True, queue_size=queue_size,
               momentum=momentum, temperature=0.2)


def test_enqueue_writes_in_order_and_wraps_around():
    model = tiny(queue_size=8)
    start = model.queue.clone()
    keys = [torch.full((3, 8), float(i + 1)) for i in range(3)]
    model.enqueue(keys[0])
    assert model.queue_ptr.item() == 3
    assert torch.equal(model.queue[:3], keys[0]) and torch.equal(model.queue[3:], start[3:])
    model.enqueue(keys[1])
    assert model.queue_ptr.item() == 6
    assert torch.equal(model.queue[3:6], keys[1]) and torch.equal(model.queue[6:], start[6:])
    model.enqueue(keys[2])  # rows 6, 7, then 0: wraps past the end
    assert model.queue_ptr.item() == 1
    assert torch.equal(model.queue[6:8], keys[2][:2]) and torch.equal(model.queue[0], keys[2][2])
    assert torch.equal(model.queue[1:3], keys[0][1:])  # the rest of the oldest batch survives
    model.enqueue(torch.zeros(7, 8))  # ptr 1 + 7 = 8 -> back to 0
    assert model.queue_ptr.item() == 0


def test_enqueue_refuses_a_batch_larger_than_the_queue():
    with pytest.raises(AssertionError):
        tiny(queue_size=4).enqueue(torch.zeros(5, 8))


def test_queue_and_pointer_are_saved_in_the_state_dict():
    model = tiny()
    model.enqueue(torch.ones(5, 8))
    state = model.state_dict()
    assert "queue" in state and state["queue_ptr"].item() == 5
    other = tiny(seed=1)
    other.load_state_dict(state)
    assert torch.equal(other.queue, model.queue) and other.queue_ptr.item() == 5


def test_initial_queue_is_normalised_and_key_encoder_starts_as_query_encoder():
    model = tiny()
    torch.testing.assert_close(model.queue.norm(dim=1), torch.ones(16))
    for pk, pq in zip(model.encoder_k.parameters(), model.encoder_q.parameters()):
        assert torch.equal(pk, pq) and pk.data_ptr() != pq.data_ptr()  # equal values, separate storage
        assert not pk.requires_grad


def test_momentum_update_is_an_exponential_moving_average():
    model = tiny(momentum=0.9)
    with torch.no_grad():
        for p in model.encoder_q.parameters():
            p.add_(torch.randn_like(p))
    before_k = [p.clone() for p in model.encoder_k.parameters()]
    q = [p.clone() for p in model.encoder_q.parameters()]
    model.momentum_update()
    for pk, k0, pq in zip(model.encoder_k.parameters(), before_k, q):
        torch.testing.assert_close(pk, 0.9 * k0 + 0.1 * pq)
        assert not torch.equal(pk, k0) or torch.equal(k0, pq)
    for pq, q0 in zip(model.encoder_q.parameters(), q):
        assert torch.equal(pq, q0)  # f_q is untouched


def test_forward_matches_the_loss_on_the_old_queue_then_enqueues_the_keys():
    model = tiny(queue_size=16)
    model.train()
    g = torch.Generator().manual_seed(0)
    x1, x2 = torch.rand(6, 1, 28, 28, generator=g), torch.rand(6, 1, 28, 28, generator=g)
    ref = copy.deepcopy(model)
    old_queue = model.queue.clone()

    loss = model(x1, x2)

    ref.momentum_update()  # by hand: update f_k, embed both views, loss against the queue as it was
    q = ref.embed(x1)
    with torch.no_grad():
        k = F.normalize(ref.encoder_k(x2), dim=1)
    ref_loss = cfe_loss(q, k, old_queue, 0.2)
    torch.testing.assert_close(loss, ref_loss)
    torch.testing.assert_close(model.queue[:6], k)  # keys enqueued at the old pointer
    assert torch.equal(model.queue[6:], old_queue[6:])
    assert model.queue_ptr.item() == 6
    # backward after the enqueue still sees the queue as it was
    loss.backward()
    ref_loss.backward()
    for a, b in zip(model.encoder_q.parameters(), ref.encoder_q.parameters()):
        torch.testing.assert_close(a.grad, b.grad)


def test_key_encoder_gets_no_gradient_and_query_encoder_does():
    model = tiny()
    x = torch.rand(4, 1, 28, 28)
    model(x, x.flip(-1)).backward()
    assert all(p.grad is None for p in model.encoder_k.parameters())
    assert all(p.grad is not None for p in model.encoder_q.parameters())
    assert any(p.grad.abs().sum() > 0 for p in model.encoder_q.parameters())
    assert not model.queue.requires_grad


def test_embed_is_unit_norm_with_the_head():
    model = tiny().eval()
    z = model.embed(torch.rand(5, 1, 28, 28))
    assert z.shape == (5, 8)
    torch.testing.assert_close(z.norm(dim=1), torch.ones(5))


def test_split_batchnorm_shuffles_the_keys_and_returns_them_in_batch_order():
    torch.manual_seed(0)
    model = CFE(in_channels=1, hidden=4, image_size=28, dim=8, queue_size=16, momentum=0.0, bn_splits=2)
    assert model.arch["bn_splits"] == 2 and tiny().arch["bn_splits"] == 1
    reference = copy.deepcopy(model)
    x1, x2 = torch.rand(8, 1, 28, 28), torch.rand(8, 1, 28, 28)
    model(x1, x2, torch.Generator().manual_seed(3))
    # momentum 0: f_k is a copy of f_q; the keys come from f_k on the batch in the generator's shuffled order
    reference.momentum_update()
    order = torch.randperm(8, generator=torch.Generator().manual_seed(3))
    expected = torch.empty(8, 8)
    with torch.no_grad():
        expected[order] = F.normalize(reference.encoder_k(x2[order]), dim=1)
        unshuffled = F.normalize(copy.deepcopy(reference).encoder_k(x2), dim=1)
    torch.testing.assert_close(model.queue[:8], expected)
    assert not torch.allclose(model.queue[:8], unshuffled, atol=1e-4)  # other groups, other statistics


@pytest.mark.parametrize("splits", [1, 2])
def test_forward_computes_one_loss_per_batchnorm_split(splits):
    """bn_splits = S: the loss is the mean of the S splits' losses, each split's centres compared among themselves
    and with the whole queue (upstream's per-GPU loss); with S = 1, the loss over the whole batch."""
    torch.manual_seed(0)
    model = CFE(in_channels=1, hidden=4, image_size=28, dim=8, queue_size=16, momentum=0.0, bn_splits=splits).train()
    reference = copy.deepcopy(model)
    old_queue = model.queue.clone()
    x1, x2 = torch.rand(8, 1, 28, 28), torch.rand(8, 1, 28, 28)
    loss = model(x1, x2, torch.Generator().manual_seed(3))
    k = model.queue[:8]  # the keys, in batch order
    q = reference.embed(x1)
    per_split = [cfe_loss(q[i:i + 8 // splits], k[i:i + 8 // splits], old_queue, 0.2) for i in range(0, 8, 8 // splits)]
    torch.testing.assert_close(loss, torch.stack(per_split).mean())
    if splits == 1:
        torch.testing.assert_close(loss, cfe_loss(q, k, old_queue, 0.2, groups=1))
    else:
        assert not torch.allclose(loss, cfe_loss(q, k, old_queue, 0.2))  # not the whole-batch loss


@pytest.mark.parametrize("splits", [1, 2])
def test_the_moco_loss_is_moco_loss_of_each_split_on_the_old_queue_and_its_backward_follows_the_enqueue(splits):
    """loss="moco": the forward pass is moco_loss of each BatchNorm split against the queue as it was (their mean:
    the whole batch's), with the same keys, enqueue and gradients as computing it by hand."""
    torch.manual_seed(0)
    model = CFE(in_channels=1, hidden=4, image_size=28, dim=8, queue_size=16, momentum=0.0, bn_splits=splits,
                loss="moco").train()
    assert model.arch["loss"] == "moco" and tiny().arch["loss"] == "cfe"
    reference = copy.deepcopy(model)
    old_queue = model.queue.clone()
    x1, x2 = torch.rand(8, 1, 28, 28), torch.rand(8, 1, 28, 28)
    loss = model(x1, x2, torch.Generator().manual_seed(3))
    k = model.queue[:8].clone()  # the keys, in batch order
    q = reference.embed(x1)
    per_split = [moco_loss(q[i:i + 8 // splits], k[i:i + 8 // splits], old_queue, 0.2)
                 for i in range(0, 8, 8 // splits)]
    want = torch.stack(per_split).mean()
    torch.testing.assert_close(loss, want)
    torch.testing.assert_close(loss, moco_loss(q, k, old_queue, 0.2))
    assert not torch.allclose(loss, cfe_loss(q, k, old_queue, 0.2, groups=splits))  # another loss than CFE's
    loss.backward()  # after the enqueue
    want.backward()
    for a, b in zip(model.encoder_q.parameters(), reference.encoder_q.parameters()):
        torch.testing.assert_close(a.grad, b.grad)


def test_an_arch_without_loss_trained_with_cfe_and_an_unknown_loss_is_one_line(tmp_path):
    """Checkpoints written before the choice of loss record none: theirs was the CFE loss."""
    model = tiny()
    path = tmp_path / "old.pt"
    save_checkpoint(path, "cfe", arch={k: v for k, v in model.arch.items() if k != "loss"}, model=model.state_dict(),
                    epoch=1)
    assert load_cfe(path).arch["loss"] == "cfe" and load_cfe(path).loss == "cfe"
    save_checkpoint(path, "cfe", arch={**model.arch, "loss": "simclr"}, model=model.state_dict(), epoch=1)
    with pytest.raises(UserError, match="'arch' does not build a CFE .*unknown loss 'simclr'") as caught:
        load_cfe(path)
    assert "\n" not in str(caught.value)


def test_load_cfe_rebuilds_the_model_in_eval_mode(cfe_checkpoint):
    model = load_cfe(cfe_checkpoint)
    assert not model.training and model.trained_epochs == 1 and model.bn_splits == 1
    saved = torch.load(cfe_checkpoint, weights_only=True)["model"]
    assert all(torch.equal(value, saved[name]) for name, value in model.state_dict().items())


@pytest.mark.parametrize("backbone", BACKBONES)
def test_each_backbone_trains_a_step_and_round_trips_through_its_checkpoint(tmp_path, backbone):
    """A tiny batch with split BatchNorm: f_q gets a finite gradient everywhere, f_k none; load_cfe rebuilds the
    backbone from `arch` and embeds as the saved model did."""
    torch.manual_seed(0)
    model = CFE(in_channels=3, hidden=4, image_size=32, dim=8, queue_size=16, momentum=0.9, bn_splits=2,
                backbone=backbone).train()
    assert model.arch["backbone"] == backbone
    x1, x2 = torch.rand(4, 3, 32, 32), torch.rand(4, 3, 32, 32)
    loss = model(x1, x2, torch.Generator().manual_seed(0))
    loss.backward()
    assert torch.isfinite(loss)
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.encoder_q.parameters())
    assert all(p.grad is None for p in model.encoder_k.parameters())
    path = tmp_path / "last.pt"
    save_checkpoint(path, "cfe", arch=model.arch, model=model.state_dict(), epoch=1, config={})
    loaded = load_cfe(path)
    assert loaded.arch == model.arch
    with torch.no_grad():
        torch.testing.assert_close(loaded.embed(x1), model.eval().embed(x1))


def test_an_arch_without_backbone_is_a_conv4(tmp_path):
    """Checkpoints written before the backbone choice record none: they were conv4."""
    model = tiny()
    arch = {k: v for k, v in model.arch.items() if k != "backbone"}
    path = tmp_path / "old.pt"
    save_checkpoint(path, "cfe", arch=arch, model=model.state_dict(), epoch=1)
    loaded = load_cfe(path)
    assert loaded.arch["backbone"] == "conv4" and isinstance(loaded.encoder_q[0], Conv4)


def test_an_unknown_backbone_is_a_one_line_cli_error(tmp_path, run_main):
    r = run_main("cfe.train", ["--data", tmp_path / "x.npz", "--out", tmp_path / "r", "--backbone", "vit"])
    assert r.code == 2 and "argument --backbone: invalid choice: 'vit'" in r.err and "Traceback" not in r.err
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("entries, message", [
    ({"model": {}}, "cfe checkpoint without 'arch'"),
    ({"arch": {"hidden": 4, "backbone": "vit"}, "model": {}}, "'arch' does not build a CFE .*unknown backbone 'vit'"),
    ({"arch": {"hidden": 4, "colour": True}, "model": {}}, "'arch' does not build a CFE .*colour"),
    ({"arch": {"hidden": 4}, "model": {}}, "weights do not fit this model"),
])
def test_load_cfe_refuses_a_checkpoint_it_cannot_build_in_one_line(tmp_path, entries, message):
    path = tmp_path / "bad.pt"
    save_checkpoint(path, "cfe", **entries)
    with pytest.raises(UserError, match=message) as caught:
        load_cfe(path)
    assert "\n" not in str(caught.value)

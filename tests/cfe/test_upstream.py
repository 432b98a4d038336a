"""cfe.upstream: upstream PL-CFE's MoCo-style checkpoints (checkpoint_0199.pth.tar: encoder_q, encoder_k and the
queue under DistributedDataParallel's "module.") load as our CFE, for cfe.encode and cfe.quality alike.

The upstream files here are written from our own models by the inverse key translation, with upstream's extra
entries, so that the loaded model can be compared with the one it came from."""

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from cfe.model import CFE, load_cfe
from cfe.upstream import from_upstream_key, infer_arch, load_any, to_upstream_key
from fewshot.errors import UserError
from fewshot.io import load_json
from tests.fewshot.readers import assert_error

OMNIGLOT = dict(in_channels=1, hidden=64, image_size=28, dim=64, mlp=True, queue_size=256)  # upstream's Omniglot CFE
Q = "module.encoder_q."  # upstream's keys of f_q, saved through DistributedDataParallel
STATS = ("running_mean", "running_var", "num_batches_tracked")


def randomised(model: CFE, seed=0) -> CFE:
    """BatchNorm affine parameters and running statistics away from their defaults, so that a misplaced one shows."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.encoder_q.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.copy_(torch.rand(m.weight.shape, generator=gen) + 0.5)
                m.bias.copy_(torch.randn(m.bias.shape, generator=gen) * 0.1)
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=gen) * 0.1)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=gen) + 0.5)
    model.encoder_k.load_state_dict(model.encoder_q.state_dict())
    return model


def upstream_state(model: CFE, running_stats=True, prefix="module.") -> dict:
    """`model`'s state dict as upstream's CFE names it: both encoders by the inverse key translation, the queue as
    dim x K and queue_ptr of shape (1,), as moco/builder.py registers them. Without `running_stats`, the BatchNorm
    statistics are left out, as upstream's conv4 (track_running_stats=False) has none."""
    state = {}
    for key, value in model.state_dict().items():
        branch = key[:len("encoder_q.")]
        if branch not in ("encoder_q.", "encoder_k.") or (not running_stats and key.rsplit(".", 1)[1] in STATS):
            continue
        name = to_upstream_key("encoder_q." + key[len(branch):], prefix).replace("encoder_q.", branch, 1)
        state[name] = value.clone()
    state[prefix + "queue"] = model.queue.T.clone()
    state[prefix + "queue_ptr"] = torch.zeros(1, dtype=torch.long)
    return state


def save_upstream(path, model: CFE, running_stats=True, prefix="module.", legacy=False, edit=None):
    """An upstream checkpoint as main_cfe_omni.py's save_checkpoint writes it (epoch = epochs done, 200 in
    checkpoint_0199); `legacy`: torch.save's pre-1.6 format, which upstream's PyTorch 1.2 wrote."""
    state = upstream_state(model, running_stats, prefix)
    if edit:
        edit(state)
    params = list(model.encoder_q.parameters())
    small = sum(p.numel() for p in params) < 10**6  # SGD's momentum buffers, for the small models only
    optimizer = {"state": {i: {"momentum_buffer": torch.zeros_like(p)} for i, p in enumerate(params)} if small else {},
                 "param_groups": [{"lr": 0.0, "momentum": 0.9, "dampening": 0, "weight_decay": 1e-4,
                                   "nesterov": False, "params": list(range(len(params)))}]}
    torch.save({"epoch": 200, "arch": model.arch["backbone"], "state_dict": state, "optimizer": optimizer}, path,
               _use_new_zipfile_serialization=not legacy)
    return path


@pytest.fixture(scope="module")
def omniglot(tmp_path_factory):
    """Upstream's Omniglot CFE (conv4 without BatchNorm statistics, MLP head, 64-d) as its checkpoint_0199.pth.tar
    in PyTorch 1.2's format. Attributes: model (the original), path."""
    torch.manual_seed(0)
    model = randomised(CFE(**OMNIGLOT))
    path = save_upstream(tmp_path_factory.mktemp("upstream") / "checkpoint_0199.pth.tar", model, running_stats=False,
                         legacy=True)
    return type("Upstream", (), dict(model=model, path=path))


def test_key_translation_by_hand():
    cases = {
        "module.encoder_q.features.layer1.conv.weight": "encoder_q.0.blocks.0.0.weight",
        "module.encoder_q.features.layer4.norm.bias": "encoder_q.0.blocks.3.1.bias",
        "module.encoder_q.fc.0.weight": "encoder_q.1.0.weight",
        "module.encoder_q.fc.2.bias": "encoder_q.1.2.bias",
        "module.encoder_q.fc.weight": "encoder_q.1.weight",
        "module.encoder_q.conv1.weight": "encoder_q.0.net.conv1.weight",
        "module.encoder_q.layer3.5.bn2.running_var": "encoder_q.0.net.layer3.5.bn2.running_var",
        "module.encoder_q.layer1.0.downsample.1.weight": "encoder_q.0.net.layer1.0.downsample.1.weight",
    }
    for upstream, ours in cases.items():
        assert from_upstream_key(upstream) == ours
        assert from_upstream_key(upstream[len("module."):]) == ours  # saved without DistributedDataParallel
        assert to_upstream_key(ours) == upstream and to_upstream_key(ours, "") == upstream[len("module."):]
    for other in ("module.encoder_k.fc.0.weight", "module.queue", "module.queue_ptr", "encoder_k.conv1.weight"):
        assert from_upstream_key(other) is None
    assert to_upstream_key("encoder_k.1.0.weight") is None and to_upstream_key("queue") is None


@pytest.mark.parametrize("arch", [dict(OMNIGLOT), dict(OMNIGLOT, mlp=False), dict(in_channels=3, image_size=32,
                                                                                   backbone="resnet18")])
def test_every_encoder_key_translates_and_back(arch):
    keys = [f"encoder_q.{k}" for k in CFE(**arch).encoder_q.state_dict()]
    for key in keys:
        assert from_upstream_key(to_upstream_key(key)) == key
    upstream = {to_upstream_key(k) for k in keys}
    assert len(upstream) == len(keys) and all(k.startswith("module.encoder_q.") for k in upstream)
    if arch.get("backbone") == "resnet18":
        assert {"module.encoder_q.conv1.weight", "module.encoder_q.layer4.1.bn2.bias", "module.encoder_q.fc.0.weight",
                "module.encoder_q.fc.2.weight"} <= upstream  # torchvision's names, MoCo v2's head
    else:
        assert ("module.encoder_q.fc.0.weight" in upstream) == arch["mlp"]
        assert {Q + "features.layer4.conv.bias", Q + "features.layer4.norm.weight"} <= upstream


def test_upstream_omniglot_embeds_as_the_model_it_came_from(omniglot):
    loaded = load_any(omniglot.path)
    assert loaded.arch == omniglot.model.arch and not loaded.training  # every setting inferred, the queue's K too
    assert loaded.trained_epochs == 200 and loaded.train_config is None
    # upstream's conv4 keeps no BatchNorm statistics: it normalises with the batch's own, in eval mode too
    assert all(m.running_mean is None for m in loaded.modules() if isinstance(m, nn.BatchNorm2d))
    x = torch.rand(16, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        reference = F.normalize(omniglot.model.encoder_q.train()(x), dim=1)  # training mode: batch statistics
        torch.testing.assert_close(loaded.embed(x), reference)
    assert all(torch.equal(a, b) for a, b in zip(loaded.encoder_k.state_dict().values(),
                                                 loaded.encoder_q.state_dict().values()))


@pytest.mark.parametrize("case", [
    # upstream's ImageNet CFE: ResNet-50 with MoCo v2's head to 128; small images keep the test fast
    dict(arch=dict(in_channels=3, image_size=32, dim=128, mlp=True, backbone="resnet50"), prefix="module."),
    # another torchvision ResNet, a linear head, saved without DistributedDataParallel
    dict(arch=dict(in_channels=3, image_size=32, dim=16, mlp=False, backbone="resnet18"), prefix=""),
    # a conv4 whose BatchNorm does keep statistics, on 84 px RGB (upstream's ModelConvMiniImagenet: 5x5 feature)
    dict(arch=dict(in_channels=3, hidden=8, image_size=84, dim=16, mlp=True), prefix="module."),
], ids=["resnet50", "resnet18-no-ddp", "conv4-84px-running-stats"])
def test_upstream_models_with_running_statistics_embed_as_the_model_they_came_from(tmp_path, case):
    torch.manual_seed(0)
    model = randomised(CFE(queue_size=64, **case["arch"])).eval()
    path = save_upstream(tmp_path / "checkpoint_0199.pth.tar", model, prefix=case["prefix"])
    loaded = load_any(path, image_size=case["arch"]["image_size"])
    assert loaded.arch == model.arch and loaded.trained_epochs == 200 and not loaded.training
    x = torch.rand(4, 3, case["arch"]["image_size"], case["arch"]["image_size"],
                   generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(loaded.embed(x), model.embed(x))  # eval mode: the checkpoint's statistics


def test_image_size_is_upstreams_unless_given():
    """conv4: 28 px for a 1x1 feature (Omniglot), 84 px for 5x5 (mini-ImageNet); ResNet: 84 px, as upstream trains
    and encodes ImageNet; a size the conv4 cannot take is refused."""
    def q(**arch):
        state = upstream_state(CFE(**{**arch, "queue_size": 8}), prefix="")
        return {k[len("encoder_q."):]: v for k, v in state.items() if k.startswith("encoder_q.")}

    assert infer_arch(q(**OMNIGLOT), "p")["image_size"] == 28
    assert infer_arch(q(in_channels=3, hidden=4, image_size=84, dim=8), "p")["image_size"] == 84
    resnet = q(in_channels=3, image_size=32, dim=8, backbone="resnet18")
    assert infer_arch(resnet, "p") == dict(backbone="resnet18", in_channels=3, image_size=84, dim=8, mlp=True)
    assert infer_arch(resnet, "p", image_size=40)["image_size"] == 40
    with pytest.raises(UserError, match="1x1 feature map, which 84 px images do not give"):
        infer_arch(q(**OMNIGLOT), "p", image_size=84)


def test_encode_and_quality_run_on_upstreams_checkpoint(omniglot, prepared, tmp_path, run_main):
    out = tmp_path / "caches"
    r = run_main("cfe.encode", ["--checkpoint", omniglot.path, "--data-dir", prepared.root, "--dataset", prepared.name,
                                "--out", out, "--clusters", 10, "--niter", 5, "--device", "cpu", "--threads", 1])
    assert r.code == 0, r.err
    report = load_json(out / "encode.json")
    assert report["dim"] == 64 and report["checkpoint_epoch"] == 200 and report["embedding_data"]["data"] is None
    Z = np.load(out / report["caches"]["train_emb"])["Z"]
    with torch.no_grad():  # all 800 train images in one batch (--batch-size 1024), as upstream's model sees them
        x = torch.from_numpy(prepared.X["train"]).permute(0, 3, 1, 2).float() / 255
        np.testing.assert_allclose(Z, F.normalize(omniglot.model.encoder_q.train()(x), dim=1).numpy(), atol=1e-5)
    r = run_main("cfe.quality", ["--checkpoint", omniglot.path, "--data-dir", prepared.root, "--dataset",
                                 prepared.name, "--out", tmp_path / "q.json", "--device", "cpu", "--threads", 1])
    assert r.code == 0, r.err
    assert load_json(tmp_path / "q.json")["checkpoint_epoch"] == 200


def _drop(*keys):
    def edit(state):
        for key in keys:
            del state[key]
    return edit


def _set(key, value):
    def edit(state):
        state[key] = value
    return edit


def _rename(old, new):
    def edit(state):
        for key in [k for k in state if old in k]:
            state[key.replace(old, new)] = state.pop(key)
    return edit



@pytest.mark.parametrize("edit, fragments", [
    (_drop(Q + "features.layer2.conv.weight"), ["missing: module.encoder_q.features.layer2.conv.weight)"]),
    (_drop(*[Q + f"features.layer4.{p}" for p in ("conv.weight", "conv.bias", "norm.weight", "norm.bias")]),
     ["missing: module.encoder_q.features.layer4.conv.weight, module.encoder_q.features.layer4.conv.bias, "
      "module.encoder_q.features.layer4.norm.weight and 1 more"]),
    (_set(Q + "features.layer3.conv.weight", torch.zeros(32, 64, 3, 3)),
     ["wrong shape: module.encoder_q.features.layer3.conv.weight is 32x64x3x3, the model's 64x64x3x3"]),
    (_set(Q + "features.layer5.conv.weight", torch.zeros(64, 64, 3, 3)),
     ["unexpected: module.encoder_q.features.layer5.conv.weight"]),
    (_drop(Q + "fc.0.weight", Q + "fc.0.bias", Q + "fc.2.weight", Q + "fc.2.bias"), ["has no projection head"]),
    (_rename("encoder_q.features.", "encoder_q.trunk."), ["is neither upstream's conv4"]),
], ids=["missing", "missing-many", "wrong-shape", "unexpected", "no-head", "unknown-backbone"])
def test_an_upstream_checkpoint_that_does_not_fit_is_one_line_naming_its_keys(omniglot, prepared, tmp_path, run_main,
                                                                            edit, fragments):
    path = save_upstream(tmp_path / "checkpoint_0199.pth.tar", omniglot.model, running_stats=False, edit=edit)
    r = run_main("cfe.encode", ["--checkpoint", path, "--data-dir", prepared.root, "--dataset", prepared.name,
                                "--out", tmp_path / "caches", "--device", "cpu"])
    assert_error(r, str(path), "upstream CFE checkpoint whose encoder_q", *fragments)
    assert not (tmp_path / "caches").exists()


def test_a_file_that_is_neither_gets_load_cfes_error(tmp_path, run_main):
    """Only a dict whose state_dict holds encoder_q keys is taken for upstream's: anything else reads as before."""
    other = tmp_path / "supervised.pth.tar"
    torch.save({"epoch": 1, "state_dict": {"module.fc.weight": torch.zeros(2, 2)}}, other)
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    for path, fragment in ((other, "not a checkpoint of this project (no 'kind' entry)"),
                           (text, "not a readable checkpoint"), (tmp_path / "absent.pt", "checkpoint not found")):
        with pytest.raises(UserError) as ours:
            load_cfe(path)
        with pytest.raises(UserError) as either:
            load_any(path)
        assert str(either.value) == str(ours.value) and fragment in str(ours.value)


def test_our_checkpoints_load_as_load_cfe_loads_them(cfe_checkpoint):
    ours, either = load_cfe(cfe_checkpoint), load_any(cfe_checkpoint)
    assert either.arch == ours.arch and either.trained_epochs == ours.trained_epochs
    assert either.train_config == ours.train_config and not either.training
    assert all(torch.equal(v, ours.state_dict()[k]) for k, v in either.state_dict().items())

"""fewshot.checkpoint: round trip, and every unreadable or foreign checkpoint is a UserError, never a traceback."""

import argparse

import numpy as np
import pytest
import torch

from fewshot.checkpoint import load_checkpoint, load_state, save_checkpoint
from fewshot.errors import UserError


def net(hidden=3):
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(4, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, 2))


def test_round_trip(tmp_path):
    model = net()
    path = tmp_path / "ck" / "last.pt"
    save_checkpoint(path, "cfe", arch={"hidden": 3}, model=model.state_dict(), epoch=4, config={"lr": 0.1})
    ckpt = load_checkpoint(path, "cfe")
    assert ckpt["kind"] == "cfe" and ckpt["epoch"] == 4 and ckpt["config"] == {"lr": 0.1}
    other = net()
    with torch.no_grad():
        other[0].weight.zero_()
    load_state(other, ckpt["model"], path)
    assert torch.equal(other[0].weight, model[0].weight)
    assert [p.name for p in path.parent.iterdir()] == ["last.pt"]  # nothing temporary left behind


def test_checkpoint_of_another_kind(tmp_path):
    path = tmp_path / "maml.pt"
    save_checkpoint(path, "maml", model={})
    with pytest.raises(UserError, match="is a 'maml' checkpoint, expected 'cfe'"):
        load_checkpoint(path, "cfe")
    torch.save({"kind": "ep", "model": {}}, path)  # saved by plain torch.save
    with pytest.raises(UserError, match="'ep' checkpoint"):
        load_checkpoint(path, "maml")


def test_missing_checkpoint(tmp_path):
    with pytest.raises(UserError, match="checkpoint not found"):
        load_checkpoint(tmp_path / "absent.pt", "cfe")
    with pytest.raises(UserError, match="is a folder, expected a checkpoint"):
        load_checkpoint(tmp_path, "cfe")


def _truncated(tmp_path):
    good = tmp_path / "good.pt"
    save_checkpoint(good, "cfe", model=net().state_dict())
    return good.read_bytes()[:200]


@pytest.mark.parametrize("content, why", [
    (np.random.default_rng(0).bytes(2000), "not a file written by torch.save"),  # random bytes
    (b"", "not a file written by torch.save"),  # empty file (torch raises an EOFError without a message)
    (b"hello, I am a text file\n", "not a file written by torch.save"),  # torch would say "KeyError: 101"
    (b"\x80\x02" + np.random.default_rng(0).bytes(200), ""),  # a legacy pickle header: the unpickler's error
    ("truncated", ""),
])
def test_corrupt_checkpoint(tmp_path, content, why):
    path = tmp_path / "bad.pt"
    path.write_bytes(_truncated(tmp_path) if content == "truncated" else content)
    with pytest.raises(UserError, match=f"not a readable checkpoint \\({why}"):
        load_checkpoint(path, "cfe")


def test_legacy_format_loads(tmp_path):
    path = tmp_path / "legacy.pt"
    torch.save({"kind": "cfe", "model": net().state_dict()}, path, _use_new_zipfile_serialization=False)
    assert load_checkpoint(path, "cfe")["kind"] == "cfe"


def test_foreign_pickles_are_refused(tmp_path):
    path = tmp_path / "foreign.pt"
    torch.save([1, 2, 3], path)
    with pytest.raises(UserError, match="no 'kind' entry"):
        load_checkpoint(path, "cfe")
    torch.save({"kind": "cfe", "args": argparse.Namespace(lr=1)}, path)  # not loadable with weights_only
    with pytest.raises(UserError, match="not a readable checkpoint"):
        load_checkpoint(path, "cfe")


def test_load_state_with_mismatched_weights(tmp_path):
    with pytest.raises(UserError, match="weights do not fit this model"):
        load_state(net(hidden=3), net(hidden=5).state_dict(), "x.pt")  # shapes differ
    state = net().state_dict()
    del state["2.bias"]
    with pytest.raises(UserError, match="weights do not fit"):
        load_state(net(), state, "x.pt")  # a missing key
    state = {**net().state_dict(), "extra.weight": torch.zeros(1)}
    with pytest.raises(UserError, match="weights do not fit"):
        load_state(net(), state, "x.pt")  # an unexpected key
    with pytest.raises(UserError, match="holds no weights"):
        load_state(net(), None, "x.pt")


def test_load_state_names_the_keys_that_do_not_fit():
    """The message shows PyTorch's detail lines, not only its header "Error(s) in loading state_dict for X:"."""
    with pytest.raises(UserError, match=r"size mismatch for 0\.weight") as info:
        load_state(net(hidden=3), net(hidden=5).state_dict(), "x.pt")
    assert "Error(s) in loading" not in str(info.value) and len(str(info.value)) < 260
    assert "\n" not in str(info.value)
    state = {**net().state_dict(), "extra.weight": torch.zeros(1)}
    del state["2.bias"]
    with pytest.raises(UserError, match=r'Missing key\(s\) in state_dict: "2\.bias".*Unexpected key\(s\).*extra'):
        load_state(net(), state, "x.pt")


def test_missing_entries_are_named(tmp_path):
    path = tmp_path / "partial.pt"
    save_checkpoint(path, "maml", model=net().state_dict(), epoch=1)
    with pytest.raises(UserError, match=r"partial\.pt: maml checkpoint without 'arch' \(has epoch, kind, model\)"):
        load_checkpoint(path, "maml", required=("model", "arch", "epoch"))
    assert load_checkpoint(path, "maml", required=("model", "epoch"))["epoch"] == 1
    save_checkpoint(path, "cfe", arch={"hidden": 3})  # every checkpoint holds weights: the default asks for them
    with pytest.raises(UserError, match="cfe checkpoint without 'model'"):
        load_checkpoint(path, "cfe")
    save_checkpoint(path, "cfe", model={})  # what cfe's callers check themselves (load_cfe: 'arch') is not asked
    assert load_checkpoint(path, "cfe")["model"] == {}

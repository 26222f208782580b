"""Checkpoint loading treats files as untrusted: no pickled code runs, errors say what is wrong."""

import os
import pickle

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from pipeline.tokenizers.checkpoints import CheckpointError, load_into, read_state_dict


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.register_buffer("hits", torch.zeros(5))


class Exploit:
    def __reduce__(self):
        return (os.system, ("touch /tmp/scaletok-pwned",))


def test_safetensors_and_pth_round_trip(tmp_path):
    model = Tiny()
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp_path / "a.safetensors"))
    torch.save({"state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}}, tmp_path / "b.ckpt")
    for name in ("a.safetensors", "b.ckpt"):
        other = load_into(Tiny(), tmp_path / name)
        assert torch.equal(other.conv.weight, model.conv.weight)


def test_float8_storage_is_upcast(tmp_path):
    sd = {"conv.weight": torch.randn(4, 3, 3, 3).to(torch.float8_e4m3fn), "conv.bias": torch.zeros(4),
          "hits": torch.zeros(5)}
    save_file(sd, str(tmp_path / "f8.safetensors"))
    assert read_state_dict(tmp_path / "f8.safetensors")["conv.weight"].dtype == torch.float32


def test_pickled_code_is_never_executed(tmp_path):
    path = tmp_path / "evil.pth"
    with open(path, "wb") as f:
        pickle.dump({"state_dict": Exploit()}, f, protocol=2)
    if os.path.exists("/tmp/scaletok-pwned"):
        os.remove("/tmp/scaletok-pwned")
    with pytest.raises(CheckpointError, match="weights_only=True loader: .*unsupported GLOBAL posix.system"):
        read_state_dict(path)
    assert not os.path.exists("/tmp/scaletok-pwned")


@pytest.mark.parametrize("content,match", [(b"", "empty"), (b"\x00garbage" * 10, "not a readable|corrupt")])
def test_empty_and_garbage_files(tmp_path, content, match):
    for suffix in (".pth", ".safetensors"):
        path = tmp_path / f"bad{suffix}"
        path.write_bytes(content)
        with pytest.raises(CheckpointError, match=match):
            read_state_dict(path)


def test_truncated_safetensors(tmp_path):
    save_file({"w": torch.randn(100, 100)}, str(tmp_path / "full.safetensors"))
    data = (tmp_path / "full.safetensors").read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError):
        read_state_dict(tmp_path / "cut.safetensors")


def test_missing_file_and_no_tensors(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        read_state_dict(tmp_path / "nope.pth")
    torch.save({"epoch": 3, "config": {"a": 1}}, tmp_path / "meta.pth")
    with pytest.raises(CheckpointError, match="no tensors"):
        read_state_dict(tmp_path / "meta.pth")

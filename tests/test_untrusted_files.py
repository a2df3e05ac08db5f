"""Files searchlab reads may come from elsewhere (weights, policies, a copied experiment): none of
its readers runs code hidden in a pickle. Each gets a file whose unpickling would create a marker
file, and must refuse it with the marker never created."""
from pathlib import Path

import numpy as np
import pytest
import torch

from searchlab import checkpoint, deepaa_trials
from searchlab.augment.policies import load_policy
from searchlab.data import load_dataset
from searchlab.models import build_model


class Payload:
    """Unpickling this calls Path.touch(marker): code from the file running."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return Path.touch, (Path(self.marker),)


def payload_npz(path, marker, **arrays):
    np.savez(path, **arrays, payload=np.array([Payload(marker)], dtype=object))


def check_refused(read, marker, errors=(Exception,), match=None):
    with pytest.raises(errors, match=match):
        read()
    assert not Path(marker).exists(), "the pickled payload ran"


def test_the_payload_runs_when_unpickled(tmp_path):
    # The control: without the guards, loading these files does run the payload.
    marker = tmp_path / "ran"
    torch.save({"payload": Payload(marker)}, tmp_path / "state.pt")
    torch.load(tmp_path / "state.pt", weights_only=False)
    assert marker.exists()
    marker.unlink()
    payload_npz(tmp_path / "a.npz", marker)
    np.load(tmp_path / "a.npz", allow_pickle=True)["payload"]
    assert marker.exists()


def test_checkpoints_refuse_pickled_code(tmp_path):
    marker = tmp_path / "ran"
    torch.save({"schema": checkpoint.SCHEMA, "epoch": 1, "model": Payload(marker)}, tmp_path / checkpoint.STATE)
    check_refused(lambda: checkpoint.load_state(tmp_path), marker, checkpoint.CheckpointError)
    payload_npz(tmp_path / checkpoint.ARRAYS, marker, heatmap=np.zeros(3))
    check_refused(lambda: checkpoint.read_arrays(tmp_path), marker, checkpoint.CheckpointError)


def test_model_weights_refuse_pickled_code(tmp_path):
    marker = tmp_path / "ran"
    torch.save({"conv.weight": Payload(marker)}, tmp_path / "weights.pth")
    check_refused(lambda: build_model("small_cnn", 10, weights=str(tmp_path / "weights.pth")), marker, ValueError)


def test_deepaa_proxy_refuses_pickled_code(tmp_path):
    marker = tmp_path / "ran"
    cfg = deepaa_trials.resolve({"proxy": {"cache": str(tmp_path)}})
    torch.save({"schema": checkpoint.SCHEMA, "model": Payload(marker)}, deepaa_trials.proxy_path(cfg))
    check_refused(lambda: deepaa_trials.load_proxy(cfg, 10, "cpu"), marker, match="Weights only load failed")


def test_policy_and_dataset_files_refuse_pickled_code(tmp_path):
    marker = tmp_path / "ran"
    payload_npz(tmp_path / "policy.npz", marker, policy_probs=np.ones((1, 2)), ops=np.zeros(2), mags=np.zeros(2),
                op_names=np.array(["identity"]))
    check_refused(lambda: load_policy(tmp_path / "policy.npz"), marker, ValueError, match="allow_pickle=False")
    folder = tmp_path / "data" / "cifar10"
    folder.mkdir(parents=True)
    for split in ("train", "test"):
        np.save(folder / f"{split}_x.npy", np.zeros((2, 8, 8, 3), np.uint8))
        np.save(folder / f"{split}_y.npy", np.array([Payload(marker), 0], dtype=object))
    check_refused(lambda: load_dataset("cifar10", val_size=0, root=str(tmp_path / "data")), marker,
                  ValueError, match="allow_pickle=False")

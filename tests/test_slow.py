"""Long checks on real data (run with: python -m pytest -m slow). Need Fashion-MNIST installed."""

import json

import numpy as np
import pytest

from gxnor_cli import checkpoint
from gxnor_cli.data.sources import DEBIAN_FASHION_MNIST, load_data
from gxnor_cli.config import DataConfig

from conftest import runs_in_store

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not (DEBIAN_FASHION_MNIST / "t10k-images-idx3-ubyte.gz").is_file(),
                                 reason="Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)")]


def test_mnist_net_epoch_on_fashion_mnist_and_exact_engine(cli, runs_dir, tmp_path):
    code, out, err = cli("train", "data=fashion_mnist", "model=mnist_net", "trainer.epochs=1", "--json")
    assert code == 0, err
    result = json.loads(out)
    (run,) = runs_in_store(runs_dir)
    assert run.data.metrics["epoch_time_s"] > 0 and run.data.metrics["samples_per_s"] > 0
    assert result["test_acc"] > 0.7  # one epoch of a ternary net on Fashion-MNIST

    from gxnor_cli.deploy.engine import PackedModel
    from gxnor_cli.deploy.fold import predict_torch
    from gxnor_cli.deploy.fold_graph import export_run

    payload = checkpoint.load(result["checkpoint"])
    export_run(payload, tmp_path / "m.gxnor")
    dataset = load_data(DataConfig("fashion_mnist"))
    engine = PackedModel.load(tmp_path / "m.gxnor")
    from gxnor_cli.models.nets import load_trained

    _, model = load_trained(payload)
    want = predict_torch(model, dataset.test.images, dataset.max_value)
    got = engine.predict(dataset.test.images.numpy())
    assert len(got) == 10_000 and np.array_equal(got, want)

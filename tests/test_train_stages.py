"""The tiny stages 1 and 2 train a few steps and resume exactly (stage 3: test_train_parallel)."""

import numpy as np
import pytest
import train_support as ts

from emo_jax.config import load_config
from emo_jax.models.inventory import component_of


@pytest.mark.parametrize("stage", [1, 2])
def test_stage_trains_and_resumes_exactly(stage, tmp_path_factory):
    """Two steps straight (checkpoints at 1 and 2), and the same run resumed from step 1:
    the same batch, loss and weights at step 2, bit for bit."""
    import shutil

    from emo_jax.train.emo import train

    corpus = ts.make_corpus(tmp_path_factory.getbasetemp() / "train_corpus")
    root = tmp_path_factory.mktemp(f"stage{stage}")
    extra = [f"train.stage={stage}", "train.steps=2", "train.checkpoint_every=1"]
    extra += ["data.batch_size=4", "train.eval_batches=1"]
    cfg = lambda run: load_config(ts.CONFIG, ts.overrides(corpus, root / run, *extra))  # noqa: E731
    straight = train(cfg("straight"), progress=False)
    shutil.copytree(root / "straight", root / "resumed")
    shutil.rmtree(root / "resumed" / "checkpoints" / "2")
    resumed = train(cfg("resumed"), progress=False)
    assert (straight["start"], resumed["start"], resumed["end"]) == (0, 1, 2)
    assert resumed["losses"] == {2: straight["losses"][2]}
    assert ts.metrics(root / "resumed")[2]["batch"] == ts.metrics(root / "straight")[2]["batch"]
    got, want = (ts.checkpoint_params(root / run, 2) for run in ("resumed", "straight"))
    assert got.keys() == want.keys()
    assert all(np.array_equal(got[k], want[k]) for k in want)
    moved = ts.checkpoint_params(root / "straight", 1)
    trained = {k for k in want if k.startswith("params/")}
    assert {component_of(tuple(k.split("/")[1:])) for k in trained} == ts.STAGES[stage][0]
    assert any(not np.array_equal(moved[k], want[k]) for k in trained)  # step 2 changed them

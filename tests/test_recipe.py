"""The default model's recipe pieces: the autoencoder stage (stage 0) and `emo-jax recipe`."""

import json
from pathlib import Path

import jax
import numpy as np
import pytest
import train_support as ts
from jax.sharding import NamedSharding, PartitionSpec

from emo_jax.checkpoint.manager import Checkpoints
from emo_jax.cli import main
from emo_jax.config import load_config
from emo_jax.models.vae import AutoencoderKL
from emo_jax.train.autoencoder import images_of, latent_std, train_autoencoder
from emo_jax.train.data import fixed_batches

DEFAULT = "configs/default/train.yaml"
AE_OVERRIDES = [
    "train.stage=0",
    "model.vae.block_out_channels=[8,8,8,8]",
    "model.vae.mid_block_add_attention=false",
    "data.resolution=32",
    "data.batch_size=4",
    "train.learning_rate=2.0e-3",
    "train.warmup_steps=0",
    "train.checkpoint_every=20",
    "train.log_every=20",
    "train.eval_batches=2",
]


def ae_config(corpus, out, steps):
    return load_config(
        DEFAULT,
        AE_OVERRIDES + [f"data.shards={corpus}", f"train.out_dir={out}", f"train.steps={steps}"],
    )


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return ts.make_corpus(tmp_path_factory.getbasetemp() / "train_corpus")  # shared


@pytest.fixture(scope="module")
def ae_runs(tmp_path_factory, corpus):
    """Three autoencoder runs: 40 steps straight, and 20 steps then resumed to 40."""
    root = tmp_path_factory.mktemp("ae")
    straight = train_autoencoder(ae_config(corpus, root / "straight", 40), progress=False)
    first = train_autoencoder(ae_config(corpus, root / "resumed", 20), progress=False)
    resumed = train_autoencoder(ae_config(corpus, root / "resumed", 40), progress=False)
    return root, straight, first, resumed


def test_autoencoder_learns_and_writes_a_scaled_vae(ae_runs, corpus):
    root, straight, _, _ = ae_runs
    evals = [json.loads(line)["loss"] for line in (root / "straight" / "eval.jsonl").open()]
    assert len(evals) == 3 and evals[-1] < 0.6 * evals[0]  # L1 at steps 0, 20, 40
    vae, params = AutoencoderKL.from_pretrained(root / "straight" / "vae")
    assert vae.config.block_out_channels == (8, 8, 8, 8)
    cfg = ae_config(corpus, root / "straight", 40)
    sharding = NamedSharding(jax.make_mesh((1,), ("data",)), PartitionSpec())
    evaluation = fixed_batches(cfg, {k: sharding for k in ("frames", "reference", "mask")})
    std = latent_std(vae, params, evaluation)
    assert vae.config.scaling_factor == pytest.approx(1.0 / std, rel=1e-4)
    assert straight["scaling_factor"] == vae.config.scaling_factor
    x = images_of(evaluation[0])
    assert x.shape == (4 * 1 + 4, 32, 32, 3)  # targets then references


def test_autoencoder_resumes_to_the_same_weights(ae_runs):
    root, straight, first, resumed = ae_runs
    assert (first["start"], first["end"], resumed["start"], resumed["end"]) == (0, 20, 20, 40)
    a = Checkpoints(root / "straight" / "checkpoints").restore_numpy(40)["state"]["params"]
    b = Checkpoints(root / "resumed" / "checkpoints").restore_numpy(40)["state"]["params"]
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
        np.testing.assert_array_equal(x, y)
    losses = {k: v for k, v in straight["losses"].items() if k > 20}
    assert losses == resumed["losses"]
    rows = [
        {r["step"]: r["batch"] for r in map(json.loads, (root / run / "metrics.jsonl").open())}
        for run in ("straight", "resumed")
    ]
    assert rows[0] == rows[1] and len(set(rows[0].values())) == 40  # the same 40 batches


def test_decoder_fine_tune_keeps_the_latent_space(ae_runs, corpus, tmp_path):
    """vae_trainable [decoder] from a trained VAE, face-weighted: encoder and scale unchanged."""
    root = ae_runs[0]
    extra = [
        f"train.init_from={root / 'straight' / 'vae'}",
        "train.vae_trainable=[decoder]",
        "train.face_weight=4.0",
    ]
    cfg = load_config(
        DEFAULT,
        AE_OVERRIDES
        + [f"data.shards={corpus}", f"train.out_dir={tmp_path / 'decoder'}", "train.steps=20"]
        + extra,
    )
    result = train_autoencoder(cfg, progress=False)
    before_vae, before = AutoencoderKL.from_pretrained(root / "straight" / "vae")
    after_vae, after = AutoencoderKL.from_pretrained(tmp_path / "decoder" / "vae")
    assert after_vae.config == before_vae.config  # scaling_factor included
    assert result["scaling_factor"] == before_vae.config.scaling_factor
    for part in ("encoder", "quant_conv", "decoder", "post_quant_conv"):
        same = [
            np.array_equal(x, y)
            for x, y in zip(
                jax.tree_util.tree_leaves(before[part]), jax.tree_util.tree_leaves(after[part])
            )
        ]
        assert all(same) if part in ("encoder", "quant_conv") else not any(same), part
    evals = [json.loads(line)["loss"] for line in (tmp_path / "decoder" / "eval.jsonl").open()]
    assert evals[-1] < evals[0]  # the face-weighted L1 of the fixed batches


@pytest.mark.parametrize(
    "extra, message",
    [
        (["train.vae_trainable=[decoder]"], "needs train.init_from"),
        (["train.vae_trainable=[unet]"], "name encoder, decoder or both"),
    ],
)
def test_autoencoder_stage_config_errors(tmp_path, capsys, extra, message):
    code = main(
        ["train", "--config", DEFAULT, "--stage", "0"]
        + [f"train.out_dir={tmp_path / 'run'}"]
        + extra
    )
    err = capsys.readouterr().err
    assert code == 2 and message in err and "Traceback" not in err


def test_decoder_fine_tune_refuses_another_architecture(ae_runs, tmp_path, capsys):
    vae = ae_runs[0] / "straight" / "vae"  # 8-channel blocks; the default config's differ
    code = main(
        ["train", "--config", DEFAULT, "--stage", "0", f"train.init_from={vae}"]
        + ["train.vae_trainable=[decoder]", f"train.out_dir={tmp_path / 'run'}"]
    )
    err = capsys.readouterr().err
    assert code == 2 and f"train.init_from {vae}: not the model.vae architecture" in err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "run").exists()


def test_autoencoder_stage_refuses_video_data(tmp_path, capsys):
    code = main(
        ["train", "--config", DEFAULT, "--stage", "0", "data.mode=video"]
        + [f"train.out_dir={tmp_path / 'run'}"]
    )
    err = capsys.readouterr().err
    assert code == 2 and "data.mode: image" in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()


def write_recipe(path, state, steps: dict[str, str]):
    lines = [f"state: {state}", "steps:"] + [f"  {k}: {v}" for k, v in steps.items()]
    path.write_text("\n".join(lines) + "\n")


def test_recipe_runs_skips_done_steps_and_reruns_changed_ones(tmp_path, capsys):
    recipe, state = tmp_path / "recipe.yaml", tmp_path / "state.json"
    synth = f"synth --out {tmp_path / 'videos'} --identities 1 --seconds 1 --size 64 --no-progress"
    steps = {"corpus": synth, "info": "info --config configs/model/tiny.yaml --quiet-config"}
    write_recipe(recipe, state, steps)
    assert main(["recipe", str(recipe)]) == 0
    done = json.loads(state.read_text())
    assert list(done) == ["corpus", "info"] and all(v["seconds"] > 0 for v in done.values())
    assert len(list((tmp_path / "videos").glob("*.mp4"))) == 1
    capsys.readouterr()
    assert main(["recipe", str(recipe)]) == 0
    out = capsys.readouterr().out
    assert out.count("(done in") == 2 and "component" not in out  # nothing ran again
    steps["info"] = "info --config configs/model/tiny.yaml --quiet-config model.unet.sample_size=8"
    write_recipe(recipe, state, steps)
    assert main(["recipe", str(recipe)]) == 0
    out = capsys.readouterr().out
    assert out.count("(done in") == 1 and "component" in out  # only the changed step ran


def test_recipe_refuses_a_done_step_whose_config_changed(tmp_path, capsys):
    recipe, state = tmp_path / "recipe.yaml", tmp_path / "state.json"
    base, top = tmp_path / "base.yaml", tmp_path / "top.yaml"
    base.write_text(Path("configs/model/tiny.yaml").read_text())
    top.write_text("base: base.yaml\n")
    write_recipe(recipe, state, {"info": f"info --config {top} --quiet-config"})
    assert main(["recipe", str(recipe)]) == 0
    top.write_text("# a comment changes nothing\nbase: base.yaml\n")
    capsys.readouterr()
    assert main(["recipe", str(recipe)]) == 0
    assert capsys.readouterr().out.count("(done in") == 1
    written = state.read_text()
    base.write_text(base.read_text() + "\ntrain:\n  steps: 7\n")  # a file it includes
    assert main(["recipe", str(recipe)]) == 2
    captured = capsys.readouterr()
    err = captured.err.strip().splitlines()
    assert len(err) == 1 and f"error: {top}: changed since recipe step info ran" in err[0]
    assert "component" not in captured.out and state.read_text() == written


def test_recipe_stops_at_a_failing_step(tmp_path, capsys):
    recipe, state = tmp_path / "recipe.yaml", tmp_path / "state.json"
    bad = f"synth --out {tmp_path / 'v'} --audio piano --no-progress"
    write_recipe(recipe, state, {"bad": bad, "never": "info --quiet-config"})
    assert main(["recipe", str(recipe)]) == 2
    err = capsys.readouterr().err
    assert "piano" in err and "step bad failed (exit 2)" in err
    assert not state.exists()


@pytest.mark.parametrize(
    "text, message",
    [("steps: {a: info}\n", "needs 'state"), ("state: s.json\nsteps: {a: 3}\n", "not command")],
)
def test_recipe_file_errors(tmp_path, capsys, text, message):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(text)
    assert main(["recipe", str(recipe)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0] and str(recipe) in err[0]


@pytest.mark.parametrize(
    "recipe",
    ["configs/default/recipe.yaml", "configs/latent24/recipe.yaml", "configs/v2/recipe.yaml"],
)
def test_recipes_list_every_stage_on_their_own_data(recipe):
    from emo_jax.commands.recipe import load_recipe

    state, steps = load_recipe(recipe)
    configs = [
        (argv[argv.index("--config") + 1], [f"train.stage={argv[argv.index('--stage') + 1]}"])
        for argv in steps.values()
        if argv[0] == "train"
    ]
    ae, s1, s2, s3 = (load_config(*c).train for c in configs)
    assert [t.stage for t in (ae, s1, s2, s3)] == [0, 1, 2, 3]
    assert s1.vae_path == s2.vae_path == s3.vae_path == ae.out_dir + "/vae"
    assert ae.face_weight > 0  # eyes and mouth weighed up in the autoencoder's L1
    assert (s2.init_from, s3.init_from) == (s1.out_dir, s2.out_dir)
    shards = steps["preprocess"][steps["preprocess"].index("--out") + 1]
    assert all(load_config(*c).data.shards == shards for c in configs)
    # the shards' audio features are the ones every stage's model reads
    processed = [steps[k] for k in ("preprocess", "heldout_processed") if k in steps]
    made = {load_config(argv[argv.index("--config") + 1]).model.audio for argv in processed}
    assert made == {load_config(*c).model.audio for c in configs}
    if "heldout_processed" in steps:  # stages 1 and 2 report their loss on the held-out people
        argv = steps["heldout_processed"]
        assert argv[argv.index("--videos") + 1] in steps["evaluate"]
        assert s1.eval_shards == s2.eval_shards == argv[argv.index("--out") + 1]
    assert load_config(*configs[1]).data.resolution >= 96
    model = load_config(*configs[1]).model
    assert model.unet.sample_size * 2 ** (len(model.vae.block_out_channels) - 1) == 96
    assert model.unet.in_channels == model.vae.latent_channels


def test_reference_from_backbone_copies_every_shared_param():
    from flax.traverse_util import flatten_dict

    from emo_jax.models.emo import EMOModel, init_params
    from emo_jax.train.weights import reference_from_backbone

    cfg = load_config("configs/model/tiny.yaml")
    fresh = init_params(EMOModel(cfg.model), 0)
    tied = reference_from_backbone(fresh)
    ref, backbone = flatten_dict(tied["reference_unet"]), flatten_dict(tied["denoising_unet"])
    before = flatten_dict(fresh["reference_unet"])
    assert ref.keys() == before.keys() and len(ref) > 100
    assert all(np.array_equal(ref[k], backbone[k]) for k in ref)
    assert not all(np.array_equal(before[k], backbone[k]) for k in ref)  # fresh: independent
    assert tied["denoising_unet"] is fresh["denoising_unet"]
    assert load_config(DEFAULT, ["train.stage=1"]).train.reference_from_backbone

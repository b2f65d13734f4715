"""`emo-jax audio-features`: writes the documented array; bad input exits 2, writes nothing."""

import numpy as np
import soundfile as sf

from emo_jax.cli import main


def test_audio_features_command_writes_windowed_features(tmp_path, capsys):
    t = np.arange(int(1.5 * 22050)) / 22050
    sf.write(tmp_path / "a.wav", (0.3 * np.sin(2 * np.pi * 200 * t)).astype(np.float32), 22050)
    out = tmp_path / "feats" / "a.npy"
    rc = main(
        ["audio-features", "--out", str(out), str(tmp_path / "a.wav"), "model.audio.encoder=mel"]
    )
    assert rc == 0
    features = np.load(out)
    assert features.shape == (38, 5, 4, 80) and features.dtype == np.float32  # 37.5 -> 38
    assert "(38, 5, 4, 80)" in capsys.readouterr().out


def test_audio_features_folder_mode_and_errors(tmp_path, capsys):
    (tmp_path / "in" / "sub").mkdir(parents=True)
    sf.write(
        tmp_path / "in" / "sub" / "ok.flac",
        np.random.default_rng(0).uniform(-0.5, 0.5, 8000),
        16000,
    )
    (tmp_path / "in" / "bad.wav").write_text("not audio")
    args = ["audio-features", "--per-frame", "--out", str(tmp_path / "out"), str(tmp_path / "in")]
    assert main([*args, "model.audio.encoder=mel"]) == 2
    assert np.load(tmp_path / "out" / "sub" / "ok.npy").shape == (13, 4, 80)  # 12.5 -> 13
    assert not (tmp_path / "out" / "bad.npy").exists()
    err = capsys.readouterr().err
    assert "bad.wav: not an audio file" in err and "1 of 2 files failed" in err


def test_readme_form_uses_the_built_in_models_encoder_and_overrides_go_anywhere(tmp_path):
    """`emo-jax audio-features AUDIO --out F.npy` (no config: the built-in model's audio
    settings, mel, nothing to download); a dotted override after --out still applies."""
    t = np.arange(16000) / 16000
    sf.write(tmp_path / "a.wav", (0.3 * np.sin(2 * np.pi * 200 * t)).astype(np.float32), 16000)
    assert main(["audio-features", str(tmp_path / "a.wav"), "--out", str(tmp_path / "a.npy")]) == 0
    assert np.load(tmp_path / "a.npy").shape == (25, 5, 4, 80)  # 1 s: 25 frames, m = 2
    argv = ["audio-features", str(tmp_path / "a.wav"), "--out", str(tmp_path / "b.npy")]
    assert main([*argv, "model.audio.window=1"]) == 0
    assert np.load(tmp_path / "b.npy").shape == (25, 3, 4, 80)

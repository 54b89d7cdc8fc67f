"""A checkpoint that cannot be run is refused at load, in one line naming the file and what is wrong, at every
front door (CLI sub-commands, panns.load, panns_inference's AudioTagging, HEAR): a config whose front end or
classes no model can have (a plain dict, not typed by argparse), and weights with NaN or inf (a diverged run)."""
import numpy as np
import pytest
import soundfile as sf
import torch

import panns
from panns import api, audio_io, checkpoint, hear, inference, models, runtime, state_dicts
from panns.errors import CheckpointError, PannsError
from panns.frontend import FrontEnd
from data_helpers import cli_error


@pytest.fixture(scope="module")
def tiny_sd():
    """Cnn6's state dict with every tensor a broadcast constant (a few KB on disk, loads strictly)."""
    with models.skip_init():
        model = models.create_model("Cnn6")
    return {k: torch.full((), 0.01, dtype=v.dtype).expand(v.shape) for k, v in model.state_dict().items()}


def _write(path, sd, **config) -> str:
    cfg = {**checkpoint.ModelConfig.from_registry("Cnn6").to_dict(), **config}
    torch.save({"model": sd, "config": cfg}, str(path))
    return str(path)


def _nan_weights(sd, key="conv_block2.conv1.weight", value=float("nan")):
    return {**sd, key: torch.full((), value).expand(sd[key].shape)}


@pytest.fixture
def wav(tmp_path) -> str:
    path = str(tmp_path / "a.wav")
    sf.write(path, 0.1 * np.random.default_rng(0).standard_normal(16000).astype(np.float32), 32000)
    return path


BAD_CONFIGS = [
    ("sample_rate", -5, r"sample_rate must be a whole number of Hz from \d+ to \d+, got -5"),
    ("sample_rate", "abc", r"sample_rate must be a whole number, got 'abc'"),
    ("sample_rate", float("nan"), r"sample_rate must be a whole number, got nan"),
    ("sample_rate", None, r"sample_rate must be a whole number, got None"),
    ("window_size", 1024.5, r"window_size must be a whole number, got 1024.5"),
    ("mel_bins", "64", r"mel_bins must be a whole number, got '64'"),
    ("mel_bins", True, r"mel_bins must be a whole number, got True"),
    ("hop_size", 0, r"hop_size must be >= 1 \(got 0\)"),
    ("fmin", float("inf"), r"fmin must be a whole number, got inf"),
    ("fmax", 100000, r"fmax 100000 is above the Nyquist frequency of sample_rate 32000 \(16000 Hz\)"),
    ("classes_num", "x", r"classes_num must be a whole number >= 1, got 'x'"),
    ("classes_num", 0, r"classes_num must be a whole number >= 1, got 0"),
    ("output", "softmax", r"output must be 'sigmoid' or 'log_softmax', got 'softmax'"),
    ("labels", "dog", r"labels must be a list of strings, got 'dog'"),
    ("labels", ["a", "b", "c"], r"its labels list has 3 entries but classes_num is 527"),
]


@pytest.mark.parametrize("key,value,message", BAD_CONFIGS, ids=[f"{k}={v!r}" for k, v, _ in BAD_CONFIGS])
def test_bad_config_values_are_one_line_naming_checkpoint_and_field(tmp_path, tiny_sd, key, value, message):
    path = _write(tmp_path / "c.pth", tiny_sd, **{key: value})
    with pytest.raises(CheckpointError, match=rf"^checkpoint {path} has an unusable config: {message}"):
        checkpoint.load_model(path)


@pytest.mark.parametrize("key,value,message", [BAD_CONFIGS[i] for i in (0, 1, 2, 7, 9)],
                         ids=["sample_rate=-5", "sample_rate=abc", "sample_rate=nan", "hop_size=0", "fmax=100000"])
def test_cli_refuses_a_bad_config_before_decoding_audio(tmp_path, tiny_sd, wav, monkeypatch, capsys, key, value,
                                                        message):
    # these crashed in soxr (ValueError, -5), the STFT (TypeError, 'abc'), int(NaN), a division by the zero hop,
    # or (fmax above Nyquist) ran on empty mel bands
    path = _write(tmp_path / "c.pth", tiny_sd, **{key: value})
    monkeypatch.setattr(audio_io, "load_audio", lambda *a, **k: pytest.fail("audio decoded before the check"))
    code, line = cli_error(inference.main, ["audio_tagging", f"--checkpoint_path={path}", f"--audio_path={wav}",
                                            "--backend=torch"], monkeypatch, capsys)
    assert code == 2
    assert line.startswith(f"error: checkpoint {path} has an unusable config: ") and key in line, line


def test_whole_floats_in_a_config_still_load_as_ints(tmp_path, tiny_sd):
    path = _write(tmp_path / "c.pth", tiny_sd, sample_rate=32000.0, hop_size=np.int64(320), classes_num=527.0)
    _, cfg = checkpoint.load_model(path)
    assert (cfg.sample_rate, cfg.hop_size, cfg.classes_num) == (32000, 320, 527)
    assert all(type(v) is int for v in cfg.frontend().values()) and type(cfg.classes_num) is int


def test_frontend_check_names_flags_or_fields():
    # one owner of the front-end rules: flags keep their names and the fix; a saved config names bare fields
    with pytest.raises(PannsError, match=r"^--fmax 20000 is above .* of --sample_rate 32000 .*; use --fmax <= 16000$"):
        FrontEnd(fmax=20000).check()
    with pytest.raises(PannsError, match=r"^fmax 20000 is above .* of sample_rate 32000 .* would be empty$"):
        FrontEnd(fmax=20000).check(prefix="")
    with pytest.raises(PannsError, match=r"^--hop_size must be a whole number, got 'x'$"):
        FrontEnd(hop_size="x").check()   # type: ignore[arg-type]
    assert FrontEnd(sample_rate=32000.0).check() == FrontEnd()   # type: ignore[arg-type]


@pytest.mark.parametrize("value,what", [(float("nan"), "NaN"), (float("inf"), "inf")])
def test_non_finite_weights_are_refused_naming_the_tensor(tmp_path, tiny_sd, wav, monkeypatch, capsys, value, what):
    # a diverged run's checkpoint loaded and printed NaN scores with exit status 0
    path = _write(tmp_path / "c.pth", _nan_weights(tiny_sd, value=value))
    with pytest.raises(CheckpointError, match=rf"^checkpoint {path} has non-finite weights: conv_block2\.conv1\.weight "
                                              rf"holds 204800 {what} value\(s\) .*diverged training run"):
        checkpoint.load_model(path)
    code, line = cli_error(inference.main, ["audio_tagging", f"--checkpoint_path={path}", f"--audio_path={wav}",
                                            "--backend=torch"], monkeypatch, capsys)
    assert code == 2 and "conv_block2.conv1.weight" in line and "diverged" in line, line


def test_check_finite_is_exact():
    # the cheap screen (a tensor's sum) must not refuse large finite weights whose sum overflows
    state_dicts.check_finite({"big": torch.full((4,), 3e38), "half": torch.full((4,), 6e4).half(),
                              "steps": torch.tensor(5)}, "x")
    with pytest.raises(CheckpointError, match=r"^checkpoint x has non-finite weights: b holds 1 NaN"):
        state_dicts.check_finite({"a": torch.ones(3), "b": torch.tensor([1.0, float("nan")]).bfloat16(),
                                  "c": torch.tensor([float("inf")])}, "x")
    with pytest.raises(CheckpointError, match=r"c holds 2 inf"):
        state_dicts.check_finite({"c": torch.tensor([float("inf"), 1.0, -float("inf")])}, "x")


def test_a_diverged_base_is_refused_for_fine_tuning(tiny_sd):
    with models.skip_init():
        transfer = models.make_transfer_model("Cnn6", 3)
    with pytest.raises(CheckpointError, match=r"^checkpoint base\.pth has non-finite weights: fc1\.weight"):
        state_dicts.load_pretrained_base(transfer.base, _nan_weights(tiny_sd, "fc1.weight"), "base.pth", "Cnn6")


def _front_doors(path, wav, out):
    return {
        "panns.load": lambda: panns.load(path, device="cpu"),
        "AudioTagging": lambda: api.AudioTagging(checkpoint_path=path, device="cpu"),
        "hear": lambda: hear.load_model(path),
        "Runtime.load": lambda: runtime.Runtime.load(path),
        "sound_event_detection": lambda: inference.main(["sound_event_detection", f"--checkpoint_path={path}",
                                                         f"--audio_path={wav}", "--backend=torch"]),
        "extract_embeddings": lambda: inference.main(["extract_embeddings", f"--checkpoint_path={path}",
                                                      f"--audio_path={wav}", f"--output_path={out}", "--quiet"]),
        "stream": lambda: inference.main(["stream", f"--checkpoint_path={path}", f"--audio_path={wav}"]),
        "export": lambda: inference.main(["export", f"--checkpoint_path={path}", f"--output={out}.onnx"]),
    }


@pytest.mark.parametrize("door", list(_front_doors("", "", "")))
def test_every_front_door_refuses(tmp_path, tiny_sd, wav, door):
    bad_config = _write(tmp_path / "fmax.pth", tiny_sd, fmax=100000)
    nan = _write(tmp_path / "nan.pth", _nan_weights(tiny_sd))
    for path, message in ((bad_config, "has an unusable config: fmax 100000"), (nan, "has non-finite weights")):
        with pytest.raises(CheckpointError, match=rf"^checkpoint {path} {message}"):
            _front_doors(path, wav, str(tmp_path / "out.h5"))[door]()
    assert not list(tmp_path.glob("out*"))


def test_label_count_error_names_the_checkpoints_own_list():
    # the checkpoint's 3 labels were reported as coming from the repository's AudioSet CSV
    cfg = checkpoint.ModelConfig.from_registry("Cnn6")
    cfg.labels = ["a", "b", "c"]
    with pytest.raises(PannsError, match=r"^the model has 527 classes but the checkpoint's own label list has 3$"):
        runtime.resolve_labels(cfg, None)

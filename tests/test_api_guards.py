"""Bad input at the Python API, the HEAR API, ONNX export, the backend calibration cache and the small
utilities (plot_statistics, create_black_list): one clear error, no traceback in a CLI, no lost data."""
import json
import os
import pickle
import sys

import h5py
import numpy as np
import pytest
import soundfile as sf
import torch

import panns
from panns import (calibration, checkpoint, create_black_list, hear, inference, models, onnx_backend, plot_statistics,
                   pretrained, runtime)
from panns.errors import PannsError, run_cli
from panns.utilities import DiskFullError
from data_helpers import seeded_checkpoint


def _tiny_checkpoint(path, name: str = "Cnn6") -> str:
    """Our checkpoint format with every tensor a broadcast constant (a few KB on disk, loads strictly)."""
    with models.skip_init():
        model = models.create_model(name)
    sd = {k: torch.full((), 0.01, dtype=v.dtype).expand(v.shape) for k, v in model.state_dict().items()}
    torch.save({"model": sd, "config": checkpoint.ModelConfig.from_registry(name).to_dict()}, str(path))
    return str(path)


@pytest.fixture(scope="module")
def cnn6_path(tmp_path_factory) -> str:
    return _tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "cnn6.pth")


@pytest.fixture(scope="module")
def hear_model(cnn6_path):
    return hear.load_model(cnn6_path)


# ----------------------------------------------------------------------------- HEAR
@pytest.mark.parametrize("option", [dict(hop_ms=0), dict(hop_ms=float("nan")), dict(window_seconds=0),
                                    dict(window_seconds=-1.0), dict(batch_size=0), dict(batch_size=2.5)])
def test_hear_options_out_of_range_are_refused_at_load(cnn6_path, option):
    name = next(iter(option))
    with pytest.raises(PannsError, match=name):
        hear.load_model(cnn6_path, **option)


def test_hear_window_shorter_than_the_model_runs_on_is_refused(cnn6_path):
    """window_seconds=0.05 was widened to Cnn6's shortest input (0.15 s) without a word."""
    with pytest.raises(PannsError, match="window_seconds 0.05 is shorter than the shortest input Cnn6 runs on"):
        hear.load_model(cnn6_path, window_seconds=0.05)
    assert hear.load_model(cnn6_path, window_seconds=0.15).window_seconds == 0.15


def test_hear_accepts_arrays_and_lists_like_tensors(hear_model):
    sr = hear_model.sample_rate
    ref = hear.get_scene_embeddings(torch.zeros(1, sr), hear_model)
    for audio in (np.zeros((1, sr), np.float32), [[0.0] * sr]):
        assert torch.equal(hear.get_scene_embeddings(audio, hear_model), ref)
        emb, ts = hear.get_timestamp_embeddings(audio, hear_model)
        assert emb.device.type == "cpu" and emb.shape[:2] == ts.shape and ts.shape[0] == 1


def test_hear_empty_batch_keeps_the_timestamp_axis(hear_model):
    """(0, n) gives the same number of timestamps per sound as (k, n), not none."""
    sr = hear_model.sample_rate
    emb1, ts1 = hear.get_timestamp_embeddings(torch.zeros(1, sr), hear_model)
    emb0, ts0 = hear.get_timestamp_embeddings(torch.zeros(0, sr), hear_model)
    assert emb0.shape == (0,) + tuple(emb1.shape[1:]) and ts0.shape == (0, ts1.shape[1])
    assert hear.get_scene_embeddings(torch.zeros(0, sr), hear_model).shape == (0, hear_model.scene_embedding_size)


def test_hear_module_put_in_train_mode_still_embeds_in_eval_mode(cnn6_path):
    """HEAR hands out an nn.Module; its .train() made BatchNorm normalise by the batch (other embeddings)
    and overwrite its running statistics, so the embeddings stayed wrong after .eval() too."""
    model = hear.load_model(cnn6_path)
    audio = torch.from_numpy(np.random.RandomState(0).uniform(-0.5, 0.5, (2, model.sample_rate)).astype(np.float32))
    ref = hear.get_scene_embeddings(audio, model)
    model.train()
    assert torch.equal(hear.get_scene_embeddings(audio, model), ref)
    assert model.model.training   # the caller's mode is given back
    model.eval()
    assert torch.equal(hear.get_scene_embeddings(audio, model), ref)


@pytest.mark.parametrize("dtype", [torch.float16, torch.float64])
def test_hear_module_cast_to_another_dtype_is_one_line(cnn6_path, dtype):
    model = hear.load_model(cnn6_path).to(dtype)
    with pytest.raises(PannsError, match=f"weights are {str(dtype)[6:]}.*model.float"):
        hear.get_scene_embeddings(torch.zeros(1, model.sample_rate), model)


@pytest.mark.parametrize("shape", [(16, 8), (2, 1), (3, 2)])
def test_hear_two_dimensional_audio_is_always_sounds_by_samples(hear_model, shape):
    """(16, 8) and (2, 1) were read as one (samples, channels) clip (the general array rule): one row came
    back for 16 sounds. HEAR's input is (n_sounds, n_samples), however short the sounds (they are padded)."""
    audio = torch.from_numpy(np.random.RandomState(0).uniform(-0.5, 0.5, shape).astype(np.float32))
    scene = hear.get_scene_embeddings(audio, hear_model)
    emb, ts = hear.get_timestamp_embeddings(audio, hear_model)
    assert scene.shape == (shape[0], hear_model.scene_embedding_size)
    assert emb.shape[0] == ts.shape[0] == shape[0]
    assert torch.allclose(scene[-1:], hear.get_scene_embeddings(audio[-1:], hear_model), atol=1e-5)


@pytest.mark.parametrize("shape", [(48000,), (1, 48000, 2)])
def test_hear_audio_of_another_rank_is_one_line(hear_model, shape):
    for fn in (hear.get_scene_embeddings, hear.get_timestamp_embeddings):
        with pytest.raises(PannsError, match=r"must be \(n_sounds, n_samples\) at 48000 Hz, got shape"):
            fn(torch.zeros(shape), hear_model)


@pytest.mark.parametrize("which", ["none", "torch module"])
def test_hear_functions_without_a_hear_model_are_one_line(hear_model, which):
    """None or the bare torch model gave AttributeError: 'NoneType' object has no attribute 'to_model_rate'."""
    model = None if which == "none" else hear_model.model
    for fn in (hear.get_scene_embeddings, hear.get_timestamp_embeddings):
        with pytest.raises(PannsError, match=r"a HearModel from panns.hear.load_model"):
            fn(torch.zeros(1, 48000), model)


# ----------------------------------------------------------------------------- ONNX export
def test_failed_export_check_keeps_the_file_already_there(tmp_path, monkeypatch):
    """A checked export that differs from torch is not installed, and the earlier file stays."""
    out = tmp_path / "model.onnx"
    out.write_bytes(b"the export that works")

    def fake_export(model, config, path, **kw):
        with open(path, "wb") as f:
            f.write(b"a wrong export")
        return ["clipwise_output"]

    monkeypatch.setattr(onnx_backend, "export_onnx", fake_export)
    monkeypatch.setattr(onnx_backend, "OnnxBackend", lambda path: None)
    monkeypatch.setattr(onnx_backend, "max_relative_difference", lambda *a: 0.5)
    cfg = checkpoint.ModelConfig.from_registry("Cnn6")
    with pytest.raises(PannsError, match="differs from torch"):
        onnx_backend.export_checked(torch.nn.Linear(1, 1), cfg, str(out))
    assert out.read_bytes() == b"the export that works"
    assert os.listdir(tmp_path) == ["model.onnx"]   # no temporary left
    monkeypatch.setattr(onnx_backend, "max_relative_difference", lambda *a: 0.0)
    onnx_backend.export_checked(torch.nn.Linear(1, 1), cfg, str(out))
    assert out.read_bytes() == b"a wrong export" and os.listdir(tmp_path) == ["model.onnx"]


@pytest.mark.parametrize("where", ["folder", "under_a_file"])
def test_export_to_an_unusable_path_fails_before_exporting(tmp_path, monkeypatch, where):
    pytest.importorskip("onnx")
    (tmp_path / "folder").mkdir()
    (tmp_path / "afile").write_text("x")
    path = tmp_path / "folder" if where == "folder" else tmp_path / "afile" / "m.onnx"
    monkeypatch.setattr(onnx_backend, "output_names", lambda *a: pytest.fail("the export started"))
    cfg = checkpoint.ModelConfig.from_registry("Cnn6")
    with pytest.raises(PannsError, match="ONNX output"):
        onnx_backend.export_onnx(torch.nn.Linear(1, 1), cfg, str(path))
    assert (tmp_path / "afile").read_text() == "x"


# ----------------------------------------------------------------------------- calibration cache
def _key():
    return {"format": calibration.FORMAT, "model_type": "Cnn6", "paths": ["torch fp32", "onnxruntime fp32"]}


@pytest.mark.parametrize("seconds", [{"torch fp32": float("nan"), "onnxruntime fp32": 1.0},
                                     {"torch fp32": -1.0}, {"torch fp32": float("inf")}])
def test_damaged_calibration_verdict_is_measured_again(tmp_path, monkeypatch, seconds):
    monkeypatch.setenv("PANNS_CACHE", str(tmp_path))
    path = calibration.verdict_path(_key())
    os.makedirs(os.path.dirname(path))
    with open(path, "w") as f:
        json.dump({"key": _key(), "seconds": seconds}, f)   # json writes NaN/Infinity, and reads them back
    assert calibration.load_verdict(_key()) is None


def test_calibration_cache_on_a_full_disk_does_not_end_the_command(tmp_path, monkeypatch):
    monkeypatch.setenv("PANNS_CACHE", str(tmp_path))

    def full(path, text):
        raise DiskFullError(f"disk full while writing {path}")

    monkeypatch.setattr(calibration, "atomic_write_text", full)
    v = calibration.save_verdict(_key(), calibration.Verdict({"torch fp32": 1.0}))
    assert v.file == "" and v.winner == ("torch", "fp32")


# ----------------------------------------------------------------------------- small CLIs
def _cli(main, argv, monkeypatch, capsys):
    """Run an entry point under run_cli with ``argv``; (exit code, stderr)."""
    monkeypatch.setattr(sys, "argv", ["prog"] + list(argv))
    with pytest.raises(SystemExit) as ei:
        run_cli(main)
    return ei.value.code, capsys.readouterr().err.strip()


@pytest.mark.parametrize("stats", [{"bal": [{"x": 1}], "test": []}, {"bal": 5}, {"bal": [3.0]},
                                   {"bal": [{"average_precision": "abc"}]}])
def test_plot_statistics_other_pickles_are_one_line(tmp_path, monkeypatch, capsys, stats):
    path = tmp_path / "statistics.pkl"
    path.write_bytes(pickle.dumps(stats))
    code, err = _cli(plot_statistics.main, ["plot_runs", "--statistics_paths", str(path), "--output",
                                            str(tmp_path / "m.png")], monkeypatch, capsys)
    assert code == 2 and err.count("\n") == 0 and "is not a statistics pickle" in err
    assert not (tmp_path / "m.png").exists()


@pytest.mark.parametrize("output,message", [("m.xyz", "cannot write .xyz"), ("folder", "is a folder"),
                                            ("afile/m.png", "cannot create the folder")])
def test_plot_statistics_unusable_output_is_one_line_and_leaves_no_temp(tmp_path, monkeypatch, capsys, output,
                                                                        message):
    stats = tmp_path / "statistics.pkl"
    stats.write_bytes(pickle.dumps({"bal": [{"average_precision": [0.1, 0.3], "iteration": 0}], "test": []}))
    (tmp_path / "folder").mkdir()
    (tmp_path / "afile").write_text("x")
    monkeypatch.chdir(tmp_path)
    code, err = _cli(plot_statistics.main, ["plot_runs", "--statistics_paths", str(stats), "--output", output],
                     monkeypatch, capsys)
    assert code == 2 and err.count("\n") == 0 and message in err
    assert sorted(os.listdir(tmp_path)) == ["afile", "folder", "statistics.pkl"]   # no .tmp file left


def _dcase_dir(tmp_path, testing: bytes):
    bl = tmp_path / "bl"
    bl.mkdir()
    (bl / create_black_list.DCASE2017_FILES[0]).write_bytes(testing)
    (bl / create_black_list.DCASE2017_FILES[1]).write_text("0BHN3aVgXNU_2.000_12.000.wav\t2.0\t12.0\tTruck\n")
    return str(bl)


@pytest.mark.parametrize("testing,message", [
    (b"\xff\xfe\x00bad\n", "not a UTF-8 text file"),
    (b"Y-5QrBL6MzLg_60.000_70.000.wav\t60.000\t70.000\tTrain\n", "line 1"),   # YouTube file names, not DCASE's
    (b"-5QrBL6MzLg_60.000_70.000.wav,60.000,70.000,Train\n".replace(b"_60", b"x60"), "line 1"),
])
def test_black_list_bad_csv_is_one_line_and_writes_nothing(tmp_path, monkeypatch, capsys, testing, message):
    bl = _dcase_dir(tmp_path, testing)
    code, err = _cli(create_black_list.main, ["dcase2017task4", "--workspace", str(tmp_path / "ws"),
                                              "--black_list_dir", bl], monkeypatch, capsys)
    assert code == 2 and err.count("\n") == 0 and message in err
    assert not (tmp_path / "ws").exists()


def test_black_list_reads_a_csv_saved_with_a_bom(tmp_path):
    bl = _dcase_dir(tmp_path, "\ufeff-5QrBL6MzLg_60.000_70.000.wav\t60.000\t70.000\tTrain\n".encode("utf-8"))
    out = create_black_list.dcase2017task4(str(tmp_path / "ws"), bl)
    assert open(out).read().split() == ["-5QrBL6MzLg", "0BHN3aVgXNU"]


# ----------------------------------------------------------------------------- Python API
def test_load_names_its_argument_when_given_no_path():
    for bad in (None, 3):
        with pytest.raises(TypeError, match="name_or_path"):
            panns.load(bad)


def test_compat_classes_take_the_type_from_a_published_file_name(tmp_path, capsys):
    """AudioTagging(checkpoint_path='Cnn6_mAP=0.343.pth') loads Cnn6 as panns.load does (it tried Cnn14)."""
    from panns.api import AudioTagging, SoundEventDetection

    torch.manual_seed(0)
    path = tmp_path / "Cnn6_mAP=0.343.pth"
    torch.save({"model": models.create_model("Cnn6").state_dict()}, str(path))   # official format: no config
    at = AudioTagging(checkpoint_path=str(path), device="cpu")
    clipwise, embedding = at.inference(np.zeros((1, 32000), np.float32))
    assert at.runtime.config.model_type == "Cnn6" and clipwise.shape == (1, 527) and embedding.shape == (1, 512)
    with pytest.raises(PannsError, match="inference\\(\\) takes audio samples.*32000 Hz"):
        at.inference("clip.wav")
    with pytest.raises(PannsError, match="no framewise output"):   # said at construction, not at inference
        SoundEventDetection(checkpoint_path=str(path), device="cpu")


@pytest.mark.parametrize("device,expected", [("cuda:1", "cuda:1"), (torch.device("cuda", 1), "cuda:1"),
                                             ("cuda", "cuda"), ("cpu", "cpu")])
def test_compat_classes_run_on_the_gpu_asked_for(cnn6_path, monkeypatch, capsys, device, expected):
    """AudioTagging(device='cuda:1') on a two-GPU box ran on GPU 0: the index was dropped."""
    from panns import api
    from panns.api import AudioTagging

    seen = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(api, "Runtime", lambda model, cfg, device, **kw: seen.append(device) or
                        runtime.Runtime(model, cfg, device="cpu", **kw))
    AudioTagging(checkpoint_path=cnn6_path, device=device)
    assert seen == [expected]


@pytest.mark.parametrize("cls", ["AudioTagging", "SoundEventDetection"])
def test_compat_classes_refuse_devices_as_panns_load_does(cnn6_path, monkeypatch, capsys, cls):
    """AudioTagging(device='tpu') ran on the CPU without a word while panns.load(device='tpu') refused it."""
    from panns import api

    monkeypatch.setattr(api, "Runtime", lambda *a, **kw: pytest.fail("the model was loaded"))
    with pytest.raises(PannsError, match=r"unknown device 'tpu'; use 'cpu', 'cuda'"):
        getattr(api, cls)(checkpoint_path=cnn6_path, device="tpu")


def test_compat_classes_asked_for_cuda_without_a_gpu_run_on_the_cpu(cnn6_path, monkeypatch, capsys):
    """panns_inference's behaviour, kept: device='cuda' (its default) on a machine without CUDA is the CPU."""
    from panns.api import AudioTagging

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    at = AudioTagging(checkpoint_path=cnn6_path, device="cuda")
    assert at.device == "cpu" and capsys.readouterr().out.splitlines()[-1] == "Using CPU."
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)   # device=None is panns_inference's CPU
    assert AudioTagging(checkpoint_path=cnn6_path, device=None).device == "cpu"


def test_device_names_torch_does_not_know_are_one_line():
    with pytest.raises(PannsError, match=r"unknown device 'gpu'; use 'cpu', 'cuda'"):
        runtime.resolve_device("gpu")
    with pytest.raises(PannsError, match="a GPU index is 0 or more"):
        runtime.resolve_device(-1)
    # A GPU index means that GPU (the CPU here when there is none), not torch's accelerator error.
    assert runtime.resolve_device(0) == runtime.resolve_device("cuda:0")


def test_devices_this_machine_lacks_are_one_line(monkeypatch):
    """'mps' or 'xpu' (a Mac notebook run on Linux) is a device torch knows but cannot use here: it failed
    at the model's .to() with torch's message."""
    def no_device(*args, device=None, **kw):
        raise RuntimeError("PyTorch is not linked with support for mps devices")

    monkeypatch.setattr(runtime.torch, "empty", no_device)
    for device in ("mps", torch.device("mps"), "xpu:0"):
        with pytest.raises(PannsError, match="is not available: this PyTorch build or machine has no"):
            runtime.resolve_device(device)
    assert runtime.resolve_device("cpu") == torch.device("cpu")


def test_api_module_put_in_train_mode_still_runs_in_eval_mode(cnn6_path):
    """panns.load(...).module is the torch model; fine-tuning it (.train()) then tagging ran BatchNorm on
    batch statistics and overwrote the running ones (the tags stayed wrong after .eval())."""
    m = panns.load(cnn6_path, device="cpu", backend="torch")
    clip = np.random.RandomState(0).uniform(-0.5, 0.5, 32000).astype(np.float32)
    ref = m.embed(clip)
    m.module.train()
    np.testing.assert_array_equal(m.embed(clip), ref)
    assert m.module.training
    m.module.eval()
    np.testing.assert_array_equal(m.embed(clip), ref)


def test_big_endian_pcm_is_scaled_like_native_pcm(cnn6_path):
    """np.frombuffer(aiff_bytes, '>i2') is int16 PCM too; it was refused as a dtype 'with no PCM scale'."""
    m = panns.load(cnn6_path, device="cpu", backend="torch")
    pcm = (np.random.RandomState(0).uniform(-0.5, 0.5, 16000) * 32767).astype(np.int16)
    np.testing.assert_array_equal(m.embed(pcm.astype(">i2")), m.embed(pcm))


@pytest.mark.parametrize("as_file", [False, True])
def test_api_audio_that_resamples_to_nothing_is_one_line(cnn6_path, tmp_path, as_file):
    """1 sample at 96 kHz is none at 32 kHz: it ran as zero padding alone and gave the tags of silence."""
    m = panns.load(cnn6_path, device="cpu", backend="torch")
    audio = np.full(1, 0.5, np.float32)
    if as_file:
        sf.write(str(tmp_path / "one.wav"), audio, 96000)
        audio = str(tmp_path / "one.wav")
    with pytest.raises(PannsError, match="too short: no sample is left" if as_file else "leave none at the model's"):
        m.embed(audio, sample_rate=None if as_file else 96000)
    with pytest.raises(PannsError, match="too short: no sample is left" if as_file else r"audio\[1\] has 1 sample"):
        m.tag([np.full(3200, 0.5, np.float32), audio], sample_rate=None if as_file else 96000)


# ----------------------------------------------------------------------------- live audio (Model.stream)
@pytest.mark.parametrize("rate,message", [(44.1, "must be a whole number of Hz"),
                                          (22050.5, "must be a whole number of Hz"),
                                          ("44100", "must be a number")])
def test_stream_sample_rate_is_checked_like_every_front_door(cnn6_path, rate, message):
    """push(chunk, 44.1) (kHz for Hz) ran the stream as 44-Hz audio resampled to 32 kHz: tags of garbage."""
    s = panns.load(cnn6_path, device="cpu", backend="torch").stream(hop_seconds=0.5, window_seconds=1.0)
    with pytest.raises(PannsError, match=f"sample_rate {message}"):
        s.push(np.zeros(4410, np.float32), rate)


@pytest.mark.parametrize("shape", [(2, 16000), (1, 16000)])
def test_stream_channel_first_chunk_is_refused(cnn6_path, shape):
    """torchaudio.load's (channels, samples) was read as (samples, channels): 16000 'channels' averaged into
    one or two samples, silently."""
    s = panns.load(cnn6_path, device="cpu", backend="torch").stream(hop_seconds=0.5, window_seconds=1.0)
    with pytest.raises(PannsError, match=r"chunk\.T"):
        s.push(np.zeros(shape, np.float32))
    assert s.push(np.zeros(shape[::-1], np.float32)) and s.seconds == 0.5   # (samples, channels) as before
    # a short block of a 64-channel interface, in a stream of its own (a stream keeps one channel count)
    s = panns.load(cnn6_path, device="cpu", backend="torch").stream(hop_seconds=0.5, window_seconds=1.0)
    assert len(s.push(np.zeros((10, 64), np.float32))) == 0


def test_stream_command_checks_its_pcm_rate_before_loading(monkeypatch):
    """--sample_rate 500 was refused only by push(), after the model loaded, as the API's 'sample_rate'."""
    monkeypatch.setattr(runtime, "load_model", lambda *a, **k: pytest.fail("the model was loaded"))
    with pytest.raises(PannsError, match="--sample_rate must be a whole number of Hz"):
        inference.main(["stream", "--checkpoint_path=unused.pth", "--audio_path=-", "--sample_rate=500"])


@pytest.mark.parametrize("option,message", [(dict(top_k=2.5), "top_k must be an integer"),
                                            (dict(top_k="3"), "top_k must be an integer"),
                                            (dict(hop_seconds="1"), "hop_seconds must be a positive number"),
                                            (dict(window_seconds=0.01), "window_seconds 0.01 is shorter than")])
def test_stream_options_are_one_line(cnn6_path, option, message):
    m = panns.load(cnn6_path, device="cpu", backend="torch")
    with pytest.raises(PannsError, match=message):
        m.stream(**{"hop_seconds": 0.01, **option})


def test_api_window_options_that_would_be_ignored_are_refused(cnn6_path, caplog):
    m = panns.load(cnn6_path, device="cpu")
    clip = np.zeros(32000, np.float32)
    with pytest.raises(PannsError, match="hop_seconds 1 has no effect without segment_seconds"):
        m.tag(clip, hop_seconds=1.0)
    with pytest.raises(PannsError, match=r"segment_seconds 0.001 is shorter than the shortest input Cnn6 runs on"):
        m.clipwise(clip, segment_seconds=0.001)
    with pytest.raises(PannsError, match=r"segment_seconds 0\.1449999 is shorter"):   # not rounded to 0.145
        m.clipwise(clip, segment_seconds=0.1449999)
    assert m.clipwise(clip, segment_seconds=0.5, hop_seconds=0.25).shape == (527,)


def test_api_aggregate_given_is_told_apart_from_the_default(tmp_path, monkeypatch, caplog):
    # The default (None: max) must pass where an aggregate said explicitly, even 'max', changes nothing
    # and is refused, as the CLI refuses --aggregate without --segment_seconds.
    path = str(tmp_path / "cnn6.pth")
    seeded_checkpoint(path)
    m = panns.load(path, device="cpu")
    clip = (0.3 * np.random.RandomState(0).randn(32000)).astype(np.float32)
    whole = m.clipwise(clip)
    for value in ("mean", "max"):
        with pytest.raises(PannsError, match=f"^aggregate {value} has no effect without segment_seconds"):
            m.clipwise(clip, aggregate=value)
    with pytest.raises(PannsError, match="hop_seconds 0.5 and aggregate mean have no effect"):
        m.tag(clip, hop_seconds=0.5, aggregate="mean")
    # with windows: the default is max, and mean is another result
    windowed = m.clipwise(clip, segment_seconds=0.5)
    np.testing.assert_array_equal(windowed, m.clipwise(clip, segment_seconds=0.5, aggregate="max"))
    mean = m.clipwise(clip, segment_seconds=0.5, aggregate="mean")
    assert not np.allclose(mean, windowed) and not np.allclose(windowed, whole)
    assert (mean <= windowed + 1e-6).all()
    # a recording long enough for automatic windows takes an aggregate without a segment (the rule is
    # the one of the CLI: runtime.check_window_options); a shorter one beside it is warned about
    monkeypatch.setattr(runtime, "AUTO_WINDOW_SECONDS", 0.75)
    monkeypatch.setattr(runtime, "AUTO_SEGMENT_SECONDS", 0.5)
    np.testing.assert_allclose(m.clipwise(clip, aggregate="mean"), mean, rtol=1e-5, atol=1e-6)
    with caplog.at_level("WARNING"):
        m.clipwise([clip, clip[:16000]], aggregate="mean")
    assert "aggregate mean applies only to the 1 of 2 recordings" in caplog.text


def _labelled_checkpoint(path, labels=None, classes_num: int = 4) -> str:
    """A tiny Cnn6 with ``classes_num`` classes, carrying ``labels`` (None: none, as an official file)."""
    with models.skip_init():
        model = models.create_model("Cnn6", classes_num=classes_num)
    cfg = checkpoint.ModelConfig.from_registry("Cnn6", classes_num=classes_num)
    if labels:
        cfg.labels, cfg.ids = list(labels), [f"/x/{i}" for i in range(len(labels))]
    sd = {k: torch.full((), 0.01, dtype=v.dtype).expand(v.shape) for k, v in model.state_dict().items()}
    torch.save({"model": sd, "config": cfg.to_dict()}, str(path))
    return str(path)


def _labels_csv(path, names) -> str:
    rows = "".join(f'{i},/y/{i},"{n}"\n' for i, n in enumerate(names))
    path.write_text("index,mid,display_name\n" + rows)
    return str(path)


def test_api_labels_csv_given_is_used_or_warned_about_never_dropped(tmp_path, caplog):
    # A labels_csv said explicitly is not the default: for a checkpoint with its own labels it is not
    # used, and a warning says so (the CLI's --class_labels_csv rule); it used to be dropped in silence
    own = _labelled_checkpoint(tmp_path / "own.pth", ["dog", "cat", "bird", "cow"])
    csv4 = _labels_csv(tmp_path / "four.csv", ["a", "b", "c", "d"])
    with caplog.at_level("WARNING"):
        assert panns.load(own, device="cpu").labels == ["dog", "cat", "bird", "cow"]
    assert "ignored" not in caplog.text
    with caplog.at_level("WARNING"):
        assert panns.load(own, device="cpu", labels_csv=csv4).labels == ["dog", "cat", "bird", "cow"]
    assert "checkpoint carries its own class labels; labels_csv ignored" in caplog.text
    # a checkpoint without labels: the CSV given names the classes; one of another size is refused
    bare = _labelled_checkpoint(tmp_path / "bare.pth")
    assert panns.load(bare, device="cpu").labels == [f"class_{i}" for i in range(4)]
    assert panns.load(bare, device="cpu", labels_csv=csv4).labels == ["a", "b", "c", "d"]
    with pytest.raises(PannsError, match="the model has 4 classes but the label list .*three.csv.* has 3"):
        panns.load(bare, device="cpu", labels_csv=_labels_csv(tmp_path / "three.csv", ["a", "b", "c"]))


def test_extract_class_labels_csv_given_is_an_error_when_bad_not_an_info_line(tmp_path, caplog):
    # extract_embeddings stores the label names when it can; a --class_labels_csv given that cannot
    # name the classes was logged at INFO and the features written without names, as if not given
    sf.write(str(tmp_path / "a.wav"), np.zeros(16000, np.float32), 32000)
    bare = _labelled_checkpoint(tmp_path / "bare.pth")
    base = ["extract_embeddings", "--backend=torch", f"--checkpoint_path={bare}", f"--audio_path={tmp_path / 'a.wav'}",
            "--quiet"]
    with pytest.raises(PannsError, match="the model has 4 classes but the label list .* has 3"):
        inference.main(base + [f"--output_path={tmp_path / 'x.h5'}",
                               f"--class_labels_csv={_labels_csv(tmp_path / 'three.csv', ['a', 'b', 'c'])}"])
    assert not (tmp_path / "x.h5").exists()
    inference.main(base + [f"--output_path={tmp_path / 'y.h5'}",
                           f"--class_labels_csv={_labels_csv(tmp_path / 'four.csv', list('abcd'))}"])
    with h5py.File(tmp_path / "y.h5", "r") as f:
        assert [n.decode() if isinstance(n, bytes) else n for n in f["labels"][()]] == list("abcd")
    own = _labelled_checkpoint(tmp_path / "own.pth", ["dog", "cat", "bird", "cow"])
    with caplog.at_level("WARNING"):
        inference.main(["extract_embeddings", "--backend=torch", f"--checkpoint_path={own}", "--quiet",
                        f"--audio_path={tmp_path / 'a.wav'}", f"--output_path={tmp_path / 'z.h5'}",
                        f"--class_labels_csv={tmp_path / 'four.csv'}"])
    assert "checkpoint carries its own class labels; --class_labels_csv ignored" in caplog.text
    with h5py.File(tmp_path / "z.h5", "r") as f:
        assert [n.decode() if isinstance(n, bytes) else n for n in f["labels"][()]] == ["dog", "cat", "bird", "cow"]


def test_a_bare_published_name_is_found_in_the_cache(tmp_path, monkeypatch, caplog):
    """`--checkpoint_path="Cnn6_mAP=0.343.pth"`, as the official commands write it, with the file where the
    README says to put it offline ($PANNS_CACHE), not in the current folder."""
    name = pretrained.lookup("Cnn6").filename
    monkeypatch.setenv("PANNS_CACHE", str(tmp_path / "cache"))
    (tmp_path / "here").mkdir()
    monkeypatch.chdir(tmp_path / "here")
    with pytest.raises(PannsError, match=r"neither in the current folder nor in the cache .*pretrained.py download "
                                         r"--model_type Cnn6`, or leave out --checkpoint_path"):
        pretrained.resolve_published(name)
    assert pretrained.resolve_published("some/" + name) == "some/" + name   # a path is taken as given
    assert pretrained.resolve_published("mine.pth") == "mine.pth"
    cached = _tiny_checkpoint(_mkdir(tmp_path / "cache") / name)
    assert pretrained.resolve_published(name) == cached
    local = _tiny_checkpoint(tmp_path / "here" / name)   # the current folder's copy comes first
    assert pretrained.resolve_published(name) == name and os.path.samefile(name, local)
    os.remove(local)
    clip = tmp_path / "c.wav"
    sf.write(str(clip), np.zeros(16000, np.float32), 32000)
    inference.main(["audio_tagging", "--backend", "torch", f"--checkpoint_path={name}", f"--audio_path={clip}"])
    assert panns.load(name).model_type == "Cnn6"


def _mkdir(path):
    path.mkdir(parents=True, exist_ok=True)
    return path

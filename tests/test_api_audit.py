"""Defects found auditing the public Python API as a researcher uses it (panns.load, the HEAR API,
live streams): each test here failed before its fix. Checkpoints are generated in tmp_path."""
import inspect

import numpy as np
import pytest
import soundfile as sf
import torch

import panns
from panns import checkpoint, hear, models
from panns.errors import PannsError

SR = 32000


def _checkpoint(path, name: str, seed: int = 0) -> str:
    torch.manual_seed(seed)
    model = models.create_model(name).eval()
    torch.save({"model": model.state_dict(), "config": checkpoint.ModelConfig.from_registry(name).to_dict()},
               str(path))
    return str(path)


@pytest.fixture(scope="module")
def cnn6(tmp_path_factory):
    return panns.load(_checkpoint(tmp_path_factory.mktemp("ckpt") / "cnn6.pth", "Cnn6"), device="cpu",
                      backend="torch")


def _noise(seconds: float, seed: int = 0, sr: int = SR) -> np.ndarray:
    return (0.1 * np.random.RandomState(seed).randn(int(seconds * sr))).astype(np.float32)


def test_stream_rate_is_not_fixed_by_a_refused_chunk(cnn6):
    """A first chunk refused (NaN, channels first) fixed the stream's rate all the same: the corrected
    chunk at another rate was then refused as 'sample rate changed within the stream'."""
    x = _noise(1.0)
    for bad in (np.full(100, np.nan, np.float32), np.zeros((2, 1000), np.float32)):
        s = cnn6.stream(hop_seconds=0.5, window_seconds=1.0)
        with pytest.raises(PannsError):
            s.push(bad, 44100)
        assert len(s.push(x, SR) + s.close()) == 2


def test_hear_sed_timestamp_embeddings_run_batch_size_sounds_at_a_time(tmp_path):
    """Decision-level models ran every sound of the call in one forward, whatever ``batch_size`` (the
    clip-level path and scene embeddings kept to it): a HEAR harness's large batches ran out of memory."""
    model = hear.load_model(_checkpoint(tmp_path / "sed.pth", "Cnn6_DecisionLevelAvg"), batch_size=2)
    audio = torch.from_numpy(np.stack([_noise(0.5, seed=i, sr=model.sample_rate) for i in range(5)]))
    emb, ts = hear.get_timestamp_embeddings(audio, model)
    rt = model.runtime
    sizes = []
    backend = rt.backend

    def recording(batch):
        sizes.append(len(batch))
        return backend(batch)

    rt.backend = recording
    emb2, ts2 = hear.get_timestamp_embeddings(audio, model)
    assert max(sizes) <= 2 and sum(sizes) == 5
    torch.testing.assert_close(emb2, emb, rtol=1e-4, atol=1e-6)
    assert torch.equal(ts2, ts) and emb.shape[:2] == ts.shape == (5, len(ts[0]))


def test_api_numpy_array_of_paths_reads_the_files(cnn6, tmp_path):
    """A column of paths (``df["path"].values``: a str or object array) was read as samples and refused
    as 'dtype <U..' or 'dtype object', while the same paths in a list ran."""
    paths = []
    for i in range(2):
        paths.append(str(tmp_path / f"{i}.wav"))
        sf.write(paths[-1], _noise(0.5, seed=i), SR)
    want = cnn6.clipwise(paths)
    for column in (np.array(paths), np.array(paths, dtype=object)):
        np.testing.assert_array_equal(cnn6.clipwise(column), want)
    with pytest.raises(PannsError, match="sample_rate"):
        cnn6.clipwise(np.array(paths), sample_rate=16000)


@pytest.mark.parametrize("cls", ["AudioTagging", "SoundEventDetection"])
def test_compat_inference_of_clips_of_different_lengths_says_so(tmp_path, capsys, cls):
    """A list of clips of different lengths was refused with numpy's words ('setting an array element
    with a sequence. The requested array has an inhomogeneous shape after 1 dimensions...')."""
    name = "Cnn6" if cls == "AudioTagging" else "Cnn6_DecisionLevelAvg"
    model = getattr(panns, cls)(checkpoint_path=_checkpoint(tmp_path / f"{name}.pth", name), device="cpu")
    with pytest.raises(PannsError, match=r"different lengths \(16000, 8000 samples\).*pad them") as e:
        model.inference([_noise(0.5), torch.from_numpy(_noise(0.25))])
    assert "inhomogeneous" not in str(e.value)
    out = model.inference([_noise(0.5), _noise(0.5, seed=1)])   # equal lengths: a batch, as before
    assert len(out[0] if isinstance(out, tuple) else out) == 2


def test_output_methods_name_their_window_options(cnn6):
    """tag/clipwise/embed/framewise/detect_events spell out predict's window options (editors and pyright see
    them; a misspelled one is a TypeError naming the method called, not predict), and each is passed through."""
    m = cnn6
    for name in ("tag", "clipwise", "embed", "framewise", "detect_events"):
        params = inspect.signature(getattr(panns.api.Model, name)).parameters
        assert {"segment_seconds", "hop_seconds", "aggregate", "batch_size"} <= set(params), name
        assert not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()), name
    x = _noise(3.0)
    with pytest.raises(TypeError, match=r"tag\(\) got an unexpected keyword argument 'segmnet_seconds'"):
        m.tag(x, segmnet_seconds=1.0)   # type: ignore[call-arg]
    windowed = m.predict(x, segment_seconds=1.0, hop_seconds=0.5, aggregate="mean", batch_size=2)
    assert np.array_equal(m.clipwise(x, segment_seconds=1.0, hop_seconds=0.5, aggregate="mean", batch_size=2),
                          windowed.clipwise)
    assert np.array_equal(m.embed(x, segment_seconds=1.0, hop_seconds=0.5, aggregate="mean", batch_size=2),
                          windowed.embedding)
    with pytest.raises(PannsError, match="batch_size"):
        m.tag(x, batch_size=0)


def test_panns_inference_sed_file_in_panns_data_is_used(tmp_path, monkeypatch, capsys):
    """panns_inference saves the SED checkpoint as ~/panns_data/Cnn14_DecisionLevelMax.pth: it was ignored (its
    published name was looked for), so the 300-MB file was downloaded again, or offline refused."""
    from panns import api

    legacy = tmp_path / "panns_data"
    legacy.mkdir()
    torch.manual_seed(0)
    torch.save({"model": models.create_model("Cnn14_DecisionLevelMax").state_dict()},
               str(legacy / "Cnn14_DecisionLevelMax.pth"))   # official format, as panns_inference downloads it
    monkeypatch.setattr(api, "_LEGACY_DIR", str(legacy))
    monkeypatch.setenv("PANNS_CACHE", str(tmp_path / "cache"))   # a download would land (or fail) here
    sed = panns.SoundEventDetection(device="cpu")
    assert f"Checkpoint path: {legacy / 'Cnn14_DecisionLevelMax.pth'}" in capsys.readouterr().out
    assert sed.inference(_noise(1.0)[None]).shape[-1] == 527 and not (tmp_path / "cache").exists()


def test_sound_event_detection_takes_panns_inference_interpolate_mode(tmp_path):
    name = "Cnn6_DecisionLevelMax"
    path = _checkpoint(tmp_path / f"{name}.pth", name)
    sed = panns.SoundEventDetection(checkpoint_path=path, device="cpu", interpolate_mode="nearest")
    assert sed.inference(_noise(1.0)[None]).ndim == 3
    with pytest.raises(PannsError, match="interpolate_mode='linear' is not supported.*repeating frames"):
        panns.SoundEventDetection(checkpoint_path=path, device="cpu", interpolate_mode="linear")


def test_audio_tagging_loads_an_official_16k_file_into_a_16k_instance(tmp_path):
    """model=Cnn14(sample_rate=16000, ...) with an official 16-kHz file (panns_inference's way to use it) was
    loaded as the 32-kHz registry Cnn14 and refused: 'trained with another front end ... pass --sample_rate'."""
    kw = dict(sample_rate=16000, window_size=512, hop_size=160, mel_bins=64, fmin=50, fmax=8000, classes_num=527)
    torch.manual_seed(0)
    official = models.Cnn6(**kw).eval()
    path = str(tmp_path / "renamed_16k.pth")   # no published name to read the model type from
    torch.save({"model": official.state_dict()}, path)
    at = panns.AudioTagging(model=models.Cnn6(**kw), checkpoint_path=path, device="cpu")
    assert at.runtime.sample_rate == 16000
    x = _noise(1.0, sr=16000)[None]
    with torch.no_grad():
        want = official(torch.from_numpy(x))["clipwise_output"].numpy()
    assert np.allclose(at.inference(x)[0], want, atol=1e-6)


def test_hear_batch_of_sounds_of_different_lengths_says_so(cnn6, tmp_path):
    model = hear.load_model(_checkpoint(tmp_path / "cnn6.pth", "Cnn6"))
    for fn in (hear.get_scene_embeddings, hear.get_timestamp_embeddings):
        with pytest.raises(PannsError, match=r"HEAR audio must be one \(n_sounds, n_samples\) array, but the sounds "
                                             r"given have different lengths \(48000, 100 samples\); pad them") as e:
            fn([torch.zeros(48000), torch.zeros(100)], model)
        assert "inhomogeneous" not in str(e.value)


def test_dir_of_the_package_lists_the_lazy_api_names():
    # tab completion (dir(panns)) missed load, Model, AudioTagging, SoundEventDetection and labels
    assert {"load", "Model", "AudioTagging", "SoundEventDetection", "labels", "classes_num"} <= set(dir(panns))

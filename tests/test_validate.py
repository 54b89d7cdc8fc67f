"""panns.validate: arrays in every shape and dtype users hand over, and options, through every front
door (API, panns_inference classes, HEAR): what a user means, or one line saying why not."""
import numpy as np
import pytest
import soundfile as sf
import torch

import panns
from panns import hear, models, validate
from panns.errors import PannsError
from data_helpers import seeded_checkpoint

SR = 32000


@pytest.fixture(scope="module")
def cnn6(tmp_path_factory):
    """A random-weight Cnn6 checkpoint (ours, with config) and the model loaded through the API."""
    path = str(tmp_path_factory.mktemp("validate") / "Cnn6.pth")
    seeded_checkpoint(path)
    return path, panns.load(path, backend="torch")


def _tone(seconds=0.5, sr=SR, seed=0):
    rs = np.random.RandomState(seed)
    t = np.arange(int(seconds * sr)) / sr
    return (0.4 * np.sin(2 * np.pi * 440 * t) + 0.05 * rs.randn(len(t))).astype(np.float32)


def test_integer_pcm_is_scaled_like_soundfile(tmp_path):
    x = _tone(0.05)
    for subtype, dtype in (("PCM_16", "int16"), ("PCM_32", "int32")):
        path = str(tmp_path / f"{subtype}.wav")
        sf.write(path, x, SR, subtype=subtype)
        ints, _ = sf.read(path, dtype=dtype)
        floats, _ = sf.read(path, dtype="float32")
        np.testing.assert_array_equal(validate.as_float(ints), floats)
        np.testing.assert_array_equal(validate.as_float(torch.from_numpy(ints)), floats)
    path = str(tmp_path / "u8.wav")   # 8-bit WAV is unsigned; soundfile reads it centred on 128
    sf.write(path, x, SR, subtype="PCM_U8")
    raw = np.frombuffer(open(path, "rb").read()[44:], np.uint8)
    np.testing.assert_allclose(validate.as_float(raw), sf.read(path, dtype="float32")[0], atol=1e-7)
    for bad, what in ((np.zeros(4, bool), "bool"), (np.zeros(4, np.complex64), "complex"),
                      (np.zeros(4, np.int64), "no PCM scale")):
        with pytest.raises(PannsError, match=what):
            validate.as_float(bad)


def test_shapes_nonfinite_and_options_are_refused_in_one_line():
    stereo = np.stack([_tone(0.1), np.zeros(3200, np.float32)], axis=1)     # what sf.read gives: (N, 2)
    x, single = validate.batch(stereo)
    assert single and x.shape == (1, 3200) and np.allclose(x[0], stereo.mean(axis=1))
    assert validate.batch(np.zeros((3, 3200)))[0].shape == (3, 3200)          # (batch, samples) stays a batch
    assert validate.clip(stereo.T).shape == (3200,)                            # one list item: channels first too
    bad = np.zeros((2, 3200), np.float32)
    bad[1, 1600] = np.nan
    with pytest.raises(PannsError, match=r"1 non-finite value.*clip 1, sample 1600 \(0\.050 s\)"):
        validate.batch(bad, sample_rate=SR)
    for call, what in ((lambda: validate.batch(np.zeros(0)), "empty"),
                       (lambda: validate.clips([]), "empty list"),
                       (lambda: validate.batch(np.zeros((2, 3, 4000))), "shape"),
                       (lambda: validate.options(top_k=0), "top_k"),
                       (lambda: validate.options(batch_size=0), "batch_size"),
                       (lambda: validate.options(batch_size=2.5), "batch_size"),
                       (lambda: validate.options(segment_seconds=0), "segment_seconds"),
                       (lambda: validate.options(segment_seconds=float("nan")), "finite"),
                       (lambda: validate.options(aggregate_="median"), "max, mean"),
                       (lambda: validate.options(threshold_=1.5), r"\[0, 1\]"),
                       (lambda: validate.options(min_duration=-1), "min_duration"),
                       (lambda: validate.options(segment_seconds=1, hop_seconds=3, framewise=True), "never"),
                       (lambda: validate.sample_rate(0), "sample_rate"),
                       (lambda: validate.sample_rate(32), "from 1000"),
                       (lambda: validate.sample_rate(22050.5), "whole number")):
        with pytest.raises(PannsError, match=what):
            call()
    validate.options(segment_seconds=1, hop_seconds=3)   # tagging may skip audio (a warning), SED may not


def test_every_sample_rate_check_has_the_same_range():
    """The array APIs, the front end, the packers' flag and the packer itself accept the same rates: one that
    inference takes can be packed, and the reverse."""
    import argparse

    from panns import argtypes, packing

    for rate in (argtypes.MIN_SAMPLE_RATE, 44100, argtypes.MAX_SAMPLE_RATE):
        assert validate.sample_rate(rate) == argtypes.sample_rate(str(rate)) == rate
        assert packing.clip_samples_for(rate, 1.0) == rate
    for rate in (argtypes.MIN_SAMPLE_RATE - 1, argtypes.MAX_SAMPLE_RATE + 1):
        with pytest.raises(PannsError, match=f"from {argtypes.MIN_SAMPLE_RATE} to {argtypes.MAX_SAMPLE_RATE}"):
            validate.sample_rate(rate)
        with pytest.raises(argparse.ArgumentTypeError):
            argtypes.sample_rate(str(rate))
        with pytest.raises(PannsError, match=f"between {argtypes.MIN_SAMPLE_RATE} and {argtypes.MAX_SAMPLE_RATE}"):
            packing.clip_samples_for(rate, 1.0)


def test_api_takes_stereo_and_int16_as_meant_and_refuses_nan(cnn6):
    _, m = cnn6
    mono = _tone(1.0, seed=1)
    ref = m.clipwise(mono)
    stereo = np.stack([mono, mono], axis=1)
    got = m.clipwise(stereo)                                   # one clip, one answer: not 32000 clips of 2 samples
    assert got.shape == (527,)
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-6)
    pcm = np.round(mono * 32767).astype(np.int16)
    np.testing.assert_allclose(m.clipwise(pcm), m.clipwise(pcm.astype(np.float32) / 32768), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(m.clipwise([pcm, stereo])[1], ref, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(m.clipwise(mono.tolist()), ref, rtol=1e-5, atol=1e-6)   # a plain list: one clip
    noisy = mono.copy()
    noisy[16000] = np.inf
    with pytest.raises(PannsError, match=r"sample 16000 \(0\.500 s\)"):
        m.tag(noisy)
    with pytest.raises(PannsError, match=r"audio\[1\].*non-finite"):
        m.embed([mono, noisy])
    for kwargs, what in (({"aggregate": "sum", "segment_seconds": 0.5}, "aggregate"), ({"batch_size": 0}, "batch_size"),
                         ({"segment_seconds": -1}, "segment_seconds"), ({"top_k": 0}, "top_k")):
        with pytest.raises(PannsError, match=what):
            m.tag(mono, **kwargs)
    with pytest.raises(PannsError, match="empty"):
        m.embed(np.zeros(0, np.float32))
    with pytest.raises(PannsError, match="empty list"):
        m.embed([])
    with pytest.raises(PannsError, match="complex"):
        m.embed(mono.astype(np.complex64))
    # mean over windows is a mean for embeddings too (it was a sum)
    wins = m.predict(mono, segment_seconds=0.25, aggregate="mean")
    parts = m.embed([mono[s:s + 8000] for s in range(0, 32000, 8000)])
    np.testing.assert_allclose(wins.embedding, parts.mean(axis=0), rtol=1e-4, atol=1e-6)


def test_panns_inference_classes_and_hear_scale_int16(cnn6, capsys):
    path, m = cnn6
    mono = _tone(1.0, seed=2)
    pcm = np.round(mono * 32767).astype(np.int16)
    at = panns.AudioTagging(checkpoint_path=path, device="cpu")
    clip_f, emb_f = at.inference(pcm.astype(np.float32)[None] / 32768)
    clip_i, emb_i = at.inference(pcm[None])
    np.testing.assert_allclose(clip_i, clip_f, rtol=1e-5, atol=1e-6)
    assert at.inference(np.stack([mono, mono], axis=1))[0].shape == (1, 527)
    with pytest.raises(PannsError, match="non-finite"):
        at.inference(np.full((1, 32000), np.nan, np.float32))
    hm = hear.HearModel(m.module, m.runtime.config)
    sr = hm.sample_rate
    x = np.round(_tone(0.5, sr=sr) * 32767).astype(np.int16)[None]
    scene_i = hear.get_scene_embeddings(torch.from_numpy(x), hm)
    scene_f = hear.get_scene_embeddings(torch.from_numpy(x.astype(np.float32) / 32768), hm)
    np.testing.assert_allclose(scene_i.numpy(), scene_f.numpy(), rtol=1e-5, atol=1e-6)
    assert hear.get_scene_embeddings(torch.zeros(0, sr), hm).shape == (0, hm.scene_embedding_size)
    with pytest.raises(PannsError, match="non-finite"):
        hear.get_scene_embeddings(torch.full((1, sr), float("nan")), hm)


def test_cli_takes_the_model_type_from_an_official_name_and_warns_on_a_contradiction(tmp_path, capsys, caplog):
    from panns import inference

    torch.manual_seed(0)
    official = str(tmp_path / "Cnn6_mAP=0.343.pth")    # the published name, official format (no config)
    torch.save({"model": models.create_model("Cnn6").state_dict()}, official)
    wav = str(tmp_path / "clip.wav")
    sf.write(wav, _tone(1.0), SR)
    inference.main(["audio_tagging", "--checkpoint_path", official, "--audio_path", wav, "--backend", "torch"])
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "Using CPU." and len(out) == 12 and out[-1] == "embedding: (512,)"
    caplog.clear()
    with caplog.at_level("WARNING"):
        assert validate.model_type_for(official, "Cnn6") == "Cnn6"
        assert not [r for r in caplog.records if r.levelname == "WARNING"]
        assert validate.model_type_for("Cnn14_mAP=0.431.pth", "Cnn14_DecisionLevelMax") == "Cnn14_DecisionLevelMax"
    assert "published name of the Cnn14 checkpoint" in caplog.text
    assert validate.model_type_for(str(tmp_path / "mine.pth"), None) is None
    with pytest.raises(PannsError, match="--hop_seconds 3 is longer than --segment_seconds 1"):
        inference.main(["sound_event_detection", "--checkpoint_path", official, "--audio_path", wav,
                        "--segment_seconds", "1", "--hop_seconds", "3"])
    with pytest.raises(PannsError, match=r"--threshold must be a probability"):
        inference.main(["sound_event_detection", "--checkpoint_path", official, "--audio_path", wav,
                        "--threshold", "2"])


def test_extractor_waveforms_go_through_validate(cnn6):
    from panns import extract

    path, _ = cnn6
    ex = extract.Extractor.from_checkpoint(path, progress=False, num_workers=0)
    pcm = np.round(_tone(0.5, seed=3) * 32767).astype(np.int16)
    np.testing.assert_allclose(ex.embed_waveforms([pcm]).embedding,
                               ex.embed_waveforms([pcm.astype(np.float32) / 32768]).embedding, rtol=1e-5, atol=1e-6)
    with pytest.raises(PannsError, match=r"waveforms\[1\].*non-finite"):
        ex.embed_waveforms([pcm, np.full(8000, np.nan, np.float32)])


def test_float_audio_far_above_full_scale_is_warned_about_once(monkeypatch, caplog):
    pcm = (np.sin(np.arange(16000) / 10.0) * 20000).astype(np.int16)
    monkeypatch.setattr(validate, "_scale_warned", False)
    with caplog.at_level("WARNING", logger=validate.logger.name):
        validate.clip(pcm * 1.1 / 32768)          # a little over 1: legitimate float audio
        validate.clip(pcm)                         # integer PCM is scaled, not warned about
        assert not caplog.records
        validate.batch(pcm.astype(np.float32)[None])   # int16 cast to float: every output would saturate
        validate.clip(pcm.astype(np.float64))
    assert len(caplog.records) == 1 and "peaks at 2e+04" in caplog.text and "divide by 32768" in caplog.text

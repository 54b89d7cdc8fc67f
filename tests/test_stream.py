"""panns/stream.py: live tagging and event detection, chunk-independent and consistent with offline.

The SED model is a small Cnn6_DecisionLevelAvg whose random body is kept and whose output layer is
fitted (ridge regression, a closed form) to the demo generator's example clip and its truth, on the
whole clip and on crops of it; offline detection then finds the clip's three events, so streamed
and offline events can be compared for real (random weights find none, or noise)."""
import io
import json
import os
import logging
import re
import sys
import threading

import numpy as np
import pytest
import soundfile as sf
import torch

from panns import api
from panns import audio_io
from panns import checkpoint
from panns import inference
from panns import models
from panns import stream
from panns.demo.data import CLASSES, EXAMPLE_EVENTS, make_example_clip
from panns.errors import AudioDecodeError, PannsError
from panns.runtime import Runtime

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "golden"))
from model_helpers import single_thread  # noqa: E402

SR = 32000
MODEL = "Cnn6_DecisionLevelAvg"
HOP, WINDOW = 1.0, 4.0        # a window shorter than the 7-s clip, so it slides
TORCH = "--backend=torch"     # the stream, not the backend, is under test (test_onnx.py tests auto)

_single_thread = pytest.fixture(scope="module", autouse=True)(single_thread)


def _fit_head(model: torch.nn.Module, clip: np.ndarray, names) -> None:
    """Fit fc_audioset to the truth of the clip (segment labels: +-4 logits) on the features of the
    whole clip and of crops (so the fit does not hang on one context); the body stays random."""
    feats = []
    hook = model.fc_audioset.register_forward_hook(lambda mod, inp, out: feats.append(inp[0][0].numpy()))
    X, Y = [], []
    try:
        for a, b in ((0, 7), (0, 3), (2, 7), (1, 5)):
            feats.clear()
            with torch.no_grad():
                model(torch.from_numpy(clip[a * SR:b * SR][None]))
            seg = (b - a) / len(feats[0])
            for k, f in enumerate(feats[0]):
                lo, hi = a + k * seg, a + (k + 1) * seg
                y = np.full(len(names), -4.0)
                for label, on, off in EXAMPLE_EVENTS:
                    if min(off, hi) - max(on, lo) > seg / 2:
                        y[names.index(label)] = 4.0
                X.append(f)
                Y.append(y)
    finally:
        hook.remove()
    X = np.hstack([np.array(X), np.ones((len(X), 1))])
    lam = 1e-2 * np.trace(X.T @ X) / X.shape[1]
    W = np.linalg.solve(X.T @ X + lam * np.eye(X.shape[1]), X.T @ np.array(Y))
    with torch.no_grad():
        model.fc_audioset.weight.copy_(torch.from_numpy(W[:-1].T.astype(np.float32)))
        model.fc_audioset.bias.copy_(torch.from_numpy(W[-1].astype(np.float32)))


@pytest.fixture(scope="module")
def sed(tmp_path_factory):
    d = tmp_path_factory.mktemp("stream")
    wav = str(d / "example.wav")
    make_example_clip(wav)
    clip = audio_io.load_audio(wav, SR)
    names = [c[1] for c in CLASSES]
    torch.manual_seed(0)
    model = models.create_model(MODEL, classes_num=len(names)).eval()
    _fit_head(model, clip, names)
    cfg = checkpoint.ModelConfig.from_registry(MODEL, classes_num=len(names))
    cfg.labels, cfg.ids = names, [c[0] for c in CLASSES]
    ckpt = str(d / "sed.pth")
    checkpoint.save_checkpoint(ckpt, {"model": model.state_dict(), "config": cfg.to_dict()})
    m = api.Model(Runtime(model, cfg))
    return {"dir": d, "wav": wav, "clip": clip, "ckpt": ckpt, "model": m}


def _stream(m, audio, rate, chunk_seconds, **kw):
    s = m.stream(hop_seconds=HOP, window_seconds=WINDOW, **kw)
    step = max(1, int(round(chunk_seconds * rate)))
    items = []
    for i in range(0, len(audio), step):
        items += s.push(audio[i:i + step], rate)
    return items + s.close(), s


@pytest.fixture(scope="module")
def streamed(sed):
    return _stream(sed["model"], sed["clip"], SR, 0.5)


def test_resampler_output_does_not_depend_on_chunking():
    rs = np.random.RandomState(0)
    x = (0.1 * rs.randn(44100 * 2)).astype(np.float32)
    whole = audio_io.resample(x, 44100, SR)   # what the offline commands decode with
    for sizes in ([len(x)], [1, 2, 3, 500], list(rs.randint(1, 5000, size=40))):
        r = stream.ChunkResampler(44100, SR)
        out, i, k = [], 0, 0
        while i < len(x):
            out.append(r.feed(x[i:i + sizes[k % len(sizes)]]))
            i, k = i + sizes[k % len(sizes)], k + 1
        out.append(r.flush())
        np.testing.assert_array_equal(np.concatenate(out), whole)


def test_events_reported_once_and_match_offline_and_truth(sed, streamed):
    items, s = streamed
    offline = sed["model"].detect_events(sed["clip"])
    # the fitted model finds the clip's events offline (so the comparison below means something)
    assert sorted(e["label"] for e in offline) == sorted(lb for lb, _, _ in EXAMPLE_EVENTS)
    for label, on, off in EXAMPLE_EVENTS:
        e = next(e for e in offline if e["label"] == label)
        assert abs(e["onset"] - on) < 0.35 and abs(e["offset"] - off) < 0.35, (e, on, off)
    events = [i for i in items if "event" in i]
    assert len(events) == len(offline), events            # none missing, none duplicated
    for e in offline:
        got = [x for x in events if x["event"] == e["label"]]
        assert len(got) == 1, (e, events)
        assert abs(got[0]["onset"] - e["onset"]) <= HOP and abs(got[0]["offset"] - e["offset"]) <= HOP, (got, e)
    # an event is reported once its end is final, i.e. before the tags of later hops (not all at close)
    first_event = next(k for k, i in enumerate(items) if "event" in i)
    assert any("tags" in i for i in items[first_event:])
    assert [i["time"] for i in items if "tags" in i] == [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0]
    st = s.stats()
    assert st["windows"] == 7 and st["audio_seconds"] == pytest.approx(7.0)
    assert st["latency_seconds"] >= 1.0   # frames wait for the 1-s look-ahead at least
    assert st["real_time_factor"] > 0


def test_tags_equal_offline_tagging_of_the_same_audio(sed, streamed):
    items, _ = streamed
    tags = {i["time"]: i["tags"] for i in items if "tags" in i}
    for t, (a, b) in ((1.0, (0, 1)), (WINDOW, (0, WINDOW)), (6.0, (6.0 - WINDOW, 6.0))):   # start, full, sliding
        ref = sed["model"].tag(sed["clip"][int(a * SR):int(b * SR)], top_k=10)
        assert [lb for lb, _ in tags[t]] == [lb for lb, _ in ref]
        np.testing.assert_allclose([p for _, p in tags[t]], [p for _, p in ref], atol=1e-4)


def test_chunking_does_not_change_the_items(sed):
    stereo44 = audio_io.resample(sed["clip"], SR, 44100)
    pcm = (np.clip(np.stack([stereo44, 0.5 * stereo44], axis=1), -1, 1) * 32767).astype(np.int16)  # (n, 2) int16
    runs = [_stream(sed["model"], pcm, 44100, c)[0] for c in (0.05, 0.5, 3.0)]
    assert runs[0] == runs[1] == runs[2]
    assert sum("event" in i for i in runs[0]) == 3


def test_stream_shorter_than_a_hop_and_empty_stream(sed):
    s = sed["model"].stream(hop_seconds=HOP, window_seconds=WINDOW)
    assert s.push(sed["clip"][:SR // 4], SR) == []
    items = s.close()
    assert items[0]["time"] == 0.25
    ref = sed["model"].tag(sed["clip"][:SR // 4], top_k=10)
    assert [lb for lb, _ in items[0]["tags"]] == [lb for lb, _ in ref]
    assert sed["model"].stream().close() == []


def test_bad_settings_and_chunks_are_one_line_errors(sed):
    m = sed["model"]
    with pytest.raises(PannsError, match="must not exceed"):
        m.stream(hop_seconds=1.0, window_seconds=2.0, lookahead_seconds=1.5)
    with pytest.raises(PannsError, match="at least hop_seconds"):
        m.stream(hop_seconds=2.0, window_seconds=1.0)
    s = m.stream(hop_seconds=HOP, window_seconds=WINDOW)
    with pytest.raises(PannsError, match="samples,"):
        s.push(np.zeros((2, 2, 2), np.float32), SR)
    s.push(np.zeros(100, np.float32), SR)
    with pytest.raises(PannsError, match="sample rate changed"):
        s.push(np.zeros(100, np.float32), 16000)
    with pytest.raises(PannsError, match="NaN"):
        s.push(np.array([0.0, np.nan], np.float32), SR)


def _cli(capsys, *argv):
    inference.main(["stream", TORCH, *[str(a) for a in argv]])
    return capsys.readouterr().out.splitlines()


def test_cli_identical_lines_for_any_chunking_stdin_and_offline_tags(sed, capsys, monkeypatch, tmp_path):
    base = [f"--checkpoint_path={sed['ckpt']}", f"--hop_seconds={HOP}", f"--window_seconds={WINDOW}"]
    small = _cli(capsys, *base, f"--audio_path={sed['wav']}", "--chunk_seconds=0.1")
    large = _cli(capsys, *base, f"--audio_path={sed['wav']}", "--chunk_seconds=3")
    assert small[:-1] == large[:-1]
    last = json.loads(small[-1])
    assert {"real_time_factor", "latency_seconds"} <= set(last) and last["windows"] == 7
    lines = [json.loads(x) for x in small[:-1]]
    assert [x["time"] for x in lines if "time" in x] == [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0]
    assert sorted(x["event"] for x in lines if "event" in x) == sorted(lb for lb, _, _ in EXAMPLE_EVENTS)
    # '-': the same 16-bit samples as raw PCM on stdin
    pcm, _ = sf.read(sed["wav"], dtype="int16")
    monkeypatch.setattr(sys, "stdin", type("In", (), {"buffer": io.BytesIO(pcm.tobytes())})())
    assert _cli(capsys, *base, "--audio_path=-", "--chunk_seconds=0.5", f"--sample_rate={SR}")[:-1] == small[:-1]
    # the tags at time = window equal audio_tagging of the first window of the file
    first = tmp_path / "first.wav"
    sf.write(str(first), pcm[:int(WINDOW * SR)], SR, subtype="PCM_16")
    out = tmp_path / "tags.json"
    inference.main(["audio_tagging", TORCH, f"--checkpoint_path={sed['ckpt']}", f"--audio_path={first}",
                    f"--output={out}"])
    capsys.readouterr()
    ref = json.loads(out.read_text())["results"][0]["tags"]
    got = next(x["tags"] for x in lines if x.get("time") == WINDOW)
    assert [lb for lb, _ in got] == [t["label"] for t in ref]
    np.testing.assert_allclose([p for _, p in got], [t["probability"] for t in ref], atol=1e-4)


def test_cli_input_errors(sed, capsys, monkeypatch):
    base = [f"--checkpoint_path={sed['ckpt']}"]
    monkeypatch.setitem(sys.modules, "sounddevice", None)   # import fails as if not installed
    with pytest.raises(PannsError, match="sounddevice"):
        inference.main(["stream", TORCH, *base, "--microphone"])
    with pytest.raises(PannsError, match="--microphone"):
        inference.main(["stream", TORCH, *base])
    with pytest.raises(PannsError, match="not found"):
        inference.main(["stream", TORCH, *base, "--audio_path=/nonexistent.wav"])
    with pytest.raises(PannsError, match="--batch_size 4 has no effect on a stream"):   # was silently ignored
        inference.main(["stream", TORCH, *base, "--audio_path=-", "--batch_size", "4"])


def test_ffmpeg_reader_gives_the_decoder_samples(sed):
    if audio_io.ffmpeg_exe() is None:
        pytest.skip("no ffmpeg")
    chunks = list(stream._ffmpeg_chunks(sed["wav"], 0.3))
    assert {rate for _, rate in chunks} == {SR}
    got = np.concatenate([c[:, 0] for c, _ in chunks])
    np.testing.assert_array_equal(got, sf.read(sed["wav"], dtype="float32")[0])
    with pytest.raises(PannsError, match="cannot decode"):
        list(stream._ffmpeg_chunks(sed["dir"] / "missing.mp3", 0.3))


# ----------------------------------------------------------------------------- flag values, checked up front
@pytest.fixture()
def loads_nothing(monkeypatch):
    """A stream command that gets as far as loading the model (or making a backend: auto may export and
    calibrate, writing the cache) fails the test: its flags are refused before."""
    from panns import runtime
    monkeypatch.setattr(runtime, "load_model", lambda *a, **k: pytest.fail("the model was loaded"))
    monkeypatch.setattr(stream, "Runtime", lambda *a, **k: pytest.fail("a backend was made"))


@pytest.mark.parametrize("argv,message", [
    # inf was an OverflowError traceback from the reader; nan, 0 and -1 were refused, without naming the value
    (["--chunk_seconds=inf"], "--chunk_seconds must be a positive number of seconds, got inf"),
    (["--chunk_seconds=nan"], "--chunk_seconds must be a positive number of seconds, got nan"),
    (["--chunk_seconds=0"], "--chunk_seconds must be a positive number of seconds, got 0"),
    (["--chunk_seconds=-1"], "--chunk_seconds must be a positive number of seconds, got -1"),
    (["--chunk_seconds=1e300"], "--chunk_seconds 1e+300 is over 600 s"),   # an OverflowError on stdin
    # refused only after the model loaded and auto exported and calibrated; 1e300 ran
    (["--window_seconds=inf"], "--window_seconds must be a positive number of seconds, got inf"),
    (["--window_seconds=nan"], "--window_seconds must be a positive number of seconds, got nan"),
    (["--window_seconds=0"], "--window_seconds must be a positive number of seconds, got 0"),
    (["--window_seconds=-2"], "--window_seconds must be a positive number of seconds, got -2"),
    (["--window_seconds=1e300"], "--window_seconds 1e+300 is over 600 s"),
    (["--window_seconds=600.5"], "--window_seconds 600.5 is over 600 s"),
    (["--hop_seconds=1e300"], "--hop_seconds 1e+300 is over 600 s"),
    (["--hop_seconds=3", "--window_seconds=2"], "--window_seconds (2) must be at least --hop_seconds (3)"),
    (["--lookahead_seconds=inf"], "--lookahead_seconds must be 0 or more seconds, got inf"),
    (["--lookahead_seconds=-0.5"], "--lookahead_seconds must be 0 or more seconds, got -0.5"),
    (["--lookahead_seconds=1e300"], "--lookahead_seconds 1e+300 is over 600 s"),
])
def test_cli_seconds_flags_are_refused_before_the_model_loads(tmp_path, loads_nothing, argv, message):
    wav = tmp_path / "x.wav"
    sf.write(str(wav), np.zeros(SR, np.float32), SR)
    with pytest.raises(PannsError, match="^" + re.escape(message)) as e:
        inference.main(["stream", "--checkpoint_path=unused.pth", f"--audio_path={wav}", *argv])
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("argv,message", [
    # the value given, not the window it was rounded to ('0.001 ... 0.01 is shorter' said 0.01)
    (["--window_seconds=0.001", "--hop_seconds=0.001"], "--window_seconds 0.001 is shorter than the shortest input"),
    (["--window_seconds=1e-9", "--hop_seconds=1e-9"], "--window_seconds 1e-09 is shorter than the shortest input"),
    (["--window_seconds=0.1449999", "--hop_seconds=0.1"], "--window_seconds 0.1449999 is shorter than the shortest"),
    (["--window_seconds=2", "--lookahead_seconds=1.5"], r"--lookahead_seconds \+ --hop_seconds \(1.5 \+ 1\) must not "
                                                        r"exceed --window_seconds \(2\)"),
])
def test_cli_checks_that_need_the_model_come_before_a_backend(sed, monkeypatch, argv, message):
    monkeypatch.setattr(stream, "Runtime", lambda *a, **k: pytest.fail("a backend was made"))
    with pytest.raises(PannsError, match=f"^{message}"):
        inference.main(["stream", f"--checkpoint_path={sed['ckpt']}", f"--audio_path={sed['wav']}", *argv])


def test_api_window_values_are_echoed_and_bounded(sed):
    m = sed["model"]
    for window, text in ((0.001, "0.001"), (1e-9, "1e-09"), (0.1449999, "0.1449999")):
        with pytest.raises(PannsError, match=rf"^window_seconds {text} is shorter .*use at least 0.15 seconds"):
            m.stream(hop_seconds=window, window_seconds=window)
    assert m.stream(hop_seconds=0.01, window_seconds=0.15, lookahead_seconds=0).window == int(0.15 * SR)
    with pytest.raises(PannsError, match=r"^window_seconds 1e\+300 is over 600 s"):
        m.stream(window_seconds=1e300)
    with pytest.raises(PannsError, match=r"^window_seconds 10{400} is over 600 s"):   # was an OverflowError
        m.stream(window_seconds=10 ** 400)
    with pytest.raises(PannsError, match=r"^window_seconds must be a positive number of seconds, got '10'"):
        m.stream(window_seconds="10")
    assert m.stream(hop_seconds=10, window_seconds=600).window == 600 * SR


# ----------------------------------------------------------------------------- sources that failed or misread
def _in_thread(fn, timeout: float = 30.0):
    """fn() on a daemon thread: a hang fails the test after ``timeout`` s instead of blocking the suite."""
    box: dict = {}

    def target():
        try:
            box["value"] = fn()
        except BaseException as e:   # re-raised below, in the test's thread
            box["error"] = e
    t = threading.Thread(target=target, daemon=True)
    t.start()
    t.join(timeout)
    assert not t.is_alive(), f"still running after {timeout} s (hung)"
    if "error" in box:
        raise box["error"]
    return box["value"]


def _fake_ffmpeg(tmp_path, body: str) -> str:
    """An executable standing in for ffmpeg: 400 KB of warnings on stderr (a damaged file's), then ``body``."""
    exe = tmp_path / "fake_ffmpeg"
    exe.write_text(f"#!{sys.executable}\nimport sys\nsys.stderr.write('[aac] damaged frame\\n' * 20000)\n"
                   f"sys.stderr.flush()\n{body}\n")
    exe.chmod(0o755)
    return str(exe)


@pytest.mark.skipif(sys.platform == "win32", reason="a script as the ffmpeg executable")
def test_ffmpeg_warnings_beyond_the_pipe_buffer_do_not_hang(tmp_path, monkeypatch):
    # stderr was read only after stdout: ffmpeg blocked writing its warnings (~64 KB pipe), the stream reading
    # samples, for ever (a damaged AAC); and the error must still carry ffmpeg's last line
    wav = tmp_path / "decoded.wav"
    x = (0.1 * np.random.RandomState(0).randn(SR)).astype(np.float32)
    sf.write(str(wav), x, SR, subtype="FLOAT")
    ok = _fake_ffmpeg(tmp_path, f"sys.stdout.buffer.write(open({str(wav)!r}, 'rb').read())")
    monkeypatch.setattr(audio_io, "ffmpeg_exe", lambda: ok)
    chunks = _in_thread(lambda: list(stream._ffmpeg_chunks(str(tmp_path / "x.aac"), 0.1)))
    np.testing.assert_array_equal(np.concatenate([c[:, 0] for c, _ in chunks]), x)
    bad = _fake_ffmpeg(tmp_path, "sys.stderr.write('x.aac: Invalid data found when processing input\\n')\n"
                                 "sys.exit(1)")
    monkeypatch.setattr(audio_io, "ffmpeg_exe", lambda: bad)
    with pytest.raises(AudioDecodeError, match=r"^cannot decode \S*x.aac: x.aac: Invalid data found when processing "
                                               r"input$"):
        _in_thread(lambda: list(stream._ffmpeg_chunks(str(tmp_path / "x.aac"), 0.1)))


def test_cut_flac_goes_on_as_offline_decoding(tmp_path, monkeypatch, caplog):
    # soundfile opens a FLAC cut short, then fails part-way ('flac decoder lost sync'): a traceback after the
    # first lines; offline decoding falls back to ffmpeg and warns that the file is truncated, so does the stream
    x = (0.3 * np.random.RandomState(0).randn(2 * SR)).astype(np.float32)
    whole = io.BytesIO()
    sf.write(whole, x, SR, format="FLAC", subtype="PCM_16")
    cut = tmp_path / "cut.flac"
    cut.write_bytes(whole.getvalue()[:len(whole.getvalue()) // 2])
    with pytest.raises(sf.LibsndfileError, match="lost sync"):   # the case under test
        sf.read(str(cut))
    if audio_io.ffmpeg_exe() is not None:
        with caplog.at_level(logging.WARNING):
            chunks = list(stream._read_source(str(cut), 0.1, SR))
        offline = audio_io.read_audio(str(cut))[0][0]
        np.testing.assert_array_equal(np.concatenate([c[:, 0] for c, _ in chunks]), offline)
        assert {r for _, r in chunks} == {SR}
        assert re.search(r"truncated file \S*cut.flac: header says 2.00 s, only [\d.]+ s present", caplog.text)
    monkeypatch.setattr(audio_io, "ffmpeg_exe", lambda: None)   # no fallback: one line after what was read
    read = []
    with pytest.raises(AudioDecodeError, match=r"^cannot decode \S*cut.flac: .*lost sync.* after [\d.]+ s .*ffmpeg"):
        for chunk, _ in stream._read_source(str(cut), 0.1, SR):
            read.append(chunk)
    assert read


def test_closed_stdin_is_one_line_before_the_model_loads(loads_nothing, monkeypatch):
    monkeypatch.setattr(sys, "stdin", None)   # what `<&-` leaves: an AttributeError traceback after the model loaded
    with pytest.raises(PannsError, match="^stdin is closed: --audio_path - reads"):
        inference.main(["stream", "--checkpoint_path=unused.pth", "--audio_path=-"])


def _adts(length: int) -> bytes:
    """An ADTS frame (AAC-LC, 44.1 kHz, stereo) of ``length`` bytes, header included, payload zeros."""
    return bytes([0xFF, 0xF1, 0x50, 0x80 | length >> 11, (length >> 3) & 0xFF, (length & 7) << 5 | 0x1F, 0xFC]) + \
        bytes(length - 7)


def _sf_bytes(**kw) -> bytes:
    out = io.BytesIO()
    sf.write(out, np.zeros(1600, np.float32), 16000, subtype="PCM_16", **kw)
    return out.getvalue()


@pytest.mark.parametrize("name,data", [
    ("MP4/M4A", b"\x00\x00\x00\x1cftypM4A \x00\x00\x02\x00isomiso2" + bytes(4000)),
    # MPEG-1 layer III, 128 kbit/s, 44.1 kHz: 417-byte frames, no ID3 tag before them
    ("MPEG audio (MP3)", (b"\xff\xfb\x90\x64" + bytes(413)) * 3),
    ("AAC (ADTS)", _adts(300) * 3),
    ("big-endian WAV (RIFX)", _sf_bytes(format="WAV", endian="BIG")),
    ("Wave64", _sf_bytes(format="W64")),
    ("CAF", _sf_bytes(format="CAF")),
])
def test_stdin_containers_are_refused_not_read_as_pcm_noise(name, data):
    with pytest.raises(AudioDecodeError, match=f"^stdin holds {re.escape(name)} data; --audio_path - reads a WAV "
                                               "stream or raw 16-bit"):
        list(stream._stdin_chunks(io.BytesIO(data), SR, 0.1))


def test_stdin_raw_pcm_is_still_read():
    t = np.arange(SR // 2) / SR
    sine = (8000 * np.sin(2 * np.pi * 440 * t)).astype("<i2")
    # the first sample -1 and the second 100 (FF FF 64 00) make a valid MPEG layer I header; no second one
    # follows a frame on, so it is raw PCM
    for pcm in (sine, np.concatenate([np.array([-1, 100], "<i2"), sine])):
        got = np.concatenate([c for c, _ in stream._stdin_chunks(io.BytesIO(pcm.tobytes()), SR, 0.1)])
        np.testing.assert_array_equal(got, pcm)
    assert stream._frame_header(np.array([-1, 100], "<i2").tobytes() + bytes(4)) is not None


def test_chunk_channel_count_is_kept_and_few_sample_chunks_warned(sed, caplog):
    m = sed["model"]
    s = m.stream(hop_seconds=HOP, window_seconds=WINDOW)
    frames = np.zeros((2, 160), np.float32)   # stereo 10-ms frames in (channels, samples): read as 160 channels
    with caplog.at_level(logging.WARNING, logger="panns.stream"):
        s.push(frames, 16000)
        s.push(frames, 16000)
    warned = [r.getMessage() for r in caplog.records if "reads as 2 sample(s) of 160 channels" in r.getMessage()]
    assert len(warned) == 1 and "chunk.T" in warned[0]   # once per stream
    with pytest.raises(PannsError, match=re.escape("audio chunk of shape (2, 80) has 80 channel(s), the stream's first "
                                                   "chunk (2, 160) had 160;") + ".*pass chunk.T"):
        s.push(frames[:, :80], 16000)   # the last, shorter frame was 2 more samples of 80 channels
    s = m.stream(hop_seconds=HOP, window_seconds=WINDOW)
    s.push(np.zeros((10, 64), np.float32), SR)   # a 64-channel interface's blocks stay accepted
    s.push(np.zeros((0,), np.float32), SR)       # no samples: nothing to compare
    s.push(np.zeros((7, 64), np.float32), SR)
    with pytest.raises(PannsError, match=r"shape \(100,\) has 1 channel\(s\), the stream's first chunk \(10, 64\)"):
        s.push(np.zeros(100, np.float32), SR)
    with pytest.raises(PannsError, match=r"shape \(2, 0\) has no channels"):   # was an IndexError traceback
        m.stream().push(np.zeros((2, 0), np.float32), SR)


def test_file_below_1000_hz_streams_as_offline_resamples_it(sed, capsys, tmp_path):
    # 'sample_rate must be a whole number of Hz from 1000 to 768000, got 100' named a setting never given;
    # offline tagging resamples such a file, and so does the stream now
    wav = tmp_path / "r100.wav"
    x = (0.3 * np.random.RandomState(0).randn(300)).astype(np.float32)
    sf.write(str(wav), x, 100, subtype="FLOAT")
    lines = [json.loads(line) for line in _cli(capsys, f"--checkpoint_path={sed['ckpt']}", f"--audio_path={wav}",
                                               f"--hop_seconds={HOP}", f"--window_seconds={WINDOW}")]
    assert lines[-1]["audio_seconds"] == 3.0
    got = next(x["tags"] for x in lines if x.get("time") == 3.0)
    ref = sed["model"].tag(audio_io.load_audio(str(wav), SR), top_k=10)
    assert [lb for lb, _ in got] == [lb for lb, _ in ref]
    np.testing.assert_allclose([p for _, p in got], [p for _, p in ref], atol=1e-4)
    # a WAV stream on stdin at that rate too; a rate given in Python is still checked (kHz given for Hz)
    chunks = list(stream._stdin_chunks(io.BytesIO(wav.read_bytes()), SR, 0.5))
    assert {r for _, r in chunks} == {100} and sum(len(c) for c, _ in chunks) == 300
    with pytest.raises(PannsError, match="from 1000 to 768000, got 100"):
        sed["model"].stream().push(x, 100)

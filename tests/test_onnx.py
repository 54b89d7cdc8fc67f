"""ONNX export and the ONNX Runtime backend: every exported model type matches torch fp32 within
1e-5 of the largest output value; the export cache is reused, and rebuilt when stale or corrupt.

Exports take seconds each (torch.export + graph optimisation), so CI checks a core set that
covers every distinct graph family cheaply (2-D CNN clip model, the SED heads, MobileNets, 1-D
waveform models, Wavegram); ``PANNS_TEST_ALL_ONNX=1`` checks every registered model type."""
import logging
import os
import shutil
import sys

import numpy as np
import pytest
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "golden"))
from model_helpers import quick_fill, skip_weight_init  # noqa: E402

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

from panns import models, onnx_backend  # noqa: E402
from panns.checkpoint import ModelConfig  # noqa: E402
from panns.errors import PannsError  # noqa: E402
from panns.utilities import atomic_write_bytes  # noqa: E402

CLASSES = 7
CORE = ("Cnn6", "MobileNetV1_DecisionLevelMax", "LeeNet11")
ALL = os.environ.get("PANNS_TEST_ALL_ONNX") == "1"
NAMES = models.model_names() if ALL else list(CORE)


def _build(name: str, seed: int = 0):
    with skip_weight_init():
        model = models.create_model(name, classes_num=CLASSES)
    return quick_fill(model, seed).eval(), ModelConfig.from_registry(name, classes_num=CLASSES)


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("onnx")


@pytest.mark.parametrize("name", NAMES)
def test_export_matches_torch(name, export_dir):
    """Outputs of the exported file (dynamic batch and length) vs torch fp32 on two lengths."""
    model, cfg = _build(name)
    path = str(export_dir / f"{name}.onnx")
    names = onnx_backend.export_onnx(model, cfg, path, labels=[f"c{i}" for i in range(CLASSES)])
    backend = onnx_backend.OnnxBackend(path, threads=1)
    spec = models.get_model_spec(name)
    assert set(backend.output_names) == set(names)
    for batch, n in ((1, spec.min_samples), (3, max(spec.min_samples, spec.sample_rate // 2) + 321)):
        x = (0.1 * np.random.RandomState(n).randn(batch, n)).astype(np.float32)
        with torch.inference_mode():
            ref = model(torch.from_numpy(x))
        out = backend(x)
        assert set(out) == {k for k in ref if isinstance(ref[k], torch.Tensor)}
        for k, v in out.items():
            r = ref[k].numpy()
            assert v.shape == r.shape, (k, v.shape, r.shape)
            assert np.abs(v - r).max() <= 1e-5 * np.abs(r).max(), (name, k, n)
    meta = backend.metadata
    assert meta["model_type"] == name and meta["classes_num"] == CLASSES
    assert meta["labels"] == [f"c{i}" for i in range(CLASSES)]
    assert meta["frontend"] == {k: getattr(cfg, k) for k in meta["frontend"]}
    assert meta["frontend"]["sample_rate"] == spec.sample_rate and meta["min_samples"] == spec.min_samples


def _fake_export(calls):
    """Stand-in for export_in_child (a real export costs seconds; the cache logic is what is tested
    here): a tiny valid ONNX file (waveform -> Identity) carrying the real metadata."""
    from onnx import TensorProto, helper

    def fake(model, config, path, opset=onnx_backend.DEFAULT_OPSET, labels=None, key=""):
        calls.append(key)
        io = [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["batch", "samples"])
              for n in ("waveform", "clipwise_output")]
        graph = helper.make_graph([helper.make_node("Identity", ["waveform"], ["clipwise_output"])], "g",
                                  io[:1], io[1:])
        proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
        proto.ir_version = 8
        helper.set_model_props(proto, onnx_backend.export_metadata(config, labels, opset, 0, key))
        atomic_write_bytes(path, proto.SerializeToString())
        return ["clipwise_output"]
    return fake


def test_cache_reused_and_rebuilt(tmp_path, monkeypatch, caplog):
    """One export per weights: the second call reuses the file; a corrupt file and a file made
    from other weights are rebuilt with one warning each."""
    monkeypatch.setenv("PANNS_CACHE", str(tmp_path))
    model, cfg = _build("LeeNet11")
    calls = []
    monkeypatch.setattr(onnx_backend, "export_in_child", _fake_export(calls))
    path = onnx_backend.cached_backend(model, cfg).path
    assert path.startswith(str(tmp_path / "onnx")) and os.path.exists(path) and len(calls) == 1
    assert onnx_backend.cached_backend(model, cfg).path == path and len(calls) == 1
    assert onnx_backend.read_metadata(path)["cache_key"] == calls[0]

    with open(path, "r+b") as f:   # truncated by a crash or a full disk
        f.truncate(20)
    with caplog.at_level(logging.WARNING):
        assert onnx_backend.cached_backend(model, cfg).path == path
    assert len(calls) == 2 and "cannot be read" in caplog.text
    assert onnx_backend.read_metadata(path)["cache_key"] == calls[0]

    # The key follows every change of the weights.
    before = onnx_backend.cache_key(model, cfg)
    saved = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        next(model.parameters()).add_(1.0)
    assert onnx_backend.cache_key(model, cfg) != before
    model.load_state_dict(saved)
    assert onnx_backend.cache_key(model, cfg) == before == calls[0]
    with torch.no_grad():   # a write through .data leaves the tensor's version counter as it was
        next(model.parameters()).data.mul_(2.0)
    assert onnx_backend.cache_key(model, cfg) != before
    model.load_state_dict(saved)
    other, _ = _build("LeeNet11", seed=1)
    assert onnx_backend.cache_key(other, cfg) != onnx_backend.cache_key(model, cfg)
    caplog.clear()
    with caplog.at_level(logging.WARNING):   # the same file name, other weights: stale
        onnx_backend.cached_backend(other, cfg, path=path)
    assert len(calls) == 3 and "other weights" in caplog.text
    assert onnx_backend.read_metadata(path)["cache_key"] == calls[2] != calls[0]
    assert not [f for f in os.listdir(os.path.dirname(path)) if ".tmp" in f]


def test_cache_is_one_folder_whatever_the_checkpoint_name(tmp_path, monkeypatch):
    """Exports live in $PANNS_CACHE/onnx (else ~/.cache/panns/onnx), named by model and key, never
    beside the checkpoint: the same weights under two file names share one file."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("PANNS_CACHE", raising=False)
    cfg = ModelConfig.from_registry("Cnn6")
    home = str(tmp_path / "home" / ".cache" / "panns" / "onnx" / "Cnn6-abc.onnx")
    assert onnx_backend.cache_path(cfg, "abc", str(tmp_path / "a.pth")) == home
    assert onnx_backend.cache_path(cfg, "abc", str(tmp_path / "b.pth")) == home
    monkeypatch.setenv("PANNS_CACHE", str(tmp_path / "cache"))
    assert onnx_backend.cache_path(cfg, "abc", str(tmp_path / "a.pth")) == str(tmp_path / "cache" / "onnx" / "Cnn6-abc.onnx")


def test_stale_export_folders_are_removed(tmp_path):
    """A parent that died during a child export leaves its temporary folder (the pickled model): the next
    export removes it once old, and leaves a running export's folder alone."""
    old, fresh = tmp_path / ".panns_export_old", tmp_path / ".panns_export_new"
    for d in (old, fresh):
        d.mkdir()
        (d / "model.pt").write_bytes(b"x")
    os.utime(old, (1, 1))
    onnx_backend._remove_stale_export_dirs(str(tmp_path))
    assert not old.exists() and fresh.exists()


def test_bad_opset_and_unreadable_file(tmp_path):
    model, cfg = _build("LeeNet11")
    with pytest.raises(PannsError, match="opset"):
        onnx_backend.export_onnx(model, cfg, str(tmp_path / "m.onnx"), opset=11)
    with pytest.raises(PannsError, match="--opset 99 is newer than the installed onnx"):
        onnx_backend.export_onnx(model, cfg, str(tmp_path / "m.onnx"), opset=99)
    assert not os.path.exists(tmp_path / "m.onnx")
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a model")
    with pytest.raises(PannsError, match="cannot load ONNX model"):
        onnx_backend.OnnxBackend(str(bad))


# ----------------------------------------------------------------------------- command line
@pytest.fixture(scope="module")
def cli_env(tmp_path_factory, audioset_labels_csv):
    """An official-format LeeNet11 checkpoint (527 classes), a 2-s clip and the label CSV."""
    import soundfile as sf

    d = tmp_path_factory.mktemp("onnx_cli")
    with skip_weight_init():
        model = models.create_model("LeeNet11")
    quick_fill(model).eval()
    ckpt = str(d / "LeeNet11.pth")
    torch.save({"model": model.state_dict()}, ckpt)
    t = np.arange(64000) / 32000
    sf.write(str(d / "clip.wav"), (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32), 32000)
    return {"dir": d, "ckpt": ckpt, "wav": str(d / "clip.wav"), "labels": audioset_labels_csv}


def _verdict(model_type: str, seconds) -> None:
    """Cache a calibration verdict for ``model_type`` with fp32 asked for (torch fp32 vs ONNX Runtime)
    as if measured on this machine: {(backend, precision): seconds}."""
    from panns import calibration

    key = calibration.machine_key(model_type, calibration.candidates("fp32", torch.device("cpu"), True))
    calibration.save_verdict(key, calibration.Verdict({calibration.path_name(p): s for p, s in seconds.items()}))


def test_audio_tagging_printout_same_with_auto_and_onnxruntime(cli_env, capsys, monkeypatch, caplog):
    """The official printout is identical through ONNX Runtime. auto (the default) runs torch on a job too
    short to repay a calibration (one 2-s clip: nothing exported or measured), --backend onnxruntime
    exports once (in a child process) with a one-line notice, and auto then runs that cached export on a
    job long enough (12 x 2 s) where the cached calibration says ONNX Runtime is the fastest."""
    from panns import inference

    cache = cli_env["dir"] / "cache_cli"
    monkeypatch.setenv("PANNS_CACHE", str(cache))
    monkeypatch.delenv("PANNS_BACKEND", raising=False)
    argv = ["audio_tagging", "--model_type=LeeNet11", f"--checkpoint_path={cli_env['ckpt']}",
            f"--class_labels_csv={cli_env['labels']}"]
    one = [f"--audio_path={cli_env['wav']}"]
    inference.main(argv + one + ["--backend=torch"])
    ref = capsys.readouterr().out
    with caplog.at_level(logging.INFO):
        inference.main(argv + one)
    assert capsys.readouterr().out == ref and "Using CPU." in ref and "embedding: (512,)" in ref
    assert "backend auto: running torch fp32 (2 s of audio does not repay a calibration" in caplog.text
    assert not cache.exists()
    caplog.clear()
    with caplog.at_level(logging.INFO):
        inference.main(argv + one + ["--backend=onnxruntime"])
    assert capsys.readouterr().out == ref
    notices = [r.getMessage() for r in caplog.records if "to ONNX once" in r.getMessage()]
    assert len(notices) == 1 and notices[0].startswith("exported LeeNet11 to ONNX once (") and str(cache) in notices[0]
    files = os.listdir(cache / "onnx")
    assert len(files) == 1 and files[0].startswith("LeeNet11-") and files[0].endswith(".onnx")
    caplog.clear()
    _verdict("LeeNet11", {("torch", "fp32"): 2.0, ("onnxruntime", "fp32"): 1.0})
    copies = []
    for i in range(12):   # 24 s of audio in 12 files (the input list drops repeated paths)
        copies.append(str(cli_env["dir"] / f"copy{i}.wav"))
        shutil.copyfile(cli_env["wav"], copies[-1])
    many = ["--audio_path"] + copies
    with caplog.at_level(logging.INFO):
        inference.main(argv + many)
    out = capsys.readouterr().out
    assert "backend auto: onnxruntime fp32 (the fastest path; calibrated on this CPU: onnxruntime fp32 1.00 s, " \
        "torch fp32 2.00 s (2.00x)" in caplog.text and "to ONNX once" not in caplog.text
    assert out.count(ref.split("Using CPU.")[1].strip().splitlines()[0]) == 12   # the same first tag line each time
    assert os.listdir(cache / "onnx") == files


def test_job_seconds_reads_headers(tmp_path):
    """job_seconds reads headers, counts unknown files as 10 s and stops at its cap."""
    import soundfile as sf
    from panns import runtime

    wav = tmp_path / "a.wav"
    sf.write(str(wav), np.zeros(16000 * 3, np.float32), 16000)
    junk = tmp_path / "b.xyz"
    junk.write_bytes(b"?")
    assert runtime.job_seconds([str(wav)] * 2 + [str(junk)]) == pytest.approx(16.0)
    assert runtime.job_seconds([str(wav)] * 1000, cap=7.0) == pytest.approx(9.0)


# ----------------------------------------------------------------------------- auto falls back
def _auto(model, cfg, **kw):
    from panns.runtime import Runtime

    return Runtime(model, cfg, device="cpu", backend=kw.pop("backend", "auto"), **kw)


def test_auto_falls_back_to_torch_with_one_line(tmp_path, monkeypatch, caplog):
    """Not installed, bf16 asked for, an export that fails: torch runs, after one line each; a
    failed export is not tried again by auto, while --backend onnxruntime tries and fails loudly."""
    monkeypatch.setenv("PANNS_CACHE", str(tmp_path))
    monkeypatch.delenv("PANNS_BACKEND", raising=False)
    model, cfg = _build("LeeNet11")
    with caplog.at_level(logging.INFO):
        with monkeypatch.context() as m:
            m.setattr(onnx_backend, "available", lambda: False)
            assert _auto(model, cfg).backend_name == "torch"
        assert _auto(model, cfg, precision="bf16").backend_name == "torch"
    lines = [r.getMessage() for r in caplog.records if "backend auto" in r.getMessage()]
    assert len(lines) == 2 and "not installed" in lines[0] and "bf16 asked for" in lines[1]

    calls = []

    def broken(*a, **k):
        calls.append(1)
        raise onnx_backend.ExportError("cannot export LeeNet11 to ONNX: Unsupported: an op")
    monkeypatch.setattr(onnx_backend, "export_in_child", broken)
    _verdict("LeeNet11", {("torch", "fp32"): 2.0, ("onnxruntime", "fp32"): 1.0})   # ONNX Runtime measured faster
    caplog.clear()
    with caplog.at_level(logging.INFO):
        rt = _auto(model, cfg, job_seconds=1e4)
        assert rt.backend_name == "torch" and len(calls) == 1
        assert rt.forward(np.zeros((1, 8000), np.float32))["clipwise_output"].shape == (1, CLASSES)
        assert _auto(model, cfg, job_seconds=1e4).backend_name == "torch" and len(calls) == 1   # remembered
    lines = [r.getMessage() for r in caplog.records if "backend auto" in r.getMessage()]
    assert len(lines) == 2 and all("Unsupported: an op" in m for m in lines) and "earlier run" in lines[1]
    caplog.clear()
    with caplog.at_level(logging.INFO):   # the Python API: torch goes on when the background build fails
        rt = _auto(model, cfg)
        assert not rt.backend.wait(60) and rt.backend_name == "torch" and len(calls) == 1
        assert rt.forward(np.zeros((1, 8000), np.float32))["clipwise_output"].shape == (1, CLASSES)
    lines = [r.getMessage() for r in caplog.records if "running torch" in r.getMessage()]
    assert len(lines) == 1 and lines[0].startswith("backend auto: running torch fp32 (") and "earlier run" in lines[0]
    with pytest.raises(PannsError, match="cannot export LeeNet11"):
        _auto(model, cfg, backend="onnxruntime")
    assert len(calls) == 2


def test_unwritable_cache_folder_falls_back_to_user_cache(tmp_path, monkeypatch):
    """The first-choice folder cannot be written (here $PANNS_CACHE under a file): the export
    goes to ~/.cache/panns/onnx instead of failing."""
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    monkeypatch.setenv("PANNS_CACHE", str(blocker / "cache"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    model, cfg = _build("LeeNet11")
    calls = []
    monkeypatch.setattr(onnx_backend, "export_in_child", _fake_export(calls))
    path = onnx_backend.cached_backend(model, cfg).path
    assert path.startswith(str(tmp_path / "home" / ".cache" / "panns" / "onnx")) and len(calls) == 1
    assert onnx_backend.cached_backend(model, cfg).path == path and len(calls) == 1   # found there next time


def test_export_command(cli_env, capsys):
    from panns import inference

    out = cli_env["dir"] / "LeeNet11.onnx"
    inference.main(["export", "--model_type=LeeNet11", f"--checkpoint_path={cli_env['ckpt']}",
                    f"--output={out}", f"--class_labels_csv={cli_env['labels']}"])
    line = capsys.readouterr().out.strip()
    assert line.startswith(f"Exported LeeNet11 to {out} (opset 18,") and "ONNX Runtime output within" in line
    meta = onnx_backend.read_metadata(str(out))
    assert meta["labels"][:2] == ["Class 0, synthetic", "Class 1, synthetic"] and len(meta["labels"]) == 527
    assert meta["frontend"]["sample_rate"] == 32000 and meta["model_type"] == "LeeNet11"
    with pytest.raises(PannsError, match="must end in .onnx"):
        inference.main(["export", "--model_type=LeeNet11", f"--checkpoint_path={cli_env['ckpt']}",
                        f"--output={out}.bin"])


def test_python_api_backend(cli_env, monkeypatch, caplog):
    """panns.load(..., backend='onnxruntime') gives torch's embeddings and tags. auto (the default)
    exports nothing without a measurement (torch); where the cached calibration says ONNX Runtime is
    faster it runs the export, made once for the weights: the same checkpoint under another file name
    reuses it (one file, one notice)."""
    import panns

    monkeypatch.setenv("PANNS_CACHE", str(cli_env["dir"] / "cache_api"))
    monkeypatch.delenv("PANNS_BACKEND", raising=False)
    kw = dict(model_type="LeeNet11", labels_csv=cli_env["labels"], device="cpu")
    ref = panns.load(cli_env["ckpt"], backend="torch", **kw)
    auto = panns.load(cli_env["ckpt"], **kw)   # the default: no calibration yet
    assert auto.runtime.backend_name == "torch" and not (cli_env["dir"] / "cache_api" / "onnx").exists()
    with caplog.at_level(logging.INFO):
        fast = panns.load(cli_env["ckpt"], backend="onnxruntime", **kw)
    assert fast.runtime.backend_name == "onnxruntime" and ref.runtime.backend_name == "torch"
    a, b = ref.embed(cli_env["wav"]), fast.embed(cli_env["wav"])
    assert a.shape == b.shape == (512,) and np.abs(a - b).max() <= 1e-5 * np.abs(a).max()
    assert [t for t, _ in ref.tag(cli_env["wav"])] == [t for t, _ in fast.tag(cli_env["wav"])]
    _verdict("LeeNet11", {("torch", "fp32"): 2.0, ("onnxruntime", "fp32"): 1.0})
    other = str(cli_env["dir"] / "renamed.pth")
    shutil.copyfile(cli_env["ckpt"], other)
    with caplog.at_level(logging.INFO):
        auto = panns.load(other, **kw)   # loads in torch's time; ONNX Runtime's session is made meanwhile
        assert auto.runtime.backend.wait(120)
    assert auto.runtime.backend_name == "onnxruntime" and "backend=onnxruntime" in repr(auto)
    c = auto.embed(cli_env["wav"])
    assert np.abs(a - c).max() <= 1e-5 * np.abs(a).max()
    assert len([r for r in caplog.records if "to ONNX once" in r.getMessage()]) == 1
    assert len(os.listdir(cli_env["dir"] / "cache_api" / "onnx")) == 1


def test_int8_guard(export_dir):
    """Static int8 (onnxruntime-int8): embeddings within cosine 0.999 of torch fp32 on clips that
    were not used for calibration, probabilities within 0.05. (Generated weights give near-tied
    class scores, so the top-10 order is not a fair check here.)"""
    model, cfg = _build("Cnn6")
    src = export_dir / "Cnn6.onnx"
    if not src.exists():
        onnx_backend.export_onnx(model, cfg, str(src))
    dst = str(export_dir / "Cnn6.int8.onnx")
    calib = onnx_backend.calibration_clips(cfg.sample_rate, n=4, seconds=3.0)
    onnx_backend.quantize_int8(str(src), dst, cfg, key="k", calibration=calib)
    be = onnx_backend.OnnxBackend(dst, threads=1)
    assert be.metadata["precision"] == "int8" and be.metadata["cache_key"] == "k"
    from panns.demo.data import CLASSES, synth_clip

    rs = np.random.RandomState(123)
    x = np.stack([synth_clip(rs, [i], 3.0, cfg.sample_rate) for i in range(min(4, len(CLASSES)))]).astype(np.float32)
    with torch.inference_mode():
        ref = model(torch.from_numpy(x))
    out = be(x)
    e, q = ref["embedding"].numpy(), out["embedding"]
    cos = (e * q).sum(1) / (np.linalg.norm(e, axis=1) * np.linalg.norm(q, axis=1))
    assert cos.mean() >= 0.999, cos
    assert np.abs(out["clipwise_output"] - ref["clipwise_output"].numpy()).max() <= 0.05

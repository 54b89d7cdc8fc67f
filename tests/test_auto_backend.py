"""``--backend auto`` decides by measurement (calibration.py + runtime._auto_backend), whatever CPU runs
the tests: the backends are fakes that advance a fake clock, and the CPU's bf16 support is faked, so
each case holds on an AVX2 host and an AVX512-BF16 one alike. The extraction precision 'auto' has its
accuracy guard here (bf16 embeddings within cosine 0.9999 of fp32)."""
import json
import logging
import os
import sys

import numpy as np
import pytest
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "golden"))
from model_helpers import quick_fill, skip_weight_init  # noqa: E402

from panns import calibration, devices, models, onnx_backend, runtime  # noqa: E402
from panns.checkpoint import ModelConfig  # noqa: E402
from panns.errors import PannsError  # noqa: E402

ORT, FP32, BF16 = ("onnxruntime", "fp32"), ("torch", "fp32"), ("torch", "bf16")


def _build(name: str = "LeeNet11"):
    with skip_weight_init():
        model = models.create_model(name, classes_num=5)
    return quick_fill(model).eval(), ModelConfig.from_registry(name, classes_num=5)


class FakeMachine:
    """Fake torch/ONNX Runtime backends: each call advances the fake clock by the path's cost (seconds
    per calibration batch); builds are counted per path."""

    def __init__(self, monkeypatch, costs, bf16_native=True, onnx=True):
        self.now, self.costs, self.builds = 0.0, dict(costs), []
        monkeypatch.setattr(calibration, "_clock", lambda: self.now)
        monkeypatch.setattr(devices, "cpu_has_fast_bf16", lambda *a: bf16_native)
        monkeypatch.setattr(onnx_backend, "available", lambda: onnx)
        monkeypatch.setattr(onnx_backend, "cached_export_key", lambda *a, **k: "k" if self.exported else None)
        self.exported = False
        monkeypatch.setitem(runtime._BACKENDS, "torch", lambda rt, **o: self._backend(("torch", rt.precision)))
        monkeypatch.setitem(runtime._BACKENDS, "onnxruntime", lambda rt, **o: self._backend(ORT, export=True))

    def _backend(self, path, export=False):
        self.builds.append(path)
        if export:
            self.exported = True

        def run(batch):
            self.now += self.costs[path]
            return {"clipwise_output": np.zeros((len(batch), 5), np.float32)}
        return run


def _auto(model, cfg, precision="fp32", **kw):
    return runtime.Runtime(model, cfg, device="cpu", precision=precision, backend="auto", **kw)


def _auto_lines(caplog):
    return [r.getMessage() for r in caplog.records if r.getMessage().startswith("backend auto")]


def test_candidates_follow_the_command_and_the_cpu(monkeypatch):
    cpu = torch.device("cpu")
    monkeypatch.setattr(devices, "cpu_has_fast_bf16", lambda *a: True)
    assert calibration.candidates("fp32", cpu, True) == [FP32, ORT]            # tagging/SED: fp32 only
    assert calibration.candidates("auto", cpu, True) == [FP32, ORT, BF16]      # extraction
    assert calibration.candidates("auto", cpu, False) == [FP32, BF16]
    assert calibration.candidates("bf16", cpu, True) == [BF16]
    monkeypatch.setattr(devices, "cpu_has_fast_bf16", lambda *a: False)        # AVX2: bf16 is emulated
    assert calibration.candidates("auto", cpu, True) == [FP32, ORT]


@pytest.mark.parametrize("bf16_native,costs,winner", [
    (True, {FP32: 1.0, ORT: 1.1, BF16: 0.75}, BF16),     # an AVX512-BF16 CPU: oneDNN bf16 wins
    (False, {FP32: 1.0, ORT: 0.5, BF16: 3.0}, ORT),      # an AVX2 CPU: ONNX Runtime ~2x torch
    (True, {FP32: 0.9, ORT: 1.0, BF16: 0.95}, FP32),
])
def test_calibration_picks_the_fastest_and_is_reused(tmp_path, monkeypatch, caplog, bf16_native, costs, winner):
    """A long job with no verdict measures every candidate, runs the fastest, says so (with the margin)
    in one line and caches the verdict; the next job reuses it without measuring."""
    monkeypatch.setenv("PANNS_CACHE", str(tmp_path))
    monkeypatch.delenv(runtime.BACKEND_ENV, raising=False)
    fake = FakeMachine(monkeypatch, costs, bf16_native)
    model, cfg = _build()
    with caplog.at_level(logging.INFO):
        rt = _auto(model, cfg, precision="auto", job_seconds=runtime.AUTO_EXPORT_MIN_SECONDS)
    assert (rt.backend_name, rt.precision) == winner
    measured = calibration.candidates("auto", torch.device("cpu"), True)
    assert set(fake.builds) == set(measured) and len(fake.builds) == len(measured)   # winner kept, not rebuilt
    lines = _auto_lines(caplog)
    assert len(lines) == 1 and lines[0].startswith(f"backend auto: {winner[0]} {winner[1]}, measured on this CPU")
    ranked = sorted(measured, key=costs.__getitem__)
    assert f"({costs[ranked[1]] / costs[ranked[0]]:.2f}x)" in lines[0]
    files = os.listdir(tmp_path / "calibration")
    assert len(files) == 1 and files[0].startswith("LeeNet11-") and files[0].endswith(".json")
    rec = json.loads((tmp_path / "calibration" / files[0]).read_text())
    assert rec["key"]["cpu"] == calibration.cpu_model() and rec["key"]["model_type"] == "LeeNet11"
    assert rec["seconds"][f"{winner[0]} {winner[1]}"] == pytest.approx(costs[winner])

    fake.builds.clear()
    caplog.clear()
    with caplog.at_level(logging.INFO):
        rt = _auto(model, cfg, precision="auto", job_seconds=runtime.AUTO_EXPORT_MIN_SECONDS)
    assert (rt.backend_name, rt.precision) == winner and fake.builds == [winner]
    lines = _auto_lines(caplog)
    assert len(lines) == 1 and "calibrated on this CPU" in lines[0] and files[0] in lines[0]


def test_short_jobs_and_the_api_keep_todays_rule(tmp_path, monkeypatch, caplog):
    """No verdict: short jobs and the Python API run torch at the precision asked for, measure nothing,
    export nothing. With a verdict for ONNX Runtime: jobs too short for its start-up, or for the export
    while it is not cached, take the fastest torch path; the API follows the verdict."""
    monkeypatch.setenv("PANNS_CACHE", str(tmp_path))
    monkeypatch.delenv(runtime.BACKEND_ENV, raising=False)
    fake = FakeMachine(monkeypatch, {FP32: 1.0, ORT: 0.5, BF16: 0.8})
    model, cfg = _build()
    with caplog.at_level(logging.INFO):
        assert _auto(model, cfg).backend_name == "torch"                                 # API
        assert _auto(model, cfg, job_seconds=30.0).backend_name == "torch"
        assert _auto(model, cfg, job_seconds=200.0).backend_name == "torch"              # export not repaid
        rt = _auto(model, cfg, precision="auto", job_seconds=10.0)
    assert (rt.backend_name, rt.precision) == BF16        # 'auto' resolved as before: bf16 where native
    assert set(fake.builds) == {FP32, BF16} and not fake.exported and not (tmp_path / "calibration").exists()
    lines = _auto_lines(caplog)
    assert len(lines) == 4 and "Python API" in lines[0] and "30 s of audio does not repay a calibration" in lines[1]
    assert "200 s of audio does not repay a calibration that would export ONNX Runtime's model first (from 1 min" \
        in lines[2]

    _auto(model, cfg, job_seconds=runtime.AUTO_EXPORT_MIN_SECONDS)                       # calibrates: ORT wins
    fake.exported = False                                                                 # as if the export were gone
    caplog.clear()
    with caplog.at_level(logging.INFO):
        assert _auto(model, cfg, job_seconds=10.0).backend_name == "torch"
        assert _auto(model, cfg, job_seconds=100.0).backend_name == "torch"
        assert not fake.exported
        rt = _auto(model, cfg)      # the API: a measurement says ONNX Runtime pays; torch until its session is made
        assert rt.backend_name == "torch" and rt.backend.wait(60) and fake.exported
        assert rt.backend_name == "onnxruntime" and fake.builds[-2:] == [FP32, ORT]
        fake.now = 0.0
        rt.forward(np.zeros((2, 16000), np.float32))
        assert fake.now == 0.5                                                           # ONNX Runtime ran it
    lines = _auto_lines(caplog)
    assert "ONNX Runtime's start-up" in lines[0] and "does not repay the one-off ONNX export" in lines[1]
    assert lines[2].startswith("backend auto: onnxruntime fp32 from its first call once its session is ready, "
                               "torch fp32 until then (the fastest path")


def test_every_auto_message_states_the_thresholds_alike(tmp_path, monkeypatch, caplog):
    """The true thresholds (job sizes in seconds of model input): no verdict, a job calibrates from 1 min,
    5 min while ONNX Runtime is a candidate and its export is not cached; with a verdict, ONNX Runtime runs
    no job under 20 s, nor under 5 min while its export is not cached. Each line and the --backend help
    say them alike (a 200-s job's line said 'from 5 min it does' alone, a 30-s job's 'from 1 min')."""
    from panns import inference

    monkeypatch.setenv("PANNS_CACHE", str(tmp_path))
    monkeypatch.delenv(runtime.BACKEND_ENV, raising=False)
    fake = FakeMachine(monkeypatch, {FP32: 1.0, ORT: 0.5, BF16: 0.8})
    model, cfg = _build()
    calib = "(from 1 min it does, 5 min while ONNX Runtime's export is not cached): no calibration of LeeNet11"
    with caplog.at_level(logging.INFO):
        _auto(model, cfg, job_seconds=30.0)                # the export not looked up: too short either way
        _auto(model, cfg, job_seconds=200.0)               # the export looked up: not cached
        fake.exported = True
        _auto(model, cfg, job_seconds=59.0)                # cached, still under 1 min
    lines = _auto_lines(caplog)
    assert lines[0] == ("backend auto: running torch fp32 (30 s of audio does not repay a calibration "
                        f"{calib} on this CPU yet)")
    assert lines[1] == ("backend auto: running torch fp32 (200 s of audio does not repay a calibration that would "
                        f"export ONNX Runtime's model first {calib} on this CPU yet)")
    assert lines[2] == ("backend auto: running torch fp32 (59 s of audio does not repay a calibration "
                        f"{calib} on this CPU yet)")
    assert not (tmp_path / "calibration").exists()
    assert _auto(model, cfg, job_seconds=60.0).backend_name == "onnxruntime"   # export cached: 1 min calibrates
    # without ONNX Runtime only the 1-min threshold applies, and the line says only that one
    FakeMachine(monkeypatch, {FP32: 1.0, BF16: 0.8}, onnx=False)
    caplog.clear()
    with caplog.at_level(logging.INFO):
        _auto(model, cfg, precision="auto", job_seconds=59.0)
    assert "(59 s of audio does not repay a calibration (from 1 min it does): no calibration" in _auto_lines(caplog)[-1]
    # with a verdict for ONNX Runtime and its export gone: 20 s for its start-up, 5 min for the export
    monkeypatch.setattr(onnx_backend, "available", lambda: True)
    monkeypatch.setattr(onnx_backend, "cached_export_key", lambda *a, **k: None)
    caplog.clear()
    with caplog.at_level(logging.INFO):
        _auto(model, cfg, job_seconds=19.0)
        _auto(model, cfg, job_seconds=299.0)
    lines = _auto_lines(caplog)
    assert "(19 s of audio: ONNX Runtime's start-up would cost more than it saves below 20 s; " in lines[0]
    assert ("(299 s of audio does not repay the one-off ONNX export (from 5 min it does; --backend onnxruntime "
            "exports now); calibrated on this CPU") in lines[1]
    # the --backend help states the same thresholds, from the same constants
    rule = ("with no calibration cached yet, a job of 1 min of audio or more calibrates (5 min while ONNX Runtime's "
            "export is not cached) and shorter ones run torch; ONNX Runtime runs no job under 20 s, nor under 5 min "
            "while its export is not cached")
    assert runtime.auto_rule_text().startswith(rule)
    help_text = " ".join(inference.build_parser()._subparsers._group_actions[0].choices["audio_tagging"]
                         .format_help().split())
    assert rule in help_text
    monkeypatch.setattr(runtime, "AUTO_CALIBRATE_MIN_SECONDS", 120.0)
    assert "a job of 2 min of audio or more calibrates" in runtime.auto_rule_text()


def test_env_forces_a_backend_and_the_key_follows_the_machine(tmp_path, monkeypatch):
    monkeypatch.setenv("PANNS_CACHE", str(tmp_path))
    fake = FakeMachine(monkeypatch, {FP32: 1.0, ORT: 0.5})
    model, cfg = _build()
    monkeypatch.setenv(runtime.BACKEND_ENV, "torch")
    assert _auto(model, cfg, job_seconds=1e4).backend_name == "torch" and fake.builds == [FP32]
    monkeypatch.setenv(runtime.BACKEND_ENV, "tensorrt")
    with pytest.raises(PannsError, match="PANNS_BACKEND='tensorrt' is not a backend"):
        _auto(model, cfg)
    monkeypatch.delenv(runtime.BACKEND_ENV)
    assert _auto(model, cfg, job_seconds=1e4).backend_name == "onnxruntime"
    assert len(os.listdir(tmp_path / "calibration")) == 1
    monkeypatch.setattr(calibration, "cpu_model", lambda *a: "Another CPU")              # another machine
    fake.costs = {FP32: 0.4, ORT: 0.5}
    fake.builds.clear()
    assert _auto(model, cfg, job_seconds=1e4).backend_name == "torch" and len(fake.builds) == 2
    assert len(os.listdir(tmp_path / "calibration")) == 2
    # the same (generic) model name on a node with other instruction sets: measured again, not reused
    flags = devices.cpu_flags()
    monkeypatch.setattr(devices, "cpu_flags", lambda *a: flags ^ {"amx_bf16"})
    fake.costs = {FP32: 1.0, ORT: 0.5}
    fake.builds.clear()
    assert _auto(model, cfg, job_seconds=1e4).backend_name == "onnxruntime" and len(fake.builds) == 2
    assert len(os.listdir(tmp_path / "calibration")) == 3


def test_a_path_that_fails_is_left_out(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("PANNS_CACHE", str(tmp_path))
    monkeypatch.delenv(runtime.BACKEND_ENV, raising=False)
    FakeMachine(monkeypatch, {FP32: 1.0, ORT: 0.5})

    def broken(rt, **o):
        raise onnx_backend.ExportError("cannot export LeeNet11 to ONNX: Unsupported: an op")
    monkeypatch.setitem(runtime._BACKENDS, "onnxruntime", broken)
    model, cfg = _build()
    with caplog.at_level(logging.INFO):
        assert _auto(model, cfg, job_seconds=1e4).backend_name == "torch"
    assert "onnxruntime fp32 left out of the calibration (cannot export" in caplog.text
    assert calibration.load_verdict(calibration.machine_key("LeeNet11", [FP32, ORT])).seconds.keys() == {"torch fp32"}


def test_extract_precision_auto_is_bf16_where_native_within_cosine(monkeypatch):
    """extract_embeddings defaults to --precision auto; bf16 embeddings stay within cosine 0.9999 of fp32
    (the accuracy guard of that default; bf16 is emulated, but computed the same, on CPUs without it)."""
    from panns import extract, inference

    args = inference.build_parser().parse_args(["extract_embeddings", "--audio_path=x.wav", "--output_path=o.h5"])
    assert args.precision == "auto"
    args = inference.build_parser().parse_args(["audio_tagging", "--audio_path=x.wav"])
    assert args.precision == "fp32"                                            # tagging keeps the official numerics
    with skip_weight_init():
        model = models.create_model("Cnn6")
    quick_fill(model, 0).eval()
    cfg = ModelConfig.from_registry("Cnn6")
    from panns.demo.data import CLASSES, synth_clip

    rs = np.random.RandomState(1)
    clips = [synth_clip(rs, [i % len(CLASSES)], 3.0, cfg.sample_rate).astype(np.float32) for i in range(4)]
    embs = {}
    for precision in ("fp32", "bf16"):
        ex = extract.Extractor(model, cfg, precision=precision, backend="torch", progress=False, batch_size=4)
        assert ex.precision == precision
        embs[precision] = ex.embed_waveforms(clips).embedding
    a, b = embs["fp32"], embs["bf16"]
    cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    assert cos.min() >= 0.9999, cos


def test_extraction_calibrates_torch_side_by_side(monkeypatch):
    """Extraction runs torch as k single-threaded forwards side by side: the calibration times it so
    (k batches a timed run, seconds per batch), ONNX Runtime one call at a time, in rounds of alternating
    order after one warm-up each; the key records k."""
    calls = {FP32: 0, ORT: 0}
    now, seq = [0.0], []

    def build(path):
        def run(batch):
            calls[path] += 1
            seq.append(path)
            now[0] += {FP32: 1.0, ORT: 0.8}[path]
        return run
    v = calibration.measure([FP32, ORT], build, np.zeros((2, 10), np.float32), repeats=2, timer=lambda: now[0],
                            torch_side_by_side=2)
    assert calls == {FP32: 6, ORT: 3}                          # warm-up + 2 timed runs, k forwards each for torch
    assert seq == [FP32, FP32, ORT] + [FP32, FP32, ORT] + [ORT, FP32, FP32]   # warm-ups, then alternating rounds
    assert v.seconds == {"torch fp32": pytest.approx(1.0), "onnxruntime fp32": pytest.approx(0.8)}
    assert calibration.machine_key("Cnn6", [FP32, ORT], 2) != calibration.machine_key("Cnn6", [FP32, ORT])
    seen = {}
    monkeypatch.setitem(runtime._BACKENDS, "auto", lambda rt, **o: seen.update(o) or (lambda b: {}))
    from panns import extract

    model, cfg = _build()
    extract.Extractor(model, cfg, backend="auto", progress=False, job_seconds=100.0)
    assert seen["torch_side_by_side"] == torch.get_num_threads() and seen["job_seconds"] == 100.0

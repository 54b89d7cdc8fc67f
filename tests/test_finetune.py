"""Fine-tuning (pytorch/finetune_template.py, pytorch/finetune_data.py) on a generated 4-class folder data set.

The "pretrained" base is a Cnn6 with random convolutions, calibrated without labels on the clips the way a
trained network is scaled: BatchNorm statistics measured on them, and fc1 set to standardise the pooled
features, so its embedding has unit scale like a real pretrained one (raw random features are separable, see
the linear probe, but badly scaled for a few SGD steps on the head). Saved both as an official
``{'model': sd}`` file and as one of ours with a config. Four spectrally distinct classes, a small front end
(16 kHz, hop 250) and ~1-s clips keep every run short on CPU.
"""
import csv
import glob
import json
import logging
import os
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf
import torch

from data_helpers import signal_in_step
from panns import checkpoint
from panns import finetune_data as fd
from panns.training import finetune as ftask
from panns import finetune_template as ft
from panns import models
from panns.errors import PannsError, run_cli
from panns.frontend import FRONTEND_KEYS
from panns.demo.data import CLASSES, synth_clip

SR = 16000
FRONTEND = dict(sample_rate=SR, window_size=512, hop_size=250, mel_bins=64, fmin=50, fmax=8000)
CLIP = int(1.25 * SR)  # longest generated clip
CLASS_IDS = (0, 1, 4, 9)  # Low tone, High tone, Hiss, Mid-band noise
N_CLASSES, PER_CLASS = len(CLASS_IDS), 12
NAMES = sorted(CLASSES[c][1] for c in CLASS_IDS)
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _write_class_folders(root, classes=N_CLASSES, per_class=PER_CLASS, seed=0):
    rs = np.random.RandomState(seed)
    for c in CLASS_IDS[:classes]:
        d = os.path.join(root, CLASSES[c][1])
        os.makedirs(d, exist_ok=True)
        for i in range(per_class):
            sf.write(os.path.join(d, f"clip{i:02d}.wav"), synth_clip(rs, [c], rs.uniform(1.0, 1.25), SR), SR,
                     subtype="PCM_16")
    return root


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return _write_class_folders(str(tmp_path_factory.mktemp("ft_data") / "sounds"))


@pytest.fixture(scope="module")
def pretrained(dataset, tmp_path_factory):
    """(official-format path, our-format path, state_dict) of a Cnn6 base with calibrated BatchNorm."""
    torch.manual_seed(0)
    base = models.create_model("Cnn6", 527, **FRONTEND)
    clips = [sf.read(p, dtype="float32")[0] for p in sorted(glob.glob(os.path.join(dataset, "*", "*.wav")))]
    x = torch.from_numpy(np.stack([np.pad(c, (0, CLIP - len(c))) for c in clips]))
    for m in base.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.momentum = None  # cumulative average: statistics of these clips
    base.train()
    with torch.no_grad():
        base(x)
    base.eval()
    pooled = {}
    hook = base.fc1.register_forward_hook(lambda mod, inp, out: pooled.setdefault("h", inp[0].detach()))
    with torch.no_grad():
        base(x)
    hook.remove()
    mu, sd = pooled["h"].mean(0), pooled["h"].std(0) + 1e-3
    with torch.no_grad():
        base.fc1.weight.copy_(torch.diag(1.0 / sd))
        base.fc1.bias.copy_(-mu / sd)
    sd = base.state_dict()
    d = tmp_path_factory.mktemp("ft_ckpt")
    official, ours = str(d / "Cnn6_official.pth"), str(d / "Cnn6_ours.pth")
    torch.save({"model": sd, "iteration": 0}, official)
    torch.save({"model": sd, "config": checkpoint.ModelConfig("Cnn6", **FRONTEND).to_dict()}, ours)
    return official, ours, sd


@pytest.fixture(scope="module")
def frozen_run(dataset, pretrained, tmp_path_factory):
    """One frozen-base fine-tune (front end taken from our checkpoint's config: no front-end flags)."""
    ws = str(tmp_path_factory.mktemp("ft_ws"))
    res = ft.main(["train", "--model_type", "Transfer_Cnn6", "--pretrained_checkpoint_path", pretrained[1],
                   "--dataset_dir", dataset, "--workspace", ws, "--freeze_base", "--batch_size", "8",
                   "--iterations", "24", "--eval_every", "12", "--learning_rate", "1e-2", "--num_workers", "0",
                   "--eval_fraction", "0.25"])
    return ws, res


def test_transfer_models_importable_from_template():
    assert ft.Transfer_Cnn14 is models.Transfer_Cnn14
    m = ft.make_transfer_model("Cnn6", 3, freeze_base=True)
    assert m.fc_transfer.out_features == 3 and m.fc_transfer.in_features == 512  # embedding size from the base


def test_frozen_finetune_learns_and_changes_only_the_head(frozen_run, pretrained):
    ws, res = frozen_run
    assert res["metric"] == "accuracy" and res["value"] >= 0.9, res["report"]
    run = os.path.join(ws, "finetune", "Transfer_Cnn6_sounds_nll_frozen")
    for name in ("best.pth", "latest.pth", "report.txt", "metrics.jsonl", "run.json"):
        assert os.path.isfile(os.path.join(run, name)), name
    assert "precision" in open(os.path.join(run, "report.txt")).read()  # sklearn classification_report
    ck = checkpoint.load_checkpoint(os.path.join(run, "best.pth"))
    cfg = ck["config"]
    assert cfg["model_type"] == "Transfer_Cnn6" and cfg["base_model_type"] == "Cnn6"
    assert cfg["output"] == "log_softmax" and cfg["classes_num"] == N_CLASSES
    assert cfg["labels"] == NAMES
    assert {k: cfg[k] for k in FRONTEND} == FRONTEND
    torch.manual_seed(0)
    fresh = models.make_transfer_model("Cnn6", N_CLASSES, **FRONTEND)
    assert not torch.equal(ck["model"]["fc_transfer.weight"], fresh.fc_transfer.weight.detach())
    # The checkpoint rebuilds through the shared loader used by inference (the frozen base read from its file).
    model, mc = checkpoint.load_model(os.path.join(run, "best.pth"))
    assert mc.labels == cfg["labels"] and mc.output == "log_softmax"
    for k, v in pretrained[2].items():  # weights and BatchNorm statistics of the base untouched
        assert torch.equal(model.base.state_dict()[k], v), k


def test_finetuned_checkpoint_tags_through_inference_cli(frozen_run, dataset):
    ws, _ = frozen_run
    best = os.path.join(ws, "finetune", "Transfer_Cnn6_sounds_nll_frozen", "best.pth")
    label = CLASSES[1][1]
    clip = sorted(glob.glob(os.path.join(dataset, label, "*.wav")))[-1]
    out = subprocess.run([sys.executable, os.path.join(REPO, "pytorch", "inference.py"), "audio_tagging",
                          "--checkpoint_path", best, "--audio_path", clip], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    lines = [ln for ln in out.stdout.splitlines() if ": " in ln and not ln.startswith("embedding")]
    probs = {ln.rsplit(": ", 1)[0]: float(ln.rsplit(": ", 1)[1]) for ln in lines}
    assert set(probs) == set(NAMES)
    assert abs(sum(probs.values()) - 1.0) < 0.01  # probabilities, not log-probabilities
    assert lines[0].startswith(label + ": ")


def test_linear_probe(dataset, pretrained, tmp_path, caplog):
    """The probe is written as a Transfer_Cnn6 checkpoint whose head is the fitted scaler + logistic
    regression: checkpoint.load_model (what inference.py uses) rebuilds it and it classifies the clips."""
    argv = ["train", "--model_type", "Transfer_Cnn6", "--pretrained_checkpoint_path", pretrained[1],
            "--dataset_dir", dataset, "--workspace", str(tmp_path), "--linear_probe", "--num_workers", "0",
            "--eval_fraction", "0.25", "--batch_size", "16"]
    res = ft.main(argv)
    assert res["value"] >= 0.9, res["report"]
    model, cfg = checkpoint.load_model(res["probe_path"])
    assert cfg.labels == NAMES and cfg.model_type == "Transfer_Cnn6"
    clip = int(round(checkpoint.load_checkpoint(res["probe_path"])["config"]["clip_seconds"] * SR))
    files = sorted(glob.glob(os.path.join(dataset, "*", "*.wav")))
    x = torch.from_numpy(np.stack([fd.crop(sf.read(f, dtype="float32")[0], clip) for f in files]))
    with torch.no_grad():
        pred = model(x)["clipwise_output"].argmax(1).numpy()
    truth = [NAMES.index(os.path.basename(os.path.dirname(f))) for f in files]
    assert np.mean(pred == np.array(truth)) >= 0.9
    cached = sorted(glob.glob(os.path.join(str(tmp_path), "cache", "embeddings_*.npz")))
    assert len(cached) == 2
    written = {p: os.stat(p).st_mtime_ns for p in cached}
    with pytest.raises(PannsError, match="already holds a fine-tuning run"):
        ft.main(argv)   # the same run folder again: refused, the first run is kept
    with caplog.at_level(logging.INFO):
        again = ft.main(argv + ["--overwrite"])  # embeddings and decoded clips come from the cache
    assert again["value"] == res["value"]
    assert all(f"Using cached embeddings {p}" in caplog.text for p in cached), caplog.text
    assert {p: os.stat(p).st_mtime_ns for p in cached} == written   # read, not written again


def test_unfrozen_bce_mixup_from_csv_changes_the_base(dataset, pretrained, tmp_path):
    """Multi-label CSV lists, sigmoid head, mixup, official-format base with the front end given as flags; a
    clip in both lists is a warning that report.txt repeats."""
    files = sorted(glob.glob(os.path.join(dataset, "*", "*.wav")))
    rows = [[f, os.path.basename(os.path.dirname(f))] + (["Extra"] if i % 3 == 0 else []) for i, f in enumerate(files)]
    for name, part in (("train.csv", rows[::2]), ("eval.csv", rows[1::2] + rows[:1])):
        with open(tmp_path / name, "w", newline="") as f:
            csv.writer(f).writerows([["path", "label"]] + part)
    flags = [x for k, v in FRONTEND.items() for x in (f"--{k}", str(v))]
    res = ft.main(["train", "--model_type", "Transfer_Cnn6", "--pretrained_checkpoint_path", pretrained[0], *flags,
                   "--train_csv", str(tmp_path / "train.csv"), "--eval_csv", str(tmp_path / "eval.csv"),
                   "--workspace", str(tmp_path / "ws"), "--augmentation", "mixup", "--batch_size", "2",
                   "--iterations", "2", "--eval_every", "2", "--num_workers", "0", "--clip_seconds", "0.5"])
    assert res["metric"] == "mAP" and 0.0 <= res["value"] <= 1.0
    report = open(os.path.join(os.path.dirname(res["best_path"]), "report.txt")).read()
    assert f"\nwarning: 1 clip(s) are in both the train and the eval split (eval scores will be optimistic), " \
           f"e.g. {files[0]}\n" in report, report
    ck = checkpoint.load_checkpoint(res["best_path"])
    assert ck["config"]["output"] == "sigmoid" and ck["config"]["labels"] == sorted(NAMES + ["Extra"])
    # clip_seconds 0.5 is below the 64 frames SpecAugment needs in training: raised to 63 hops
    assert ck["config"]["clip_seconds"] == pytest.approx(63 * 250 / SR)
    changed = [k for k, v in pretrained[2].items() if not torch.equal(ck["model"]["base." + k], v)]
    assert any(k.endswith("conv1.weight") for k in changed)
    model = models.make_transfer_model("Cnn6", 5, output="sigmoid", **FRONTEND)
    model.load_state_dict(ck["model"])
    with torch.no_grad():
        out = model.eval()(torch.zeros(1, SR))["clipwise_output"]
    assert out.shape == (1, 5) and float(out.min()) >= 0 and float(out.max()) <= 1


def test_sigmoid_checkpoint_rebuilds_for_inference(tmp_path):
    """A multi-label (sigmoid) fine-tuned checkpoint must come back from checkpoint.load_model (what
    inference.py uses) with the same outputs."""
    torch.manual_seed(0)
    model = models.make_transfer_model("Cnn6", 3, output="sigmoid", **FRONTEND).eval()
    path = str(tmp_path / "ft.pth")
    checkpoint.save_checkpoint(path, {"model": model.state_dict(),
                                      "config": ftask.model_config("Cnn6", FRONTEND, ["a", "b", "c"], "sigmoid")})
    loaded, cfg = checkpoint.load_model(path)
    x = torch.randn(2, SR) * 0.1
    with torch.no_grad():
        assert torch.allclose(loaded(x)["clipwise_output"], model(x)["clipwise_output"], atol=1e-5)


def test_base_trained_on_another_class_list(tmp_path):
    """A base of ours with a 10-class head: everything but that (unused) head loads strictly, and the result is
    a standard Transfer_Cnn6 that checkpoint.load_model rebuilds. A base of another architecture is refused."""
    torch.manual_seed(1)
    base10 = models.create_model("Cnn6", 10, **FRONTEND)
    path = str(tmp_path / "cnn6_10.pth")
    torch.save({"model": base10.state_dict(),
                "config": checkpoint.ModelConfig("Cnn6", **FRONTEND, classes_num=10).to_dict()}, path)
    sd, fe, cfg = ftask.read_pretrained(path, "Cnn6", {k: None for k in FRONTEND_KEYS})
    assert fe == FRONTEND and cfg["classes_num"] == 10
    model = models.make_transfer_model("Cnn6", 3, **fe)
    checkpoint.load_pretrained_base(model.base, sd, path, "Cnn6")
    assert torch.equal(model.base.fc1.weight, base10.fc1.weight)
    out_path = str(tmp_path / "ft.pth")
    checkpoint.save_checkpoint(out_path, {"model": model.state_dict(),
                                          "config": ftask.model_config("Cnn6", fe, ["a", "b", "c"], "log_softmax")})
    loaded, _ = checkpoint.load_model(out_path)
    x = torch.randn(2, SR) * 0.1
    with torch.no_grad():
        assert torch.allclose(loaded(x)["clipwise_output"], model.eval()(x)["clipwise_output"], atol=1e-5)
    with pytest.raises(PannsError, match="does not fit"):
        checkpoint.load_pretrained_base(models.make_transfer_model("Cnn10", 3, **fe).base, sd, path, "Cnn10")


@pytest.mark.parametrize("key,value,message", [("hop_size", "abc", "hop_size must be a whole number"),
                                               ("sample_rate", float("nan"), "sample_rate must be a whole number"),
                                               ("window_size", 1024.5, "window_size must be a whole number"),
                                               ("fmax", 100000, "fmax 100000 is above the Nyquist")])
def test_base_whose_saved_front_end_is_unusable_is_one_line_naming_it(tmp_path, key, value, message):
    """A base checkpoint's front end is checked as the inference front doors check it ('abc' was a ValueError
    traceback, 1024.5 silently became 1024); whole-number floats (32000.0) still load as ints."""
    base = models.create_model("Cnn6", 10, **FRONTEND)
    cfg = checkpoint.ModelConfig("Cnn6", **FRONTEND, classes_num=10).to_dict()
    path = str(tmp_path / "base.pth")
    torch.save({"model": base.state_dict(), "config": {**cfg, key: value}}, path)
    with pytest.raises(checkpoint.CheckpointError, match=f"checkpoint {path} has an unusable config: {message}"):
        ftask.read_pretrained(path, "Cnn6", {k: None for k in FRONTEND_KEYS})
    torch.save({"model": base.state_dict(), "config": {**cfg, "sample_rate": float(FRONTEND["sample_rate"])}}, path)
    _, fe, _ = ftask.read_pretrained(path, "Cnn6", {k: None for k in FRONTEND_KEYS})
    assert fe == FRONTEND and type(fe["sample_rate"]) is int


def _cli_error(argv, capsys) -> str:
    with pytest.raises(SystemExit) as e:
        run_cli(lambda: ft.main(argv))
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]  # after the run's log lines
    assert err.startswith("error: ")
    return err


@pytest.mark.parametrize("case", ["empty_class", "single_class", "unreadable", "contradiction", "nll_multilabel"])
def test_bad_input_gives_one_line_error(case, dataset, pretrained, tmp_path, capsys):
    ds = str(tmp_path / "ds")
    extra = []
    if case == "empty_class":
        _write_class_folders(ds, classes=2, per_class=2)
        os.makedirs(os.path.join(ds, "Silence"))
        expect = "Silence has no audio files"
    elif case == "single_class":
        _write_class_folders(ds, classes=1, per_class=3)
        expect = "at least 2 classes"
    elif case == "unreadable":
        _write_class_folders(ds, classes=2, per_class=2)
        with open(os.path.join(ds, CLASSES[CLASS_IDS[0]][1], "broken.wav"), "wb") as f:
            f.write(b"RIFF\x00\x00\x00\x00WAVEjunk" * 3)
        expect = "broken.wav"
    elif case == "contradiction":
        ds = dataset
        extra = ["--sample_rate", "32000"]
        expect = "contradicts the checkpoint"
    else:
        with open(tmp_path / "multi.csv", "w") as f:
            f.write("a.wav,x,y\nb.wav,y\nc.wav,x\nd.wav,y\n")
        for n in "abcd":
            sf.write(str(tmp_path / f"{n}.wav"), np.zeros(SR, np.float32), SR)
        extra = ["--loss", "nll"]
        expect = "--loss bce"
    data = ["--train_csv", str(tmp_path / "multi.csv")] if case == "nll_multilabel" else ["--dataset_dir", ds]
    err = _cli_error(["train", "--model_type", "Transfer_Cnn6", "--pretrained_checkpoint_path", pretrained[1],
                      *data, "--workspace", str(tmp_path / "ws"), "--num_workers", "0", *extra], capsys)
    assert expect in err, err


def test_official_command_without_data(pretrained, capsys):
    """The official command line (six front-end flags, official-format checkpoint, no data) still works."""
    flags = [x for k, v in FRONTEND.items() for x in (f"--{k}", str(v))]
    assert ft.main(["train", *flags, "--model_type", "Transfer_Cnn6", "--pretrained_checkpoint_path", pretrained[0],
                    "--freeze_base"]) is None
    out = capsys.readouterr().out
    assert "Load pretrained model successfully!" in out and "No data given" in out


def test_cli_exit_code(tmp_path):
    """A real subprocess: bad data gives exit status 2 and one 'error:' line on stderr."""
    bad = subprocess.run([sys.executable, os.path.join(REPO, "pytorch", "finetune_template.py"), "train",
                          "--model_type", "Transfer_Cnn6", "--dataset_dir", str(tmp_path / "missing"),
                          "--workspace", str(tmp_path)], capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stderr.strip().count("\n") == 0 and "is not a folder" in bad.stderr


def test_sed_model_is_refused():
    with pytest.raises(PannsError, match="clip-level"):
        ftask.base_of("Transfer_Cnn14_DecisionLevelMax")
    assert ftask.base_of("Transfer_ResNet22") == "ResNet22" and ftask.base_of("MobileNetV1") == "MobileNetV1"


# ---------------------------------------------------------------------------------------------- data layouts
def test_meta_csv_folds_esc50_and_urbansound_layouts(tmp_path):
    root = tmp_path / "ESC-50"
    (root / "meta").mkdir(parents=True)
    (root / "audio").mkdir()
    rows = []
    for i in range(10):
        name = f"{i % 5 + 1}-{i}-A-{i % 2}.wav"
        sf.write(str(root / "audio" / name), np.zeros(800, np.float32), 8000)
        rows.append([name, i % 5 + 1, i % 2, ["dog", "rooster"][i % 2], "False", "x", "A"])
    with open(root / "meta" / "esc50.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["filename", "fold", "target", "category", "esc10", "src_file", "take"])
        w.writerows(rows)
    data = fd.from_meta_csv(str(root / "meta" / "esc50.csv"), "2")  # audio dir found at meta/../audio
    assert data.labels == ["dog", "rooster"] and len(data.eval) == 2 and len(data.train) == 8
    assert all(os.path.basename(p).startswith("2-") for p in data.eval.paths)
    with pytest.raises(PannsError, match="folds: 1, 2, 3, 4, 5"):
        fd.from_meta_csv(str(root / "meta" / "esc50.csv"), "9")
    with pytest.raises(PannsError, match="--holdout_fold"):
        fd.from_meta_csv(str(root / "meta" / "esc50.csv"), None)
    # UrbanSound8K: slice_file_name, fold, classID, class; audio/fold<k>/<file>
    us = tmp_path / "UrbanSound8K"
    (us / "metadata").mkdir(parents=True)
    lines = ["slice_file_name,fsID,start,end,salience,fold,classID,class"]
    for i in range(6):
        fold = i % 3 + 1
        (us / "audio" / f"fold{fold}").mkdir(parents=True, exist_ok=True)
        sf.write(str(us / "audio" / f"fold{fold}" / f"s{i}.wav"), np.zeros(800, np.float32), 8000)
        lines.append(f"s{i}.wav,1,0,1,1,{fold},{i % 2 * 3},{['air_conditioner', 'dog_bark'][i % 2]}")
    (us / "metadata" / "UrbanSound8K.csv").write_text("\n".join(lines) + "\n")
    data = fd.from_meta_csv(str(us / "metadata" / "UrbanSound8K.csv"), "3")
    assert data.labels == ["air_conditioner", "dog_bark"] and len(data.eval) == 2


def test_folder_splits_and_decode_once_cache(tmp_path):
    root = tmp_path / "sets"
    _write_class_folders(str(root / "train"), classes=3, per_class=2)
    _write_class_folders(str(root / "val"), classes=3, per_class=1, seed=1)
    data = fd.from_folder(str(root))
    assert data.classes_num == 3 and len(data.train) == 6 and len(data.eval) == 3
    paths = data.train.paths + data.eval.paths
    c1 = fd.build_cache(paths, 8000, str(tmp_path / "cache"))
    c2 = fd.build_cache(list(reversed(paths)), 8000, str(tmp_path / "cache"))
    assert c1.h5_path == c2.h5_path and len(c1) == 9
    y = c1.read(c1.index[paths[0]])
    assert y.dtype == np.float32 and 8000 <= len(y) <= 10000  # full length kept, resampled 16k -> 8k
    # crops: training takes random windows of long clips, evaluation the start; short ones are zero-padded
    long = np.arange(100, dtype=np.float32)
    assert np.array_equal(fd.crop(long, 10), long[:10])
    starts = {int(fd.crop(long, 10, np.random.default_rng(s))[0]) for s in range(20)}
    assert len(starts) > 5
    assert np.array_equal(fd.crop(long[:4], 6), np.array([0, 1, 2, 3, 0, 0], np.float32))
    # a changed file changes the key: a new cache is built
    sf.write(paths[0], np.zeros(SR, np.float32), SR)
    assert fd.build_cache(paths, 8000, str(tmp_path / "cache")).h5_path != c1.h5_path


_SLOW_CACHE_SCRIPT = r"""
import signal, sys, time
# Ctrl-C as in a terminal: a test run started in the background ('nohup pytest &', some CI runners) hands its
# children SIGINT ignored, which Python then keeps
signal.signal(signal.SIGINT, signal.default_int_handler)
from panns import finetune_data as fd
real = fd.load_audio
def slow(path, sr):   # a slow decoder, so that Ctrl-C comes while workers are busy
    time.sleep(0.5)
    return real(path, sr)
fd.load_audio = slow
print("start", flush=True)
fd.build_cache(sys.argv[2:], 16000, sys.argv[1], num_workers=2)
"""


def test_decode_cache_stops_on_the_first_ctrl_c(tmp_path):
    """One SIGINT while the decode pool is busy: the run stops within seconds and leaves no temp file."""
    import signal
    import time

    files = []
    for i in range(40):
        path = str(tmp_path / f"c{i}.wav")
        sf.write(path, np.zeros(1600, np.float32), SR)
        files.append(path)
    cache_dir = tmp_path / "cache"
    proc = subprocess.Popen([sys.executable, "-c", _SLOW_CACHE_SCRIPT, str(cache_dir)] + files,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=dict(os.environ, PYTHONPATH=os.path.join(REPO, "pytorch")))
    assert proc.stdout.readline().strip() == "start"
    time.sleep(1.5)
    proc.send_signal(signal.SIGINT)
    t0 = time.time()
    try:
        proc.wait(timeout=20)
    finally:
        proc.kill()
    assert time.time() - t0 < 10 and proc.returncode != 0
    assert not [f for f in os.listdir(cache_dir) if ".tmp" in f or f.endswith(".h5")]


def test_resumed_fine_tune_equals_one_run_straight(dataset, pretrained, tmp_path):
    """Unfrozen base (dropout, SpecAugment), mixup, random crops: 4 steps straight == 2 + --resume + 2."""
    def run(name, iterations, *extra):
        return ft.main(["train", "--model_type", "Transfer_Cnn6", "--pretrained_checkpoint_path", pretrained[1],
                        "--dataset_dir", dataset, "--workspace", str(tmp_path), "--run_name", name,
                        "--augmentation", "mixup", "--batch_size", "2", "--iterations", str(iterations),
                        "--eval_every", "2", "--num_workers", "0", "--clip_seconds", "1.0", "--eval_fraction", "0.25",
                        *extra])

    run("straight", 4)
    run("resumed", 2)
    with pytest.raises(PannsError, match="already holds a fine-tuning run"):
        run("resumed", 4)
    run("resumed", 4, "--resume")
    a = checkpoint.load_checkpoint(str(tmp_path / "finetune" / "straight" / "latest.pth"))
    b = checkpoint.load_checkpoint(str(tmp_path / "finetune" / "resumed" / "latest.pth"))
    assert a["iteration"] == b["iteration"] == 4
    for k, v in a["model"].items():
        assert torch.equal(v, b["model"][k]), k
    # the training checkpoint format of main.py: one sampler state, per-rank RNG/Mixup states, optimizer
    assert {"config", "optimizer", "sampler", "rank_states"} <= set(b) and b["sampler"]["batches"] == 4
    assert b["config"]["labels"] == NAMES and b["rank_states"][0]["mixup"] is not None


def test_a_signal_saves_latest_at_the_step_and_keeps_best(dataset, pretrained, tmp_path, monkeypatch, caplog):
    """SIGTERM during step 3 (one loader worker): latest.pth holds iteration 3, best.pth stays the evaluated
    iteration (unevaluated weights never become 'best'), the log names --resume, and --resume finishes the run."""
    import signal

    from panns.errors import Interrupted
    from panns.training import config as tl

    real_step = tl.train_step
    def run(*extra):
        return ft.main(["train", "--model_type", "Transfer_Cnn6", "--pretrained_checkpoint_path", pretrained[1],
                        "--dataset_dir", dataset, "--workspace", str(tmp_path), "--run_name", "stopped",
                        "--batch_size", "2", "--iterations", "6", "--eval_every", "2", "--num_workers", "1",
                        "--clip_seconds", "1.0", "--eval_fraction", "0.25", *extra])

    calls = signal_in_step(monkeypatch, 3, signal.SIGTERM)
    with caplog.at_level("WARNING", logger="main"), pytest.raises(Interrupted) as stopped:
        run()
    assert stopped.value.signum == signal.SIGTERM and len(calls) == 3
    run_dir = tmp_path / "finetune" / "stopped"
    assert "Stopped by SIGTERM at iteration 3" in caplog.text and "--resume" in caplog.text
    latest = checkpoint.load_checkpoint(str(run_dir / "latest.pth"))
    assert latest["iteration"] == 3 and latest["sampler"]["batches"] == 3
    assert checkpoint.load_checkpoint(str(run_dir / "best.pth"))["iteration"] in (0, 2)
    monkeypatch.setattr(tl, "train_step", real_step)
    run("--resume")
    assert checkpoint.load_checkpoint(str(run_dir / "latest.pth"))["iteration"] == 6


def test_shuffled_sampler_resumes_by_position():
    """The fine-tune sampler resumes like the AudioSet ones: state_dict(batches_consumed) -> the same
    next batches (clip and stream position); a state of another data set is refused."""
    import itertools

    straight = list(itertools.islice(iter(fd.ShuffledBatchSampler(7, 3, seed=5)), 6))
    assert all(len(b) == 3 for b in straight) and [p for b in straight for _i, p in b] == list(range(18))
    assert sorted(i for b in straight for i, p in b if p < 7) == list(range(7))  # each clip once per epoch
    first = fd.ShuffledBatchSampler(7, 3, seed=5)
    it = iter(first)
    for _ in range(4):   # a loader prefetches: the sampler has yielded 4 batches, the loop used 2
        next(it)
    resumed = fd.ShuffledBatchSampler(7, 3, seed=5)
    resumed.load_state_dict(first.state_dict(batches_consumed=2))
    assert list(itertools.islice(iter(resumed), 4)) == straight[2:6]
    with pytest.raises(PannsError, match="number of training clips"):
        fd.ShuffledBatchSampler(8, 3, seed=5).load_state_dict(first.state_dict(batches_consumed=2))


def test_resume_after_renamed_classes_is_refused_and_an_unsaved_run_folder_is_reused(dataset, pretrained, tmp_path):
    """#27: --resume on renamed class folders continued the old head under the new names; a run stopped
    before its first checkpoint blocked the same command (and --resume) for good."""
    data = str(tmp_path / "two")
    for name in NAMES[:2]:
        os.makedirs(os.path.join(data, name))
        for f in sorted(os.listdir(os.path.join(dataset, name)))[:4]:
            os.link(os.path.join(dataset, name, f), os.path.join(data, name, f))

    def run(*extra):
        return ft.main(["train", "--model_type", "Transfer_Cnn6", "--pretrained_checkpoint_path", pretrained[1],
                        "--dataset_dir", data, "--workspace", str(tmp_path), "--run_name", "r", "--freeze_base",
                        "--batch_size", "4", "--iterations", "2", "--eval_every", "1", "--num_workers", "0",
                        "--clip_seconds", "0.5", "--eval_fraction", "0.5", *extra])

    run_dir = tmp_path / "finetune" / "r"
    os.makedirs(run_dir)
    (run_dir / "run.json").write_text("{}")          # what a Ctrl-C before the first save leaves
    (run_dir / "metrics.jsonl").write_text("")
    res = run("--resume", "--learning_rate", "100")   # nothing to resume: starts afresh instead of failing
    assert checkpoint.load_checkpoint(str(run_dir / "latest.pth"))["config"]["labels"] == NAMES[:2]
    # the probe-initialised start is evaluated and kept when training (here at a wild rate) does not beat it
    lines = [json.loads(ln) for ln in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [ln["iteration"] for ln in lines] == [0, 1, 2] and lines[0]["train_loss"] is None
    assert res["value"] == max(ln["accuracy"] for ln in lines)
    assert res["iteration"] == min(ln["iteration"] for ln in lines if ln["accuracy"] == res["value"])
    res = run("--resume", "--iterations", "3")          # latest.pth refers to the frozen base: resumes on it
    assert checkpoint.load_checkpoint(str(run_dir / "latest.pth"))["iteration"] == 3
    os.rename(os.path.join(data, NAMES[0]), os.path.join(data, "zebra"))
    with pytest.raises(PannsError, match=r"trained on the classes \[.*\] but the data now has \[.*zebra"):
        run("--resume", "--iterations", "4")
    (run_dir / "latest.pth").unlink()
    (run_dir / "best.pth").unlink()
    (run_dir / "report.txt").unlink()
    run()                                             # the same command re-uses an unsaved run's folder


def test_frozen_base_checkpoints_refer_to_their_base(frozen_run, pretrained, tmp_path):
    """latest.pth and best.pth of a frozen base hold the trained part (and the base's unused AudioSet head) plus a
    reference to the base file; inference follows the reference, `export` writes a self-contained copy with the
    same weights, and a base that moved or changed is one error line."""
    import shutil

    from panns.finetune_template import main as finetune_main

    ws, _ = frozen_run
    run = os.path.join(ws, "finetune", "Transfer_Cnn6_sounds_nll_frozen")
    for name in ("latest.pth", "best.pth"):
        ck = checkpoint.load_checkpoint(os.path.join(run, name))
        base_keys = {k for k in ck["model"] if k.startswith("base.")}
        assert base_keys <= {"base.fc_audioset.weight", "base.fc_audioset.bias"}, base_keys
        assert "fc_transfer.weight" in ck["model"]
        assert ck["base_checkpoint"]["path"] == os.path.abspath(pretrained[1])
    best = os.path.join(run, "best.pth")
    model, cfg = checkpoint.load_model(best)
    for k, v in pretrained[2].items():   # the base as trained: the pretrained file's weights
        if not k.startswith("fc_audioset."):
            assert torch.equal(model.base.state_dict()[k], v), k
    full = str(tmp_path / "full.pth")
    finetune_main(["export", "--checkpoint_path", best, "--output_path", full])
    assert "base_checkpoint" not in checkpoint.load_checkpoint(full)
    assert os.path.getsize(full) > 5 * os.path.getsize(best)
    model2, _ = checkpoint.load_model(full)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), model2.state_dict().values()))
    with pytest.raises(PannsError, match="official format .* export takes best.pth or latest.pth"):
        finetune_main(["export", "--checkpoint_path", pretrained[0], "--output_path", str(tmp_path / "o.pth")])
    assert not os.path.exists(tmp_path / "o.pth")

    moved = str(tmp_path / "moved.pth")
    shutil.copy(pretrained[1], moved)
    os.remove(pretrained[1])
    try:
        with pytest.raises(PannsError, match="frozen base .* is not there.*export"):
            checkpoint.load_model(best)
        changed = {k: v + 1 if v.is_floating_point() else v for k, v in pretrained[2].items()}
        torch.save({"model": changed}, pretrained[1])
        with pytest.raises(PannsError, match="has changed since"):
            checkpoint.load_model(best)
    finally:
        shutil.copy(moved, pretrained[1])
    other = models.make_transfer_model("Cnn6", N_CLASSES, freeze_base=True, **FRONTEND)   # another (random) base
    with pytest.raises(PannsError, match="trained on the frozen base"):
        ftask.check_resume_base(os.path.join(run, "latest.pth"), other)
    ours = models.make_transfer_model("Cnn6", N_CLASSES, freeze_base=True, **FRONTEND)
    ours.base.load_state_dict(pretrained[2])
    ftask.check_resume_base(os.path.join(run, "latest.pth"), ours)

"""Code written against the official layout (``utils/`` and ``pytorch/`` on ``sys.path``, then ``import config``,
``from utilities import ...``, ``from data_generator import ...``, ``from evaluate import Evaluator``,
``from losses import get_loss_func``) gets the package's names and runs, from any working directory (~10 s)."""
import os
import subprocess
import sys

import h5py
import numpy as np

from panns import config
from panns.create_indexes import create_indexes

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(code: str, *args: str, cwd: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return subprocess.run([sys.executable, "-c", code, REPO, *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)


def test_utils_import_paths_are_the_package_names(tmp_path):
    """Only ``utils/`` on the path (as a script beside the official utils does): ``config``'s label tables come
    from the repository's CSV although the working directory is elsewhere, every name is the package's, and the
    script's own modules (a ``models.py`` of its own) still come first."""
    (tmp_path / "models.py").write_text("WHO = 'mine'\n")
    code = (
        "import os, sys; sys.path.insert(1, os.path.join(sys.argv[1], 'utils'))\n"
        "import config, utilities, data_generator\n"
        "import models\n"
        "assert models.WHO == 'mine', models.__file__\n"
        "from config import *\n"
        "assert labels is config.labels and classes_num == len(labels) and lb_to_ix[labels[3]] == 3\n"
        "import panns, panns.config as pc, panns.utilities as pu, panns.data_generator as pd, panns.evaluate as pe\n"
        "from panns.dataset import read_metadata\n"
        "assert panns.__file__.startswith(os.path.join(sys.argv[1], 'pytorch')), panns.__file__\n"
        "assert utilities.Mixup is pu.Mixup and utilities.create_logging is pu.create_logging\n"
        "assert utilities.StatisticsContainer is pe.StatisticsContainer and utilities.read_metadata is read_metadata\n"
        "assert data_generator.TrainSampler is pd.TrainSampler and data_generator.collate_fn is pd.collate_fn\n"
        "assert config.read_class_labels is pc.read_class_labels\n"
        "official = {utilities: 'create_folder get_filename get_sub_filepaths create_logging read_metadata '\n"
        "                       'float32_to_int16 int16_to_float32 pad_or_truncate d_prime Mixup '\n"
        "                       'StatisticsContainer',\n"
        "            data_generator: 'AudioSetDataset TrainSampler BalancedTrainSampler AlternateTrainSampler '\n"
        "                            'EvaluateSampler collate_fn'}\n"
        "assert not [n for m, names in official.items() for n in names.split() if not hasattr(m, n)]\n"
        "print(config.sample_rate, config.clip_samples, config.classes_num, config.labels[0], config.ids[0],\n"
        "      config.lb_to_ix[config.labels[5]], config.ix_to_lb[5] == config.labels[5],\n"
        "      config.id_to_ix[config.ids[7]], config.ix_to_id[7] == config.ids[7])\n"
        "for name in ('no_such_name', 'full_samples_per_class'):\n"
        "    try:\n"
        "        getattr(config, name)\n"
        "    except AttributeError as e:\n"
        "        print(e)\n")
    proc = _run(code, cwd=str(tmp_path))
    assert proc.returncode == 0, proc.stderr[-3000:]
    first, error, counts = proc.stdout.splitlines()
    labels = config.read_class_labels()
    assert first.split() == ["32000", "320000", str(labels.classes_num), *labels.labels[0].split(), labels.ids[0],
                             "5", "True", "7", "True"]
    assert error == "module 'config' has no attribute 'no_such_name'"
    assert counts.startswith("config.full_samples_per_class (the per-class clip counts") and "read_index" in counts


def _waveform_hdf5(path: str, clips: int, samples: int, classes_num: int) -> np.ndarray:
    """An official-format waveform HDF5 (int16 rows, multi-hot targets) of noise clips; returns the targets."""
    rs = np.random.RandomState(0)
    targets = np.zeros((clips, classes_num), bool)
    targets[np.arange(clips), np.arange(clips) % 4] = True   # classes 0-3: positives and negatives each
    with h5py.File(path, "w") as hf:
        hf.create_dataset("audio_name", data=np.array([f"Y{i:011d}.wav".encode() for i in range(clips)], "S20"))
        hf.create_dataset("waveform", data=(rs.randn(clips, samples) * 3000).astype(np.int16))
        hf.create_dataset("target", data=targets)
        hf.attrs["sample_rate"] = np.int32(32000)
    return targets


def test_an_official_style_training_loop_runs_on_the_official_names(tmp_path):
    """The official ``main.py`` train loop written with the official imports (dataset, sampler with the doubled
    mixup batch, collate, model, Mixup, loss, Evaluator, StatisticsContainer) trains and evaluates."""
    waveforms, index = str(tmp_path / "w.h5"), str(tmp_path / "i.h5")
    _waveform_hdf5(waveforms, clips=8, samples=32000, classes_num=config.read_class_labels().classes_num)
    create_indexes(waveforms, index)
    code = (
        "import os, sys; repo = sys.argv[1]\n"
        "sys.path.insert(0, os.path.join(repo, 'pytorch')); sys.path.insert(1, os.path.join(repo, 'utils'))\n"
        "import numpy as np, torch\n"
        "import config\n"
        "from utilities import create_folder, Mixup, StatisticsContainer\n"
        "from data_generator import AudioSetDataset, TrainSampler, EvaluateSampler, collate_fn\n"
        "from models import Cnn6\n"
        "from pytorch_utils import move_data_to_device, do_mixup\n"
        "from losses import get_loss_func\n"
        "from evaluate import Evaluator\n"
        "import finetune_template, models\n"
        "assert finetune_template.Transfer_Cnn14 is models.Transfer_Cnn14   # the official file defined it\n"
        "from pytorch_utils import append_to_dict, count_parameters, count_flops, forward, interpolate\n"
        "from pytorch_utils import pad_framewise_output\n"
        "torch.manual_seed(0)\n"
        "dataset = AudioSetDataset(sample_rate=config.sample_rate)\n"
        "sampler = TrainSampler(indexes_hdf5_path=sys.argv[2], batch_size=4 * 2, random_seed=1234)\n"
        "loader = torch.utils.data.DataLoader(dataset, batch_sampler=sampler, collate_fn=collate_fn, num_workers=0)\n"
        "model = Cnn6(sample_rate=32000, window_size=1024, hop_size=320, mel_bins=64, fmin=50, fmax=14000,\n"
        "             classes_num=config.classes_num)\n"
        "mixup, loss_func = Mixup(mixup_alpha=1.), get_loss_func('clip_bce')\n"
        "optimizer, history = torch.optim.Adam(model.parameters(), lr=1e-3), {}\n"
        "for iteration, batch in enumerate(loader):\n"
        "    batch['mixup_lambda'] = mixup.get_lambda(batch_size=len(batch['waveform']))\n"
        "    for key in ('waveform', 'target', 'mixup_lambda'):\n"
        "        batch[key] = move_data_to_device(batch[key], 'cpu')\n"
        "    model.train()\n"
        "    output = model(batch['waveform'], batch['mixup_lambda'])\n"
        "    loss = loss_func(output, {'target': do_mixup(batch['target'], batch['mixup_lambda'])})\n"
        "    loss.backward(); optimizer.step(); optimizer.zero_grad()\n"
        "    append_to_dict(history, 'loss', float(loss))\n"
        "    if iteration == 1:\n"
        "        break\n"
        "evaluate_loader = torch.utils.data.DataLoader(dataset, batch_sampler=EvaluateSampler(\n"
        "    indexes_hdf5_path=sys.argv[2], batch_size=4), collate_fn=collate_fn, num_workers=0)\n"
        "statistics = Evaluator(model=model).evaluate(evaluate_loader)\n"
        "create_folder(sys.argv[3])\n"
        "container = StatisticsContainer(os.path.join(sys.argv[3], 'statistics.pkl'))\n"
        "container.append(iteration + 1, statistics, 'bal'); container.dump()\n"
        "print(output['clipwise_output'].shape[0], statistics['average_precision'].shape[0], len(history['loss']),\n"
        "      min(history['loss']) > 0)\n")
    proc = _run(code, index, str(tmp_path / "statistics"), cwd=str(tmp_path))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split()[-4:] == ["4", str(config.read_class_labels().classes_num), "2", "True"]
    from panns.utilities import read_statistics

    bal = read_statistics(str(tmp_path / "statistics" / "statistics.pkl"))["bal"]
    assert [s["iteration"] for s in bal] == [2] and np.isfinite(bal[0]["auc"][:4]).all()


def test_models_exports_the_official_building_blocks_by_name(tmp_path):
    """``from models import _ResNet`` and the other official pieces (``import *`` skips private names) work with
    ``pytorch/`` on the path, and the conv helpers build the official layers: a ResNet22 body assembled from them
    has the official parameter count."""
    code = (
        "import os, sys; sys.path.insert(0, os.path.join(sys.argv[1], 'pytorch'))\n"
        "from models import (init_layer, init_bn, ConvBlock, ConvBlock5x5, AttBlock, _resnet_conv3x3,\n"
        "    _resnet_conv1x1, _ResnetBasicBlock, _ResnetBottleneck, _ResNet, InvertedResidual, LeeNetConvBlock,\n"
        "    LeeNetConvBlock2, DaiNetResBlock, _resnet_conv3x1_wav1d, _resnet_conv1x1_wav1d, _ResnetBasicBlockWav1d,\n"
        "    _ResNetWav1d, ConvPreWavBlock, ResNet22)\n"
        "c = _resnet_conv3x3(4, 8); d = _resnet_conv3x1_wav1d(4, 8, 2)\n"
        "print(c.kernel_size, c.padding, c.bias is None, d.kernel_size, d.padding, d.dilation, d.bias is None,\n"
        "      _resnet_conv1x1(4, 8).kernel_size, _resnet_conv1x1_wav1d(4, 8).kernel_size)\n"
        "body = _ResNet(block=_ResnetBasicBlock, layers=[2, 2, 2, 2])\n"
        "m = ResNet22(32000, 1024, 320, 64, 50, 14000, 527)\n"
        "print(sum(p.numel() for p in body.parameters()) == sum(p.numel() for p in m.resnet.parameters()))\n")
    proc = _run(code, cwd=str(tmp_path))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split("\n")[:2] == ["(3, 3) (1, 1) True (3,) (2,) (2,) True (1, 1) (1,)", "True"]

"""Samplers and dataset (utils/data_generator.py): official semantics, exact resume, DDP sharding,
black list, empty classes, cached HDF5 handles, resampling."""
import os
import pickle

import h5py
import numpy as np
import pytest

from data_helpers import SR, build_workspace, make_dataset

from panns import create_indexes as ci
from panns import data_generator as dg
from panns.errors import PannsError

SAMPLERS = [dg.TrainSampler, dg.BalancedTrainSampler, dg.AlternateTrainSampler]


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    """Single-label clips of 5 classes; the label CSV has a 6th class with no clip at all."""
    from panns.demo.data import write_label_csv

    root = tmp_path_factory.mktemp("dg")
    info = make_dataset(str(root / "dataset"), extras=False, multi_label_fraction=0.0,
                        per_class={"balanced_train": 2, "eval": 2, "unbalanced_train": 3})
    write_label_csv(info["labels_csv"], 6)
    return build_workspace(info, str(root / "ws"))


def _class_of_rows(index_path):
    t = ci.read_index(index_path, load_targets=True)
    assert (t.targets.sum(1) == 1).all()
    return t, t.targets.argmax(1)


def _rows(sampler, n):
    return [sampler.batch_rows(k) for k in range(n)]


def _take(sampler, n):
    it = iter(sampler)
    return [[(m["hdf5_path"], m["index_in_hdf5"]) for m in next(it)] for _ in range(n)]


def test_int16_to_float32_matches_official_exhaustively():
    x = np.arange(-32768, 32768, dtype=np.int16)
    np.testing.assert_array_equal(dg.int16_to_float32(x), (x / 32767.0).astype(np.float32))


def test_balanced_sampler_statistics(ws):
    t, cls = _class_of_rows(ws["full"])
    s = dg.BalancedTrainSampler(ws["full"], batch_size=3, random_seed=7)
    assert list(s.samples_num_per_class) == [5, 5, 5, 5, 5, 0]  # class 5 has no clip: skipped, no crash
    slots = np.concatenate(_rows(s, 60))  # 180 class slots = 36 rounds of the 5 present classes
    classes = cls[slots]
    for r in range(len(slots) // 5):  # every round draws every present class exactly once
        assert sorted(classes[5 * r:5 * r + 5]) == [0, 1, 2, 3, 4]
    counts = np.bincount(classes, minlength=6)
    assert list(counts) == [36] * 5 + [0]
    for c in range(5):  # within a class: without replacement per class cycle of 5 clips
        draws = slots[classes == c]
        members = sorted(np.flatnonzero(cls == c))
        for cyc in range(len(draws) // 5):
            assert sorted(draws[5 * cyc:5 * cyc + 5]) == members
        assert not np.array_equal(draws[:5], draws[5:10])  # reshuffled each cycle


def test_train_sampler_epochs(ws):
    t, _ = _class_of_rows(ws["full"])
    s = dg.TrainSampler(ws["full"], batch_size=5, random_seed=3)
    n = len(t)
    assert n == 25
    flat = np.concatenate(_rows(s, 10))  # 50 positions = 2 epochs of 25 clips
    assert sorted(flat[:n]) == list(range(n)) and sorted(flat[n:]) == list(range(n))
    assert not np.array_equal(flat[:n], flat[n:])


def test_alternate_sampler_order(ws):
    _, cls = _class_of_rows(ws["full"])
    s = dg.AlternateTrainSampler(ws["full"], batch_size=5, random_seed=3)
    b = dg.BalancedTrainSampler(ws["full"], batch_size=5, random_seed=3)
    r = dg.TrainSampler(ws["full"], batch_size=5, random_seed=3)
    alt = _rows(s, 6)
    assert alt[0::2] == _rows(b, 3) and alt[1::2] == _rows(r, 3)  # balanced first, then random, ...


@pytest.mark.parametrize("cls", SAMPLERS)
def test_exact_resume(ws, cls):
    straight = _take(cls(ws["full"], batch_size=4, random_seed=11), 10)
    first = cls(ws["full"], batch_size=4, random_seed=11)
    part1 = _take(first, 5)
    state = first.state_dict()
    assert set(state) >= {"seed", "batches", "batch_size", "num_clips"} and state["batches"] == 5
    assert all(isinstance(v, (int, str)) for v in state.values())  # tiny, torch.load(weights_only) friendly
    second = cls(ws["full"], batch_size=4, random_seed=11)
    second.load_state_dict(pickle.loads(pickle.dumps(state)))
    assert part1 + _take(second, 5) == straight


def test_resume_from_batches_consumed(ws):
    """Loader prefetch: the sampler ran ahead, the loop consumed only 3 batches."""
    straight = _take(dg.BalancedTrainSampler(ws["full"], 4), 6)
    s = dg.BalancedTrainSampler(ws["full"], 4)
    _take(s, 6)
    state = s.state_dict(batches_consumed=3)
    r = dg.BalancedTrainSampler(ws["full"], 4)
    r.load_state_dict(state)
    assert _take(r, 3) == straight[3:]


def test_load_state_dict_validates(ws):
    state = dg.BalancedTrainSampler(ws["full"], 4, random_seed=1).state_dict(2)
    with pytest.raises(PannsError, match="batch size"):
        dg.BalancedTrainSampler(ws["full"], 8, random_seed=1).load_state_dict(state)
    with pytest.raises(PannsError, match="seed"):
        dg.BalancedTrainSampler(ws["full"], 4, random_seed=2).load_state_dict(state)
    with pytest.raises(PannsError, match="index file"):
        dg.BalancedTrainSampler(ws["bal_index"], 4, random_seed=1).load_state_dict(state)
    with pytest.raises(PannsError, match="TrainSampler"):
        dg.TrainSampler(ws["full"], 4, random_seed=1).load_state_dict(state)
    with pytest.raises(PannsError, match="official"):
        dg.TrainSampler(ws["full"], 4).load_state_dict({"indexes": np.arange(3), "pointer": 0})


@pytest.mark.parametrize("cls", SAMPLERS)
def test_ddp_ranks_split_one_global_stream(ws, cls):
    single = _rows(cls(ws["full"], 3, random_seed=5), 12)
    ranks = [_rows(cls(ws["full"], 3, random_seed=5, rank=r, world_size=3), 4) for r in range(3)]
    for k in range(12):
        assert ranks[k % 3][k // 3] == single[k]  # global batch k goes to rank k % 3
    if cls is dg.TrainSampler:  # within one epoch (25 clips > 8 batches of 3) ranks draw disjoint clips
        sets = [set(np.concatenate([single[k] for k in range(8) if k % 3 == r])) for r in range(3)]
        assert sum(len(x) for x in sets) == 24 and len(set.union(*sets)) == 24
    # Resume across a world-size change when the global position divides.
    s = cls(ws["full"], 3, random_seed=5, rank=0, world_size=2)
    state = s.state_dict(batches_consumed=3)  # 6 global batches
    one = cls(ws["full"], 3, random_seed=5)
    one.load_state_dict(state)
    assert one.batch_rows(one._batches) == single[6]
    four = cls(ws["full"], 3, random_seed=5, rank=0, world_size=4)
    with pytest.raises(PannsError, match="world_size"):
        four.load_state_dict(state)


def test_black_list_filtered_at_load(ws, tmp_path):
    t, cls = _class_of_rows(ws["full"])
    names = [t.audio_names[i].decode() for i in (0, 7)]
    csv_path = tmp_path / "bl.csv"
    csv_path.write_text(f"{names[0][1:-4]}\n")  # official format: bare YTID
    for sampler_cls in SAMPLERS:
        s = sampler_cls(ws["full"], 4, black_list_csv=str(csv_path), black_list=[names[1]])
        assert s.audios_num == len(t) - 2
        drawn = np.concatenate(_rows(s, 40))
        assert 0 not in drawn and 7 not in drawn
    state = dg.TrainSampler(ws["full"], 4).state_dict()
    with pytest.raises(PannsError, match="black list"):
        dg.TrainSampler(ws["full"], 4, black_list=[names[1]]).load_state_dict(state)


def test_black_list_in_a_spreadsheet_encoding(ws, tmp_path):
    """A black list saved by a spreadsheet (UTF-8 with a BOM, UTF-16, Latin-1 with an accented note) is read
    like a plain one: a UnicodeDecodeError/UnicodeEncodeError traceback before; a name that is not ASCII
    matches no clip instead of crashing."""
    t = ci.read_index(ws["full"])
    ytid = t.audio_names[0].decode()[1:-4]
    for encoding, extra in (("utf-8-sig", ""), ("utf-16", ""), ("latin-1", "café\n")):
        path = tmp_path / f"bl_{encoding}.csv"
        path.write_bytes(f"{ytid}\n{extra}".encode(encoding))
        assert ytid and dg.read_black_list(str(path)) == {f"Y{ytid}.wav"} | ({"Ycafé.wav"} if extra else set())
        assert dg.TrainSampler(ws["full"], 4, black_list_csv=str(path)).audios_num == len(t) - 1


def test_evaluate_sampler_sharding(ws):
    t = ci.read_index(ws["eval_index"], load_targets=True)
    ev = dg.EvaluateSampler(ws["eval_index"], batch_size=3)
    batches = list(ev)
    assert len(batches) == len(ev) == int(np.ceil(len(t) / 3))
    names = [m["audio_name"] for b in batches for m in b]
    assert names == [n.decode() for n in t.audio_names]
    np.testing.assert_array_equal(np.stack([m["target"] for b in batches for m in b]), t.targets.astype(np.float32))
    shards = [[m["audio_name"] for b in dg.EvaluateSampler(ws["eval_index"], 3, rank=r, world_size=3) for m in b]
              for r in range(3)]
    assert sum(shards, []) == names and all(len(s) in (3, 4) for s in shards)  # contiguous blocks, rank order


def test_dataset_reads_and_resamples(ws, tmp_path):
    sampler = dg.EvaluateSampler(ws["eval_index"], batch_size=4)
    metas = next(iter(sampler))
    d = dg.AudioSetDataset(sample_rate=SR)
    items = d.__getitems__(metas)
    with h5py.File(os.path.join(ws["waveforms"], "eval.h5"), "r") as hf:
        for m, it in zip(metas, items):
            i = m["index_in_hdf5"]
            assert it["audio_name"] == hf["audio_name"][i].decode() == m["audio_name"]
            assert it["waveform"].dtype == np.float32 and it["waveform"].shape == (SR,)
            np.testing.assert_array_equal(it["waveform"], (hf["waveform"][i] / 32767.0).astype(np.float32))
            np.testing.assert_array_equal(it["target"], hf["target"][i].astype(np.float32))
    batch = dg.collate_fn(items)
    assert batch["waveform"].shape == (4, SR) and batch["target"].shape == (4, 6)
    assert batch["audio_name"].shape == (4,)

    full = items[0]["waveform"]
    dec = dg.AudioSetDataset(sample_rate=16000, resample="decimate")[metas[0]]["waveform"]
    np.testing.assert_array_equal(dec, full[::2])  # official reproduction
    sox = dg.AudioSetDataset(sample_rate=16000)[metas[0]]["waveform"]
    assert sox.shape == (16000,) and sox.dtype == np.float32
    import soxr

    np.testing.assert_allclose(sox, soxr.resample(full, SR, 16000, quality="HQ"), atol=1e-6)
    with pytest.raises(PannsError, match="decimate"):
        dg.AudioSetDataset(sample_rate=22050, resample="decimate")[metas[0]]
    # Relative hdf5_path resolved against base_dir (the index folder).
    rel = {"hdf5_path": os.path.join("..", "waveforms", "eval.h5"), "index_in_hdf5": metas[0]["index_in_hdf5"]}
    it = dg.AudioSetDataset(base_dir=ws["indexes"])[rel]
    np.testing.assert_array_equal(it["waveform"], full)


def test_dataset_opens_each_file_once(ws, monkeypatch):
    opened = []
    real = h5py.File

    def counting(path, *a, **k):
        opened.append(path)
        return real(path, *a, **k)

    it = iter(dg.BalancedTrainSampler(ws["full"], 6))
    monkeypatch.setattr(dg.h5py, "File", counting)
    d = dg.AudioSetDataset()
    for _ in range(5):
        d.__getitems__(next(it))
    assert sorted(opened) == sorted(set(opened)) and len(opened) == 3  # one per waveform file
    clone = pickle.loads(pickle.dumps(d))  # what a spawned worker receives: no handles
    assert clone._files == {}
    d.close()


def test_dataloader_with_workers(ws, monkeypatch):
    """Workers hand batches over in recycled shared memory: values equal the in-process read, plain numpy
    arrays arrive, and batches still referenced are never overwritten when buffers are recycled."""
    import torch

    # This test holds batches on purpose, so every slot stays in use and each new array would first wait the
    # pool's 0.5 s for a release that cannot come (13 s of the test); the forked workers inherit the shorter wait.
    monkeypatch.setattr(dg._ShmPool, "WAIT_FULL_S", 0.02)

    sampler = dg.BalancedTrainSampler(ws["full"], batch_size=4)
    loader = torch.utils.data.DataLoader(dg.AudioSetDataset(), batch_sampler=sampler, collate_fn=dg.collate_fn,
                                         num_workers=2, worker_init_fn=dg.worker_init_fn)
    it = iter(loader)
    n = 3 * dg._ShmPool.SLOTS  # more batches than a worker has buffers
    kept = {}
    for k in range(n):
        b = next(it)
        assert type(b["waveform"]) is np.ndarray and b["waveform"].shape == (4, SR) and b["target"].shape == (4, 6)
        if k in (0, 1, 5):
            kept[k] = (b, b["waveform"].copy())
        elif k % 2:
            kept[k] = (b["waveform"][1:], b["waveform"][1:].copy())  # a view keeps its batch alive
    del it
    direct = dg.BalancedTrainSampler(ws["full"], batch_size=4)
    ref = dg.AudioSetDataset()
    for k, (arr, copy) in kept.items():
        arr = arr["waveform"] if isinstance(arr, dict) else arr
        np.testing.assert_array_equal(arr, copy)  # untouched by later batches
        rows = dg.collate_fn([ref[direct.index.meta(r)] for r in direct.batch_rows(k)])
        np.testing.assert_array_equal(copy, rows["waveform"][-len(copy):])
    t = ci.read_index(ws["full"])
    assert list(kept[0][0]["audio_name"]) == [t.audio_names[r].decode() for r in direct.batch_rows(0)]


def test_row_reader_layouts(tmp_path):
    """Direct reads equal h5py for contiguous, one-row-chunked, compressed and partly unwritten datasets."""
    rs = np.random.RandomState(0)
    data = (rs.randn(6, 50) * 1000).astype(np.int16)
    path = tmp_path / "r.h5"
    with h5py.File(path, "w") as hf:
        hf.create_dataset("contiguous", data=data)
        hf.create_dataset("chunked", data=data, chunks=(1, 50))
        hf.create_dataset("gzip", data=data, chunks=(2, 50), compression="gzip")
        part = hf.create_dataset("partial", shape=(6, 50), dtype=np.int16, chunks=(1, 50))
        part[2] = data[2]
        hf.create_dataset("names", data=[b"Ya.wav", b"Ybb.wav"], dtype="S20")
        hf.create_dataset("bools", data=rs.rand(6, 7) > 0.5)
    fd = os.open(path, os.O_RDONLY)
    try:
        with h5py.File(path, "r") as hf:
            readers = {k: dg._RowReader(hf[k], fd) for k in hf}
            assert readers["contiguous"].base is not None and readers["chunked"].offsets is not None
            assert readers["gzip"].base is None and readers["gzip"].offsets is None
            for key, r in readers.items():
                for i in range(hf[key].shape[0]):
                    np.testing.assert_array_equal(r.read(i), hf[key][i], err_msg=f"{key}[{i}]")
            assert dg._decode_name(readers["names"].read(1)) == "Ybb.wav"
            with pytest.raises(PannsError, match="out of range"):
                readers["chunked"].read(6)
    finally:
        os.close(fd)


def test_int16_batches_reach_the_model_as_identical_floats(ws):
    """The GPU path (int16 rows, bool targets, made float by to_device) and the float path (workers divide)
    give bit-identical float32 waveforms and targets; every int16 value converts exactly."""
    import torch

    allv = np.arange(-32768, 32768, dtype=np.int16)
    out = dg.to_device({"waveform": allv[None]}, torch.device("cpu"))["waveform"]
    assert out.dtype == torch.float32
    np.testing.assert_array_equal(out.numpy()[0], (allv / 32767.0).astype(np.float32))

    metas = next(iter(dg.EvaluateSampler(ws["eval_index"], batch_size=4)))
    raw = dg.collate_fn(dg.AudioSetDataset(sample_rate=SR, raw=True).__getitems__(metas))
    flt = dg.collate_fn(dg.AudioSetDataset(sample_rate=SR).__getitems__(metas))
    assert raw["waveform"].dtype == np.int16 and raw["target"].dtype == np.bool_
    assert flt["waveform"].dtype == np.float32
    a, b = dg.to_device(raw, torch.device("cpu")), dg.to_device(flt, torch.device("cpu"))
    for key in ("waveform", "target"):
        assert a[key].dtype == b[key].dtype == torch.float32 and torch.equal(a[key], b[key]), key
    assert list(a["audio_name"]) == list(b["audio_name"])


@pytest.mark.parametrize("raw", [True, False])
def test_train_loader_recycles_shared_memory(ws, tmp_path, monkeypatch, raw):
    """Workers reuse their shared-memory buffers once the main process has dropped a batch: the number of
    buffers a worker ever allocates stays bounded however many batches pass (it used to grow by one per
    batch once the first few were stuck)."""
    import torch

    log = tmp_path / "alloc.log"
    real = dg._ShmPool._shared

    def counting(self, nbytes):
        with open(log, "a") as f:
            f.write(f"{os.getpid()} {nbytes}\n")
        return real(self, nbytes)

    monkeypatch.setattr(dg._ShmPool, "_shared", counting)  # workers are forked: they inherit the patch
    sampler = dg.BalancedTrainSampler(ws["full"], batch_size=4)
    loader = dg.train_loader(SR, sampler, 1, torch.device("cpu"), seed=0, raw=raw)
    it = iter(loader)
    for _ in range(4 * dg._ShmPool.SLOTS):
        b = dg.to_device(next(it), torch.device("cpu"))
        assert b["waveform"].dtype == torch.float32 and b["waveform"].shape == (4, SR)
    del it, b
    allocs = log.read_text().split("\n")[:-1]
    assert len(allocs) <= 1 + dg._ShmPool.SLOTS, f"{len(allocs)} shared-memory allocations for 32 batches"

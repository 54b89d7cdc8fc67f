"""Make a CPU-only PyTorch look like a CUDA box to every Python process started with this folder on
PYTHONPATH and ``PANNS_FAKE_CUDA=<GPU count>`` set (tests of GPU start-up paths in subprocesses).

Faked the way a real box presents itself: ``is_available``/``device_count``/``get_device_capability``/
``get_device_name``, and a ``set_device`` that rejects an unindexed or out-of-range device as CUDA does.
Real CUDA work cannot happen here, so the first move of a model to a CUDA device records it and ends the
process with status 42: "start-up reached the GPU". Calls are appended to ``PANNS_FAKE_CUDA_LOG``.
"""
import os
import sys

if os.environ.get("PANNS_FAKE_CUDA"):
    import torch

    _count = int(os.environ["PANNS_FAKE_CUDA"])
    _cap = tuple(int(x) for x in os.environ.get("PANNS_FAKE_CUDA_CAP", "9.0").split("."))
    _current = [0]

    def _record(line: str) -> None:
        path = os.environ.get("PANNS_FAKE_CUDA_LOG")
        if path:
            with open(path, "a") as f:
                f.write(f"{os.getpid()} {line}\n")

    def _set_device(device) -> None:
        device = torch.device("cuda", device) if isinstance(device, int) else torch.device(device)
        if device.index is None:
            raise ValueError(f"Expected a torch.device with a specified index or an integer, but got:{device}")
        if device.index >= _count:
            raise RuntimeError("CUDA error: invalid device ordinal")
        _current[0] = device.index
        _record(f"set_device {device.index}")

    torch.cuda.is_available = lambda: True
    torch.cuda.device_count = lambda: _count
    torch.cuda.set_device = _set_device
    torch.cuda.current_device = lambda: _current[0]
    torch.cuda.get_device_capability = lambda device=None: _cap
    torch.cuda.get_device_name = lambda device=None: "Fake GPU"
    torch.cuda.is_bf16_supported = lambda *a, **k: True  # what V100/T4 report too (emulated bf16)

    _module_to = torch.nn.Module.to

    def _to(self, *args, **kwargs):
        device = torch._C._nn._parse_to(*args, **kwargs)[0]
        if device is not None and device.type == "cuda":
            _record(f"module.to {device}")
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(42)
        return _module_to(self, *args, **kwargs)

    torch.nn.Module.to = _to

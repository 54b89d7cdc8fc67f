"""The training core of ``main.py train`` (AudioSet) and ``finetune_template.py train`` (fine-tuning).

:class:`Trainer` holds what every training run has: the model and its wrappers (DDP, torch.compile),
the optimizer (the official Adam with amsgrad, over the parameters that require gradients), the
GradScaler, Mixup, the training batch stream and its resumable sampler, the loop with its named
conditions (:meth:`Trainer.should_eval`, :meth:`Trainer.should_save`), ``training.config.train_step``, the
log and progress lines, the checkpoint and the exact resume from one.

A checkpoint holds ``config`` (the run's settings and the model config: type, front end, labels),
``model``, ``optimizer``, ``iteration``, ``sampler`` (its ``state_dict(batches_consumed)``: the batches
the loop really used, so batches prefetched by loader workers are not skipped), ``rank_states`` (torch,
numpy, Python and Mixup RNG states of every rank) and ``scaler`` with fp16, plus what the task adds.

What differs between the entry points is a :class:`Task`: its data (sampler and loader), its
evaluation, where checkpoints go and what else they hold.
"""
from __future__ import annotations

import importlib.util
import logging
import os
import signal
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterable, List, Optional, Protocol, Tuple, Union

import numpy as np
import torch

from panns import amp
from panns import checkpoint
from panns import data_generator as dg
from panns import models
from panns.training import config as tl
from panns.devices import DistInfo
from panns.errors import CheckpointError, Interrupted, PannsError
from panns.frontend import FRONTEND_KEYS
from panns.utilities import Mixup, Progress

logger = logging.getLogger("main")


@dataclass
class CoreSettings:
    """What the loop needs, whichever entry point runs it."""

    iterations: int                       # stop after this many optimizer steps
    eval_every: int                       # evaluate every N steps (and at the last)
    save_every: int                       # checkpoint every N steps (and at the last)
    log_every: int                        # a loss/speed line every N steps (0: none)
    learning_rate: float
    precision: str                        # resolved: fp32 | bf16 | fp16
    seed: int
    mixup_alpha: Optional[float] = None   # None: no mixup
    grad_clip: float = 0.0                # 0: off (official)
    compile: Union[bool, str] = False     # True/'on', False/'off', or 'auto' (see resolve_compile)
    compile_backend: str = "inductor"     # torch.compile backend ('eager' in tests: same ops, graph capture only)
    sync_bn: bool = False                 # resolved by the entry point (training.config.resolve_sync_bn)
    at_start: bool = True                 # also evaluate and save before the first step (main.py)
    # Run config keys a resume must not change: the checkpoint's sampler, Mixup and RNG states (and the data
    # split) were made with them, so a new value would be silently ignored or mixed with the old one.
    fixed_on_resume: Tuple[str, ...] = ("seed", "batch_size", "augmentation")


@dataclass
class Meter:
    """Sums over a window of steps: losses (tensors, synchronised only when read), data wait, time."""

    losses: List[torch.Tensor] = field(default_factory=list)
    wait: float = 0.0
    start: float = field(default_factory=lambda: time.perf_counter())   # looked up at each call (tests' clocks)

    def update(self, scalars: Dict[str, torch.Tensor], wait: float) -> None:
        self.losses.append(scalars["loss"])
        self.wait += wait

    def mean_loss(self) -> float:
        return float(torch.stack(self.losses).float().mean()) if self.losses else float("nan")

    end: Optional[float] = None   # set by stop(): the window's time no longer grows

    def elapsed(self) -> float:
        end = time.perf_counter() if self.end is None else self.end
        return max(end - self.start, 1e-9)

    def stop(self) -> None:
        """End the window now (an evaluation starts: its time is not training time)."""
        self.end = time.perf_counter()

    def exclude(self, seconds: float) -> None:
        """Leave ``seconds`` spent on something else (a checkpoint write) out of the window's time."""
        self.start += seconds

    def reset(self) -> None:
        self.losses, self.wait, self.start, self.end = [], 0.0, time.perf_counter(), None


def resolve_compile(setting: Union[bool, str], device: torch.device) -> bool:
    """Whether to torch.compile the training step: 'auto' means on CUDA with Triton installed (inductor's GPU
    code generator), eager elsewhere (a CPU compile pays minutes of C++ builds for little)."""
    if isinstance(setting, bool):
        return setting
    if setting == "auto":
        return device.type == "cuda" and importlib.util.find_spec("triton") is not None
    return setting == "on"


def external_spec_augment(model: torch.nn.Module, on: bool = True) -> int:
    """Switch the SpecAugment modules of ``model`` to external draws (the trainer draws each step's stripes
    before the forward: a compiled step stays one graph) or back; returns how many it switched."""
    found = 0
    for m in model.modules():
        if hasattr(m, "staged") and hasattr(m, "external"):
            m.external = on
            found += 1
    return found


def prepare_model(model: torch.nn.Module, device: torch.device) -> None:
    """Set ``model`` (already on ``device``) up as a training run there uses it - the trainer and the GPU check's
    mirrors of its step call this one function. On CUDA: channels_last (cuDNN's tensor-core convolutions work in
    NHWC: without it every bf16/fp16 conv transposes its input and output; weights and state_dict keep their values)
    and the cuFFT spectrogram in the run's evaluations too (``models.fft_in_evaluation``: the IEEE fp32 STFT conv
    was the largest part of an evaluation round). Then the cuFFT decision, made eagerly (``models.prepare_fft``;
    make it again after loading other weights)."""
    if device.type == "cuda":
        model.to(memory_format=torch.channels_last)
        models.fft_in_evaluation(model, True)
    models.prepare_fft(model)


class StopSignals:
    """Ctrl-C (SIGINT) and SIGTERM (a cluster's pre-emption or time limit, ``kill``, torchrun passing a signal on)
    ask a training run to stop at the next step boundary with a checkpoint, instead of losing everything since the
    last one (the official cadence saves every 100,000 iterations). The handler only records the request and says so
    on stderr; the loop acts on it. Another Ctrl-C more than ``grace_s`` later stops at once, without saving (the
    last checkpoint stays); signals within ``grace_s`` of the first are the same request (under torchrun a worker
    gets the terminal's Ctrl-C and then the agent's copy of it). Handlers are installed only in the main thread
    (Python allows no other) and put back on exit."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, who: str = "", grace_s: float = 2.0):
        self.requested: Optional[int] = None   # the first signal's number
        self.who, self.grace_s = who, grace_s
        self._first = 0.0
        self._previous: Dict[int, Any] = {}

    def __enter__(self) -> "StopSignals":
        if threading.current_thread() is threading.main_thread():
            for s in self.SIGNALS:
                self._previous[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous = {}

    def _handle(self, signum: int, frame: Any) -> None:
        now = time.monotonic()
        if self.requested is None:
            self.requested, self._first = signum, now
            self._say(f"\n{self.who}{signal.Signals(signum).name}: stopping after this step with a checkpoint "
                      "(Ctrl-C again to stop at once without one)\n")
        elif signum == signal.SIGINT and now - self._first > self.grace_s:
            raise KeyboardInterrupt

    def _say(self, text: str) -> None:
        # os.write, not print or logging: a handler can run while the main thread is inside a write to
        # stderr (the progress bar), and re-entering a buffered stream raises.
        try:
            os.write(2, text.encode())
        except OSError:
            pass


class Task(Protocol):
    """What an entry point supplies to the :class:`Trainer`."""

    train_sampler: dg.ResumableBatchSampler
    train_loader: Iterable[Dict[str, Any]]

    def evaluate(self, iteration: int, trained: Meter) -> None:
        """Evaluate the model; ``trained``: the steps since the last evaluation."""

    def checkpoint_extra(self) -> Dict[str, Any]:
        """Entries the task adds to every checkpoint (e.g. the latest scores)."""

    def write_checkpoint(self, ckpt: Dict[str, Any], iteration: int) -> str:
        """Write ``ckpt`` where the task keeps checkpoints; returns its path."""

    def load_extra(self, ckpt: Dict[str, Any], iteration: int) -> None:
        """Restore the task's own state from a checkpoint it wrote (resume)."""

    def close_loaders(self) -> None:
        """Drop the task's loaders (their worker processes end with them)."""

    def resume_hint(self, saved_iteration: Optional[int]) -> str:
        """How to continue after a stop, given the last saved iteration (None: nothing saved), e.g.
        're-run with --resume_iteration 30'."""


class Trainer:
    """One training run: model, optimizer, scaler, Mixup, batch stream, RNG state, loop, checkpoints.

    ``raw_model`` is on ``info.device`` and seeded alike on every rank; ``config`` is the checkpoint's
    'config' entry (``model_config`` included); ``model_config`` (checkpoint.ModelConfig as a dict) is
    what a resumed checkpoint must match; ``clip_samples`` is the training input length (DDP's search
    for parameters without gradients runs one forward of it); ``global_batch`` examples per step."""

    def __init__(self, settings: CoreSettings, info: DistInfo, raw_model: torch.nn.Module,
                 loss_func: Callable, task: Task, model_config: Dict[str, Any], config: Dict[str, Any],
                 clip_samples: int, global_batch: int, resume_from: Optional[str] = None):
        self.s, self.info, self.task = settings, info, task
        self.raw_model, self.loss_func = raw_model, loss_func
        self.model_config, self.global_batch = model_config, global_batch
        self.config = {**config, **model_config, "precision": settings.precision, "world_size": info.world_size}
        cuda = info.device.type == "cuda"
        self.compiled = resolve_compile(settings.compile, info.device)
        prepare_model(raw_model, info.device)
        # Optimizer of the official recipe (no schedule, no weight decay); a frozen base is left out. On CUDA
        # the fused kernel (one launch for all parameters, same update rule); the CPU keeps the reference loop.
        params = [p for p in raw_model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.Adam(params, lr=settings.learning_rate, betas=(0.9, 0.999), eps=1e-08,
                                          weight_decay=0.0, amsgrad=True, **({"fused": True} if cuda else {}))
        self.scaler = torch.amp.GradScaler(info.device.type, enabled=settings.precision == "fp16")
        self.model = self._wrap(raw_model, clip_samples)
        logger.info("Training step: torch.compile %s (--compile %s); %s; Adam (amsgrad) %s", "on" if self.compiled
                    else "off", settings.compile if isinstance(settings.compile, str) else
                    ("on" if settings.compile else "off"), "channels_last" if cuda else "default memory layout",
                    "fused" if cuda else "for-each")
        self.mixup = Mixup(mixup_alpha=settings.mixup_alpha, random_seed=settings.seed + info.rank) \
            if settings.mixup_alpha is not None else None
        self.batches_consumed = 0   # batches the loop took (the sampler runs ahead by the prefetch)
        self._batches = None
        self._cuda_batches = dg.CudaBatches(info.device) if cuda else None
        self._peak_reset = False
        self.iteration = 0
        self.last_saved: Optional[str] = None          # path of the last checkpoint (rank 0; resume: every rank)
        self.saved_iteration: Optional[int] = None     # its iteration, on every rank
        self._unchecked: List[torch.Tensor] = []       # losses of the steps since the last finiteness check
        # Training randomness (SpecAugment, dropout) differs per rank; the weights are already equal.
        tl.seed_everything(settings.seed + info.rank)
        if resume_from:
            self._resume(resume_from)
        self.start = self.iteration
        self.meter = Meter()     # since the last log line
        # The last evaluation's wall time (the log lines' ETA counts those to come); None: none timed yet (resumed)
        self.eval_seconds: Optional[float] = None
        self.trained = Meter()   # since the last evaluation
        self.progress = Progress(settings.iterations, "iteration", enabled=info.is_main, every_s=60.0, unit="it",
                                 start=self.iteration)
        self.signals = StopSignals(who=f"rank {info.rank}: " if info.distributed else "")
        self._agreed_stop: Optional[Tuple[int, int]] = None   # distributed: a stop all ranks know of (check_losses)

    def _wrap(self, raw: torch.nn.Module, clip_samples: int) -> torch.nn.Module:
        """DDP (with SyncBatchNorm if asked), then torch.compile of the DDP module - the order PyTorch
        documents, so that DDP's graph-aware bucketing sees the compiled graphs."""
        model = raw
        if self.info.distributed:
            # DDP's unused-parameter search costs a graph walk every step: only ask for it where the
            # model really has parameters outside the training loss's graph (e.g. Wavegram_Cnn14's bn0).
            unused = tl.unused_parameters(raw, clip_samples)
            if unused:
                logger.info("%d parameter tensors get no gradient (%s...): DDP find_unused_parameters on",
                            len(unused), ", ".join(unused[:3]))
            if self.s.sync_bn:
                model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
            model = torch.nn.parallel.DistributedDataParallel(
                model, device_ids=[self.info.device.index] if self.info.device.type == "cuda" else None,
                find_unused_parameters=bool(unused))
        if self.compiled:
            # One graph per step: SpecAugment's stripes are drawn before the forward (external draws) and the
            # front end's IEEE region is a no-op while the run pins IEEE fp32 (see run()).
            external_spec_augment(raw, True)
            model = torch.compile(model, backend=self.s.compile_backend)
        return model

    # ------------------------------------------------------------------------------------- loop
    def _new_point(self, it: int) -> bool:
        """Not the point the run resumed from (its evaluation and checkpoint exist already); 0 only
        when the task evaluates and saves before the first step."""
        return it > self.start or (it == 0 and self.s.at_start)

    def should_eval(self, it: int) -> bool:
        return (it % self.s.eval_every == 0 or it == self.s.iterations) and self._new_point(it)

    def should_save(self, it: int) -> bool:
        return (it % self.s.save_every == 0 or it == self.s.iterations) and self._new_point(it)

    def run(self) -> int:
        """Train up to ``iterations`` steps, evaluating and saving on the way; returns the last iteration.

        On CUDA (and when compiling) the run holds IEEE fp32 for the whole process (``amp.pin_ieee_fp32``):
        ``--precision fp32`` then means fp32 everywhere, and the front end needs no switching inside the step."""
        pin = self.info.device.type == "cuda" or self.compiled
        # The cuFFT decision again, now that the weights are final (a resume loaded them after prepare_model): a
        # compiled step reads the answer instead of checking the weights (a graph break).
        models.prepare_fft(self.raw_model)
        if pin:
            amp.pin_ieee_fp32()
        try:
            with self.signals:
                return self._loop()
        except Interrupted:
            raise
        except KeyboardInterrupt:   # a second Ctrl-C: stopped at once, mid-step
            if self.info.is_main:   # where to continue from, in the log and on the console
                logger.warning("Interrupted at iteration %d; %s", self.iteration, self.stop_note())
            raise Interrupted(signal.SIGINT) from None
        finally:
            if pin:
                amp.unpin_ieee_fp32()

    def _loop(self) -> int:
        it = self.iteration
        while True:
            if self.should_eval(it) or self.should_save(it):
                self.check_losses(it)   # no evaluation or checkpoint of weights a NaN step has spoilt
            if self.should_eval(it):
                self.evaluate(it)
            if self.should_save(it):
                self.save(it)
            if it >= self.s.iterations:
                break
            stop = self.stop_requested(it)
            if stop is not None:
                self.stop(it, stop)
            batch, wait = self.next_batch()
            scalars = self.step(batch)
            it += 1
            self.iteration = it
            self.meter.update(scalars, wait)
            self.trained.update(scalars, wait)
            self._unchecked.append(scalars["loss"])
            if self.s.log_every and it % self.s.log_every == 0:
                self.check_losses(it)
                self.log_progress(it)
            self.progress.to(it)
        return it

    def stop_requested(self, it: int) -> Optional[Tuple[int, int]]:
        """(signal number, rank that got it) when the run is to stop before step ``it + 1``, else None.

        One process reads its own flag at every step boundary. Ranks of a distributed run may see a signal at
        different steps (or only one rank gets it), so they agree where :meth:`check_losses` gathers anyway (log
        lines, evaluations, checkpoints): there every rank learns of any rank's signal, and all stop at the same
        iteration, without another collective."""
        if self.info.distributed:
            return self._agreed_stop
        mine = self.signals.requested
        return None if mine is None else (mine, self.info.rank)

    def stop(self, it: int, request: Tuple[int, int]) -> None:
        """Stop at iteration ``it`` on a signal: save a checkpoint there (unless one was just saved), log where to
        continue from, close the loaders and raise :class:`Interrupted` (exit status 128 + the signal)."""
        signum, rank = request
        self.check_losses(it)   # no checkpoint of weights a NaN step has spoilt
        if self.saved_iteration != it:
            self.save(it)
        self.progress.close()
        if self.info.is_main:
            who = f" (on rank {rank})" if self.info.distributed else ""
            saved = f"saved {self.last_saved}; " if it else ""   # iteration 0: the hint says nothing was trained
            logger.warning("Stopped by %s%s at iteration %d: %s%s", signal.Signals(signum).name, who, it, saved,
                           self.task.resume_hint(it))
        self._batches = None
        self.task.close_loaders()
        raise Interrupted(signum)

    def stop_note(self) -> str:
        """The last checkpoint and how to continue from it (the task's resume flag), for a stopped run."""
        n = self.saved_iteration
        if n is None:
            return f"no checkpoint was saved; {self.task.resume_hint(None)}"
        lost = f" (the {self.iteration - n} iteration(s) after it are not saved)" if self.iteration > n else ""
        return f"the last checkpoint is {self.last_saved} (iteration {n}){lost}; {self.task.resume_hint(n)}"

    def check_losses(self, it: int) -> None:
        """Stop with one line on a non-finite training loss among the steps up to ``it`` since the last check.

        Called only where the loop reads the loss or waits for the device anyway (log lines, evaluations,
        checkpoints): a check every step would add a host sync per step on CUDA. Without fp16 loss scaling a
        NaN loss has already turned the weights into NaN, so nothing after it is evaluated or saved; with it,
        the GradScaler skips such steps, and the run goes on (one warning) while the weights stay finite."""
        losses, self._unchecked = self._unchecked, []
        first: Optional[Tuple[int, float]] = None
        if losses:
            stacked = torch.stack(losses).float()
            bad = torch.nonzero(~torch.isfinite(stacked)).flatten()
            if len(bad):
                first = (it - len(losses) + 1 + int(bad[0]), float(stacked[bad[0]]))
        if self.info.distributed:   # every rank stops together (the others would wait in the next collective);
            # the ranks' stop signals travel in the same collective (see stop_requested)
            gathered = tl.all_gather_object(self.info, (first, self.signals.requested))
            found = [f for f, _ in gathered if f is not None]
            first = min(found) if found else None
            self._agreed_stop = next(((s, rank) for rank, (_, s) in enumerate(gathered) if s is not None), None)
        if first is None:
            return
        bad_it, value = first
        if self.scaler.is_enabled() and all(bool(torch.isfinite(p).all()) for p in self.raw_model.parameters()):
            logger.warning("non-finite training loss (%s) at iteration %d: the fp16 GradScaler skipped the step",
                           value, bad_it)
            return
        raise PannsError(f"training loss is {value} at iteration {bad_it}: the weights are no longer usable, so "
                         f"nothing after it was evaluated or saved; {self.stop_note()}, with a lower --learning_rate "
                         f"(now {self.s.learning_rate:g}) or a --grad_clip (or check the data)")

    # ------------------------------------------------------------------------------------ steps
    def step(self, batch: Dict[str, Any]) -> Dict[str, torch.Tensor]:
        """One ``train_step`` on a batch already on the device. SpecAugment's stripes are drawn here, right
        before the forward, when the model takes external draws (compiled). A first compiled step that fails
        to compile falls back to eager with one log line (the RNG states are put back first, so the eager step
        draws what the compiled one would have)."""
        lam = self.mixup_lambda(batch)
        first = self.compiled and self.iteration == self.start
        saved = (torch.get_rng_state(), torch.cuda.get_rng_state(self.info.device)
                 if self.info.device.type == "cuda" else None) if first else None
        self._stage_spec_augment(batch, lam is not None)
        try:
            return tl.train_step(self.model, batch, self.optimizer, self.loss_func, precision=self.s.precision,
                                 mixup_lambda=lam, scaler=self.scaler, grad_clip=self.s.grad_clip)
        except Exception as e:   # noqa: BLE001 - any compiler failure; the eager retry raises real errors again
            if not first:
                raise
            logger.warning("torch.compile failed (%s: %s); training eagerly", type(e).__name__,
                           " ".join(str(e).split())[:200])
            self.compiled = False
            self.model = self._wrap_eager()
            torch.set_rng_state(saved[0])
            if saved[1] is not None:
                torch.cuda.set_rng_state(saved[1], self.info.device)
            return tl.train_step(self.model, batch, self.optimizer, self.loss_func, precision=self.s.precision,
                                 mixup_lambda=lam, scaler=self.scaler, grad_clip=self.s.grad_clip)

    def _wrap_eager(self) -> torch.nn.Module:
        """The model without torch.compile (after a failed compile): SpecAugment draws in its forward again."""
        external_spec_augment(self.raw_model, False)
        model = self.model
        return getattr(model, "_orig_mod", model)

    def _stage_spec_augment(self, batch: Dict[str, Any], mixup: bool) -> None:
        stage = getattr(self.raw_model, "stage_spec_augment", None)
        if self.compiled and stage is not None:
            waveform = batch["waveform"]
            stage(waveform.shape[0], waveform.shape[-1], mixup)

    def next_batch(self) -> Tuple[Dict[str, Any], float]:
        """(batch on the device, seconds spent waiting for it). On CUDA the batch was copied during the previous
        step, and the one after it starts copying now (not past the last step, so the loader is read exactly as
        far as the loop goes)."""
        t0 = time.perf_counter()
        if self._batches is None:   # after a resume has set the sampler's position
            self._batches = iter(self.task.train_loader)
        cb = self._cuda_batches
        if cb is None:
            batch = dg.to_device(next(self._batches), self.info.device)
        else:
            if cb.ahead is None:
                cb.put(next(self._batches))
            batch = cb.take()
            if self.iteration + 1 < self.s.iterations:
                cb.put(next(self._batches))
        self.batches_consumed += 1
        return batch, time.perf_counter() - t0

    def mixup_lambda(self, batch: Dict[str, Any]) -> Optional[torch.Tensor]:
        """(2B,) mixing weights of adjacent pairs, or None without mixup. Drawn on the CPU (the official Mixup
        RNG) and sent from page-locked memory without waiting for the GPU."""
        if self.mixup is None:
            return None
        lam = torch.from_numpy(np.asarray(self.mixup.get_lambda(batch_size=len(batch["waveform"])), dtype=np.float32))
        if self.info.device.type == "cuda":
            return lam.pin_memory().to(self.info.device, non_blocking=True)
        return lam

    def evaluate(self, iteration: int) -> None:
        # The task reports the training time since the last evaluation beside its own time: stop the window
        # first, or "train time" would hold the evaluation too (at iteration 0 it equalled "validate time").
        self.trained.stop()
        t0 = time.perf_counter()
        tl.broadcast_buffers(self.info, self.raw_model)
        self.task.evaluate(iteration, self.trained)
        self.eval_seconds = time.perf_counter() - t0
        self.trained.reset()
        self.meter.reset()

    def save(self, iteration: int) -> None:
        """Checkpoint (rank 0 writes; every rank contributes its RNG/Mixup state). The time it takes is left out
        of the next log line's speed (a Cnn14 checkpoint is ~1.2 GB: seconds of writing, not training)."""
        t0 = time.perf_counter()
        mine = {"rng": tl.rng_state(self.info.device),
                "mixup": self.mixup.state_dict() if self.mixup is not None else None}
        states = tl.all_gather_object(self.info, mine)
        if self.info.is_main:
            # Every rank consumes the same number of batches, so rank 0's sampler state (batches consumed
            # x world size = global position) restores every rank's stream; stored once.
            sampler = self.task.train_sampler.state_dict(batches_consumed=self.batches_consumed)
            ckpt = {"iteration": iteration, "model": self.raw_model.state_dict(), "sampler": sampler,
                    "optimizer": self.optimizer.state_dict(), "config": self.config, "rank_states": states,
                    **self.task.checkpoint_extra()}
            if self.scaler.is_enabled():
                ckpt["scaler"] = self.scaler.state_dict()
            self.last_saved = self.task.write_checkpoint(ckpt, iteration)
        self.saved_iteration = iteration
        tl.barrier(self.info)
        self.meter.exclude(time.perf_counter() - t0)

    def log_progress(self, iteration: int) -> None:
        m = self.meter
        loss = tl.mean_over_ranks(self.info, m.mean_loss())
        elapsed, steps = m.elapsed(), len(m.losses)
        memory = ""
        if self.info.device.type == "cuda":
            # The first window holds the one-off peaks (cuDNN trying algorithms with large workspaces, compiling):
            # say so, and report later windows' own peaks - what the run needs.
            memory = f", peak memory {torch.cuda.max_memory_allocated(self.info.device) / 2**30:.1f} GiB" + \
                ("" if self._peak_reset else " (start-up: cuDNN autotuning, compilation)")
            torch.cuda.reset_peak_memory_stats(self.info.device)
            self._peak_reset = True
        logger.info("iteration: %d, loss: %.4f, %.2f it/s, %.1f examples/s, data wait %.0f%%%s%s", iteration, loss,
                    steps / elapsed, steps * self.global_batch / elapsed, 100.0 * m.wait / elapsed, memory,
                    self.eta(iteration, elapsed / steps))
        m.reset()
        self.progress.note()

    def eta(self, iteration: int, step_seconds: float) -> str:
        """', ETA <time> to iteration <N>' for a log line: the steps left at ``step_seconds`` each plus the
        evaluations left at the last one's duration (checkpoints not counted; before any evaluation was timed, the
        line names how many are left instead); '' at the last iteration."""
        left, every = self.s.iterations - iteration, self.s.eval_every
        if left <= 0:
            return ""
        evals = self.s.iterations // every - iteration // every + (1 if self.s.iterations % every else 0)
        untimed = self.eval_seconds is None
        seconds = left * step_seconds + (0.0 if self.eval_seconds is None else evals * self.eval_seconds)
        return f", ETA {format_duration(seconds)} to iteration {self.s.iterations}" + \
            (f" plus {evals} evaluation{'s' if evals != 1 else ''}" if untimed and evals else "")

    def finish(self) -> None:
        """Close the progress bar and the loaders; with DDP give every rank rank 0's buffers and check the
        weights agree."""
        self.progress.close()
        # Stop the loader workers now: the task and the trainer refer to each other, so left to the garbage
        # collector the iterators would shut their workers down at some later moment, each waiting out
        # DataLoader's 5-s join timeout there.
        self._batches = None
        self.task.close_loaders()
        models.fft_in_evaluation(self.raw_model, False)   # the trained module, used afterwards, infers officially
        tl.broadcast_buffers(self.info, self.raw_model)
        if self.info.distributed:
            digests = tl.all_gather_object(self.info, tl.state_digest(self.raw_model))
            if len(set(digests)) == 1:
                logger.info("Final weights identical on all %d processes (digest %s)", self.info.world_size, digests[0])
            else:
                logger.warning("Final weights differ across processes: %s", digests)
        logger.info("Finished at iteration %d", self.iteration)

    # ----------------------------------------------------------------------------------- resume
    def _resume(self, path: str) -> None:
        """Continue exactly from the checkpoint at ``path`` (on rank 0's disk; see :func:`read_checkpoint`):
        weights, optimizer, scaler, sampler position, this rank's RNG and Mixup states, the task's own state."""
        logger.info("Loading checkpoint %s", path)
        ckpt = read_checkpoint(self.info, path)
        saved = ckpt.get("config") or {}
        for key in ("model_type", "classes_num") + FRONTEND_KEYS:
            if key in saved and saved[key] != self.model_config[key]:
                raise CheckpointError(f"{path} was trained with {key}={saved[key]}, this run has "
                                      f"{key}={self.model_config[key]}")
        changed = [k for k in self.s.fixed_on_resume if k in saved and saved[k] != self.config.get(k)]
        if changed:   # before the sampler's own check, whose batch size counts mixup's doubled clips
            raise CheckpointError(f"{path} was saved by a run with {', '.join(f'--{k} {saved[k]}' for k in changed)}; "
                                  f"this run has {', '.join(f'--{k} {self.config.get(k)}' for k in changed)}: resume "
                                  "with the checkpoint's settings, or start a new run")
        # Every other setting may change on resume (a lower learning rate, another precision, more steps), but
        # never silently: one line names what differs from the run that saved the checkpoint.
        quiet = ("resume_iteration", "overwrite", "learning_rate")   # the learning rate has a line of its own
        differ = [f"{k} {saved[k]} -> {self.config[k]}" for k in self.config
                  if k in saved and k not in quiet and saved[k] != self.config[k]]
        if differ:
            logger.info("Resuming with settings that differ from %s's run: %s", os.path.basename(path),
                        ", ".join(differ))
        model_sd = ckpt["model"]
        if isinstance(ckpt.get("base_checkpoint"), dict):   # fine-tuning stores a frozen base by reference (checked
            model_sd = {**self.raw_model.state_dict(), **model_sd}   # by the task): the model holds it already
        try:
            self.raw_model.load_state_dict(model_sd)
        except RuntimeError as e:
            raise CheckpointError(f"{path}: model weights do not fit {self.model_config['model_type']}: "
                                  f"{str(e).splitlines()[0]}") from None
        if "optimizer" in ckpt:
            self.optimizer.load_state_dict(ckpt["optimizer"])
            self._apply_learning_rate(int(ckpt.get("iteration", 0)))
        else:
            logger.warning("%s has no optimizer state (official checkpoint?): Adam moments restart", path)
        if "scaler" in ckpt and self.scaler.is_enabled():
            self.scaler.load_state_dict(ckpt["scaler"])
        self._load_sampler(ckpt.get("sampler"), path)
        mine = self._rank_state(ckpt.get("rank_states"), path)
        if self.mixup is not None and mine.get("mixup") is not None:
            self.mixup.load_state_dict(mine["mixup"])
        if mine.get("rng") is not None:
            tl.set_rng_state(mine["rng"], self.info.device)
        self.iteration = int(ckpt.get("iteration", 0))
        self.last_saved, self.saved_iteration = path, self.iteration
        self.task.load_extra(ckpt, self.iteration)

    def _apply_learning_rate(self, iteration: int) -> None:
        """The optimizer state brought back the checkpoint's learning rate; the run uses the one it was given
        (and records in its config), saying so when they differ - lowering the rate on resume is a common need."""
        lr = self.s.learning_rate
        before = sorted({float(g["lr"]) for g in self.optimizer.param_groups})
        if before != [lr]:
            for g in self.optimizer.param_groups:
                g["lr"] = lr
            logger.info("Learning rate %s (checkpoint) -> %g (--learning_rate) from iteration %d on",
                        "/".join(f"{v:g}" for v in before), lr, iteration)

    def _load_sampler(self, state: Any, path: str) -> None:
        if isinstance(state, dict) and "batches" not in state:
            logger.warning("%s holds an official sampler state (a RandomState snapshot) that cannot be restored "
                           "exactly; the sampler starts afresh", path)
        elif state is not None:
            try:
                self.task.train_sampler.load_state_dict(state)
            except (PannsError, KeyError, ValueError, TypeError) as e:
                raise CheckpointError(f"{path}: its sampler state does not fit this run: {e}") from None
            self.batches_consumed = self.task.train_sampler.state_dict()["batches"]

    def _rank_state(self, per_rank: Optional[list], path: str) -> Dict[str, Any]:
        if per_rank is not None and len(per_rank) == self.info.world_size:
            return per_rank[self.info.rank]
        if per_rank is not None:
            logger.warning("%s was saved by %d processes, this run has %d: RNG and Mixup states "
                           "restart (resume not exact)", path, len(per_rank), self.info.world_size)
        return {}


def format_duration(seconds: float) -> str:
    """``H:MM:SS``, with days in front past 24 h (``3d 04:05:06``): an official run's 1,000,000 steps take days."""
    days, rest = divmod(int(round(seconds)), 86400)
    hours, rest = divmod(rest, 3600)
    text = f"{hours}:{rest // 60:02d}:{rest % 60:02d}"
    return f"{days}d {hours:02d}:{rest // 60:02d}:{rest % 60:02d}" if days else text


def read_checkpoint(info: DistInfo, path: str) -> Dict[str, Any]:
    """The checkpoint at ``path`` on every rank, read from disk by rank 0 alone and sent to the others
    through the process group: rank 0 wrote it, and nodes need not share a filesystem with rank 0 (a second
    node's own copy of the workspace has no checkpoints). Loaded onto the CPU: RNG states must stay CPU
    tensors, and the weights go where the model is with ``load_state_dict``. Costs one transfer of the file's
    size to every rank at start-up (a Cnn14 checkpoint with Adam's moments: ~1.2 GB)."""
    return tl.from_main(info, checkpoint.load_checkpoint, path, map_location="cpu")

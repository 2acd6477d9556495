"""Train one configured experiment: data -> model -> sparsify -> optimize -> logs and checkpoints.

``train(config)`` runs the whole experiment in ``<out>/<name>-<config hash>/`` (the files are
described in :mod:`orthosparse.lab.runs`); data, model, masks and loaders come from
:func:`~orthosparse.lab.experiment.build_experiment`, which ``inspect`` calls too. A finished
run is found and returned without training again (unless ``force=True``); a killed run
continues with ``resume=True`` to the same result as an uninterrupted one (bitwise on CPU): the
model, optimizer, schedule, grad scaler, global RNGs and the data-loader generator's state at
the start of the interrupted epoch are restored, and the batches already done in that epoch are
replayed without training (their augmentation draws included).

Under ``torchrun`` (``WORLD_SIZE > 1``) the same call trains one model with
DistributedDataParallel over all processes, with the result of a single process using the same
global batch (:mod:`orthosparse.lab.distributed`); rank 0 writes every file, and a checkpoint from
a distributed run resumes with any number of processes.

Example:
    >>> from orthosparse.lab.config import resolve_config
    >>> result = train(resolve_config("digits", overrides={"epochs": 3}))
    >>> result.final["test_acc"]
"""

from __future__ import annotations

import contextlib
import gc
import math
import time
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .._layers import prunable_layers
from .._optional import import_optional
from ..sparse import mask_checksum
from .checkpoint import (
    CheckpointError,
    generator_state,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from .config import TrainConfig, check_names, config_hash, config_to_dict
from .distributed import (
    DistContext,
    all_reduce_sum,
    broadcast_object,
    init_distributed,
    shard,
    shutdown_distributed,
    wrap_model,
)
from .experiment import build_experiment, first_examples
from .runs import (
    CHECKPOINT,
    JACOBIAN_KEYS,
    METRIC_KEYS,
    RunConsole,
    RunExistsError,
    RunResult,
    Status,
    ensure_run_dir,
    flat_record,
    format_jacobian,
    format_pct,
    format_record,
    json_safe,
    load_run,
    prepare_run_dir,
    remove_stale_temps,
    run_lock,
    run_threads,
    write_json,
    write_metrics,
)
from .runtime import resolve_device, resolve_precision, run_scope
from .schedule import LRSchedule, lr_factor

__all__ = [
    "Status",
    "RunResult",
    "RunExistsError",
    "train",
    "load_run",
    "evaluate",
    "lr_factor",
    "resolve_device",
    "resolve_precision",
    "METRIC_KEYS",
    "TENSORBOARD_TAGS",
]

_FORMAT = "orthosparse-checkpoint"
_VERSION = 1  # the layout of _Run._checkpoint_state; a checkpoint of another version is refused

# The TensorBoard tag of every number of an epoch record (``flat_record``'s keys but ``epoch``,
# which is the step), grouped by split so TensorBoard shows one section each: train, val, test,
# jacobian. Accuracies are fractions, as in metrics.jsonl. The one place tags are named.
TENSORBOARD_TAGS: dict[str, str] = {
    "train_loss": "train/loss", "train_acc": "train/acc", "lr": "train/lr",
    "time": "train/epoch_time_s",
    "val_loss": "val/loss", "val_acc": "val/acc",
    "test_loss": "test/loss", "test_acc": "test/acc",
    **{f"jacobian_{k}": f"jacobian/{k}" for k in JACOBIAN_KEYS},
}

# --------------------------------------------------------------------------- evaluation


@torch.no_grad()
def evaluate(model: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
             device: torch.device, amp_dtype: torch.dtype | None = None, *,
             dist: DistContext | None = None) -> tuple[float | None, float | None]:
    """Return ``(mean cross-entropy, accuracy)`` of ``model`` in eval mode (``None`` if empty).

    With ``dist`` every rank scores its slice of each batch and the sums are all-reduced, so
    all ranks return the single-process numbers (to rounding).
    """
    was_training = model.training
    model.eval()
    total_loss = torch.zeros((), dtype=torch.float64, device=device)
    correct = torch.zeros((), dtype=torch.int64, device=device)
    seen = 0
    for x, y in batches:
        x, y = shard(x, dist).to(device), shard(y, dist).to(device)
        with torch.autocast(device.type, dtype=amp_dtype or torch.float32,
                            enabled=amp_dtype is not None):
            logits = model(x)  # (B, num_classes)
        total_loss += F.cross_entropy(logits.float(), y, reduction="sum").double()
        correct += (logits.argmax(1) == y).sum()
        seen += y.shape[0]
    model.train(was_training)
    if dist is not None:
        loss_sum, n_correct, n_seen = all_reduce_sum([total_loss, correct, seen], dist)
        if n_seen == 0:
            return None, None
        return _finite_or_none(loss_sum / n_seen), n_correct / n_seen
    if seen == 0:
        return None, None
    return _finite_or_none(total_loss.item() / seen), correct.item() / seen


def _finite_or_none(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


# --------------------------------------------------------------------------- the run


def train(config: TrainConfig, *, resume: bool = False, force: bool = False,
          run_dir: str | Path | None = None, stop_after: int | None = None) -> RunResult:
    """Run the experiment described by ``config``; return its result.

    Args:
        config: the resolved configuration.
        resume: continue an unfinished run from its checkpoint (a fresh start when none exists).
        force: delete earlier results in the run directory and train from scratch.
        run_dir: directory to use instead of ``config.run_dir()``.
        stop_after: stop (status ``"stopped"``, checkpoint written) after this many optimizer
            steps in total, as if killed; continue later with ``resume=True``.

    Returns:
        A :class:`RunResult`. A run whose ``final.json`` exists is not trained again: its stored
        result comes back with ``skipped=True``. A non-finite training loss ends the run with
        status ``"diverged"``; what was logged before stays, and the last checkpoint is the last
        good state. In a distributed run every rank returns the result (rank 0's history also
        holds the Jacobian summaries, which only rank 0 computes).

    Raises:
        RunExistsError: an unfinished run is in the directory and neither flag is set.
        RunLockedError: another process is training this run (the message names it).
        RunDirError: the run folder cannot be created or written (checked before training).
        ValueError: unknown dataset/model/mask/init or a setting the model does not take.
        CheckpointError: the checkpoint to resume from is corrupt, of another version, or its
            masks are not this run's (the message names it).
        RunFileError: a corrupt run file that no checkpoint can rebuild (the message names it).
        AtomicWriteError: a file could not be written during the run (full disk, ...): one
            line naming it and the reason; the previous checkpoint is kept.
    """
    if not isinstance(config, TrainConfig):
        raise TypeError(f"config must be a TrainConfig, got {type(config).__name__}")
    if stop_after is not None and (isinstance(stop_after, bool) or not isinstance(
            stop_after, int) or stop_after < 1):
        raise ValueError(f"stop_after={stop_after!r} must be a positive int or None")
    check_names(config)
    dist = init_distributed(config.device)
    try:
        result = _train(config, dist, resume=resume, force=force, run_dir=run_dir,
                        stop_after=stop_after)
    except BaseException:
        shutdown_distributed(dist, barrier=False)
        raise
    if dist is not None:
        gc.collect()  # free the DDP wrapper (reference cycles) while its process group lives
    shutdown_distributed(dist)
    return result


def _train(config: TrainConfig, dist: DistContext | None, *, resume: bool, force: bool,
           run_dir: str | Path | None, stop_after: int | None) -> RunResult:
    main = dist is None or dist.is_main
    device = dist.device if dist is not None else resolve_device(config.device)
    amp_dtype = resolve_precision(config.precision, device)
    run_dir = Path(run_dir) if run_dir is not None else config.run_dir()
    with contextlib.ExitStack() as held:
        state: Any = None
        removed: list[str] = []
        if main:  # rank 0 owns the directory; the other ranks follow its decision (or error)
            try:
                ensure_run_dir(run_dir)  # writable, no folder/link at a run file's name
                held.enter_context(run_lock(run_dir))  # one process per run
                removed = remove_stale_temps(run_dir)  # left by a killed writer
                state = prepare_run_dir(config, run_dir, resume, force)
            except Exception as err:  # re-raised on every rank below
                state = err
        state = broadcast_object(state, dist)
        if isinstance(state, BaseException):
            raise state
        if state == "done":
            result = load_run(run_dir) if main else None
            result = broadcast_object(result, dist)
            result.config = config
            if main and config.progress != "none":
                print(f"{run_dir}: already {result.status}; not trained again (use --force to "
                      f"rerun)")
            return result
        threads: Any = None
        rebuild = main and state == "resume" and (run_dir / "final.json").is_file()
        if main:
            write_json(run_dir / "config.json", config_to_dict(config))
            threads = run_threads(run_dir, config.threads, state)  # a resume keeps its count
        threads, note = broadcast_object(threads, dist)
        console = RunConsole(run_dir / "train.log" if main else None, config.progress)
        try:
            if removed:
                console.line(f"removed {len(removed)} temporary file(s) left by an interrupted "
                             f"process: {', '.join(removed)}", echo=False)
            if rebuild:
                console.line(f"final.json or metrics.jsonl could not be read back; resuming from "
                             f"{CHECKPOINT} to write them again")
            if note:
                console.line(note)
            with run_scope(config.seed, config.deterministic, threads):
                return _Run(config, run_dir, device, amp_dtype, console, dist).run(
                    resume=state == "resume", stop_after=stop_after)
        except BaseException as err:  # the log says why a run ended; the caller still sees it
            console.line(f"ERROR run ended by {type(err).__name__}: {err}", echo=False)
            raise
        finally:
            console.close()


class _Run:
    """The state of one training run (split out of :func:`train` to keep the steps readable)."""

    def __init__(self, config: TrainConfig, run_dir: Path, device: torch.device,
                 amp_dtype: torch.dtype | None, console: RunConsole,
                 dist: DistContext | None = None) -> None:
        self.cfg, self.run_dir, self.device, self.amp_dtype = config, run_dir, device, amp_dtype
        self.console = console
        self.dist = dist
        self.main = dist is None or dist.is_main
        self.history: list[dict[str, Any]] = []
        self.init_record: dict[str, Any] = {}
        self.epoch = 0  # completed epochs
        self.step_in_epoch = 0  # optimizer steps done in the current epoch
        self.global_step = 0
        self.partial: dict[str, float] = {"loss": 0.0, "correct": 0, "seen": 0, "time": 0.0,
                                          "lr": 0.0}
        self.started = time.time()

    # ---------------------------------------------------------------- setup
    def _setup(self) -> None:
        from ..sparsify import attach_optimizer

        cfg, device = self.cfg, self.device
        exp = build_experiment(cfg, device, loaders=True)  # the network `inspect` measures too
        self.model, self.masks = exp.model, exp.masks
        self.loader_gen, self.train_loader = exp.loader_generator, exp.train_loader
        self.eval_loaders = exp.eval_loaders
        # One process: net is model. Several: masks checked equal on all ranks, then DDP.
        self.net, self.mask_checksum = wrap_model(self.model, self.dist)
        self.optimizer = self._optimizer()
        if self.masks:  # safety re-mask after every step
            attach_optimizer(self.optimizer, self.model)
        steps = len(self.train_loader)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, LRSchedule(
            steps_per_epoch=steps, epochs=cfg.epochs, schedule=cfg.schedule,
            milestones=tuple(cfg.milestones), lr_decay=cfg.lr_decay,
            warmup_epochs=cfg.warmup_epochs))
        self.scaler = (torch.amp.GradScaler(device.type)
                       if self.amp_dtype == torch.float16 else None)
        self.jacobian_inputs, _ = first_examples(exp.splits, cfg.jacobian_examples, device)
        self.tb = self._tensorboard() if self.main else None

    def _optimizer(self) -> torch.optim.Optimizer:
        cfg, params = self.cfg, self.model.parameters()
        if cfg.optimizer == "sgd":
            return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum,
                                   nesterov=cfg.nesterov, weight_decay=cfg.weight_decay)
        cls = torch.optim.Adam if cfg.optimizer == "adam" else torch.optim.AdamW
        return cls(params, lr=cfg.lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay)

    def _tensorboard(self) -> Any:
        """A ``SummaryWriter`` into ``<run>/tb``, or None: logging is off, or tensorboard is not
        installed (silently), or its import fails (a warning naming the error)."""
        if not self.cfg.tensorboard:
            return None
        try:
            writer = import_optional("torch.utils.tensorboard", "SummaryWriter",
                                     user="TensorBoard logging (tensorboard=true)",
                                     package="tensorboard", extra="tensorboard",
                                     pip_name="tensorboard",
                                     alternative="; or set tensorboard=false")
        except ImportError as err:
            cause = err.__cause__
            if not (isinstance(cause, ModuleNotFoundError)
                    and (cause.name or "").split(".")[0] == "tensorboard"):
                warnings.warn(f"{err}; training goes on without TensorBoard logs",
                              stacklevel=2)
            return None
        return writer(str(self.run_dir / "tb"))

    def _jacobian(self) -> dict[str, Any] | None:
        """Jacobian singular-value summary of the (unwrapped) model; rank 0 only."""
        if not self.main:
            return None
        try:
            from ..diagnostics import jacobian_summary
        except ImportError:
            return None
        cuda = [self.device.index or 0] if self.device.type == "cuda" else []
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.random.fork_rng(devices=cuda):  # never perturbs the training stream
                summary = jacobian_summary(self.model, self.jacobian_inputs,
                                           max_examples=self.cfg.jacobian_examples)
        finally:
            self.model.train(was_training)
        return {str(k): float(v) for k, v in dict(summary).items()}

    # ---------------------------------------------------------------- checkpoints
    def _checkpoint_state(self, epoch_start_loader: torch.Tensor) -> dict[str, Any]:
        return {
            "format": _FORMAT, "version": _VERSION, "config_hash": config_hash(self.cfg),
            "mask_checksum": self.mask_checksum,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "rng": rng_state(),
            "loader_rng": epoch_start_loader,
            "progress": {"epoch": self.epoch, "step_in_epoch": self.step_in_epoch,
                         "global_step": self.global_step, "partial": dict(self.partial),
                         "elapsed": time.time() - self.started},
            "history": self.history,
            "init_record": self.init_record,
        }

    def _save(self, epoch_start_loader: torch.Tensor) -> None:
        """Checkpoint (rank 0 only: every rank holds the same state)."""
        if self.main:
            save_checkpoint(self.run_dir / CHECKPOINT,
                            self._checkpoint_state(epoch_start_loader))

    def _load(self) -> dict[str, Any]:
        """Rank 0 reads and checks the checkpoint; every rank gets it (or its error)."""
        path = self.run_dir / CHECKPOINT
        payload: Any = None
        if self.main:
            try:
                payload = load_checkpoint(path, map_location="cpu")
                if payload.get("format") != _FORMAT:
                    raise CheckpointError(
                        f"checkpoint {str(path)!r} is not an orthosparse training checkpoint "
                        f"(format={payload.get('format')!r})")
                if payload.get("version") != _VERSION:
                    raise CheckpointError(
                        f"checkpoint {str(path)!r} has version {payload.get('version')!r}; this "
                        f"orthosparse reads version {_VERSION} only (written by another "
                        f"version?): resume it with that version, or pass --force to start over")
                if payload.get("config_hash") != config_hash(self.cfg):
                    raise CheckpointError(
                        f"checkpoint {str(path)!r} belongs to config "
                        f"{payload.get('config_hash')}, not {config_hash(self.cfg)}")
            except Exception as err:  # re-raised on every rank below
                payload = err
        payload = broadcast_object(payload, self.dist)
        if isinstance(payload, BaseException):
            raise payload
        return payload

    def _restore(self) -> torch.Tensor:
        path = self.run_dir / CHECKPOINT
        ckpt = self._load()
        try:
            self.model.load_state_dict(ckpt["model"])
            self.optimizer.load_state_dict(ckpt["optimizer"])
            self.scheduler.load_state_dict(ckpt["scheduler"])
            if self.scaler is not None and ckpt["scaler"] is not None:
                self.scaler.load_state_dict(ckpt["scaler"])
            progress = ckpt["progress"]
            self.epoch = int(progress["epoch"])
            self.step_in_epoch = int(progress["step_in_epoch"])
            self.global_step = int(progress["global_step"])
            self.partial = dict(progress["partial"])
            self.started = time.time() - float(progress["elapsed"])
            self.history = list(ckpt["history"])
            self.init_record = dict(ckpt["init_record"])
            set_rng_state(ckpt["rng"])
            loader_state = ckpt["loader_rng"]
        except (KeyError, RuntimeError, ValueError, TypeError) as err:
            raise CheckpointError(f"checkpoint {str(path)!r} does not match this run: "
                                  f"{type(err).__name__}: {err}") from err
        # The masks are fixed by the config and seed: a checkpoint holding others (edited, or
        # copied from another run) would train and report a different network.
        found, stored = mask_checksum(self.model), ckpt.get("mask_checksum", self.mask_checksum)
        if found != self.mask_checksum or stored != self.mask_checksum:
            bad = found if found != self.mask_checksum else stored
            raise CheckpointError(
                f"checkpoint {str(path)!r} holds masks with checksum {bad[:16]}, but this "
                f"run's masks have checksum {self.mask_checksum[:16]} (expected); the checkpoint "
                f"was altered or belongs to another run: pass --force to start over")
        return loader_state

    # ---------------------------------------------------------------- loop
    def run(self, *, resume: bool, stop_after: int | None) -> RunResult:
        cfg = self.cfg
        self._setup()
        if resume:
            loader_state = self._restore()
            self.loader_gen.set_state(loader_state)
            if self.main:
                write_metrics(self.run_dir, self.history)  # drop lines logged after the ckpt
            self.console.line(f"resuming {self.run_dir} at epoch {self.epoch + 1}, step "
                              f"{self.step_in_epoch}/{len(self.train_loader)}")
        else:
            n_params = sum(p.numel() for p in self.model.parameters())
            self.console.line(f"run {self.run_dir}: {cfg.model} on {cfg.dataset}, density "
                              f"{cfg.density} ({cfg.mask} mask, {cfg.init} init), {n_params:,} "
                              f"parameters, device {self.device}, "
                              f"{str(self.amp_dtype or 'fp32').replace('torch.', '')}")
            if cfg.jacobian != "off":
                jac = self._jacobian()
                if jac is not None:
                    self.init_record["jacobian"] = jac
                    self.console.line("jacobian at init: " + format_jacobian(jac))
            self._save(generator_state(self.loader_gen))
        if self.dist is not None:
            k = self.dist.world_size
            self.console.line(f"distributed: {k} processes ({self.dist.backend}), global batch "
                              f"{cfg.batch_size} = {k} x ~{-(-cfg.batch_size // k)}, mask "
                              f"checksum {self.mask_checksum[:16]} on every rank")
        status: Status = "finished"
        message = ""
        while self.epoch < cfg.epochs:
            outcome = self._train_epoch(stop_after)
            if outcome is not None:
                status, message = outcome
                break
        return self._finish(status, message)

    def _forward_loss(self, x: torch.Tensor, y: torch.Tensor
                      ) -> tuple[torch.Tensor, float, int]:
        """Return ``(loss to backpropagate, mean loss of the global batch, correct count)``.

        One process: the mean cross-entropy. Several: this rank's slice, loss = sum of its
        per-example losses x ``K / B`` so that DDP's gradient average is the global mean's
        gradient (see :mod:`orthosparse.lab.distributed`); loss and accuracy are all-reduced.
        """
        device, dist = self.device, self.dist
        with torch.autocast(device.type, dtype=self.amp_dtype or torch.float32,
                            enabled=self.amp_dtype is not None):
            if dist is None:
                logits = self.net(x)  # (B, num_classes)
                loss = F.cross_entropy(logits.float(), y)
                return loss, loss.item(), int((logits.argmax(1) == y).sum())
            batch = y.shape[0]
            x, y = shard(x, dist), shard(y, dist)
            logits = self.net(x)  # (B / K, num_classes)
            local_sum = F.cross_entropy(logits.float(), y, reduction="sum")
        loss_sum, correct = all_reduce_sum([local_sum, (logits.argmax(1) == y).sum()], dist)
        return local_sum * (dist.world_size / batch), loss_sum / batch, round(correct)

    def _train_epoch(self, stop_after: int | None) -> tuple[Status, str] | None:
        cfg, model = self.cfg, self.model
        epoch_start_loader = generator_state(self.loader_gen)
        skip = self.step_in_epoch
        if skip == 0:
            self.partial["lr"] = self.optimizer.param_groups[0]["lr"]
        tick = time.time()
        bar = self.console.progress(len(self.train_loader), f"epoch {self.epoch + 1}")
        self.net.train()
        try:
            for index, (x, y) in enumerate(self.train_loader):
                if index < skip:  # replay the batches done before the interruption
                    continue
                batch = y.shape[0]
                loss, loss_value, correct = self._forward_loss(x, y)
                if not math.isfinite(loss_value):
                    msg = (f"training diverged: loss={loss_value} at epoch {self.epoch + 1}, "
                           f"step {index + 1}/{len(self.train_loader)} (global step "
                           f"{self.global_step + 1}); metrics up to epoch {self.epoch} are kept "
                           f"in {self.run_dir / 'metrics.jsonl'}")
                    return "diverged", msg
                self.optimizer.zero_grad(set_to_none=True)
                if self.scaler is not None:
                    self.scaler.scale(loss).backward()
                    if cfg.grad_clip is not None:
                        self.scaler.unscale_(self.optimizer)
                        nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
                    self.scaler.step(self.optimizer)
                    self.scaler.update()
                else:
                    loss.backward()
                    if cfg.grad_clip is not None:
                        nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
                    self.optimizer.step()
                self.scheduler.step()
                self.global_step += 1
                self.step_in_epoch += 1
                self.partial["loss"] += loss_value * batch
                self.partial["correct"] += correct
                self.partial["seen"] += batch
                bar.update(loss_value)
                last = self.step_in_epoch == len(self.train_loader)
                if stop_after is not None and self.global_step >= stop_after and not last:
                    self.partial["time"] += time.time() - tick
                    self._save(epoch_start_loader)
                    return "stopped", (f"stopped after {self.global_step} steps (stop_after); "
                                       f"continue with resume=True / --resume")
                if cfg.checkpoint_every and self.global_step % cfg.checkpoint_every == 0 and (
                        not last):
                    self.partial["time"] += time.time() - tick
                    tick = time.time()
                    self._save(epoch_start_loader)
        finally:
            bar.close()
        self.partial["time"] += time.time() - tick
        self._end_epoch()
        if stop_after is not None and self.global_step >= stop_after and (
                self.epoch < cfg.epochs):
            return "stopped", (f"stopped after {self.global_step} steps (stop_after); continue "
                               f"with resume=True / --resume")
        return None

    def _end_epoch(self) -> None:
        seen = max(1, self.partial["seen"])
        record: dict[str, Any] = {
            "epoch": self.epoch + 1,
            "train_loss": self.partial["loss"] / seen,
            "train_acc": self.partial["correct"] / seen,
        }
        for split in ("val", "test"):
            loader = self.eval_loaders.get(split)
            loss, acc = (evaluate(self.model, loader, self.device, self.amp_dtype,
                                  dist=self.dist)
                         if loader is not None else (None, None))
            record[f"{split}_loss"], record[f"{split}_acc"] = loss, acc
        record["lr"] = self.partial["lr"]
        record["time"] = self.partial["time"]
        if self.cfg.jacobian == "epoch":
            jac = self._jacobian()
            if jac is not None:
                record["jacobian"] = jac
        self.history.append(record)
        self.epoch += 1
        self.step_in_epoch = 0
        self.partial = {"loss": 0.0, "correct": 0, "seen": 0, "time": 0.0, "lr": 0.0}
        if self.main:
            write_metrics(self.run_dir, self.history)
        self._save(generator_state(self.loader_gen))
        self.console.line(format_record(record, self.cfg.epochs))
        if self.tb is not None:
            row = flat_record(record)
            for key, tag in TENSORBOARD_TAGS.items():
                if isinstance(row.get(key), (int, float)):
                    self.tb.add_scalar(tag, row[key], record["epoch"])
            self.tb.flush()

    def _finish(self, status: Status, message: str) -> RunResult:
        cfg = self.cfg
        last = self.history[-1] if self.history else {}
        final: dict[str, Any] = {
            "status": status, "message": message, "config_hash": config_hash(cfg),
            "epochs": cfg.epochs, "epochs_completed": self.epoch,
            "global_step": self.global_step,
        }
        for key in METRIC_KEYS[1:7]:
            final[key] = last.get(key)
        criterion = "val_acc" if any(r.get("val_acc") is not None for r in self.history) else (
            "test_acc")
        scored = [r for r in self.history if r.get(criterion) is not None]
        if scored:
            best = max(scored, key=lambda r: r[criterion])  # first epoch among ties
            final["best"] = {"criterion": criterion, "epoch": best["epoch"],
                             "val_acc": best.get("val_acc"), "test_acc": best.get("test_acc"),
                             "val_loss": best.get("val_loss"), "test_loss": best.get("test_loss")}
        tests = [r["test_acc"] for r in self.history if r.get("test_acc") is not None]
        final["best_test_acc"] = max(tests) if tests else None
        final["jacobian_init"] = self.init_record.get("jacobian")
        layers = prunable_layers(self.model)
        total = sum(layer.weight.numel() for layer in layers)
        nonzero = sum(int(torch.count_nonzero(layer.weight)) for layer in layers)
        final["density_nonzero"] = nonzero / total if total else None
        final["num_parameters"] = sum(p.numel() for p in self.model.parameters())
        final["device"] = str(self.device)
        final["precision"] = str(self.amp_dtype or "fp32").replace("torch.", "")
        final["world_size"] = 1 if self.dist is None else self.dist.world_size
        final["mask_checksum"] = self.mask_checksum
        final["wall_time"] = time.time() - self.started
        if status != "stopped" and self.main:
            write_json(self.run_dir / "final.json", final)
        if status == "diverged":
            self.console.line("ERROR " + message)
        elif status == "stopped":
            self.console.line(message)
        else:
            best = final.get("best", {})
            self.console.line(
                f"finished {self.run_dir}: final test acc {format_pct(final['test_acc'])}, best "
                f"{best.get('criterion', 'test_acc')} "
                f"{format_pct(best.get(best.get('criterion')))} at epoch {best.get('epoch')}")
        if self.tb is not None:
            self.tb.close()
        return RunResult(self.run_dir, cfg, status, json_safe(final), list(self.history),
                         model=self.model)

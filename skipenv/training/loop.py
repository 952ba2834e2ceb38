"""The training loop the entry points share: resume, checkpoints, the sharded epoch loop,
evaluation, logging.

An entry point (``train/base.py``, ``train/supervised.py``, ``train/hybrid.py``) builds its
model and optimiser and writes one training step; :func:`train` does the rest the same way for
all of them:

1. ``--resume``: read ``OUT/last.pt`` (:meth:`RunDir.load_last`), check its ``arch``, hand it to
   the entry point's ``restore`` (weights, optimiser, scheduler), restore the global RNG, and
   continue from its step and wall time.
2. Epoch by epoch from the current step: replay the epoch's batches
   (:meth:`~skipenv.data.loader.BatchLoader.set_epoch`, skipping those already trained on),
   keep this process's rows (:func:`skipenv.training.distributed.shard`), call ``step``.
3. Every ``eval_every`` steps (default: each epoch's end) and at the end: evaluate on the
   main process (with its own progress bar), log one line to ``metrics.jsonl`` (full
   precision) and print it readably (:func:`skipenv.training.summary.format_metrics`; the
   routing summary on a second line when ``evaluate`` gives ``routing``,
   :func:`skipenv.training.routing.routing_line`), wait for every process, write ``last.pt``;
   between evaluations ``last.pt`` is also written every ``checkpoint_minutes``.
4. When all ``total_steps`` are done, or ``max_steps`` stops the run earlier: ``final.pt``
   (a run stopped by ``max_steps`` says so, and continues with ``--resume``).

Before the first step it prints the run's start summary
(:func:`skipenv.training.summary.start_summary`: what, device and threads, data, steps,
output, fresh or resumed); with ``args.tensorboard`` it also logs to ``OUT/tb``
(:class:`skipenv.training.tensorboard.TensorBoard`).

A checkpoint is ``{"kind", "config", "arch", **state(), "rng", "step", "total_steps",
"epoch", "metrics", "wall_s"}`` (``step < total_steps``: stopped early by ``max_steps``):
``state()`` gives the entry point's own entries (``model``, ``gate``, ``optimizer``,
``scheduler``). Global-RNG use is the entry point's: the loop draws no random numbers, so a
resumed run continues bit-identically.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from tqdm.auto import tqdm

from skipenv.data.loader import BatchLoader
from skipenv.models.checkpoint import CheckpointError, checkpoint_arch
from skipenv.training import distributed
from skipenv.training.routing import routing_line
from skipenv.training.runs import RunArgs, RunDir, rng_state, set_rng_state
from skipenv.training.summary import format_metrics, images, print_summary
from skipenv.training.tensorboard import TensorBoard


@dataclass
class StepOutput:
    """What one training step reports to the loop.

    Attributes:
        logits: B x classes, for the running train accuracy.
        loss: the loss shown on the progress bar.
        executed: B x N bool blocks run, for the running ``train_block_fraction`` (None for a
            plain network).
        show: more progress-bar fields, already formatted.
        probs: B x K gate p(execute), for TensorBoard's histograms (None: no gate).
        flops: B flops fractions of the step's routes, for TensorBoard (None: not measured).
    """

    logits: torch.Tensor
    loss: float
    executed: torch.Tensor | None = None
    show: dict[str, str] = field(default_factory=dict)
    probs: torch.Tensor | None = None
    flops: torch.Tensor | None = None


def train(
    args: RunArgs,
    *,
    run: RunDir,
    dist: distributed.DistInfo,
    kind: str,
    arch: dict[str, Any],
    config: dict[str, Any],
    train_loader: BatchLoader,
    total_steps: int,
    step: Callable[[torch.Tensor, torch.Tensor, int], StepOutput],
    evaluate: Callable[[], dict[str, Any]],
    state: Callable[[], dict[str, Any]],
    restore: Callable[[dict[str, Any]], None],
    train_mode: Callable[[], None],
    eval_every: int | None = None,
    what: str = "training",
    eval_size: int | None = None,
    examples: Callable[[], tuple[Any, torch.Tensor | None]] | None = None,
) -> dict[str, Any]:
    """Run (or resume) a training job to ``total_steps``; returns the last metrics.

    Args:
        args: the shared run arguments (``resume``, ``max_steps``, ``checkpoint_minutes``,
            ``eval_split``, ``progress``).
        run: the run folder.
        dist: the process group (:func:`skipenv.training.distributed.setup`).
        kind: the checkpoint kind written and accepted on resume (``base``, ``sp``, ``hrl``,
            ``static``).
        arch: what the checkpoint's ``arch`` must equal on resume.
        config: the run's arguments as JSON types, stored in every checkpoint.
        train_loader: shuffled, augmented batches; ``len`` is the steps per epoch.
        total_steps: steps of the whole schedule (``max_steps`` may stop earlier).
        step: ``step(x, y, step_index)`` trains on one batch (this process's rows).
        evaluate: held-out metrics, called on the main process only; keys get the
            ``eval_split`` prefix.
        state: the entry point's checkpoint entries (``model``, ``optimizer``, ...).
        restore: loads those entries back from a checkpoint being resumed.
        train_mode: puts the model in training mode (before the loop and after evaluations).
        eval_every: steps between evaluations; None: at each epoch's end.
        what: the first line of the start summary: the script and what it trains.
        eval_size: images of the evaluation split, for the start summary.
        examples: gives routed example frames (B x H x W x 3 uint8) and the gate's B x K
            p(execute) for TensorBoard at each evaluation
            (:func:`skipenv.training.tensorboard.example_callback`).

    Raises:
        CheckpointError: ``last.pt`` is missing or unreadable, of another kind or ``arch``.
    """
    steps_per_epoch = len(train_loader)
    eval_every = eval_every or steps_per_epoch
    done, wall_before = 0, 0.0  # steps and training seconds of earlier runs of this job
    if args.resume:
        ckpt = run.load_last((kind,), map_location=dist.device)
        if checkpoint_arch(ckpt) != arch:
            raise CheckpointError(f"{run.last} holds {ckpt['arch']}, but this run is {arch}")
        restore(ckpt)
        set_rng_state(ckpt["rng"])
        done, wall_before = ckpt["step"], ckpt["wall_s"]

    end = total_steps if args.max_steps is None else min(total_steps, args.max_steps)
    if dist.is_main:
        held = f", evaluated on {args.eval_split}" + (
            f" ({eval_size:,} images)" if eval_size is not None else ""
        )
        every = f"every {eval_every} steps" if eval_every != steps_per_epoch else "each epoch"
        epochs = total_steps / steps_per_epoch
        print_summary(
            what,
            device=f"{dist.device}" + (f" x {dist.world_size} processes" if dist.enabled else ""),
            data=images(train_loader.num_samples, args.train_split) + held,
            steps=f"{end - done:,} to run, {done:,} -> {end:,} of {total_steps:,} "
            f"({epochs:g} epochs of {steps_per_epoch:,}); evaluation {every}"
            + (f"; stops early at --max-steps {args.max_steps}" if end < total_steps else ""),
            out=f"{run.out} (last.pt, final.pt, metrics.jsonl"
            + (", tb/ for TensorBoard)" if args.tensorboard else ")"),
            start=f"resumed from {run.last} at step {done:,}" if args.resume else "fresh",
        )
    board = TensorBoard(run.out / "tb" if args.tensorboard and dist.is_main else None)
    started, metrics = time.monotonic(), {}

    def checkpoint(final: bool = False) -> None:
        run.save(
            {
                "kind": kind,
                "config": config,
                "arch": arch,
                **state(),
                "rng": rng_state(),
                "step": done,
                "total_steps": total_steps,
                "epoch": done / steps_per_epoch,
                "metrics": metrics,
                "wall_s": wall_before + time.monotonic() - started,
            },
            final=final,
        )

    train_mode()
    bar = tqdm(
        total=end,
        initial=done,
        disable=not (args.progress and dist.is_main),
        unit="step",
        dynamic_ncols=True,
    )
    correct = seen = 0
    executed_sum = 0.0
    while done < end:
        epoch, done_in_epoch = divmod(done, steps_per_epoch)
        train_loader.set_epoch(epoch)
        batches = itertools.islice(iter(train_loader), done_in_epoch, None)  # resume mid-epoch
        for x, y in distributed.shard(batches, dist):
            out = step(x, y, done)
            done += 1
            correct += int((out.logits.argmax(dim=1) == y).sum())
            seen += y.numel()
            shown = {"epoch": epoch, "loss": f"{out.loss:.3f}", "acc": f"{correct / seen:.3f}"}
            if out.executed is not None:
                executed_sum += float(out.executed.float().mean()) * y.numel()
                shown["blocks"] = f"{executed_sum / seen:.3f}"
            bar.update()
            bar.set_postfix(shown | out.show)
            board.step(
                done,
                out.loss,
                float((out.logits.argmax(dim=1) == y).float().mean()),
                out.executed,
                out.probs,
                out.flops,
            )
            if done % eval_every == 0 or done == end:
                metrics = {"step": done, "epoch": done / steps_per_epoch}
                if dist.is_main:
                    metrics |= {f"{args.eval_split}_{k}": v for k, v in evaluate().items()}
                metrics["train_accuracy"] = correct / max(seen, 1)
                if out.executed is not None:
                    metrics["train_block_fraction"] = executed_sum / max(seen, 1)
                metrics["wall_s"] = wall_before + time.monotonic() - started
                correct = seen = 0
                executed_sum = 0.0
                distributed.barrier(dist)
                run.log(metrics)
                if dist.is_main:
                    bar.write(format_metrics(metrics, args.eval_split, total_steps))
                    routing = routing_line(metrics, args.eval_split)  # issue 12
                    if routing is not None:
                        bar.write(routing)
                    frames, probs = examples() if examples and board.writer else ([], None)
                    board.evaluation(done, metrics, args.eval_split, probs)
                    board.images(done, frames)
                checkpoint()
                train_mode()
            elif run.due(args.checkpoint_minutes):
                checkpoint()
            if done >= end:
                break
    bar.close()
    board.close()
    if done == total_steps or done == end:
        checkpoint(final=True)
    if dist.is_main and done < total_steps:
        print(
            f"stopped by --max-steps after step {done:,} of {total_steps:,}: {run.final} holds "
            f"this partly trained model; continue with --resume (and a larger or no --max-steps)",
            flush=True,
        )
    distributed.teardown(dist)
    return metrics

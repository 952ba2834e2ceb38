"""Could a gate beat its static route? Per-image headroom of one-block changes, and whether the
gate's input predicts it.

    python scripts/route_headroom.py --checkpoint skipnet38-hrl-a0.6 --alpha 0.6 --split val \\
        --amp bf16 --json results/routing/headroom-hrl-a0.6.json

Take the route R that a gated checkpoint sends most images through (its greedy gate's most
common route on ``--split``; or ``--route``), on that checkpoint's backbone, eval mode, real
skipping. For each decision k (block k + 1), R^k is R with that one block flipped (run <->
skip). Per image, the paper's reward (sec. 3.3: ``alpha / K`` per skipped block minus the
final cross-entropy) changes by

    delta_k = +-alpha / K - (CE(R^k) - CE(R))        (+ when R runs the block: flipping skips it)

A per-image router gains over the static route R only where some delta_k > 0, and only if it
can tell those images apart when it decides. Per decision the script reports:

- ``better``: share of images with delta_k > 0; ``oracle_gain``: mean of max(delta_k, 0)
  (reward per image a router that knew delta_k would gain by flipping this block alone);
  ``acc_up`` / ``acc_down``: shares of images the flip makes right / wrong;
- ``auc_gate``, ``auc_history``, ``auc_late``: cross-validated ROC AUC (``--folds``-fold,
  logistic regression on standardised features, scikit-learn) of predicting delta_k > 0 from
  what the gate sees at decision k (the global average of block k's output along R), from
  all the pooled outputs of blocks 0..k (what a recurrent gate can remember), and, as a
  bound no gate has when it decides, from R's final prediction (max softmax, margin,
  entropy). 0.5 is chance;
  ``auc_probe``: the same from the confidence (max, margin, entropy) of a linear probe, a
  multinomial logistic regression of the class on the pooled outputs of blocks 0..k (what a
  gate with an auxiliary classifier head could see);
- ``policy_gain`` / ``policy_acc`` / ``policy_flops``: flipping exactly the images whose
  delta_k a ridge regression on the pooled outputs of blocks 0..k predicts > 0 (held-out
  folds): change of the mean reward, of the accuracy (points) and of ``flops_fraction``
  against R for every image; ``policy_vs_random``: its accuracy minus that of flipping the
  same number of images at random (points, equal FLOPs): what choosing per image adds;
  ``probe_policy_*``: the same with the linear probe's confidence added to the regression.

Few images with delta_k > 0 and AUCs near 0.5 mean that no gate with this input can route
per image better than R: REINFORCE then converges to R (results/ablation-hrl).
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
import tyro
from tqdm.auto import tqdm

from agents.skipnet import load_backbone_and_gate
from agents.static import selection_batches
from skipenv.data.splits import load_cifar10
from skipenv.models.resnet import SkipResNet
from skipenv.training.devices import autocast, prepare_device
from skipenv.training.evaluation import evaluate_gated
from skipenv.training.routing import parse_route
from skipenv.training.runs import MeasureArgs
from skipenv.training.summary import images, print_summary
from skipenv.utils import write_json


@dataclass
class Args(MeasureArgs):
    checkpoint: str
    """a shipped model's name or an sp/hrl/static checkpoint (base: give --route)"""
    alpha: float = 0.6
    """the paper reward's compute term: alpha / K per skipped block (the HRL run's alpha)"""
    route: str | None = None
    """the route R as N flags, e.g. 100011111001111110 (default: the gate's most common route
    on --split)"""
    split: str = "val"
    """split to measure on (val: the 5,000 held out of train)"""
    limit: int | None = None
    """use a stratified subset of this many images (every class in its share; default: all)"""
    folds: int = 5
    """cross-validation folds of the logistic regressions"""
    seed: int = 0
    """seeds the subset and the folds"""


def route_pass(
    backbone: SkipResNet, flags: list[bool], x: torch.Tensor, pooled: bool
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Logits (B x classes, float32) of ``x`` on route ``flags`` (N bools) and, if ``pooled``,
    the global average of every block's output along it (N tensors B x C_block)."""
    h = backbone.blocks[0](backbone.stem(x))  # B x C x H x W
    feats = [h.float().mean(dim=(2, 3))] if pooled else []
    for i in range(1, backbone.num_blocks):
        run = torch.full((x.shape[0],), flags[i], dtype=torch.bool, device=x.device)  # B
        h = backbone.blocks[i].forward_skip(h, run)
        if pooled:
            feats.append(h.float().mean(dim=(2, 3)))  # B x C_i
    return backbone.head(h).float(), feats


def cv_proba(features: np.ndarray, target: np.ndarray, folds: int, seed: int) -> np.ndarray | None:
    """Held-out p(target) per image from a standardised logistic regression, or None when a
    class has fewer images than folds (nothing to learn)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    if min(int(target.sum()), int((~target).sum())) < folds:
        return None
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    cv = StratifiedKFold(folds, shuffle=True, random_state=seed)
    return cross_val_predict(model, features, target, cv=cv, method="predict_proba")[:, 1]


def cv_predict(features: np.ndarray, values: np.ndarray, folds: int, seed: int) -> np.ndarray:
    """Held-out E[value | features] per image from a standardised ridge regression."""
    from sklearn.linear_model import Ridge
    from sklearn.model_selection import KFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    model = make_pipeline(StandardScaler(), Ridge(alpha=1.0))
    return cross_val_predict(model, features, values, cv=KFold(folds, shuffle=True,
                                                               random_state=seed))  # fmt: skip


def cv_class_proba(features: np.ndarray, labels: np.ndarray, folds: int, seed: int) -> np.ndarray:
    """Held-out class probabilities (n x classes) of a linear probe: a standardised
    multinomial logistic regression of the labels on ``features``."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=500))
    cv = StratifiedKFold(folds, shuffle=True, random_state=seed)
    return cross_val_predict(model, features, labels, cv=cv, method="predict_proba")


def auc(target: np.ndarray, proba: np.ndarray | None) -> float | None:
    from sklearn.metrics import roc_auc_score

    return None if proba is None else float(roc_auc_score(target, proba))


def late_features(logits: torch.Tensor) -> np.ndarray:
    """n x 3: max softmax, top-1 minus top-2 probability, entropy (nats) of ``logits``."""
    return confidence_features(logits.softmax(dim=1))


def confidence_features(p: torch.Tensor) -> np.ndarray:
    """n x 3: max, top-1 minus top-2 and entropy (nats) of class probabilities p (n x classes)."""
    top = p.topk(2, dim=1).values  # n x 2
    entropy = -(p * p.clamp_min(1e-12).log()).sum(dim=1)  # n
    return torch.stack([top[:, 0], top[:, 0] - top[:, 1], entropy], dim=1).numpy()


def main(args: Args) -> dict[str, Any]:
    if args.folds < 2:
        raise ValueError(f"--folds must be >= 2, got {args.folds}")
    try:
        import sklearn  # noqa: F401
    except ImportError as err:
        raise SystemExit(
            "scripts/route_headroom.py needs scikit-learn: pip install -e '.[analysis]'"
        ) from err
    device = prepare_device(args.device, args.threads)
    payload, backbone, gate = load_backbone_and_gate(args.checkpoint, map_location=device)
    if args.route is None and gate is None:
        raise ValueError(
            f"{args.checkpoint} is a {payload['kind']} checkpoint without a gate: give the "
            "route R with --route (N flags, block 0 first, e.g. 100011111001111110)"
        )
    backbone = backbone.to(memory_format=torch.channels_last).eval()
    data = load_cifar10(args.split, args.data_dir, progress=args.progress)
    batches = selection_batches(
        data, args.limit, args.seed, batch_size=args.batch_size, device=device,
        memory_format=torch.channels_last,
    )  # fmt: skip
    n = sum(len(y) for _, y in batches)
    k = backbone.num_decisions
    amp_ctx = (lambda: autocast(device, args.amp)) if args.amp != "none" else contextlib.nullcontext
    if args.route is None:
        gated = evaluate_gated(
            backbone, gate, batches, autocast=amp_ctx if args.amp != "none" else None
        )
        route = gated["routing"]["top_route"]
        top_share = gated["routing"]["top_route_share"]
    else:
        route, top_share = args.route, None
    flags = parse_route(route, backbone.num_blocks)
    print_summary(
        f"scripts/route_headroom.py: {args.checkpoint} ({payload['kind']}, ResNet-"
        f"{backbone.depth}), route {route}, alpha {args.alpha:g}, amp {args.amp}",
        device=device,
        data=images(n, args.split),
        steps=f"{1 + k} passes (R, then R with each of its {k} decisions flipped), then "
        f"{5 * k} linear models ({args.folds}-fold cross-validation)",
        out=args.json if args.json is not None else "stdout only (--json PATH to keep it)",
    )
    started = time.monotonic()
    labels = torch.cat([y.cpu() for _, y in batches])  # n
    with torch.inference_mode():
        base_logits, pooled = [], []
        for x, _ in batches:
            with amp_ctx():
                logits, feats = route_pass(backbone, flags, x, pooled=True)
            base_logits.append(logits.cpu())
            pooled.append([f.cpu() for f in feats])
        base = torch.cat(base_logits)  # n x classes
        feats = [torch.cat([p[i] for p in pooled]).numpy() for i in range(backbone.num_blocks)]
        ce_base = F.cross_entropy(base, labels, reduction="none")  # n
        right_base = base.argmax(dim=1) == labels  # n
        acc_base = right_base.float().mean().item()
        table = backbone.macs_table()
        block_flops = [(e - s) / table.full for e, s in
                       zip(table.block_execute, table.block_skip, strict=True)]  # fmt: skip
        late = late_features(base)  # n x 3
        rows = []
        for d in tqdm(range(k), disable=not args.progress, unit="decision"):
            flipped = list(flags)
            flipped[d + 1] = not flipped[d + 1]
            out = []
            for x, _ in batches:
                with amp_ctx():
                    out.append(route_pass(backbone, flipped, x, pooled=False)[0].cpu())
            logits = torch.cat(out)  # n x classes
            ce = F.cross_entropy(logits, labels, reduction="none")  # n
            right = logits.argmax(dim=1) == labels  # n
            sign = 1.0 if flags[d + 1] else -1.0  # flipping a run block skips it: +alpha / K
            delta = (sign * args.alpha / k - (ce - ce_base)).numpy()  # n
            target = delta > 0
            history = np.concatenate(feats[: d + 1], axis=1)  # n x sum(C_0..C_d)
            p_gate = cv_proba(feats[d], target, args.folds, args.seed)
            p_hist = cv_proba(history, target, args.folds, args.seed)
            p_late = cv_proba(late, target, args.folds, args.seed)
            probe = confidence_features(torch.from_numpy(
                cv_class_proba(history, labels.numpy(), args.folds, args.seed)))  # fmt: skip
            p_probe = cv_proba(probe, target, args.folds, args.seed)
            flip = cv_predict(history, delta, args.folds, args.seed) > 0  # n
            acc_policy = np.where(flip, right.numpy(), right_base.numpy()).mean()
            richer = np.concatenate([history, probe], axis=1)  # n x (sum(C_0..C_d) + 3)
            flip_probe = cv_predict(richer, delta, args.folds, args.seed) > 0  # n
            acc_probe = np.where(flip_probe, right.numpy(), right_base.numpy()).mean()
            acc_change = float((right.float() - right_base.float()).mean())  # flipping all
            rows.append(
                {
                    "decision": d,
                    "block": d + 1,
                    "route_runs_block": bool(flags[d + 1]),
                    "better": float(target.mean()),
                    "oracle_gain": float(np.maximum(delta, 0).mean()),
                    "mean_delta": float(delta.mean()),
                    "acc_up": float((right & ~right_base).float().mean()),
                    "acc_down": float((~right & right_base).float().mean()),
                    "auc_gate": auc(target, p_gate),
                    "auc_history": auc(target, p_hist),
                    "auc_late": auc(target, p_late),
                    "auc_probe": auc(target, p_probe),
                    "policy_flipped": float(flip.mean()),
                    "policy_gain": float((delta * flip).mean()),
                    "policy_acc": float(100 * (acc_policy - acc_base)),
                    "policy_flops": float(-sign * block_flops[d + 1] * flip.mean()),
                    "policy_vs_random": float(
                        100 * (acc_policy - acc_base - flip.mean() * acc_change)
                    ),
                    "probe_policy_flipped": float(flip_probe.mean()),
                    "probe_policy_vs_random": float(
                        100 * (acc_probe - acc_base - flip_probe.mean() * acc_change)
                    ),
                }
            )
    results: dict[str, Any] = {
        "checkpoint": args.checkpoint,
        "kind": payload["kind"],
        "depth": backbone.depth,
        "split": args.split,
        "num_images": n,
        "alpha": args.alpha,
        "route": route,
        "route_share": top_share,
        "route_accuracy": float(right_base.float().mean()),
        "route_flops_fraction": float(table.flops_fraction(torch.tensor([flags])).item()),
        "folds": args.folds,
        "amp": args.amp,
        "decisions": rows,
        "wall_s": time.monotonic() - started,
    }
    print(format_table(results))
    if args.json is not None:
        write_json(args.json, results)  # atomic, read back before it replaces the file
    return results


def format_table(results: dict[str, Any]) -> str:
    """The per-decision rows of :func:`main`'s results as a markdown table."""

    def num(v: float | None, fmt: str) -> str:
        return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, fmt)

    share = results["route_share"]
    lines = [
        f"route R = {results['route']} ({num(100 * share if share is not None else None, '.1f')}%"
        f" of images under the gate): val accuracy {100 * results['route_accuracy']:.2f}%, "
        f"FLOPs {100 * results['route_flops_fraction']:.1f}%; alpha {results['alpha']:g}, "
        f"reward unit alpha/K = {results['alpha'] / len(results['decisions']):.4f}",
        "",
        "| block | R | better % | oracle gain | acc up / down % | AUC gate | AUC history | "
        "AUC probe | AUC late | flipped % | policy gain | policy acc pts | policy FLOPs pts | "
        "vs random flips pts | with probe: flipped % / vs random pts |",
        "| ---: | :---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | "
        "---: | ---: | ---: |",
    ]
    for r in results["decisions"]:
        lines.append(
            f"| {r['block']} | {'run' if r['route_runs_block'] else 'skip'} | "
            f"{100 * r['better']:.1f} | {r['oracle_gain']:.4f} | "
            f"{100 * r['acc_up']:.2f} / {100 * r['acc_down']:.2f} | "
            f"{num(r['auc_gate'], '.3f')} | {num(r['auc_history'], '.3f')} | "
            f"{num(r['auc_probe'], '.3f')} | {num(r['auc_late'], '.3f')} | "
            f"{100 * r['policy_flipped']:.1f} | {r['policy_gain']:+.4f} | "
            f"{r['policy_acc']:+.2f} | {100 * r['policy_flops']:+.2f} | "
            f"{r['policy_vs_random']:+.2f} | {100 * r['probe_policy_flipped']:.1f} / "
            f"{r['probe_policy_vs_random']:+.2f} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main(tyro.cli(Args))

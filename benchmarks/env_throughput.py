"""Environment steps per second of SkipNet-CIFAR10-v0 with a random policy, and the limit.

On a ResNet-38 backbone (random weights: speed does not depend on them), a random policy
(execute each block with probability 0.5) steps

- ``single``: one :class:`skipenv.envs.env.SkipNetEnv`,
- ``sync``: ``gymnasium.vector.SyncVectorEnv`` of 64 single envs,
- ``native``: the batched :class:`skipenv.envs.vector_env.SkipNetVectorEnv` at N = 64 and 256,
- ``sb3-native``: the N = 256 native env behind :class:`skipenv.envs.sb3.SB3VecEnv`,

and, as the ceiling, ``limit``: the backbone's own batched real-skipping forward
(``SkipResNet.forward_skip``, batch 256 normalised images already on the device) at the same
skip rate, in block decisions per second (batch * K / time). One env step is one decision for
one image, so the two rates compare directly; both include the stem, the first block and the
head once per image.

Each timed repeat runs whole episodes (at least ``--min-episodes``, and at least
``--min-steps`` env steps), after one untimed warm-up episode. The cases run in rounds, each
round in a shuffled order, so slow drift of a shared machine affects them alike; a case's rate
is the median over ``--repeats`` rounds, and its ratio to the limit (``over_limit``) the median
of its per-round ratio to the limit's rate in the same round. ``--clock cpu`` times this
process's CPU time instead of wall time (CPU only; on a shared machine it leaves out the
waits for a core).

    python benchmarks/env_throughput.py                      # real CIFAR-10 val images
    python benchmarks/env_throughput.py --synthetic --repeats 3 --json results/env.json
"""

from __future__ import annotations

import argparse
import math
import random
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch
from gymnasium.vector import AutoresetMode, SyncVectorEnv

from skipenv.data.loader import normalize
from skipenv.data.splits import CifarSplit, load_cifar10
from skipenv.envs.env import SkipNetEnv
from skipenv.envs.sb3 import SB3VecEnv
from skipenv.envs.vector_env import SkipNetVectorEnv
from skipenv.models.resnet import SkipResNet, build_resnet
from skipenv.training.devices import resolve_device, tune_cpu_allocator
from skipenv.utils import write_json

EXECUTE_RATE = 0.5  # random policy: p(execute) per decided block


def synthetic_split(n: int, seed: int) -> CifarSplit:
    """Random uint8 images with random labels (speed does not depend on the pixels)."""
    gen = torch.Generator().manual_seed(seed)
    return CifarSplit(
        images=torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=gen),
        labels=torch.randint(0, 10, (n,), generator=gen),
        split="synthetic",
    )


def sync_cuda(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed_rate(
    run: Callable[[], int], device: torch.device, clock: str = "wall"
) -> tuple[float, float, int]:
    """(items ``run`` reports) / seconds of one call, the seconds and the items; wall time,
    or with ``clock="cpu"`` this process's CPU time."""
    now = time.process_time if clock == "cpu" else time.perf_counter
    sync_cuda(device)
    start = now()
    items = run()
    sync_cuda(device)
    elapsed = now() - start
    return items / elapsed, elapsed, items


def episodes_for(num_envs: int, k: int, min_episodes: int, min_steps: int) -> int:
    return max(min_episodes, math.ceil(min_steps / (num_envs * k)))


# ---------------------------------------------------------------------------- cases


def bench_single(env: SkipNetEnv, episodes: int, seed: int) -> Callable[[], int]:
    rng = np.random.default_rng(seed)
    env.reset(seed=seed)

    def run(n: int = episodes) -> int:
        steps = 0
        for _ in range(n):
            env.reset()
            terminated = False
            while not terminated:
                action = int(rng.random() < EXECUTE_RATE)
                _, _, terminated, _, _ = env.step(action)
                steps += 1
        return steps

    run(1)  # warm-up
    return run


def bench_vector(venv: gym.vector.VectorEnv, k: int, episodes: int, seed: int) -> Callable[[], int]:
    """A SAME_STEP vector env: every step call is one step of each of its envs."""
    rng = np.random.default_rng(seed)
    n = venv.num_envs
    venv.reset(seed=seed)

    def run(m: int = episodes) -> int:
        for _ in range(m * k):
            venv.step((rng.random(n) < EXECUTE_RATE).astype(np.int64))
        return m * k * n

    run(1)  # warm-up
    return run


def bench_sb3(venv: SB3VecEnv, k: int, episodes: int, seed: int) -> Callable[[], int]:
    rng = np.random.default_rng(seed)
    n = venv.num_envs
    venv.seed(seed)
    venv.reset()

    def run(m: int = episodes) -> int:
        for _ in range(m * k):
            venv.step((rng.random(n) < EXECUTE_RATE).astype(np.int64))
        return m * k * n

    run(1)  # warm-up
    return run


def bench_limit(
    model: SkipResNet,
    data: CifarSplit,
    batch_size: int,
    memory_format: torch.memory_format,
    episodes: int,
    device: torch.device,
    seed: int,
) -> Callable[[], int]:
    """Block decisions per second of the backbone's own batched real-skipping forward."""
    gen = torch.Generator().manual_seed(seed)
    index = torch.randint(0, len(data), (batch_size,), generator=gen)
    images = data.images.index_select(0, index).to(device)  # B x 3 x 32 x 32 uint8
    x = normalize(images, memory_format=memory_format)  # B x 3 x 32 x 32
    k = model.num_decisions
    execute = (torch.rand(batch_size, k, generator=gen) < EXECUTE_RATE).to(device)  # B x K

    def run(m: int = episodes) -> int:
        with torch.inference_mode():
            for _ in range(m):
                model.forward_skip(x, execute)
        return m * batch_size * k

    run(1)  # warm-up
    return run


# ---------------------------------------------------------------------------- main


def print_table(rows: list[dict]) -> None:
    header = (
        f"{'case':>11} {'envs':>5} {'steps/s':>10} {'/ limit':>8} {'episodes':>8} {'median s':>9}"
    )
    print(header)
    print("-" * len(header))
    for r in rows:
        over = "" if r["over_limit"] is None else f"{r['over_limit']:.3f}"
        print(
            f"{r['name']:>11} {r['num_envs']:>5} {r['steps_per_s']:>10.0f} {over:>8} "
            f"{r['episodes']:>8} {r['median_s']:>9.3f}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--depth", type=int, default=38)
    parser.add_argument("--sync-envs", type=int, default=64)
    parser.add_argument("--native-envs", type=int, nargs="+", default=[64, 256])
    parser.add_argument("--limit-batch", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=5, help="timed repeats per case")
    parser.add_argument("--min-episodes", type=int, default=2, help="whole episodes per repeat")
    parser.add_argument(
        "--min-steps", type=int, default=2048, help="env steps per repeat, at least"
    )
    parser.add_argument(
        "--synthetic", action="store_true", help="random uint8 images instead of CIFAR-10"
    )
    parser.add_argument(
        "--data-root", default=None, help="CIFAR-10 root (default: $SKIPNET_DATA, then cache)"
    )
    parser.add_argument("--split", default="val", help="CIFAR-10 split the images come from")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument(
        "--memory-format",
        choices=("auto", "channels_last", "contiguous"),
        default="auto",
        help="of the backbone and images, envs and limit alike (auto: the env's default, "
        "channels_last on CPU)",
    )
    parser.add_argument(
        "--threads", type=int, default=0, help="torch CPU threads (0: torch's default)"
    )
    parser.add_argument(
        "--default-malloc",
        action="store_true",
        help="keep glibc's default allocator settings "
        "(see skipenv.training.devices.tune_cpu_allocator)",
    )
    parser.add_argument(
        "--skip", nargs="*", default=[], help="cases to leave out: single sync native sb3 limit"
    )
    parser.add_argument(
        "--clock",
        choices=("wall", "cpu"),
        default="wall",
        help="wall time, or this process's CPU time (CPU only; steadier on a shared machine)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, help="write the rows as JSON here")
    args = parser.parse_args()

    device = resolve_device(args.device)
    if args.clock == "cpu" and device.type != "cpu":
        parser.error(f"--clock cpu times CPU work only; use --clock wall on {device}")
    tuned = device.type == "cpu" and not args.default_malloc and tune_cpu_allocator()
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    if args.synthetic:
        data = synthetic_split(5000, args.seed)
    else:
        data = load_cifar10(args.split, args.data_root)
    channels_last = {"auto": device.type == "cpu", "channels_last": True, "contiguous": False}[
        args.memory_format
    ]
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = build_resnet(args.depth).to(device, memory_format=fmt).eval().requires_grad_(False)
    k = model.num_decisions
    env_kwargs = {
        "backbone": model,
        "data": data,
        "device": str(device),
        "channels_last": channels_last,
    }
    print(
        f"device {device}, ResNet-{args.depth} (K = {k} decisions), data {data.split} "
        f"({len(data)} images), median of {args.repeats}, threads {torch.get_num_threads()}, "
        f"tuned allocator {tuned}, channels_last {channels_last}, {args.clock} clock"
    )

    rows: list[dict] = []
    cases: dict[tuple[str, int], tuple[Callable[[], int], int]] = {}  # run, episodes
    closers: list[Callable[[], None]] = []
    seed = args.seed
    if "single" not in args.skip:
        eps = episodes_for(1, k, args.min_episodes, args.min_steps)
        cases["single", 1] = (bench_single(SkipNetEnv(**env_kwargs), eps, seed), eps)
    if "sync" not in args.skip:
        n = args.sync_envs
        sync = SyncVectorEnv(
            [lambda: SkipNetEnv(**env_kwargs) for _ in range(n)],
            autoreset_mode=AutoresetMode.SAME_STEP,
        )
        eps = episodes_for(n, k, args.min_episodes, args.min_steps)
        cases["sync", n] = (bench_vector(sync, k, eps, seed), eps)
        closers.append(sync.close)
    if "native" not in args.skip:
        for n in args.native_envs:
            native = SkipNetVectorEnv(n, autoreset_mode=AutoresetMode.SAME_STEP, **env_kwargs)
            eps = episodes_for(n, k, args.min_episodes, args.min_steps)
            cases["native", n] = (bench_vector(native, k, eps, seed), eps)
            closers.append(native.close)
    if "sb3" not in args.skip:
        n = max(args.native_envs)
        venv = SB3VecEnv(SkipNetVectorEnv(n, autoreset_mode=AutoresetMode.SAME_STEP, **env_kwargs))
        eps = episodes_for(n, k, args.min_episodes, args.min_steps)
        cases["sb3-native", n] = (bench_sb3(venv, k, eps, seed), eps)
        closers.append(venv.close)
    if "limit" not in args.skip:
        b = args.limit_batch
        eps = episodes_for(b, k, args.min_episodes, args.min_steps)
        cases["limit", b] = (bench_limit(model, data, b, fmt, eps, device, seed), eps)

    results: dict[tuple[str, int], list[tuple[float, float, int]]] = {key: [] for key in cases}
    order = list(cases)
    shuffler = random.Random(args.seed)
    for _ in range(args.repeats):
        shuffler.shuffle(order)
        for key in order:
            results[key].append(timed_rate(cases[key][0], device, args.clock))
    for close in closers:
        close()
    limit_key = ("limit", args.limit_batch)
    for (name, num_envs), runs in results.items():
        rate = statistics.median(r for r, _, _ in runs)
        over_limit = None
        if limit_key in results:
            pairs = zip(runs, results[limit_key], strict=True)
            over_limit = round(statistics.median(r / lim for (r, _, _), (lim, _, _) in pairs), 4)
        rows.append(
            {
                "name": name,
                "num_envs": num_envs,
                "steps_per_s": round(rate, 1),
                "over_limit": over_limit,
                "median_s": round(statistics.median(t for _, t, _ in runs), 4),
                "steps_per_repeat": runs[-1][2],
                "episodes": cases[name, num_envs][1],
                "repeats": args.repeats,
                "depth": args.depth,
                "device": str(device),
                "data": data.split,
                "clock": args.clock,
            }
        )

    print()
    print_table(rows)
    rate = {(r["name"], r["num_envs"]): r["steps_per_s"] for r in rows}
    over = {(r["name"], r["num_envs"]): r["over_limit"] for r in rows}
    native = rate.get(("native", 256))
    if over.get(("native", 256)) is not None:
        ratio = over["native", 256]
        print(f"\nnative256 / limit  = {ratio:.3f}   (median per round; issue 13: >= 0.95)")
    if over.get(("sb3-native", 256)) is not None:
        ratio = over["sb3-native", 256]
        print(f"sb3-native256 / limit = {ratio:.3f}   (median per round; issue 13: >= 0.93)")
    if native is not None and ("sync", args.sync_envs) in rate:
        ratio = native / rate[("sync", args.sync_envs)]
        print(f"native256 / sync{args.sync_envs} = {ratio:.2f}    (target >= 3: {ratio >= 3})")
    if args.json:
        write_json(args.json, rows)
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()

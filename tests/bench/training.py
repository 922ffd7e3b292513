"""Benchmarks (not tests): ``make bench`` or ``python -m tests.bench.training``.

Prints, in one run, medians (with min and max) of repeated measurements:
  - the sgemm rate this machine reaches at the model's matrix shapes and on a large square;
  - training time of our numpy MLP and of PyTorch CPU on identical work (784-512-768-10,
    batch 128, lr 0.1, float32, the notebook's end-of-epoch full-training-set loss), their
    ratio, and the GFLOP/s achieved;
  - the wall time of a reduced seed grid with workers × BLAS threads = 1×2 and 2×1;
  - per-trial framework overhead (storage, claiming, bookkeeping; trivial objective) on our
    SQLite storage against optuna's in-memory storage, and trials/s with 8 worker processes;
  - what a checkpoint every epoch costs a sweep trial of the training rows' model, against
    the epoch it follows (target ≤ 5%, ``sweep.trial.checkpoint.CHECKPOINT_OVERHEAD``);
  - each kind of distortion of the training digits against a 784-800-10 step (#25).
``--only SECTION`` (repeatable) runs some sections alone, e.g. ``--only checkpoints``.
PyTorch is optional (the ``bench`` extra: ``pip install torch==2.13.0``, a CPU build); without it
that row says so.
"""

from __future__ import annotations

import argparse
import itertools
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

SHAPES = (784, 512, 768, 10)
BATCH, LR = 128, 0.1


def _stats(samples: list[float]) -> str:
    return (
        f"median {statistics.median(samples):.3f}  (min {min(samples):.3f}, max {max(samples):.3f})"
    )


def machine_facts() -> list[str]:
    facts = [f"python {platform.python_version()}, numpy {np.__version__}, cores {os.cpu_count()}"]
    try:
        model = next(
            ln.split(":", 1)[1].strip()
            for ln in Path("/proc/cpuinfo").read_text().splitlines()
            if ln.startswith("model name")
        )
        facts.append(f"cpu: {model}")
    except (OSError, StopIteration):
        pass
    config = np.show_config(mode="dicts") if hasattr(np, "show_config") else {}
    blas = config.get("Build Dependencies", {}).get("blas", {}) if isinstance(config, dict) else {}
    facts.append(f"blas: {blas.get('name', '?')} {blas.get('version', '')}".rstrip())
    env = {
        k: os.environ[k] for k in ("OPENBLAS_CORETYPE", "OPENBLAS_NUM_THREADS") if k in os.environ
    }
    if env:
        facts.append(f"environment: {env}")
    return facts


def flops_per_epoch(n: int, *, full_eval: bool, n_valid: int = 10_000) -> float:
    """Matrix-product FLOPs of one epoch: forward 2·Σ(fan_in·fan_out) per example, backward
    twice that except the input layer's dX, plus the evaluation passes (forward only)."""
    pairs = list(itertools.pairwise(SHAPES))
    forward = 2 * sum(a * b for a, b in pairs)
    backward = 2 * forward - 2 * SHAPES[0] * SHAPES[1]
    evaluated = n_valid + (n if full_eval else 0)
    return n * (forward + backward) + evaluated * forward


def sgemm_rate(m: int, k: int, n: int, repeats: int = 5) -> list[float]:
    """GFLOP/s of float32 (m, k) @ (k, n), repeated until each sample lasts ~0.2 s."""
    a = np.random.default_rng(0).random((m, k), dtype=np.float32)
    b = np.random.default_rng(1).random((k, n), dtype=np.float32)
    a @ b
    start, reps = time.perf_counter(), 0
    while time.perf_counter() - start < 0.05:
        a @ b
        reps += 1
    reps = max(1, int(reps * 4))
    out = []
    for _ in range(repeats):
        t = time.perf_counter()
        for _ in range(reps):
            a @ b
        out.append(2 * m * k * n * reps / (time.perf_counter() - t) / 1e9)
    return out


def _matmuls(w: list[np.ndarray], x: np.ndarray, evaluated: np.ndarray) -> None:
    """One epoch's matrix products, nothing else: forward and backward of every batch of
    ``x`` at the training loop's shapes, then a forward pass over ``evaluated`` in chunks of
    5000. A (batch, 10) product stands in for the output gradient: same shape, same cost."""
    for lo in range(0, len(x), BATCH):
        xb = x[lo : lo + BATCH]
        h1 = xb @ w[0]
        h2 = h1 @ w[1]
        d3 = h2 @ w[2]
        d2 = d3 @ w[2].T
        h2.T @ d3, h1.T @ d2, xb.T @ (d2 @ w[1].T)  # dW3, dW2, dW1 (through dX2)
    for lo in range(0, len(evaluated), 5000):
        evaluated[lo : lo + 5000] @ w[0] @ w[1] @ w[2]


def _weights(h1: int, h2: int) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.random((a, b), dtype=np.float32) for a, b in itertools.pairwise((784, h1, h2, 10))]


def gemm_bound(data, epochs: int) -> float:
    """Seconds of the training run's matrix products alone (with the full-set and validation
    passes): the floor for any implementation on this BLAS, everything else only adds."""
    w = _weights(*SHAPES[1:3])
    evaluated = np.concatenate([data.train.x, data.valid.x]).astype(np.float32, copy=False)
    start = time.perf_counter()
    for _ in range(epochs):
        _matmuls(w, data.train.x, evaluated)
    return time.perf_counter() - start


def train_numpy(data, epochs: int) -> float:
    from mlp import MLP, TrainConfig, fit

    model = MLP(*SHAPES[1:3], dtype="float32", seed=0)
    start = time.perf_counter()
    fit(model, data, TrainConfig(epochs=epochs, batch_size=BATCH, learning_rate=LR))
    return time.perf_counter() - start


def train_torch(data, epochs: int) -> float:
    """The same loop in PyTorch: same shapes, mean cross-entropy, plain SGD, full-set loss."""
    import torch

    torch.set_num_threads(os.cpu_count() or 1)
    x, y = torch.from_numpy(data.train.x), torch.from_numpy(data.train.y)
    xv = torch.from_numpy(data.valid.x)
    layers = [torch.nn.Linear(a, b) for a, b in itertools.pairwise(SHAPES)]
    net = torch.nn.Sequential(layers[0], torch.nn.ReLU(), layers[1], torch.nn.ReLU(), layers[2])
    params = list(net.parameters())
    start = time.perf_counter()
    for _ in range(epochs):
        for lo in range(0, len(y), BATCH):
            loss = torch.nn.functional.cross_entropy(net(x[lo : lo + BATCH]), y[lo : lo + BATCH])
            for p in params:
                p.grad = None
            loss.backward()
            with torch.no_grad():
                for p in params:
                    p.sub_(p.grad, alpha=LR)
        with torch.no_grad():
            torch.nn.functional.cross_entropy(net(x), y).item()
            net(xv).argmax(1)
    return time.perf_counter() - start


def _gemm_epochs(sizes: list[tuple[int, int]], epochs: int, train_size: int) -> float:
    """Seconds of the matrix products alone of ``epochs`` epochs of each (h1, h2) in turn,
    validation pass included, as a sweep trial runs them."""
    from mlp import load_mnist

    data = load_mnist().head(train_size)
    start = time.perf_counter()
    for h1, h2 in sizes:
        w = _weights(h1, h2)
        for _ in range(epochs):
            _matmuls(w, data.train.x, data.valid.x)
    return time.perf_counter() - start


def grid_gemm_bound(*, epochs: int, train_size: int) -> float:
    """The seed grid's floor on 2 workers × 1 BLAS thread: each worker times the matrix
    products alone of every other point (largest first, as the queue orders them), and the
    slower worker's total is the bound."""
    from joblib import Parallel, delayed, parallel_config

    from mlp.model import parameter_count
    from sweep.study.space import grid_points
    from sweep.study.spec import load_spec

    spec = load_spec("studies/seed-grid.toml")
    # Largest first, by the same measure the queue orders grid points by.
    sizes = sorted(((p["hidden_1"], p["hidden_2"]) for p in grid_points(spec)),
                   key=lambda hw: -parameter_count(*hw))  # fmt: skip
    with parallel_config(backend="loky", inner_max_num_threads=1):
        times = Parallel(n_jobs=2)(
            delayed(_gemm_epochs)(sizes[i::2], epochs, train_size) for i in range(2)
        )
    return max(times)


def grid_wall(jobs: int, threads: int, *, epochs: int, train_size: int) -> float:
    """Wall time of the seed grid (24 points) at reduced epochs, through the real CLI."""
    text = Path("studies/seed-grid.toml").read_text()
    text = text.replace("epochs = 10", f"epochs = {epochs}")
    text = text.replace("[train]", f"[data]\ntrain_size = {train_size}\n\n[train]")
    text = text.replace("[budget]", f"threads = {threads}\n\n[budget]")  # ends [study]
    with tempfile.TemporaryDirectory() as tmp:
        study = Path(tmp, "grid.toml")
        study.write_text(text)
        cmd = [sys.executable, "-m", "sweep.cli", "run", str(study), "--jobs", str(jobs),
               "--storage", f"sqlite:///{tmp}/b.db"]  # fmt: skip
        start = time.perf_counter()
        subprocess.run(cmd, check=True, capture_output=True)
        return time.perf_counter() - start


def _trivial(trial) -> float:
    return trial.suggest_float("x", 0, 1)


def storage_overhead(n: int) -> tuple[float, float]:
    """ms per trial with a trivial objective: our SQLite queue against optuna in-memory."""
    import optuna

    from sweep.worker import serve

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    # The same sampler on both sides, so the difference is storage and bookkeeping.
    memory = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    start = time.perf_counter()
    memory.optimize(_trivial, n_trials=n)
    base = (time.perf_counter() - start) / n * 1e3
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{tmp}/o.db"
        _queued_study(url, n)
        study = _study_o(url)
        start = time.perf_counter()
        assert serve(study, _trivial, run_id="bench") == n
        ours = (time.perf_counter() - start) / n * 1e3
    return ours, base


def _queued_study(url: str, n: int):
    """A study "o" on our storage with ``n`` empty slots queued, as `sweep run` makes them."""
    import optuna

    from sweep.queue.storage import open_storage

    study = optuna.create_study(
        study_name="o", storage=open_storage(url), sampler=optuna.samplers.RandomSampler(seed=0)
    )
    for _ in range(n):
        study.enqueue_trial({}, skip_if_exists=False)
    return study


def _study_o(url: str):
    """Study "o" as a worker opens it (``sweep.worker.work`` with a random sampler)."""
    import optuna

    from sweep.queue.storage import open_storage
    from sweep.worker import as_worker_study

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.load_study(
        study_name="o", storage=open_storage(url), sampler=optuna.samplers.RandomSampler()
    )
    return as_worker_study(study)


def _serve_from(url: str) -> int:
    from sweep.worker import serve

    return serve(_study_o(url), _trivial, run_id="bench")


def _imported() -> bool:
    import sweep.queue.writeback
    import sweep.runner  # noqa: F401

    return True


def parallel_rate(n: int, workers: int) -> float:
    """Trials per second with ``workers`` processes claiming from one SQLite queue, in the
    steady state: the worker processes are started (and have imported optuna) beforehand,
    as in a sweep whose trials outnumber its workers."""
    from joblib import Parallel, delayed

    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{tmp}/p.db"
        _queued_study(url, n)
        Parallel(n_jobs=workers)(delayed(_imported)() for _ in range(workers))
        start = time.perf_counter()
        ran = Parallel(n_jobs=workers)(delayed(_serve_from)(url) for _ in range(workers))
        elapsed = time.perf_counter() - start
        assert sum(ran) == n
        return n / elapsed


SECTIONS = ("sgemm", "training", "grid", "overhead", "checkpoints", "distortions")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=2, help="epochs per training run")
    parser.add_argument("--repeats", type=int, default=3, help="repeats of each training run")
    parser.add_argument("--grid-epochs", type=int, default=1)
    parser.add_argument("--skip-grid", action="store_true")
    parser.add_argument("--quick", action="store_true", help="tiny sizes: checks that it runs")
    parser.add_argument("--only", action="append", choices=SECTIONS,
                        help="run this section (repeatable); all by default")  # fmt: skip
    args = parser.parse_args(argv)
    wanted = set(args.only or SECTIONS) - ({"grid"} if args.skip_grid else set())

    from mlp import load_mnist

    print("# mlp-sweep benchmark\n")
    for fact in machine_facts():
        print(f"- {fact}")
    data = load_mnist()
    if args.quick:
        data = data.head(2_000)

    if "sgemm" in wanted:
        _sgemm_section(args.quick)
    if "training" in wanted:
        _training_section(data, args.epochs, args.repeats)
    if "grid" in wanted:
        _grid_section(args.grid_epochs, 2_000 if args.quick else len(data.train.y))
    if "overhead" in wanted:
        _overhead_section(args.quick, args.repeats)
    if "checkpoints" in wanted:
        from tests.bench.checkpoints import section  # it imports this module's helpers

        for line in section(data, epochs=1 if args.quick else 2, repeats=args.repeats):
            print(line)
    if "distortions" in wanted:
        from tests.bench.distortions import section as distortions  # it too

        print("\n".join(distortions(data, quick=args.quick)))


def _sgemm_section(quick: bool) -> None:
    print("\n## sgemm (float32), GFLOP/s")
    side, sgemm_repeats = (256, 1) if quick else (2048, 5)
    peak = sgemm_rate(side, side, side, sgemm_repeats)
    print(f"{side}³ square:".ljust(26) + _stats(peak))
    for m, k, nn in [(BATCH, 784, 512), (BATCH, 512, 768), (784, BATCH, 512)]:
        rates = sgemm_rate(m, k, nn, sgemm_repeats)
        print(f"({m}, {k}) @ ({k}, {nn}):".ljust(26) + _stats(rates))


def _training_section(data, epochs: int, repeats: int) -> None:
    print(f"\n## training, {epochs} epoch(s) of 784-512-768-10, seconds ({repeats} runs)")
    # Interleaved, so that a slow spell of a shared machine hits every row alike.
    runs: dict[str, list[float]] = {"bound": [], "ours": [], "torch": []}
    try:
        import torch  # noqa: F401
    except ImportError:
        del runs["torch"]
    for _ in range(repeats):
        runs["bound"].append(gemm_bound(data, epochs))
        runs["ours"].append(train_numpy(data, epochs))
        if "torch" in runs:
            runs["torch"].append(train_torch(data, epochs))
    flops = flops_per_epoch(len(data.train.y), full_eval=True) * epochs
    ours, bound = statistics.median(runs["ours"]), statistics.median(runs["bound"])
    print(f"GEMMs alone: {_stats(runs['bound'])}   {flops / bound / 1e9:.0f} GFLOP/s")
    print(f"numpy MLP:   {_stats(runs['ours'])}   {flops / ours / 1e9:.0f} GFLOP/s, "
          f"{bound / ours:.0%} of the GEMM bound")  # fmt: skip
    if "torch" in runs:
        theirs = statistics.median(runs["torch"])
        print(f"PyTorch:     {_stats(runs['torch'])}   {bound / theirs:.0%} of the GEMM bound; "
              f"ours / PyTorch = {ours / theirs:.2f}")  # fmt: skip
    else:
        print("PyTorch:     not installed (pip install 'mlp-sweep[bench]' for this row)")


def _grid_section(epochs: int, train_size: int) -> None:
    print(f"\n## seed grid, 24 points × {epochs} epoch(s), wall seconds")
    for jobs, threads in [(1, 2), (2, 1)]:
        wall = grid_wall(jobs, threads, epochs=epochs, train_size=train_size)
        print(f"{jobs} worker(s) × {threads} BLAS thread(s): {wall:.1f}")
    bound = grid_gemm_bound(epochs=epochs, train_size=train_size)
    full = bound * 10 / epochs
    print(f"GEMMs alone, 2 workers × 1 thread: {bound:.1f}  (the full 10-epoch grid's floor: "
          f"{full:.0f} s)")  # fmt: skip


def _overhead_section(quick: bool, repeats: int) -> None:
    print("\n## framework overhead, trivial objective")
    queued, parallel, workers = (20, 20, 2) if quick else (300, 400, 8)
    overheads = [storage_overhead(queued) for _ in range(repeats)]
    base_ms = statistics.median(base for _, base in overheads)
    print(f"ms per trial, {queued} queued: {_stats([o for o, _ in overheads])} on SQLite (ours), "
          f"median {base_ms:.2f} in memory (optuna)")  # fmt: skip
    rates = [parallel_rate(parallel, workers) for _ in range(repeats)]
    print(f"trials/s, {workers} workers on one SQLite queue: {_stats(rates)}")


if __name__ == "__main__":
    main()

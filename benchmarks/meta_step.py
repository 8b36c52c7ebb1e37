r"""Meta-step speed: compile time, step time, throughput, FLOP/s, memory.

Prints a table and writes JSON. Every row is measured in the same process,
beside the float32 matmul rate of this machine (the CPU's practical peak),
so ratios between rows are side by side. Rows differ in how a meta-batch's
tasks run: ``loop`` (one compiled single-task program per task, the CPU
default) and ``vmap`` (one program for the whole meta-batch, the GPU
default), and in the adaptation of one new task.

  python benchmarks/meta_step.py --preset=tiny --out=benchmarks/results/tiny.json
  python benchmarks/meta_step.py --preset=quickstart
  python benchmarks/meta_step.py --preset=metanas     # the MetaNAS Omniglot size

Not yet here (issue 8): single-path sampling, bf16, device-count rows.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from base import meta, ops  # pylint: disable=g-import-not-at-top
from base import prior as prior_lib
from base.adaptation import AdaptConfig
from base.data import Episode
from base.supernet import SupernetSpec, count_params
from base.train import adapt

PRESETS = {
    # name: (spec fields, ways, support per task, queries per task, image
    #        size, channels, tasks per meta-step, inner steps)
    "tiny": (dict(channels=4, num_cells=2, num_nodes=1, stem_multiplier=1,
                  primitives=("none", "max_pool_3x3", "skip_connect",
                              "sep_conv_3x3"), reduction_cells=(1,)),
             3, 3, 6, 8, 1, 2, 2),
    "quickstart": (dict(channels=8, num_cells=2, num_nodes=2,
                        stem_multiplier=2,
                        primitives=tuple(p for p in ops.DARTS_PRIMITIVES
                                         if "5x5" not in p),
                        reduction_cells=(1,)),
                   5, 5, 25, 8, 1, 8, 3),
    # MetaNAS's Omniglot setting: 4 cells, 3 nodes, 28 channels, 7 ops, 20
    # images per inner batch, 10 tasks a meta-step, 5 inner steps.
    "metanas": (dict(channels=28, num_cells=4, num_nodes=3, stem_multiplier=3,
                     primitives=ops.METANAS_PRIMITIVES, reduction_cells=(1, 2)),
                20, 20, 20, 28, 1, 10, 5),
}


def matmul_rate(size: int = 2048, repeats: int = 5) -> float:
  """float32 GFLOP/s of a size x size matmul: the practical peak."""
  a = jnp.ones((size, size), jnp.float32)
  f = jax.jit(lambda x: x @ x)
  f(a).block_until_ready()
  start = time.perf_counter()
  for _ in range(repeats):
    f(a).block_until_ready()
  return 2 * size ** 3 * repeats / (time.perf_counter() - start) / 1e9


def random_episodes(rng, tasks, ways, support, queries, size, channels):
  def labels(n):
    return np.tile(np.arange(ways), n // ways + 1)[:n].astype(np.int32)
  return Episode(
      rng.random((tasks, support, size, size, channels), np.float32),
      np.tile(labels(support), (tasks, 1)),
      rng.random((tasks, queries, size, size, channels), np.float32),
      np.tile(labels(queries), (tasks, 1)))


def time_meta_step(prior, episodes, cfg, opt, steps):
  state = meta.init_meta_state(prior, opt)
  temperature = jnp.float32(1.0)
  start = time.perf_counter()
  state, metrics = meta.meta_step(state, episodes, jax.random.key(0),
                                  temperature, cfg=cfg, opt_cfg=opt)
  jax.block_until_ready(metrics)
  compile_seconds = time.perf_counter() - start
  times = []
  for i in range(steps):
    start = time.perf_counter()
    state, metrics = meta.meta_step(state, episodes, jax.random.key(i + 1),
                                    temperature, cfg=cfg, opt_cfg=opt)
    jax.block_until_ready(metrics)
    times.append(time.perf_counter() - start)
  return compile_seconds, float(np.median(times))


def task_flops(prior, episodes, cfg) -> float | None:
  """XLA's FLOP count of one task's meta-gradient (None if unavailable)."""
  episode = jax.tree.map(lambda a: a[0], episodes)
  lowered = meta.task_meta_gradient.lower(prior, episode, jax.random.key(0),
                                          jnp.float32(1.0), cfg=cfg)
  try:
    cost = lowered.compile().cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return float(cost.get("flops", 0.0)) or None
  except Exception:  # pylint: disable=broad-except
    return None


def main(argv=None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--preset", choices=sorted(PRESETS), default="tiny")
  parser.add_argument("--steps", type=int, default=5,
                      help="timed meta-steps per row (after one warm-up)")
  parser.add_argument("--modes", default="loop,vmap")
  parser.add_argument("--out", default="")
  args = parser.parse_args(argv)

  fields, ways, support, queries, size, channels, tasks, inner = PRESETS[
      args.preset]
  spec = SupernetSpec(num_classes=ways, in_channels=channels, **fields)
  prior = prior_lib.init_prior(spec, jax.random.key(0), 0.05)
  cfg = AdaptConfig(steps=inner, lr_weights=1.0, lr_arch=2.0)
  episodes = random_episodes(np.random.default_rng(0), tasks, ways, support,
                             queries, size, channels)
  peak = matmul_rate()
  rows = []
  for mode in args.modes.split(","):
    opt = meta.MetaOptConfig(task_batching=mode)
    compile_seconds, step = time_meta_step(prior, episodes, cfg, opt,
                                           args.steps)
    rows.append({"row": f"meta-step, {mode}", "compile_s": compile_seconds,
                 "step_s": step})
  # After the timed rows, so that its compilation is not credited to them.
  flops = task_flops(prior, episodes, cfg)
  for row in rows:
    step = row["step_s"]
    images = tasks * (support * inner + queries)
    achieved = flops * tasks / step / 1e9 if flops else None
    row.update(tasks_per_s=tasks / step, images_per_s=images / step,
               gflops_per_s=achieved,
               fraction_of_matmul_peak=achieved / peak if achieved else None)
  episode = jax.tree.map(lambda a: a[0], episodes)
  adapt(prior, episode.support_x, episode.support_y, config=cfg, derive=False)
  times = [adapt(prior, episode.support_x, episode.support_y, config=cfg,
                 derive=False, seed=i).seconds for i in range(args.steps)]
  rows.append({"row": f"adapt to a new task ({inner} steps)",
               "compile_s": None, "step_s": float(np.median(times)),
               "tasks_per_s": 1 / float(np.median(times)),
               "images_per_s": None, "gflops_per_s": None,
               "fraction_of_matmul_peak": None})
  report = {
      "preset": args.preset, "backend": jax.default_backend(),
      "device": str(jax.devices()[0]), "machine": platform.processor()
      or platform.machine(), "cpu_count": os.cpu_count(),
      "weights": count_params(prior.weight_mean),
      "tasks_per_step": tasks, "inner_steps": inner,
      "matmul_gflops_per_s": peak, "task_meta_gradient_flops": flops,
      "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
      "rows": rows}
  print(f"preset {args.preset}: {report['weights']} weights, {tasks} tasks x "
        f"{inner} inner steps; {report['backend']} ({report['cpu_count']} "
        f"cores); float32 matmul {peak:.0f} GFLOP/s; peak RSS "
        f"{report['peak_rss_mib']:.0f} MiB")
  print("| row | compile s | median s | tasks/s | images/s | GFLOP/s | of peak |")
  print("| --- | --- | --- | --- | --- | --- | --- |")
  fmt = lambda v, f: "-" if v is None else format(v, f)
  for r in rows:
    print(f"| {r['row']} | {fmt(r['compile_s'], '.1f')} | "
          f"{fmt(r['step_s'], '.4f')} | {fmt(r['tasks_per_s'], '.1f')} | "
          f"{fmt(r['images_per_s'], '.0f')} | {fmt(r['gflops_per_s'], '.2f')} "
          f"| {fmt(r['fraction_of_matmul_peak'], '.1%')} |")
  if args.out:
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
      json.dump(report, f, indent=2)
  return report


if __name__ == "__main__":
  main()

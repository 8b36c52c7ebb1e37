r"""Meta-step speed: compile time, step time, throughput, FLOP/s, memory.

Prints a table and writes JSON. Every row is measured in the same process,
beside the float32 matmul rate of this machine (the CPU's practical peak),
so ratios between rows are side by side. A row is one way to run the same
meta-step (``--rows``, comma-separated; default: every row of the preset):

* ``default``: what ``meta.task_batching="auto"`` picks on this backend
  (CPU: a per-task Python loop of compiled programs, inner steps stepwise;
  one GPU: tasks vmapped in one program; several devices: sharded);
* ``single_path`` / ``soft``: hard single-path samples (only the sampled op
  of each edge runs) against the soft mixture of all ops;
* ``loop_fused``: the per-task loop with each task's inner steps and outer
  gradient in one compiled program (``lax.scan``);
* ``vmap``: all tasks in one compiled program (the vectorised meta-step);
* ``bf16``: mixed precision;
* ``per_step_noise``: the default row with fresh (α, w) noise at every inner
  step and for the query term (``adapt.inner_noise="per_step"``) instead of
  the default's one draw per task for single-path samples;
* ``tasks_x2``, ``steps_x2``, ``width_x2``, ``image_32``: the default row
  with twice the meta-batch, twice the inner steps, twice the channels, or
  32x32 images;
* ``adapt``: adapting a prior to one new task (the preset's inner steps), and
  ``adapt_50``: 50 steps, the MetaNAS reference's test-time budget.

  python benchmarks/meta_step.py --preset=tiny --out=benchmarks/results/tiny.json
  python benchmarks/meta_step.py --preset=metanas --steps=2 \
      --rows=single_path,soft,adapt,adapt_50
  python benchmarks/meta_step.py --preset=quickstart --devices=4   # simulated

``--devices=N`` on CPU simulates N devices (XLA's host platform device
count) so that the sharded meta-step's row can be measured anywhere.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import resource
import sys
import time

# --devices must act before JAX starts.
if __name__ == "__main__" and any(a.startswith("--devices=") for a in
                                  sys.argv):
  _count = [a.split("=", 1)[1] for a in sys.argv
            if a.startswith("--devices=")][0]
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_"
                             f"host_platform_device_count={_count}").strip()

import jax  # pylint: disable=g-import-not-at-top
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from base import meta, ops  # pylint: disable=g-import-not-at-top
from base import prior as prior_lib
from base.adaptation import AdaptConfig
from base.data import Episode
from base.supernet import SupernetSpec, count_params
from base.task_adaptation import adapt
from benchmarks.report import write_json


@dataclasses.dataclass(frozen=True)
class Preset:
  """A supernet and meta-batch shape to time."""
  spec: dict
  ways: int
  support: int  # images per task per inner step
  queries: int
  image_size: int
  channels: int
  tasks: int
  inner_steps: int


PRESETS = {
    "tiny": Preset(dict(channels=4, num_cells=2, num_nodes=1,
                        stem_multiplier=1,
                        primitives=("none", "max_pool_3x3", "skip_connect",
                                    "sep_conv_3x3"), reduction_cells=(1,)),
                   3, 3, 6, 8, 1, 2, 2),
    "quickstart": Preset(dict(channels=8, num_cells=2, num_nodes=2,
                              stem_multiplier=2,
                              primitives=tuple(p for p in ops.DARTS_PRIMITIVES
                                               if "5x5" not in p),
                              reduction_cells=(1,)),
                         5, 5, 25, 8, 1, 8, 3),
    # The MetaNAS reference's Omniglot setting: 4 cells x 3 nodes, 28
    # channels kept at reductions (cells 1 and 3), its 7 ops (462,104
    # weights: the reference's 462,272 less its stem norm's affine ones), 10
    # tasks a meta-step, 5 inner steps on batches of 20 images, 20 queries.
    "metanas": Preset(dict(channels=28, num_cells=4, num_nodes=3,
                           stem_multiplier=3,
                           primitives=ops.METANAS_PRIMITIVES,
                           reduction_cells=(1, 3), channel_scale=1),
                      20, 20, 20, 28, 1, 10, 5),
}

ROWS = ("default", "single_path", "soft", "loop_fused", "vmap", "bf16",
        "per_step_noise", "tasks_x2", "steps_x2", "width_x2", "image_32",
        "adapt", "adapt_50")


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
  """(compile + first step seconds, median step seconds) after warm-up."""
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
  """XLA's FLOP count of one task's fused meta-gradient (soft mixture)."""
  episode = jax.tree.map(lambda a: a[0], episodes)
  cfg = dataclasses.replace(cfg, single_path=False, hard=False)
  try:
    lowered = meta.task_meta_gradient.lower(
        prior, episode, jax.random.key(0), jnp.float32(1.0), cfg=cfg)
    cost = lowered.compile().cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return float(cost.get("flops", 0.0)) or None
  except Exception:  # pylint: disable=broad-except
    return None


def peak_memory_mib() -> float:
  """Peak device memory on accelerators, peak RSS of the process on CPU."""
  stats = None
  try:
    stats = jax.devices()[0].memory_stats()
  except Exception:  # pylint: disable=broad-except
    pass
  if stats and "peak_bytes_in_use" in stats:
    return stats["peak_bytes_in_use"] / 2 ** 20
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def row_setup(name: str, preset: Preset, single_path_default: bool):
  """(preset, AdaptConfig fields, MetaOptConfig fields) of a row."""
  adapt_fields = dict(single_path=single_path_default)
  opt_fields = {}
  if name == "single_path":
    adapt_fields["single_path"] = True
  elif name == "soft":
    adapt_fields["single_path"] = False
  elif name == "loop_fused":
    opt_fields = dict(task_batching="loop", inner_execution="fused")
  elif name == "vmap":
    opt_fields = dict(task_batching="vmap")
  elif name == "bf16":
    adapt_fields["compute_dtype"] = "bfloat16"
  elif name == "per_step_noise":
    adapt_fields["inner_noise"] = "per_step"
  elif name == "tasks_x2":
    preset = dataclasses.replace(preset, tasks=2 * preset.tasks)
  elif name == "steps_x2":
    preset = dataclasses.replace(preset, inner_steps=2 * preset.inner_steps)
  elif name == "width_x2":
    preset = dataclasses.replace(preset, spec=dict(
        preset.spec, channels=2 * preset.spec["channels"]))
  elif name == "image_32":
    preset = dataclasses.replace(preset, image_size=32)
  return preset, adapt_fields, opt_fields


def describe(opt: meta.MetaOptConfig, cfg: AdaptConfig) -> str:
  batching = meta.resolve_task_batching(opt.task_batching)
  inner = (f", {meta.resolve_inner_execution(opt, cfg)}"
           if batching == "loop" else "")
  path = "single-path" if cfg.single_path else "soft"
  dtype = ", bf16" if cfg.compute_dtype == "bfloat16" else ""
  noise = "noise per task" if cfg.noise_per_task else "noise per step"
  return f"{batching}{inner}, {path}{dtype}, {noise}"


def main(argv=None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--preset", choices=sorted(PRESETS), default="tiny")
  parser.add_argument("--steps", type=int, default=3,
                      help="timed meta-steps per row (after one warm-up)")
  parser.add_argument("--rows", default=",".join(ROWS))
  parser.add_argument("--single_path", type=int, default=1,
                      help="whether rows other than 'soft' use single path")
  parser.add_argument("--devices", type=int, default=0,
                      help="simulated CPU devices (set before JAX starts)")
  parser.add_argument("--out", default="")
  args = parser.parse_args(argv)
  names = [r.strip() for r in args.rows.split(",") if r.strip()]
  unknown = sorted(set(names) - set(ROWS))
  if unknown:
    parser.error(f"unknown rows {unknown}; choose from {', '.join(ROWS)}")

  base_preset = PRESETS[args.preset]
  peak = matmul_rate()
  rows = []
  for name in names:
    preset, adapt_fields, opt_fields = row_setup(name, base_preset,
                                                 bool(args.single_path))
    spec = SupernetSpec(num_classes=preset.ways, in_channels=preset.channels,
                        **preset.spec)
    prior = prior_lib.init_prior(spec, jax.random.key(0), 0.05)
    cfg = AdaptConfig(steps=preset.inner_steps, lr_weights=1.0, lr_arch=2.0,
                      **adapt_fields)
    episodes = random_episodes(np.random.default_rng(0), preset.tasks,
                               preset.ways, preset.support, preset.queries,
                               preset.image_size, preset.channels)
    if name.startswith("adapt"):
      steps = 50 if name == "adapt_50" else preset.inner_steps
      episode = jax.tree.map(lambda a: a[0], episodes)
      start = time.perf_counter()
      adapt(prior, episode.support_x, episode.support_y, config=cfg,
            steps=steps, derive=False)
      compile_seconds = time.perf_counter() - start
      times = [adapt(prior, episode.support_x, episode.support_y, config=cfg,
                     steps=steps, derive=False, seed=i).seconds
               for i in range(args.steps)]
      step = float(np.median(times))
      rows.append({"row": f"adapt to a new task ({steps} steps, "
                          f"{'single-path' if cfg.single_path else 'soft'})",
                   "key": name, "compile_s": compile_seconds, "step_s": step,
                   "tasks_per_s": 1 / step,
                   "images_per_s": preset.support * steps / step,
                   "gflops_per_s": None, "fraction_of_matmul_peak": None,
                   "weights": count_params(prior.weight_mean)})
      print(f"{name}: {step:.4f} s", flush=True)
      write_json(args.out, make_report(args, base_preset, peak, rows))
      continue
    opt = meta.MetaOptConfig(**opt_fields)
    compile_seconds, step = time_meta_step(prior, episodes, cfg, opt,
                                           args.steps)
    images = preset.tasks * (preset.support * preset.inner_steps
                             + preset.queries)
    flops = task_flops(prior, episodes, cfg) if not cfg.single_path else None
    achieved = flops * preset.tasks / step / 1e9 if flops else None
    rows.append({
        "row": f"meta-step [{name}]: {describe(opt, cfg)}; {preset.tasks} "
               f"tasks x {preset.inner_steps} steps, C={preset.spec['channels']}"
               f", {preset.image_size}px",
        "key": name, "compile_s": compile_seconds, "step_s": step,
        "tasks_per_s": preset.tasks / step, "images_per_s": images / step,
        "gflops_per_s": achieved,
        "fraction_of_matmul_peak": achieved / peak if achieved else None,
        "weights": count_params(prior.weight_mean)})
    print(f"{name}: {step:.4f} s (compile {compile_seconds:.1f} s)",
          flush=True)
    write_json(args.out, make_report(args, base_preset, peak, rows))
  report = make_report(args, base_preset, peak, rows)
  print(f"preset {args.preset}: {report['weights']} weights; "
        f"{report['backend']} x{report['device_count']} "
        f"({report['cpu_count']} cores); float32 matmul {peak:.0f} GFLOP/s; "
        f"peak memory {report['peak_memory_mib']:.0f} MiB")
  print("| row | compile s | median s | tasks/s | images/s | GFLOP/s | of peak |")
  print("| --- | --- | --- | --- | --- | --- | --- |")
  fmt = lambda v, f: "-" if v is None else format(v, f)
  for r in rows:
    print(f"| {r['row']} | {fmt(r['compile_s'], '.1f')} | "
          f"{fmt(r['step_s'], '.4f')} | {fmt(r['tasks_per_s'], '.2f')} | "
          f"{fmt(r['images_per_s'], '.0f')} | {fmt(r['gflops_per_s'], '.2f')} "
          f"| {fmt(r['fraction_of_matmul_peak'], '.1%')} |")
  write_json(args.out, report)
  return report


def make_report(args, base_preset: Preset, peak: float, rows: list) -> dict:
  """The JSON report: machine, preset, matmul peak, memory and the rows."""
  spec = SupernetSpec(num_classes=base_preset.ways,
                      in_channels=base_preset.channels, **base_preset.spec)
  return {
      "preset": args.preset, "backend": jax.default_backend(),
      "device": str(jax.devices()[0]), "device_count": jax.device_count(),
      "machine": platform.processor() or platform.machine(),
      "cpu_count": os.cpu_count(), "jax": jax.__version__,
      "weights": count_params(jax.eval_shape(
          lambda: prior_lib.init_prior(spec, jax.random.key(0),
                                       0.05)).weight_mean),
      "preset_fields": dataclasses.asdict(base_preset),
      "matmul_gflops_per_s": peak, "peak_memory_mib": peak_memory_mib(),
      "rows": rows}


if __name__ == "__main__":
  main()

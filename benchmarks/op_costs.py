r"""Forward and forward+backward time of every candidate operation, and of each
layer's two implementations, at one activation shape.

Where a supernet pass spends its time is the sum over edges of these costs,
so this is the first thing to look at when a meta-step is slow on a backend.
Two tables (printed, and written as JSON with ``--out``):

* every registered operation (``base.ops.OPS``) as the supernet builds it
  (``"auto"`` implementations for this backend), at stride 1 and 2;
* the layers whose form is chosen per backend, in each form: depthwise
  conv (``conv`` / ``shifts``), dense conv (``conv`` / ``patches``), 3x3
  max and average pooling (``window`` / ``slices``).

Times are medians of ``--repeats`` calls after compiling; the backward pass
is the gradient of a fixed random projection of the output with respect to
the input and the op's weights.

  python benchmarks/op_costs.py                      # MetaNAS shape
  python benchmarks/op_costs.py --size=14 --out=benchmarks/results/ops_14.json
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from base import ops  # pylint: disable=g-import-not-at-top
from benchmarks.report import write_json


def median_ms(fn: Callable, *args, repeats: int) -> float:
  jax.block_until_ready(fn(*args))
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - start)
  return float(np.median(times)) * 1e3


def time_module(module: nnx.Module, x: jax.Array, repeats: int
                ) -> tuple[float, float]:
  """(forward ms, forward+backward ms) of ``module`` on ``x``."""
  graphdef, params = nnx.split(module, nnx.Param)

  def project(params, x, r):
    return jnp.sum(nnx.merge(graphdef, params)(x) * r)

  out = jax.eval_shape(lambda p, x: nnx.merge(graphdef, p)(x), params, x)
  r = jax.random.normal(jax.random.key(1), out.shape, out.dtype)
  forward = jax.jit(project)
  backward = jax.jit(jax.grad(project, argnums=(0, 1)))
  return (median_ms(forward, params, x, r, repeats=repeats),
          median_ms(backward, params, x, r, repeats=repeats))


def layer_variants(channels: int) -> list[tuple[str, str, Callable]]:
  """(layer, implementation, constructor(stride)) of each per-backend form."""
  variants = []
  for impl in ("conv", "shifts"):
    variants.append(("depthwise 3x3", impl, lambda s, impl=impl:
                     ops.DepthwiseConv(channels, 3, s, 1, nnx.Rngs(0),
                                       impl=impl)))
  for impl in ("conv", "patches"):
    variants.append(("dense conv 1x5", impl, lambda s, impl=impl:
                     ops.Conv(channels, channels, (1, 5), s, nnx.Rngs(0),
                              impl=impl)))
  for kind in ("max", "avg"):
    for impl in ("window", "slices"):
      variants.append((f"{kind} pool 3x3", impl,
                       lambda s, kind=kind, impl=impl:
                       ops.Pool(kind, s, impl=impl)))
  return variants


def main(argv=None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--batch", type=int, default=20)
  parser.add_argument("--size", type=int, default=28)
  parser.add_argument("--channels", type=int, default=28)
  parser.add_argument("--strides", default="1,2")
  parser.add_argument("--repeats", type=int, default=10)
  parser.add_argument("--ops", default=",".join(sorted(ops.OPS)),
                      help="registered operations to time")
  parser.add_argument("--layers", type=int, default=1,
                      help="also time each layer's implementations")
  parser.add_argument("--out", default="")
  args = parser.parse_args(argv)
  names = [n.strip() for n in args.ops.split(",") if n.strip()]
  ops.check_primitives(tuple(names))
  strides = [int(s) for s in args.strides.split(",")]
  x = jax.random.normal(jax.random.key(0),
                        (args.batch, args.size, args.size, args.channels))
  shape = f"{args.batch}x{args.size}x{args.size}x{args.channels}"
  print(f"{jax.default_backend()} ({platform.processor() or platform.machine()}"
        f"), input {shape}, median of {args.repeats}")

  op_rows = []
  print("| operation (auto) | stride | forward ms | fwd+bwd ms |")
  print("| --- | --- | --- | --- |")
  for name in names:
    for stride in strides:
      module = ops.make_op(name, args.channels, stride, nnx.Rngs(0))
      forward, backward = time_module(module, x, args.repeats)
      op_rows.append(dict(op=name, stride=stride, forward_ms=forward,
                          forward_backward_ms=backward))
      print(f"| {name} | {stride} | {forward:.2f} | {backward:.2f} |",
            flush=True)

  layer_rows = []
  if args.layers:
    print("\n| layer | implementation | stride | forward ms | fwd+bwd ms |")
    print("| --- | --- | --- | --- | --- |")
    for layer, impl, build in layer_variants(args.channels):
      for stride in strides:
        forward, backward = time_module(build(stride), x, args.repeats)
        layer_rows.append(dict(layer=layer, impl=impl, stride=stride,
                               forward_ms=forward,
                               forward_backward_ms=backward))
        print(f"| {layer} | {impl} | {stride} | {forward:.2f} | "
              f"{backward:.2f} |", flush=True)

  result = dict(backend=jax.default_backend(), device=str(jax.devices()[0]),
                input_shape=shape, repeats=args.repeats, ops=op_rows,
                layers=layer_rows, jax_version=jax.__version__)
  write_json(args.out, result, indent=1)
  return result


if __name__ == "__main__":
  main()

"""Single-path execution: compute only the op a hard sample picked, per edge.

With a hard (one-hot) architecture sample, the soft mixture
``sum_k w_k · op_k(x)`` wastes all but one op's work. Here each edge runs
``w_j · op_j(x)`` for the picked ``j = argmax(w)`` with ``lax.switch`` on
the traced index, so the program compiles once for every architecture.

Two details keep the saving in the backward pass too:

* ``lax.switch``'s own derivative keeps residuals of every branch alive and
  joins them, which on XLA:CPU cost most of the forward saving (a probe
  measured 0.86 s against 0.29 s for an op fixed at trace time).
  :func:`remat_switch` instead saves only the branch index and operands and,
  in the backward pass, recomputes the chosen op inside a second
  ``lax.switch`` over the branches' VJPs: one op forward twice and backward
  once per edge.
* The gradient to the architecture flows through ``w_j`` only (GDAS,
  Dong & Yang 2019): the straight-through estimator restricted to the
  sampled coordinate. The full straight-through estimator of the mixture
  needs ``op_k(x)`` for every k, i.e. the soft mixture's cost; it remains
  available as ``adapt.hard=True`` without ``single_path``.

Under ``vmap`` (tasks batched with their own samples) a switch becomes a
select that evaluates every branch, so single-path pays off with one task per
program (``meta.task_batching="loop"``, the CPU default) or on devices whose
per-task programs are large enough on their own.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
from jax import lax


def remat_switch(index: jax.Array, branches: Sequence[Callable[..., Any]],
                 *operands: Any) -> Any:
  """``lax.switch(index, branches, *operands)`` with a lean backward pass.

  Every branch must accept all ``operands`` and return outputs of one
  shape; the derivative recomputes the taken branch instead of storing the
  residuals of all of them. ``index`` is an integer scalar (no gradient).
  """
  branches = tuple(branches)

  @jax.custom_vjp
  def switch(index, *operands):
    return lax.switch(index, branches, *operands)

  def forward(index, *operands):
    return switch(index, *operands), (index, operands)

  def backward(residuals, cotangent):
    index, operands = residuals

    def branch_vjp(branch):
      def run(operands, cotangent):
        _, vjp = jax.vjp(branch, *operands)
        return vjp(cotangent)
      return run

    grads = lax.switch(index, [branch_vjp(b) for b in branches], operands,
                       cotangent)
    return (None, *grads)

  switch.defvjp(forward, backward)
  return switch(index, *operands)


def picked_op(weights: jax.Array) -> tuple[jax.Array, jax.Array]:
  """The index of an edge's hard sample and its (differentiable) weight.

  ``weights`` is one edge's ``[num_ops]`` sample; the index is the argmax of
  its values (no gradient) and the weight ``weights[index]`` carries the
  straight-through gradient of that coordinate.
  """
  index = jnp.argmax(lax.stop_gradient(weights))
  return index, weights[index]

#!/usr/bin/env bash
# The GPU checks of a session that is lent the `device` machine, as one
# prepared command sized to its device budget (about 9 minutes of commands,
# leaving time for the machine's start and one rerun).
#
# On the device machine (jax with CUDA, flax, optax, numpyro preinstalled;
# no internet), from the repository root:
#
#   bash benchmarks/gpu_session.sh        # results under $OUT (or /tmp/gpu_out)
#
# Packages the machine lacks travel as wheels in the ignored folder .whl/
# (name it in the run's `carry`). Make them here first:
#
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#     --implementation cp --platform manylinux2014_x86_64 -d .whl \
#     ml_collections==1.1.0 tensorboardX==2.6.5
#
# What it does, each part under its own time limit so that a slow part
# cannot starve the others, every result written as soon as it exists:
#   1. the machine and JAX's devices;
#   2. GPU correctness: the layers' per-backend forms agree, single path
#      equals the mixture, stepwise equals fused and vmapped meta-steps,
#      bf16 agrees with fp32 (tests/, run on the GPU);
#   3. the MetaNAS-sized meta-step table (benchmarks/meta_step.py), the
#      rows in order of importance: the GPU default (tasks vmapped), adapting
#      to a new task (5 and 50 steps), the soft mixture, bf16, the per-task
#      loop;
#   4. every op's cost and both forms of each per-backend layer
#      (benchmarks/op_costs.py).
set -o pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/gpu_out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false
if compgen -G ".whl/*.whl" > /dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
    --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  python3 -c "import jax; print(jax.__version__, jax.devices())"
} 2>&1 | tee "$OUT/machine.txt"

timeout 170 python3 -m pytest -q -p no:cacheprovider --durations=10 \
  tests/test_ops.py tests/test_supernet.py tests/test_meta.py \
  tests/test_prior.py "tests/test_scale.py::test_single_path_equals_the_mixture_for_one_hot_samples" \
  "tests/test_scale.py::test_single_path_gradients_are_the_straight_through_estimators" \
  "tests/test_scale.py::test_stepwise_meta_step_equals_the_fused_one" \
  "tests/test_scale.py::test_bf16_and_fp32_meta_steps_agree" 2>&1 | tee "$OUT/gpu_tests.log"

timeout 280 python3 benchmarks/meta_step.py --preset=metanas --steps=5 \
  --rows=default,adapt,adapt_50,soft,bf16,loop_fused \
  --out="$OUT/metanas_gpu_meta_step.json" 2>&1 | tee "$OUT/meta_step.log"

timeout 80 python3 benchmarks/op_costs.py \
  --out="$OUT/op_costs_metanas_gpu.json" 2>&1 | tee "$OUT/op_costs.log"
exit 0

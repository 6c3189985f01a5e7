#!/usr/bin/env bash
# One prepared run on a lent GPU machine (its image has torch; the rest travels as wheels in .whl/). Arguments
# pick the steps: tests (the GPU tests), generate, throughput, samplers, sync, train, precompute, eval, serve; default: tests
# generate sync. Results land in $OUT. Each step has its own time limit (STEP_TIMEOUT seconds, default 540), so one
# call of a few steps fits the 10-minute command limit only when the steps are few: see benchmarks/RESULTS.md.
# TRAIN_BATCHES (default "4 8 16") picks the training micro-batches; TRAIN_ARGS adds bench_train.py options.
set -uo pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
export TORCHINDUCTOR_CACHE_DIR=/tmp/inductor-cache  # steps reuse each other's compiled kernels (same shapes)
limit=(timeout "${STEP_TIMEOUT:-540}")
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
steps=("$@")
[ ${#steps[@]} -gt 0 ] || steps=(tests generate sync)
for step in "${steps[@]}"; do
  case "$step" in
    tests) "${limit[@]}" python3 -m pytest -q -m gpu tests/test_gpu.py -p no:cacheprovider -o addopts="" --durations=8 2>&1 | tail -25 ;;
    generate)  # batch 1: eager and compiled, PNDM-50 and the few-step sampler
      "${limit[@]}" python3 benchmarks/bench_generate.py --preset full --dtypes bfloat16 --batch-sizes 1 --repeats 3 \
        --out "${OUT:-/tmp}/bench_generate_full.json" ;;
    throughput)  # batches of 4 and 8 animations per call
      "${limit[@]}" python3 benchmarks/bench_generate.py --preset full --dtypes bfloat16 --batch-sizes 4,8 --repeats 2 \
        --out "${OUT:-/tmp}/bench_generate_throughput.json" ;;
    samplers)  # the scheduler study on the full-size architecture (random weights)
      "${limit[@]}" python3 benchmarks/bench_samplers.py --preset full --device cuda --dtype bfloat16 --clips 2 \
        --out "${OUT:-/tmp}/bench_samplers_full.json" ;;
    sync)
      for dtype in float32 bfloat16; do
        python3 benchmarks/bench_sync.py --device cuda --dtype "$dtype" --image-size 224 --videos 8 --naive-pairs 32 \
          --out "${OUT:-/tmp}/bench_sync_${dtype}.json"
      done ;;
    eval)
      python3 benchmarks/bench_eval.py --preset full --device cuda --dtype bfloat16 --videos 8 --steps 50 --size 256 --pools 1:1 2:2 \
        --out "${OUT:-/tmp}/bench_eval_cuda.json"
      python3 benchmarks/bench_eval.py --statistics --settings 2 --clips 450 --categories 15 --samples 32 \
        --out "${OUT:-/tmp}/bench_eval_statistics.json" ;;
    precompute)
      python3 benchmarks/bench_precompute.py --device cuda --dtype bfloat16 --samples 8 --windows 3 --out "${OUT:-/tmp}/bench_precompute_cuda.json" ;;
    serve)  # @serve.batch against batch size 1 at concurrency 8, full-size random weights
      "${limit[@]}" python3 benchmarks/bench_serve.py --preset full --steps 50 --requests 16 --out "${OUT:-/tmp}/bench_serve_full.json" ;;
    train)  # eager and optimized (compiled UNet, fused AdamW, checkpointing only if needed), one process per batch
      for batch in ${TRAIN_BATCHES:-4 8 16}; do
        # shellcheck disable=SC2086
        "${limit[@]}" python3 benchmarks/bench_train.py --gpu --repeats 5 --batch-size "$batch" ${TRAIN_ARGS:-} \
          --out "${OUT:-/tmp}/bench_train_gpu_b${batch}.json"
      done ;;
  esac 2>&1 | grep -v WARNING
done

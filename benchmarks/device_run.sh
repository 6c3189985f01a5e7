#!/usr/bin/env bash
# One prepared run on a lent GPU machine (its image has torch; the rest travels as wheels in .whl/). Arguments
# pick the steps: tests (the GPU tests), generate, sync, train, precompute, eval, serve; default: tests generate sync. Results land in $OUT.
set -uo pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
steps=("$@")
[ ${#steps[@]} -gt 0 ] || steps=(tests generate sync)
for step in "${steps[@]}"; do
  case "$step" in
    tests) python3 -m pytest -q -m gpu tests/test_gpu.py -p no:cacheprovider -o addopts="" 2>&1 | tail -15 ;;
    generate) python3 benchmarks/bench_generate.py --preset full --repeats 3 --out "${OUT:-/tmp}/bench_generate_full.json" ;;
    sync)
      for dtype in float32 bfloat16; do
        python3 benchmarks/bench_sync.py --device cuda --dtype "$dtype" --image-size 224 --videos 8 --naive-pairs 32 \
          --out "${OUT:-/tmp}/bench_sync_${dtype}.json"
      done ;;
    eval)
      python3 benchmarks/bench_eval.py --preset full --device cuda --dtype bfloat16 --videos 8 --steps 50 --size 256 --actors 1 2 \
        --out "${OUT:-/tmp}/bench_eval_cuda.json" ;;
    precompute)
      python3 benchmarks/bench_precompute.py --device cuda --dtype bfloat16 --samples 8 --windows 3 --out "${OUT:-/tmp}/bench_precompute_cuda.json" ;;
    serve)
      python3 benchmarks/bench_serve.py --preset full --steps 50 --requests 16 --out "${OUT:-/tmp}/bench_serve_full.json" ;;
    train)
      for batch in 1 4; do
        python3 benchmarks/bench_train.py --gpu --repeats 5 --batch-size "$batch" --out "${OUT:-/tmp}/bench_train_gpu_b${batch}.json"
      done ;;
  esac 2>&1 | grep -v WARNING
done

#!/usr/bin/env bash
# One lease of a GPU machine, one command (run from the repository's root). It needs, beside the
# checkout: .whl/ with the wheels the machine lacks (hydra-core, omegaconf, antlr4-python3-runtime,
# segment-anything; e.g. `pip download --no-deps -d .whl hydra-core==1.3.8 omegaconf==2.3.1
# segment-anything==1.0` and `pip wheel --no-deps -w .whl antlr4-python3-runtime==4.9.3`, an sdist
# only) and, optionally, BEFORE=<folder holding an older checkout> to measure the
# harness as it was against the same device in the same lease. Results go to $OUT (default /tmp/out):
#   gpu.jsonl / gpu.log   benchmarks/gpu.py: every method eager and compiled, MFU, memory, profile
#   before.jsonl          the older checkout's benchmarks/method_throughput.py at the same setting
#   torchrun.log          (unless RUN=0) `torchrun --nproc_per_node 1 -m benchbase run` of the default suite on
#                         CUDA in bf16: NCCL (a group of one), DDP, the engine, evaluators, store
set -o pipefail
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"; export PYTHONUNBUFFERED=1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
python3 -m pip install -q --no-index --no-deps --no-build-isolation --no-cache-dir --target /tmp/new . || exit 1
NEW=/tmp/new:/tmp/site
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,power.draw,temperature.gpu --format=csv | tee "$OUT/nvidia-smi.txt"
(cd benchmarks && PYTHONPATH=$NEW timeout "${GPU_S:-300}" python3 gpu.py --out "$OUT" --budget-s "${BUDGET_S:-210}" $GPU_ARGS 2>&1 \
  | grep -v -E "^(USDT|STAGE):" | tee "$OUT/gpu.log")
if [ -n "$BEFORE" ]; then
  python3 -m pip install -q --no-index --no-deps --no-build-isolation --no-cache-dir --target /tmp/old "$BEFORE" || exit 1
  for m in cls_token,feature,mae,tinymim smkd; do
    (cd "$BEFORE/benchmarks" && PYTHONPATH=/tmp/old:/tmp/site timeout 60 python3 method_throughput.py \
      --teacher vit_base_patch16_224 --student vit_small_patch16_224 --img 224 --batch "${BEFORE_BATCH:-256}" \
      --steps 10 --methods "$m" $BEFORE_ARGS 2>&1 | grep '^{' | tee -a "$OUT/before.jsonl")
  done
fi
if [ "${RUN:-1}" != 0 ]; then
  PYTHONPATH=$NEW timeout "${RUN_S:-120}" python3 -m torch.distributed.run --standalone --nproc_per_node 1 \
    -m benchbase run --methods feature,tinymim trainer.device=${DEVICE:-cuda} trainer.epochs=1 \
    teacher.recipe.pretrain_epochs=1 teacher.recipe.finetune_epochs=1 suite.tasks.fewshot.params.episodes=200 \
    suite.tasks.segmentation.params.epochs=2 trainer.progress=false home=/tmp/bb leaderboard_dir=/tmp/bb/lb \
    > "$OUT/torchrun.log" 2>&1
  echo "torchrun exit $?" | tee -a "$OUT/torchrun.log"
  tail -25 "$OUT/torchrun.log"
fi

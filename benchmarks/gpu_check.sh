#!/usr/bin/env bash
# GPU check (issue 20), one shot on a CUDA machine: setup (scripts/setup.sh, Horovod build skipped
# unless CDML_SKIP_HOROVOD=0), the GPU-relevant tests, then benchmarks/gpu_check.py on every GPU
# (torchrun, NCCL) in fp32 and bf16. A failing part is reported and the rest still runs; the exit
# status is non-zero if any part failed. Output also goes to $GPU_CHECK_LOG (/tmp/gpu_check.log).
#   benchmarks/gpu_check.sh [gpu_check.py options, e.g. --steps 200 --catalog 1000000 --queries 100000]
set -uo pipefail
cd "$(dirname "$0")/.."
fail() {
  echo "gpu_check: $*" >&2
  exit 1
}
nvidia-smi -L 2>/dev/null | grep -q "^GPU" || fail "no CUDA device (nvidia-smi lists none): run this on a GPU machine"
exec > >(tee -a "${GPU_CHECK_LOG:-/tmp/gpu_check.log}") 2>&1
CDML_SKIP_HOROVOD="${CDML_SKIP_HOROVOD:-1}" ./scripts/setup.sh || fail "scripts/setup.sh failed (above)"
gpus=$(.venv/bin/python -c "import torch; print(torch.cuda.device_count())") || fail "torch does not import"
[ "$gpus" -gt 0 ] || fail "torch $(.venv/bin/python -c 'import torch; print(torch.__version__)') sees no CUDA device"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
status=0
echo "== GPU-relevant tests"
timeout 300 .venv/bin/python -m pytest -q -p no:cacheprovider --durations=5 \
  tests/test_training.py tests/test_serving.py \
  -k "rng or cuda or model_is_unit_norm or triplet_loss or embeddings_equal_direct_inference" || status=1
echo "== benchmarks/gpu_check.py on $gpus GPU(s)"
timeout 420 .venv/bin/python -m torch.distributed.run --standalone --nproc_per_node="$gpus" \
  benchmarks/gpu_check.py --bf16 "$@" || status=1
echo "== gpu_check: $([ $status = 0 ] && echo "all parts passed" || echo "some part FAILED (above)")"
exit $status

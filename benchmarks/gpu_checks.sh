#!/usr/bin/env bash
# The GPU checks in one command: the `gpu` test tier (nvJPEG decoding of the frame cache through the
# trainer's loader among them), then bench_mfu.py (training clips/s and MFU of r2plus1d_18 at
# 16x112², fp32 / bf16 / channels_last / compile, and the cached teacher vs the online ResNet-34),
# then bench_device_decode.py (the paper's student trained from a JPEG frame cache decoded in the
# loader's workers vs on the GPU: clips/s, loader wait and device decoding as shares of the steps'
# time, from the runs' metrics.jsonl). Results (logs and JSON) go to $OUT, or ./gpu-results.
#
#   bash benchmarks/gpu_checks.sh --download   # where pip can reach PyPI: the wheels a bare CUDA
#                                              # image lacks (Python 3.12, x86-64) into .whl/, ~54 MB
#   bash benchmarks/gpu_checks.sh              # on the GPU machine (python3 there must hold torch)
#
# Budget: the tests take ~2 min, bench_mfu with its defaults (r2plus1d_18, batch 32, 16x112², four
# variants, torch.compile included) a few minutes on an H100, bench_device_decode (64 generated
# 4 s videos, two 2-epoch runs) one to two.
set -uo pipefail
cd "$(dirname "$0")/.."
WHEELS=(av==18.1.0 zarr==3.1.6 numcodecs==0.17.1 donfig crc32c faiss-cpu==1.15.1)

if [ "${1:-}" = "--download" ]; then
    exec python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl "${WHEELS[@]}"
fi

out=${OUT:-gpu-results}
mkdir -p "$out"
site=/tmp/ccl-cache-site
if compgen -G ".whl/*.whl" >/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" .whl/*.whl \
        || { echo "installing the carried wheels failed" >&2; exit 1; }
fi
# The project itself, without touching the image's packages (offline: no build isolation).
python3 -m pip install -q --no-index --no-deps --no-build-isolation --no-cache-dir --target "$site" . \
    || { echo "installing ccl-cache failed" >&2; exit 1; }
export PYTHONPATH="$site:${PYTHONPATH:-}" PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.txt"
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name())" \
    | tee -a "$out/gpu.txt"

status=0
python3 -m pytest -q -m gpu -p no:cacheprovider tests 2>&1 | tee "$out/pytest-gpu.log" || status=1
python3 benchmarks/bench_mfu.py > "$out/bench_mfu.json" 2> "$out/bench_mfu.log" || status=1
cat "$out/bench_mfu.log"
python3 benchmarks/bench_device_decode.py > "$out/bench_device_decode.json" 2> "$out/bench_device_decode.log" || status=1
cat "$out/bench_device_decode.json"
exit $status

#!/usr/bin/env bash
# Issue 15's GPU measurement, prepared to run in one go on a machine with a CUDA GPU (not run yet:
# no GPU has been available to this project). From the repository root, with the environment set up:
#   bash bench/gpu_check.sh [OUT]
# Writes OUT/gpu.txt (the device), suite.txt (the test suite with CUDA visible: the CLI tests run on
# the GPU by default), plan.txt and rehearsal.txt (the paper-profile rehearsal's --plan estimate and
# its measured time per stage, full-size models at 224 px), bf16.txt (the rehearsal in bf16).
set -uo pipefail
OUT=${1:-gpu_check}
mkdir -p "$OUT"
export TORCH_HOME="$OUT/rehearsal/hub" BAGREPRO_CACHE="$OUT/rehearsal/cache"
python -c "import torch; print(torch.__version__, torch.cuda.get_device_name(0))" > "$OUT/gpu.txt" 2>&1
python -m pytest -q -x > "$OUT/suite.txt" 2>&1; echo "exit $?" >> "$OUT/suite.txt"
python tests/rehearse_paper_profile.py "$OUT/rehearsal" --device cuda --plan > "$OUT/plan.txt" 2>&1
python tests/rehearse_paper_profile.py "$OUT/rehearsal" --device cuda --force > "$OUT/rehearsal.txt" 2>&1
python tests/rehearse_paper_profile.py "$OUT/rehearsal" --device cuda --force --precision bf16 > "$OUT/bf16.txt" 2>&1
tail -n 3 "$OUT"/*.txt

#!/usr/bin/env bash
# The GPU path, measured: installs what it needs, runs the CUDA tests, then benchmarks every
# method on the shipped teacher, Shortcut-V2V and student files of both tasks at 256x512 and
# 512x1024 (fp32, and fp16/bf16 autocast where the GPU has them; ONNX Runtime's CUDA/TensorRT
# providers too when onnxruntime-gpu installs), writing benchmarks/results/gpu/<device>/.
#
#   benchmarks/gpu.sh                  # on a CUDA machine: the full run (about 10 minutes on an H100)
#   benchmarks/gpu.sh --device cpu     # here: the same script as a smoke run (few frames, small sizes)
#   benchmarks/gpu.sh --frames 30 --sizes "256x512"
#
# Each table is one `fastv2v bench` process (teacher first, same threads, after warm-up); the
# script ends with benchmarks/results/gpu/<device>/SUMMARY.md, one line per run with its
# end-to-end speed-ups, to paste into benchmarks/RESULTS.md.
set -euo pipefail

DEVICE=cuda
FRAMES=""
SIZES=""
INSTALL=1
while [ $# -gt 0 ]; do
  case "$1" in
    --device) DEVICE="$2"; shift 2 ;;
    --frames) FRAMES="$2"; shift 2 ;;
    --sizes) SIZES="$2"; shift 2 ;;
    --no-install) INSTALL=0; shift ;;
    -h|--help) sed -n '2,14p' "$0"; exit 0 ;;
    *) echo "gpu.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done
if [ "$DEVICE" = cpu ]; then  # a smoke run: every step, small enough for 2 cores
  FRAMES="${FRAMES:-6}"; SIZES="${SIZES:-128x256}"
else
  FRAMES="${FRAMES:-60}"; SIZES="${SIZES:-256x512 512x1024}"
fi

cd "$(dirname "$0")/.."
PY="${PYTHON:-python}"
if [ "$INSTALL" = 1 ]; then
  "$PY" -m pip install -q -e ".[test]"
  if [ "$DEVICE" != cpu ]; then  # ONNX Runtime's CUDA / TensorRT providers, where the wheel exists
    "$PY" -m pip install -q onnxruntime-gpu || echo "gpu.sh: onnxruntime-gpu did not install; onnxruntime rows run on the CPU provider or are skipped"
  fi
fi

OUT="benchmarks/results/gpu/$DEVICE"
mkdir -p "$OUT"
"$PY" - "$DEVICE" > "$OUT/machine.json" <<'EOF'
import json, sys
import torch
from fastv2v.bench.runner import machine_info
device = sys.argv[1]
info = {"device": device, **machine_info(torch.device("cpu"))}  # CPU model, cores, torch, threads
if device.startswith("cuda"):
    if not torch.cuda.is_available():
        sys.exit("gpu.sh: --device cuda but torch sees no CUDA GPU here; run with --device cpu for a smoke run.")
    p = torch.cuda.get_device_properties(0)
    info.update(gpu=p.name, memory_gb=round(p.total_memory / 2**30, 1), capability=f"{p.major}.{p.minor}",
                cuda=torch.version.cuda, bf16=torch.cuda.is_bf16_supported())
print(json.dumps(info, indent=2))
EOF

echo "gpu.sh: CUDA tests" >&2
"$PY" -m pytest -q -o addopts="" tests/test_cuda.py tests/test_fast_parts.py -k "cuda or gpu" 2>&1 | tail -3 | tee "$OUT/tests.txt"

DTYPES="fp32"
if [ "$DEVICE" != cpu ]; then
  DTYPES="fp32 fp16"
  if "$PY" -c "import torch,sys; sys.exit(0 if torch.cuda.is_bf16_supported() else 1)"; then DTYPES="$DTYPES bf16"; fi
fi
BACKENDS="torch"
if "$PY" -c "import onnxruntime as o,sys; sys.exit(0 if '$DEVICE' == 'cpu' or 'CUDAExecutionProvider' in o.get_available_providers() else 1)" 2>/dev/null; then
  BACKENDS="torch,onnxruntime"
fi

W=src/fastv2v/weights
: > "$OUT/runs.txt"
for size in $SIZES; do
  for task in scenes edges; do
    for dtype in $DTYPES; do
      for suite in shortcut student; do
        if [ "$suite" = shortcut ]; then
          models=(--model "$W/${task}_shortcut.safetensors")
          methods="teacher,repeat,reuse,sparse,shortcut,shortcut_auto"; intervals="3"
        else
          models=(--model "$W/${task}_student.safetensors")
          methods="teacher,repeat,interp,minterpolate,spatial,fast"; intervals="4"
        fi
        backends="torch"
        [ "$dtype" = fp32 ] && backends="$BACKENDS"  # onnxruntime runs the fp32 graphs
        run="$OUT/$task-$suite-$size-$dtype"
        echo "gpu.sh: $task $suite $size $dtype ($backends)" >&2
        "$PY" -m fastv2v.cli bench "${models[@]}" --input "$task" --size "$size" --frames "$FRAMES" \
          --methods "$methods" --intervals "$intervals" --device "$DEVICE" --dtype "$dtype" \
          --backends "$backends" --out "$run" --quiet > /dev/null
        echo "$run" >> "$OUT/runs.txt"
      done
    done
  done
done

"$PY" - "$OUT" <<'EOF'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
lines = ["# fastv2v on " + (json.loads((out / "machine.json").read_text()).get("gpu") or "cpu"), "",
         "| task | size | dtype | method | runtime | ms/frame (model) | speed-up | e2e speed-up | PSNR→teacher dB |",
         "|---|---|---|---|---|---|---|---|---|"]
for run in (out / "runs.txt").read_text().split():
    report = json.loads((Path(run) / "bench.json").read_text())
    size = f"{report['models'][0]['model_height']}x{report['models'][0]['model_width']}"
    task = Path(run).name.split("-")[0]
    for r in report["results"]:
        label = r["method"] + (f"@{r['interval']}" if r["method"] != "teacher" and r["interval"] else "")
        e2e, psnr = r.get("e2e_speedup_vs_teacher"), r.get("psnr_vs_teacher")
        lines.append(f"| {task} | {size} | {report['dtype']} | {label} | {r.get('runtime', 'torch')} | "
                     f"{r['ms_per_frame']:.2f} | {r['speedup_vs_teacher']:.2f}x | "
                     f"{'—' if e2e is None else f'{e2e:.2f}x'} | {'ref' if psnr is None else f'{psnr:.2f}'} |")
(out / "SUMMARY.md").write_text("\n".join(lines) + "\n")
print(f"gpu.sh: wrote {out / 'SUMMARY.md'}")
EOF

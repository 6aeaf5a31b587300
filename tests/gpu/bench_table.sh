#!/usr/bin/env bash
# The README's speed table in one GPU call: `imp bench` for every preset x format at a 4096-token
# context, and llama.cpp (built from source, Q4_K_M-like GGUFs at the same shapes) in the same call.
# On two GPUs (the two-GPU device kind) the rows split over both and llama.cpp builds on the CPUs
# meanwhile; on one GPU everything runs in turn. From the project root on the GPU machine, with
# .whl/ and .peer/ (../shared/tools/peer-llamacpp/prepare.sh) carried:
#     bash tests/gpu/bench_table.sh        # results under $OUT/r (one JSON + log per row, peer/)
. tests/gpu/bootstrap.sh
R=${OUT:-/tmp/bench-table}/r; mkdir -p "$R"
T0=$(date +%s)
el() { echo $(( $(date +%s) - T0 )); }
NGPU=$(nvidia-smi -L | wc -l)
G1=$(( NGPU > 1 ? 1 : 0 ))
nvidia-smi --query-gpu=index,name,clocks.max.sm,clocks.max.mem,memory.total --format=csv > "$R/gpu.txt" 2>&1
# start llama.cpp's build and write its GGUFs now (CPU only); bench.sh times them later
(CUDA_VISIBLE_DEVICES=$G1 OUT=$R/peer nice -n 5 bash .peer/bench.sh 250 qwen36 gemma4 mistral > "$R/peer-prep.log" 2>&1) &
PREP=$!
row() {  # row GPU PRESET FORMAT
  local t rc
  t=$(el)
  CUDA_VISIBLE_DEVICES=$1 timeout 300 python3 -m imp_core.cli bench --preset "$2" --format "$3" --prefill '' \
    --decode 32 --context 4096 --repeat 2 --json "$R/b-$2-$3.json" > "$R/b-$2-$3.log" 2>&1
  rc=$?
  echo "[$(el)s gpu$1 rc=$rc $(( $(el) - t ))s] $2 $3: $(grep -A1 '^decode' "$R/b-$2-$3.log" | tail -1)"
}
FORMATS="nvfp4 bf16 fp8 gguf-q4_k_m gguf-q8_0"
peer() {
  local w=0
  while { kill -0 $PREP 2>/dev/null || [ ! -f /tmp/peer-state/build.done ]; } && [ $w -lt 600 ]; do sleep 5; w=$((w + 5)); done
  CUDA_VISIBLE_DEVICES=$G1 OUT=$R/peer bash .peer/bench.sh 900 qwen36 gemma4 mistral > "$R/peer.log" 2>&1
  echo "[$(el)s] llama.cpp done"; grep -E "tg128|pp512" "$R/peer.log"
}
if [ "$NGPU" -gt 1 ]; then
  (for f in $FORMATS; do row 0 qwen3.6-35b-a3b $f; done
   for f in nvfp4 fp8 bf16; do row 0 mistral-small-3.2-24b $f; done) > "$R/gpu0.txt" 2>&1 &
  (for f in $FORMATS; do row 1 gemma-4-26b-a4b $f; done; peer
   for f in gguf-q4_k_m gguf-q8_0; do row 1 mistral-small-3.2-24b $f; done) > "$R/gpu1.txt" 2>&1 &
  wait
  cat "$R/gpu0.txt" "$R/gpu1.txt"
else
  for p in qwen3.6-35b-a3b gemma-4-26b-a4b mistral-small-3.2-24b; do for f in $FORMATS; do row 0 $p $f; done; done
  peer
fi
echo "t=$(el)"

#!/usr/bin/env bash
# CUDA-graph replay of the fast decode step gives the tokens of the eager fast step: `imp run` on
# fixtures with runtime.fast_path=on, greedy and seeded sampling, graphs on and off; the outputs
# must be byte-identical. Run on the device machine after `. tests/gpu/bootstrap.sh`:
#   bash tests/gpu/check_fast_graphs.sh FIXTURE...   (e.g. .gpufix/qwen36_gguf-q4_k_m/tiny-gguf-q4_k_m.gguf)
set -u
fail=0
for fx in "$@"; do
  for mode in "--temperature 0" "--temperature 0.8 --seed 3"; do
    for g in true false; do
      # shellcheck disable=SC2086
      timeout 120 python3 -m imp_core.cli run --model "$fx" --device cuda --prompt "hello world" -n 24 $mode --raw \
        --set runtime.cuda_graphs=$g --set runtime.fast_path=on -q > "/tmp/graphs-$g.out" 2>"/tmp/graphs-$g.err"
      echo "rc=$?" >> "/tmp/graphs-$g.out"
    done
    if cmp -s /tmp/graphs-true.out /tmp/graphs-false.out && grep -q "rc=0" /tmp/graphs-true.out; then
      echo "SAME $fx [$mode]"
    else
      echo "DIFF $fx [$mode]"; tail -n 3 /tmp/graphs-true.err; fail=1
    fi
  done
done
exit $fail

#!/bin/sh
# The runs behind bench/RESULTS_audio.md, one at a time, niced, one torch thread (the machine is
# shared; spin-waiting thread pools slow down many times under load). About 2 hours on a loaded
# 2-core machine. Then: python bench/audio_summary.py and python bench/audio_cpu.py.
set -e
H="${HYSPARSE:-.venv/bin/hysparse} audio"
nice -n 5 $H train-tokenizer --steps 4000 --eval-clips 24 --checkpoint-every 100 --threads 1 --out runs/audio/tokenizer --no-progress
for s in 0 1 2; do
  nice -n 5 $H pretrain --tokenizer runs/audio/tokenizer/final --seed $s --steps 1000 --corpus-docs 6000 \
    --threads 1 --out runs/audio/lm-seed$s --no-progress
  nice -n 5 $H fewshot --model runs/audio/lm-seed$s/final --tokenizer runs/audio/tokenizer/final --seed $s \
    --episodes 24 --threads 1 --out runs/audio/fewshot-seed$s.json > /dev/null
done

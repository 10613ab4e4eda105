#!/usr/bin/env bash
# Train every run of docs/RESULTS.md (the handshake paper's Table I on our data, then MASH's), most important
# first, then write the page. Restartable: finished runs are skipped, interrupted ones resume from last.pt.
# Several workers may share the queue (each run is taken under a lock), e.g. one per core:
#   bash scripts/train_table.sh --threads 1 & bash scripts/train_table.sh --threads 1 &
# (after `make setup`; datasets, and their unseen-worlds twins from world seed 1000, are generated if missing).
# Handshake settings: a backbone first, then every row starts from it (docs/RESULTS.md says how). noisy-pose
# has no backbone or single_* runs of its own: its frames are accurate-pose's with noisy positions, which a
# single agent never reads (made with `dataset rewarp` at the calibrated noise, docs/DATASETS.md).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
#   --threads N        torch threads per run (default: all cores)
#   --first SETTING    take that setting's runs first (e.g. a second worker on MASH's obstruction runs)
#   --only SETTING     only that setting's runs (then evaluate)
threads=() first= only=
while [ $# -gt 0 ]; do
  case $1 in
    --threads) threads=(--threads "$2"); shift 2 ;;
    --first) first=$2; shift 2 ;;
    --only) only=$2; shift 2 ;;
    *) echo "usage: $0 [--threads N] [--first SETTING] [--only SETTING]" >&2; exit 2 ;;
  esac
done
runs=(
  hidden-target:backbone hidden-target:who2com accurate-pose:backbone accurate-pose:who2com random-exploration:backbone
  hidden-target:random hidden-target:single_degraded hidden-target:single_normal hidden-target:catall
  accurate-pose:single_degraded accurate-pose:single_normal accurate-pose:catall accurate-pose:random
  noisy-pose:who2com noisy-pose:catall noisy-pose:random
  random-exploration:who2com random-exploration:catall random-exploration:random
  random-exploration:single_degraded random-exploration:single_normal
  obstruction:mash obstruction:inpainting obstruction:outputstack obstruction:warped_outputstack
  hidden-target:who2com_nomsg hidden-target:attention hidden-target:compression hidden-target:when2com
  accurate-pose:who2com_nomsg accurate-pose:when2com accurate-pose:attention accurate-pose:compression
  noisy-pose:who2com_nomsg noisy-pose:when2com noisy-pose:attention noisy-pose:compression
  random-exploration:who2com_nomsg random-exploration:when2com random-exploration:attention
  random-exploration:compression
  obstruction:inputstack
)
if [ -n "$first" ]; then
  mine=() rest=()
  for run in "${runs[@]}"; do if [ "${run%%:*}" = "$first" ]; then mine+=("$run"); else rest+=("$run"); fi; done
  runs=("${mine[@]}" "${rest[@]}")
fi
# frames per setting: 72 maps for the four handshake settings (noisy pose is rewarped from accurate pose): with
# 24 maps (2400 frames) the handshake's selection and decoder overfit (docs/RESULTS.md)
frames_of() { case $1 in hidden-target|accurate-pose|noisy-pose|random-exploration) echo 7200 ;; *) echo 2400 ;; esac; }
mkdir -p runs/locks
for run in "${runs[@]}"; do
  setting=${run%%:*} method=${run##*:}
  if [ -n "$only" ] && [ "$setting" != "$only" ]; then continue; fi
  exec 9>"runs/locks/$setting-$method.lock"
  if ! flock -n 9; then echo "[train_table] $setting/$method: another worker has it"; continue; fi
  if [ "$setting" = noisy-pose ]; then   # accurate-pose's frames warped again with the calibrated pose noise
    for twin in "" -unseen; do
      if [ ! -f "datasets/accurate-pose$twin/manifest.json" ]; then
        collab-perception dataset generate --setting accurate-pose --frames $([ -z "$twin" ] && frames_of accurate-pose || echo 2500) \
          $([ -n "$twin" ] && echo --seed 1000) --out "datasets/accurate-pose$twin" --workers 2 --quiet
      fi
      if [ ! -f "datasets/noisy-pose$twin/manifest.json" ]; then
        collab-perception dataset rewarp "datasets/accurate-pose$twin" --out "datasets/noisy-pose$twin" --workers 2 --quiet
      fi
    done
  fi
  if [ ! -f "datasets/$setting/manifest.json" ]; then
    collab-perception dataset generate --setting "$setting" --frames "$(frames_of "$setting")" --out "datasets/$setting" --workers 2 --quiet
  fi
  if [ "$setting" != obstruction ] && [ ! -f "datasets/$setting-unseen/manifest.json" ]; then
    collab-perception dataset generate --setting "$setting" --frames 2500 --seed 1000 \
      --out "datasets/$setting-unseen" --workers 2 --quiet
  fi
  backbone=runs/train/${setting/noisy-pose/accurate-pose}/backbone/best.pt
  if [ -f "runs/train/$setting/$method/train.json" ]; then
    echo "[train_table] $setting/$method: done already"
  else
    extra=()
    # MASH's runs as planned in learn/mash_eval.py (the main row: Q16/K32; 2000 iterations of batch 8)
    case $method in
      backbone) extra=(--iterations 2000) ;;
      who2com|who2com_nomsg|when2com) extra=(--selection hard --init-from "$backbone" --freeze-encoder) ;;
      random|catall|attention|compression) extra=(--init-from "$backbone" --freeze-encoder) ;;
      single_normal|single_degraded) extra=(--init-from "$backbone") ;;
      mash) extra=(--iterations 2000 --batch-size 8 --query-size 16 --key-size 32) ;;
      inpainting|outputstack|warped_outputstack|inputstack) extra=(--iterations 2000 --batch-size 8) ;;
    esac
    # ours on 72 maps: 2000 steps (1000 left hidden target short of the paper's share on unseen worlds)
    if [ "$method" = who2com ] && [ "$(frames_of "$setting")" = 7200 ]; then extra+=(--iterations 2000); fi
    echo "[train_table] $setting/$method: $(date +%H:%M:%S)"
    collab-perception train --method "$method" --setting "$setting" --resume --quiet "${threads[@]}" "${extra[@]}"
  fi
  flock -u 9
done
collab-perception evaluate --quiet      # runs/RESULTS.md; docs/RESULTS.md is curated from it

#!/usr/bin/env bash
# Train every run of docs/RESULTS.md (the handshake paper's Table I on our data), most important first,
# then write the page. Restartable: finished runs are skipped, interrupted ones resume from last.pt.
#   bash scripts/train_table.sh            (after `make setup`; datasets are generated if missing)
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
runs=(
  hidden-target:who2com accurate-pose:who2com
  hidden-target:random hidden-target:single_degraded hidden-target:single_normal hidden-target:catall
  accurate-pose:single_degraded accurate-pose:single_normal accurate-pose:catall accurate-pose:random
  hidden-target:who2com_nomsg hidden-target:attention hidden-target:compression hidden-target:when2com
  noisy-pose:who2com noisy-pose:catall noisy-pose:random noisy-pose:single_degraded noisy-pose:single_normal
  random-exploration:who2com random-exploration:catall random-exploration:random
  random-exploration:single_degraded random-exploration:single_normal
)
for run in "${runs[@]}"; do
  setting=${run%%:*} method=${run##*:}
  if [ ! -f "datasets/$setting/manifest.json" ]; then
    collab-perception dataset generate --setting "$setting" --frames 2400 --out "datasets/$setting" --workers 2 --quiet
  fi
  if [ -f "runs/train/$setting/$method/train.json" ]; then
    echo "[train_table] $setting/$method: done already"
    continue
  fi
  echo "[train_table] $setting/$method: $(date +%H:%M:%S)"
  collab-perception train --method "$method" --setting "$setting" --resume --quiet
done
collab-perception evaluate --quiet

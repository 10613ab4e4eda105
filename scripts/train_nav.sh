#!/usr/bin/env bash
# The runs behind docs/RESULTS.md's CollaVN section: every variant of the tables, two at a time (one torch
# thread each), then `nav evaluate`. The first run pretrains the shared view encoder (DATA/encoder.pt) and
# caches the map features; the others start once those exist.
# Usage: scripts/train_nav.sh [DATA] [RUNS]; extra `nav train` options from $NAV_TRAIN_ARGS (e.g. "--rounds 12").
set -euo pipefail
DATA=${1:-datasets/nav}
RUNS=${2:-runs/nav}
ARGS=${NAV_TRAIN_ARGS:-}
mkdir -p "$RUNS"
train() {   # name, then nav train options
  local name=$1; shift
  collab-perception nav train --data "$DATA" --out "$RUNS/$name" --threads 1 $ARGS "$@" > "$RUNS/$name.log" 2>&1
}
train collavn --variant collavn &
until [ -f "$DATA/features-val.npz" ]; do sleep 5; done
train no_comm --variant no_comm
wait
train no_memory --variant no_memory & train imitation --variant collavn --no-dagger; wait
train collavn_team2 --variant collavn --teams 2 & train collavn_team3 --variant collavn --teams 3; wait
collab-perception nav evaluate --data "$DATA" --runs "$RUNS"

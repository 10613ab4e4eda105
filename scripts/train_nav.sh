#!/usr/bin/env bash
# The runs behind docs/RESULTS.md's CollaVN section: every variant of the tables, two at a time (one torch
# thread each), then `nav evaluate`. The first run pretrains the shared view encoder (DATA/encoder.pt) and
# caches the map features; the others start once those exist.
# Every run takes nav train's 12 DAgger rounds, the belief term (--belief-weight 1, round 4's recipe) and the goal
# offsets (--goal-offsets, round 5's); ours and its Ad-hoCoop and imitation twins add the read term (--read-weight 1).
# Usage: scripts/train_nav.sh [DATA] [RUNS]; extra `nav train` options from $NAV_TRAIN_ARGS (e.g. "--seed 1").
set -euo pipefail
DATA=${1:-datasets/nav}
RUNS=${2:-runs/nav}
ARGS="${NAV_TRAIN_ARGS:-}"
OURS="--variant collavn --read-weight 1 --belief-weight 1"
mkdir -p "$RUNS"
train() {   # name, then nav train options
  local name=$1; shift
  collab-perception nav train --data "$DATA" --out "$RUNS/$name" --threads 1 --goal-offsets $ARGS "$@" > "$RUNS/$name.log" 2>&1
}
train collavn $OURS &
until [ -f "$DATA/features-val.npz" ]; do sleep 5; done
train no_comm --variant no_comm --belief-weight 1
wait
train no_memory --variant no_memory --belief-weight 1 & train imitation $OURS --no-dagger; wait
train collavn_team2 $OURS --teams 2 & train collavn_team3 $OURS --teams 3; wait
collab-perception nav evaluate --data "$DATA" --runs "$RUNS"

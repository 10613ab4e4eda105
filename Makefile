# collab_perception: `make demo` runs the swarm, `make test` runs the tests. Both run `make setup` first.
SHELL := /bin/bash
.DEFAULT_GOAL := help
ENV := source scripts/env.sh
DEMO_ARGS ?=
PYTEST_ARGS ?=

.PHONY: help setup demo demo-mash demo-gate demo-nav test clean

help:
	@echo "make demo    5 drones through ROS 2 on the embedded world: fused vs own accuracy, bytes per frame"
	@echo "make demo-mash  6 drones, MASH's spatial handshake: an obstructed drone1 fused with warped patches"
	@echo "make demo-gate  5 drones, When2com's gate: drone1 connects only when its own view needs help"
	@echo "make demo-nav   3 drones navigate to a goal image together (CollaVN): SR, SPL, SSR, DTS, bytes per step"
	@echo "make test    run the test suite (real rclpy + Fast DDS, localhost only)"
	@echo "make setup   .venv with pinned wheels + colcon build of this package (idempotent)"
	@echo "make clean   remove build/, install/, log/, .ws/ (keeps .venv)"

setup:
	@bash scripts/setup.sh

demo: setup
	@$(ENV) && collab-perception swarm --frames 30 $(DEMO_ARGS)

demo-mash: setup
	@$(ENV) && collab-perception swarm --config config/swarm_mash.yaml --frames 30 $(DEMO_ARGS)

demo-gate: setup
	@$(ENV) && { [ -f runs/demo-gate/hidden-target-mixed/manifest.json ] || collab-perception dataset generate \
	  --setting hidden-target --frames 50 --degraded-share 0.5 --seed 2000 --snapshots-per-map 10 \
	  --out runs/demo-gate/hidden-target-mixed --quiet; } && \
	  collab-perception swarm --config config/swarm_gate.yaml --frames 30 $(DEMO_ARGS)

demo-nav: setup
	@$(ENV) && collab-perception swarm --config config/swarm_nav.yaml --quiet $(DEMO_ARGS)

test: setup
	@$(ENV) && python -m pytest $(PYTEST_ARGS)

clean:
	rm -rf build install log .ws

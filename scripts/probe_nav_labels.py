"""Where does a CollaVN agent part from the expert it imitates?

    python scripts/probe_nav_labels.py runs/nav/collavn/model.pt --data datasets/nav --split val

Rolls the trained team out greedily on its own paths (as `nav evaluate` does), with the expert of its variant
(learn/collavn.run_team: own sight for no_comm, team sight otherwise, at the run's sight distance) labelling
every visited state, and splits the agreement of the policy's move with the expert's by what the expert was
doing: exploring (keep the heading, or turn at an obstacle) or walking the shortest path to a goal it knows
(a move, or STOP), and the first step of an episode. Then the agents' outcomes: failures whose expert came to
know the goal during the episode (the agent had what it needed and did not use it) against failures whose
goal was never in the expert's sight (exploration did not find it). Last, on the steps where the expert walks
to a goal it knows: how often the policy's move is the one the exploration rule would make (it has not
noticed that it knows), and how often that rule happens to agree with the expert.
"""
from __future__ import annotations

import argparse
import sys

import numpy as np


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument('model', help="a run's model.pt")
    parser.add_argument('--data', default='datasets/nav', help='navigation dataset (default datasets/nav)')
    parser.add_argument('--split', default='val', help='split of the episodes (default val)')
    parser.add_argument('--episodes', type=int, default=96, help='episodes probed, every team size (default 96)')
    args = parser.parse_args(argv)

    import torch

    from collab_perception.data.nav import NavDataset
    from collab_perception.learn import collavn
    from collab_perception.world.nav import STOP

    torch.set_num_threads(1)
    dataset = NavDataset(args.data)
    encoder = collavn.load_or_pretrain_encoder(dataset, 0)
    maps, feats = collavn.map_features(dataset, encoder, args.split)
    model = collavn.load_agent(args.model)
    sight_m = float(torch.load(args.model, weights_only=True).get('train', {}).get('sight_m', 8.0))
    team_sight, memory = model.cfg.communicates, model.cfg.memory
    episodes = dataset.episodes(args.split)[:args.episodes]
    counts: dict = {}
    failed_known = failed_unknown = succeeded = 0

    def add(name: str, hit: np.ndarray) -> None:
        n, k = counts.get(name, (0, 0))
        counts[name] = (n + int(hit.size), k + int(hit.sum()))

    rng = np.random.default_rng(0)
    for batch in collavn.batches_of(episodes, maps, feats, dataset.config, 32):
        with torch.no_grad():
            r = collavn.run_team(model, batch, rng=rng, sight_m=sight_m, team_sight=team_sight, sight_memory=memory)
        known = collavn.goal_known_labels(batch, r, sight_m, team_sight, memory).transpose(0, 2, 1)   # (B, N, T)
        T = r.active.shape[2]
        prev = np.concatenate([np.full(r.actions.shape[:2] + (1,), STOP), r.actions[:, :, :-1]], 2)
        agree = r.actions == r.expert
        act = r.active
        first = np.zeros_like(act)
        first[:, :, 0] = True
        explore = act & ~known & ~first
        add('first step', agree[first & act])
        add('exploring: keep heading', agree[explore & (r.expert == prev)])
        add('exploring: turn at an obstacle', agree[explore & (r.expert != prev)])
        go = act & known & ~first
        add('goal known: a move', agree[go & (r.expert != STOP)])
        add('goal known: STOP', agree[go & (r.expert == STOP)])
        add('every step', agree[act])
        for t in range(1, T):
            walk = go[:, :, t] & (r.expert[:, :, t] != STOP)
            rule = batch.expert_actions(r.nodes[:, :, t], prev[:, :, t], np.zeros(walk.shape, bool))
            add('walk: policy explores', (r.actions[:, :, t] == rule)[walk])
            add('walk: rule agrees', (rule == r.expert[:, :, t])[walk])
        for o, k in zip(collavn.episode_outcomes(batch, r), known.reshape(-1, T).any(-1)):
            if o.success:
                succeeded += 1
            elif k:
                failed_known += 1
            else:
                failed_unknown += 1
    total = succeeded + failed_known + failed_unknown
    print(f'{args.model}: {len(episodes)} {args.split} episodes, {total} agents, variant {model.cfg.variant}, '
          f'sight {sight_m:g} m')
    print(f'{"expert doing":34s} {"steps":>7s} {"share":>7s} {"policy agrees":>14s}')
    every = counts['every step'][0]
    walk = {k: counts.pop(k) for k in ('walk: policy explores', 'walk: rule agrees')}
    for name, (n, k) in counts.items():
        print(f'{name:34s} {n:7d} {100 * n / max(every, 1):6.1f}% {100 * k / max(n, 1):13.1f}%')
    print(f'agents: {100 * succeeded / total:.1f}% succeeded; failed with the goal known to the expert '
          f'{100 * failed_known / total:.1f}%, never known {100 * failed_unknown / total:.1f}%')
    (n, explores), (_, agrees) = walk['walk: policy explores'], walk['walk: rule agrees']
    print(f'walking to a known goal ({n} steps): the policy makes the exploration rule\'s move on '
          f'{100 * explores / max(n, 1):.1f}% of them; that move is the expert\'s on {100 * agrees / max(n, 1):.1f}%')
    return 0


if __name__ == '__main__':
    sys.exit(main())

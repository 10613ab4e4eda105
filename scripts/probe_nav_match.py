"""Does a CollaVN agent's match find the supporters that have seen the requester's goal?

    python scripts/probe_nav_match.py runs/nav/collavn/model.pt --data datasets/nav --split val --team 3

Rolls the team-sight expert out on episodes of one split and team size, replays the agent's exchange along
those paths (learn/collavn.run_team with a teacher) and compares its match with what the expert knows
(learn/collavn.sighting_labels, at the sight distance the run was trained with):
- entry AUC: every memory entry a supporter matches (its current key and each stored one), its logit against
  whether the supporter stood within sight of the requester's goal at that entry's step;
- pair AUC: each (requester, supporter, step) score against whether the supporter has seen the goal so far;
- sent: the share of those pairs, and of the others, whose score passes the model's threshold;
- read mass: for the pairs whose supporter has an entry near the goal, the share of the attention read (the
  softmax over its entries, whose mix is the value it sends) that falls on such entries (1: the value is
  made of sightings only).
Without a model path, a freshly initialized agent (seed 0) is probed.
"""
from __future__ import annotations

import argparse
import sys

import numpy as np


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument('model', nargs='?', default=None, help="a run's model.pt (default: a fresh agent)")
    parser.add_argument('--data', default='datasets/nav', help='navigation dataset (default datasets/nav)')
    parser.add_argument('--split', default='val', help='split of the episodes (default val)')
    parser.add_argument('--team', type=int, default=3, help='team size of the episodes (default 3)')
    parser.add_argument('--episodes', type=int, default=32, help='episodes probed (default 32)')
    parser.add_argument('--sight-m', type=float, default=None,
                        help="the expert's sight distance (default: the run's, or 8 m)")
    args = parser.parse_args(argv)

    import torch

    from collab_perception.data.nav import NavDataset
    from collab_perception.learn import collavn
    from collab_perception.runtime.metrics import auc

    torch.set_num_threads(1)
    torch.manual_seed(0)
    dataset = NavDataset(args.data)
    encoder = collavn.load_or_pretrain_encoder(dataset, 0)
    maps, feats = collavn.map_features(dataset, encoder, args.split)
    sight_m = args.sight_m
    if args.model:
        model = collavn.load_agent(args.model)
        if sight_m is None:
            sight_m = float(torch.load(args.model, weights_only=True).get('train', {}).get('sight_m', 8.0))
    else:
        model = collavn.CollaVNAgent(collavn.AgentConfig(feature_dim=next(iter(feats.values()))['views'].shape[-1]))
    sight_m = 8.0 if sight_m is None else sight_m
    if not model.cfg.communicates:
        raise SystemExit(f'{args.model}: variant {model.cfg.variant} does not communicate; nothing to probe')
    episodes = [e for e in dataset.episodes(args.split) if e.team == args.team][:args.episodes]
    if not episodes:
        raise SystemExit(f'{args.data}: no {args.split} episodes with a team of {args.team}')
    batch = collavn.EpisodeBatch(episodes, maps, feats, dataset.config)
    with torch.no_grad():
        rollout = collavn.run_team(None, batch, beta=1.0, policy='expert', sight_m=sight_m, team_sight=True)
        _, scores_seq, _, entry_seq, *_ = collavn.run_team(model, batch, teacher=rollout)
    near = collavn.sighting_labels(batch, rollout, sight_m, memory=False)
    entry_logits, entry_labels, read_mass = [], [], []
    for t, logits in enumerate(entry_seq):
        eligible = (scores_seq[t] > 0).numpy()
        steps = [t] + list(range(logits.shape[-1] - 1))          # entry 0: step t; entry m >= 1: step m - 1
        entry_logits.append(logits.numpy()[eligible].ravel())
        labels_t = near[:, steps].transpose(0, 2, 3, 1)[eligible]            # (pairs, entries)
        entry_labels.append(labels_t.ravel())
        weights = torch.softmax(logits, -1).numpy()[eligible]
        has_near = labels_t.any(-1)
        read_mass.append((weights * labels_t)[has_near].sum(-1))
    logits, labels = np.concatenate(entry_logits), np.concatenate(entry_labels)
    scores = torch.stack(scores_seq, 1).numpy()
    seen = collavn.sighting_labels(batch, rollout, sight_m, model.cfg.memory)
    eligible = scores > 0
    sent = scores >= model.cfg.threshold
    print(f'{args.model or "fresh agent"}: {len(episodes)} {args.split} episodes, team {args.team}, sight {sight_m:g} m, '
          f'threshold {model.cfg.threshold:g}')
    print(f'  entries {len(labels)}, {100 * labels.mean():.1f}% near the goal; entry AUC {auc(logits, labels):.3f}')
    print(f'  pairs {int(eligible.sum())}, {100 * seen[eligible].mean():.1f}% have seen the goal; '
          f'pair AUC {auc(scores[eligible], seen[eligible]):.3f}')
    print(f'  sent: {100 * sent[eligible & seen].mean():.1f}% of the pairs that have seen it, '
          f'{100 * sent[eligible & ~seen].mean():.1f}% of the others')
    mass = np.concatenate(read_mass)
    print(f'  read mass on entries near the goal: mean {mass.mean():.3f}, median {np.median(mass):.3f} '
          f'over {len(mass)} pairs with such an entry')
    return 0


if __name__ == '__main__':
    sys.exit(main())

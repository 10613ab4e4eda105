"""How well do the navigation encoder's raw view descriptors tell that an agent is near its goal?

    python scripts/probe_nav_place.py --data datasets/nav --split val --pools 1 2 4 8

For goal nodes drawn on each map of a split, every node's panorama is compared with the goal's (cosine of the
descriptors view by view, the same compass direction, averaged over the four views; descriptors centred on
the split's mean) and the AUC of that similarity against "within R metres of the goal" (geodesic) is reported
for each pooling of the encoder's feature map (the agent uses 2 x 2). No learning: what the descriptors
carry before the agent's own view embedding and policy make use of it.
"""
from __future__ import annotations

import argparse
import sys

import numpy as np


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument('--data', default='datasets/nav', help='navigation dataset (default datasets/nav)')
    parser.add_argument('--split', default='val', help='split of the maps (default val)')
    parser.add_argument('--pools', type=int, nargs='+', default=[1, 2, 4, 8], help='poolings compared')
    parser.add_argument('--radii-m', type=float, nargs='+', default=[4.0, 8.0],
                        help='"near the goal" radii in metres (default 4, the success radius, and 8, the sight)')
    parser.add_argument('--goals', type=int, default=40, help='goal nodes drawn per map (default 40)')
    args = parser.parse_args(argv)

    import torch
    from torch.nn import functional as F

    from collab_perception.data.nav import NavDataset
    from collab_perception.learn import collavn
    from collab_perception.runtime.metrics import auc
    from collab_perception.world.nav import bfs_steps

    torch.set_num_threads(1)
    dataset = NavDataset(args.data)
    encoder = collavn.load_or_pretrain_encoder(dataset, 0)
    rng = np.random.default_rng(0)
    lattice = dataset.config.lattice_m
    scores: dict = {}
    for map_id in dataset.manifest['splits'][args.split]['map_ids']:
        nav_map = dataset.map(args.split, map_id)
        features = collavn.view_feature_maps(encoder, nav_map.rgb)
        goals = rng.choice(nav_map.nodes, min(args.goals, nav_map.nodes), replace=False)
        for pool in args.pools:
            d = F.adaptive_avg_pool2d(features, pool).flatten(1).reshape(nav_map.nodes, 4, -1)
            d = F.normalize(d - d.mean((0, 1), keepdim=True), dim=-1).numpy()
            for g in goals:
                steps = bfs_steps(nav_map.neighbours, int(g))
                reachable = steps < 10 ** 6
                similarity = (d * d[g][None]).sum(-1).mean(-1)[reachable]
                for radius in args.radii_m:
                    near = (steps[reachable] * lattice) <= radius
                    scores.setdefault((pool, radius), []).append(auc(similarity, near))
    print(f'{args.data} {args.split}: {args.goals} goals per map, descriptor similarity against "near the goal"')
    print('pool  ' + ''.join(f'AUC within {r:g} m  ' for r in args.radii_m))
    for pool in args.pools:
        print(f'{pool}x{pool:<3d}' + ''.join(f'{np.nanmean(scores[(pool, r)]):15.3f}  ' for r in args.radii_m))
    return 0


if __name__ == '__main__':
    sys.exit(main())

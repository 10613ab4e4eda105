"""A freshly generated dataset split replayed through the swarm (replay bridge), for swarm-vs-offline tests."""
from collab_perception.data import generate, iter_snapshots

SPLIT = 'train'   # the largest split of the fresh maps (none of them was seen in training)


def generate_split(tmp_path_factory, setting: str, frames: int, seed: int, **options) -> str:
    """A small dataset of `setting` on maps no shipped model was trained on; returns its directory. `options`:
    further GenerateConfig fields (e.g. degraded_share for the mixed variant)."""
    root = str(tmp_path_factory.mktemp('replay') / setting)
    generate(setting, frames, root, seed=seed, size=128, progress=False, snapshots_per_map=frames, **options)
    return root


def replay_frames(root: str, split: str = SPLIT) -> int:
    return sum(1 for _ in iter_snapshots(root, split))


def replay_args(root: str, split: str = SPLIT) -> list[str]:
    """`collab-perception swarm` arguments that make the replay bridge publish this split for all its frames."""
    return ['--frames', str(replay_frames(root, split)), '--set', 'swarm.source.type=replay',
            '--set', f'swarm.source.replay.dataset={root}', '--set', f'swarm.source.replay.split={split}']

"""CollaVN's memory-augmented communication (runtime/memory.py), its torch twin (learn/collavn.py), the
navigation metrics, and a short training + evaluation run on a tiny generated dataset."""
import dataclasses
import math

import numpy as np
import pytest
import torch
import yaml

from collab_perception.learn import collavn
from collab_perception.runtime.memory import EpisodeMemory, fuse, match, select
from collab_perception.runtime.metrics import NavOutcome, nav_metrics


def test_memory_stores_in_order_and_keeps_at_most_its_capacity():
    mem = EpisodeMemory(key_dim=2, value_dim=3, capacity=3)
    for t in range(5):
        mem.store([t, t], [t, t, t])
    assert len(mem) == 3 and mem.keys[:, 0].tolist() == [2, 3, 4]     # the oldest went first
    mem.clear()
    assert len(mem) == 0
    with pytest.raises(ValueError, match=r'key \[2\] and value \[3\]'):
        mem.store([1, 2, 3], [1, 2, 3])
    with pytest.raises(ValueError, match='capacity'):
        EpisodeMemory(2, 3, 0)


def test_match_finds_a_past_key_that_the_current_one_misses():
    mem = EpisodeMemory(key_dim=4, value_dim=2, capacity=10)
    goal = np.array([8.0, 0, 0, 0])
    mem.store(goal / 2, [1.0, -1.0])          # the supporter saw the goal some steps ago
    mem.store([0, 3.0, 0, 0], [5.0, 5.0])
    current_key, current_value = np.array([0, 0, 3.0, 0]), np.array([-2.0, 2.0])
    score, value = match(goal, current_key, current_value, mem)
    assert score == pytest.approx(1 / (1 + math.exp(-32 / 2)))          # sigmoid(q.k / sqrt(4))
    np.testing.assert_allclose(value, [1.0, -1.0], atol=1e-3)
    # without the memory only the current entry is there: a low score, its own value
    score, value = match(goal, current_key, current_value, None)
    assert score == pytest.approx(0.5) and value.tolist() == [-2.0, 2.0]


def test_select_and_fuse():
    assert select({2: 0.9, 3: 0.4, 4: 0.5}, 0.5) == [2, 4]
    assert select({2: 0.1, 3: 0.2}, 0.5) == []                            # nobody sends this step
    value, got = fuse([(0.9, np.array([1.0, 0.0])), (0.3, np.array([0.0, 1.0]))], 2)
    np.testing.assert_allclose(value, [0.75, 0.25], rtol=1e-6)
    assert got
    value, got = fuse([], 2)
    assert not got and value.tolist() == [0.0, 0.0]


def test_the_batched_torch_attention_equals_the_runtime_match():
    rng = np.random.default_rng(3)
    for entries in (1, 4, 9):
        q = rng.normal(size=8).astype(np.float32)
        keys = rng.normal(size=(entries, 8)).astype(np.float32)
        values = rng.normal(size=(entries, 5)).astype(np.float32)
        mem = EpisodeMemory(8, 5, 16)
        for k, v in zip(keys[1:], values[1:]):
            mem.store(k, v)
        want_score, want_value = match(q, keys[0], values[0], mem)
        score, value = collavn.attend(torch.from_numpy(q), torch.from_numpy(keys), torch.from_numpy(values),
                                      torch.ones(entries, dtype=torch.bool))
        assert float(score) == pytest.approx(want_score, rel=1e-5)
        np.testing.assert_allclose(value.numpy(), want_value, rtol=1e-5, atol=1e-6)


def test_nav_metrics_follow_their_formulas():
    d_s, tmax = 4.0, 60
    outcomes = [NavOutcome(final_m=2.0, shortest_m=10.0, path_m=20.0, steps=10, max_steps=tmax, success_m=d_s),
                NavOutcome(final_m=0.0, shortest_m=8.0, path_m=8.0, steps=5, max_steps=tmax, success_m=d_s),
                NavOutcome(final_m=10.0, shortest_m=12.0, path_m=30.0, steps=60, max_steps=tmax, success_m=d_s)]
    m = nav_metrics(outcomes)
    assert m['success_rate'] == pytest.approx(2 / 3)
    assert m['dts'] == pytest.approx((0 + 0 + 6.0) / 3)
    assert m['spl'] == pytest.approx((10 / 20 + 1.0 + 0) / 3)
    assert m['ssr'] == pytest.approx((60 / 10 + 60 / 5 + 0) / 3)


@pytest.fixture(scope='module')
def tiny_nav(tmp_path_factory):
    from collab_perception.data.nav import generate_nav_dataset
    from collab_perception.world.nav import NavConfig
    out = str(tmp_path_factory.mktemp('nav') / 'data')
    cfg = NavConfig(region_m=24.0, image_size=16, band_scale=2.0, max_steps=20)
    generate_nav_dataset(out, cfg, {'train': 1, 'val': 1, 'test': 1}, 1, 12, teams=(2, 3), progress=False)
    return out


@pytest.fixture(scope='module')
def tiny_runs(tiny_nav, tmp_path_factory):
    runs = tmp_path_factory.mktemp('runs')
    cfg = collavn.NavTrainConfig(rounds=2, rollouts_per_round=2, steps_per_round=3, batch_size=4, teams=(2, 3),
                                 encoder_steps=5, val_episodes=8, threads=1)
    summary = collavn.train_agent(tiny_nav, str(runs / 'collavn'), cfg, log=lambda *_: None)
    assert [h['beta'] for h in summary['history']] == [1.0, 0.5]
    assert (runs / 'collavn' / 'model.pt').exists()
    return runs


def test_the_onnx_agent_plays_the_episodes_as_torch_does(tiny_nav, tiny_runs, tmp_path):
    from collab_perception.data.nav import NavDataset
    from collab_perception.runtime.nav_agent import NavAgent
    report = collavn.export_run(str(tiny_runs / 'collavn'), tiny_nav, str(tmp_path / 'model'), check=12)
    assert report['episodes_checked'] == 12 and report['agree'], report
    card = collavn.write_model_card(str(tiny_runs / 'collavn'), tiny_nav, str(tmp_path / 'model'), report)
    on_disk = yaml.safe_load((tmp_path / 'model' / 'model_card.yaml').read_text())
    assert on_disk['metrics'] == card['metrics'] and set(card['metrics']) == {'test', 'unseen'}
    test_episodes = NavDataset(tiny_nav).episodes('test')
    assert card['metrics']['test']['episodes'] == len(test_episodes)
    assert card['metrics']['test']['agent_episodes'] == sum(e.team for e in test_episodes)
    assert 0.0 <= card['metrics']['test']['success_rate'] <= 1.0 and card['onnx_check']['agree']
    assert card['trained_with'].startswith('collab-perception nav train --data ') and '--rounds 2' in card['trained_with']
    # the encode role gives the descriptors training used
    dataset = NavDataset(tiny_nav)
    nav_map = dataset.map('test', dataset.manifest['splits']['test']['map_ids'][0])
    encoder = collavn.load_or_pretrain_encoder(dataset, 0)
    want = collavn.encode_views(encoder, nav_map.rgb[:3])
    agent = NavAgent(str(tmp_path / 'model'))
    got = np.stack([agent.encode(panorama) for panorama in nav_map.rgb[:3]])     # one node's four views at a time
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    # the bump bit (the context's last number) comes from consecutive GPS cells: a cell that stayed put
    step = dataset.config.lattice_m / dataset.config.region_m
    agent.reset(want[0])
    bumps = []
    for cell in [(0.5, 0.5), (0.5, 0.5), (0.5 + step, 0.5), (0.5 + step, 0.5 + step), (0.5 + step, 0.5 + step)]:
        agent.observe(want[1], cell)
        bumps.append(float(agent._step.context[-1]))
    assert bumps == [0.0, 1.0, 0.0, 0.0, 1.0]
    agent.reset(want[0])                                  # a new episode starts unbumped where the last one ended
    agent.observe(want[1], (0.5 + step, 0.5 + step))
    assert float(agent._step.context[-1]) == 0.0


def test_training_and_the_tables(tiny_nav, tiny_runs, tmp_path):
    from collab_perception.learn.nav_cli import ADHOC, REFERENCES, RESULTS_BEGIN, RESULTS_END, ROWS
    table = collavn.evaluate_table(tiny_nav, str(tiny_runs), ROWS, ADHOC, thresholds=[0.0, 1.01],
                                   references=REFERENCES, log=lambda *_: None)
    # the experts: knowing what the team saw is never worse than knowing what the agent saw alone
    team, own = (table['rows'][k]['results']['test/common/3'] for k in ('expert_team', 'expert_own'))
    assert team['success_rate'] >= own['success_rate'] and team['episodes'] == own['episodes'] > 0
    ours = table['rows']['collavn']['results']['test/common/2']
    assert 0.0 <= ours['success_rate'] <= 1.0 and ours['bytes_per_agent_step'] > 0
    assert not table['rows']['no_comm']['trained'] and table['rows']['random_walk']['trained']
    assert table['rows']['random_walk']['results']['test/common/2']['bytes_per_agent_step'] == 0
    # threshold above every score: nobody ever sends a value, only queries go out
    never = table['sweep'][-1]
    assert never['silent_step_share'] == 1.0
    from collab_perception.runtime import wire
    assert never['bytes_per_agent_step'] == wire.request_size([32], 'float32')
    results = tmp_path / 'RESULTS.md'
    results.write_text('# Results\n\nhand-written text\n')
    collavn.write_results_section(str(results), table, str(tmp_path / 'plot.png'), RESULTS_BEGIN, RESULTS_END, 'cmd')
    collavn.write_results_section(str(results), table, str(tmp_path / 'plot.png'), RESULTS_BEGIN, RESULTS_END, 'cmd')
    text = results.read_text()
    assert text.startswith('# Results\n\nhand-written text\n') and text.count(RESULTS_BEGIN) == 1
    assert '| w/o communication | — | not trained |' in text and (tmp_path / 'plot.png').stat().st_size > 1000


def test_sighting_labels_say_who_has_seen_whose_goal(tiny_nav, tiny_runs):     # tiny_runs: the encoder
    from collab_perception.data.nav import NavDataset
    dataset = NavDataset(tiny_nav)
    encoder = collavn.load_or_pretrain_encoder(dataset, 0)
    maps, feats = collavn.map_features(dataset, encoder, 'train')
    episodes = [e for e in dataset.episodes('train') if e.team == 2][:4]
    batch = collavn.EpisodeBatch(episodes, maps, feats, dataset.config)
    rollout = collavn.run_team(None, batch, policy='random', rng=np.random.default_rng(3))
    sight_m = 2 * dataset.config.lattice_m
    now = collavn.sighting_labels(batch, rollout, sight_m, memory=False)
    ever = collavn.sighting_labels(batch, rollout, sight_m, memory=True)
    T = rollout.active.shape[2]
    assert now.shape == ever.shape == (len(batch), T, 2, 2)
    for b in range(len(batch)):
        for i in range(2):
            d = batch.distance[b][i]
            for j in range(2):
                near = [d[rollout.nodes[b, j, t]] <= 2 for t in range(T)]
                assert list(now[b, :, i, j]) == near
                assert list(ever[b, :, i, j]) == [any(near[:t + 1]) for t in range(T)]
    assert (ever >= now).all() and ever.any()
    # the auxiliary terms only add to the loss of a communicating variant, and they carry gradient to the keys
    torch.manual_seed(0)
    model = collavn.CollaVNAgent(collavn.AgentConfig(feature_dim=feats[next(iter(feats))]['views'].shape[-1]))
    plain, ce, _ = collavn.imitation_loss(model, batch, rollout, score_price=0.0, sighting_weight=0.0, sight_m=sight_m)
    aux, ce2, _ = collavn.imitation_loss(model, batch, rollout, score_price=0.0, sighting_weight=1.0, sight_m=sight_m)
    assert ce == pytest.approx(ce2) and float(aux.detach()) > float(plain.detach())
    aux.backward()
    assert model.key.weight.grad.abs().sum() > 0 and model.goal_cell.weight.grad.abs().sum() > 0
    # the read term: minus the log of the attention mass on entries near the goal, never negative, and a step
    # down its gradient moves that mass up
    read = collavn.imitation_loss(model, batch, rollout, 0.0, 1.0, sight_m, read_weight=1.0)[0]
    assert float(read.detach()) > float(aux.detach())
    model.zero_grad()
    (read - collavn.imitation_loss(model, batch, rollout, 0.0, 1.0, sight_m)[0]).backward()
    with torch.no_grad():
        before = float(read - aux)
        for p in model.parameters():
            if p.grad is not None:
                p -= 0.05 * p.grad
        after = float(collavn.imitation_loss(model, batch, rollout, 0.0, 1.0, sight_m, read_weight=1.0)[0]
                      - collavn.imitation_loss(model, batch, rollout, 0.0, 1.0, sight_m)[0])
    assert after < before


@pytest.mark.parametrize('variant', ['collavn', 'no_comm'])
def test_goal_offsets_reach_the_policy_and_export(tiny_nav, tiny_runs, tmp_path, variant):
    """With goal_offsets the context ends with the agent's cell, the own read is taught to decode the goal's
    cell once the agent has seen it, and the exported roles play the episodes as torch does."""
    from collab_perception.data.nav import NavDataset
    dataset = NavDataset(tiny_nav)
    encoder = collavn.load_or_pretrain_encoder(dataset, 0)
    maps, feats = collavn.map_features(dataset, encoder, 'train')
    episodes = [e for e in dataset.episodes('train') if e.team == 2][:6]
    batch = collavn.EpisodeBatch(episodes, maps, feats, dataset.config)
    torch.manual_seed(0)
    cfg = collavn.AgentConfig(variant=variant, goal_offsets=True, feature_dim=feats[next(iter(feats))]['views'].shape[-1])
    model = collavn.CollaVNAgent(cfg)
    views, cells = batch.observe(batch.starts())
    context = model.observe(views, batch.goals(), cells, torch.zeros(len(batch), 2, cfg.value_dim),
                            torch.zeros(len(batch), 2, 1))[0]
    assert context.shape[-1] == cfg.context_dim and torch.equal(context[..., -2:], cells)
    sight_m = 3 * dataset.config.lattice_m
    rollout = collavn.run_team(None, batch, policy='random', rng=np.random.default_rng(3), sight_m=sight_m,
                               team_sight=cfg.communicates)
    loss = collavn.imitation_loss(model, batch, rollout, 0.0, 1.0, sight_m)[0]
    plain = collavn.imitation_loss(model, batch, rollout, 0.0, 0.0, sight_m)[0]
    assert float(loss.detach()) > float(plain.detach())      # the goal-cell terms (own read, and answers)
    loss.backward()
    assert model.goal_cell.weight.grad.abs().sum() > 0
    run = tmp_path / 'run'
    run.mkdir()
    torch.save({'agent': dataclasses.asdict(cfg), 'state_dict': model.state_dict(), 'round': 0,
                'train': {}}, run / 'model.pt')
    report = collavn.export_run(str(run), tiny_nav, str(tmp_path / 'model'), check=8)
    assert report['episodes_checked'] == 8 and report['agree'], report
    command = collavn.train_command('runs/x', tiny_nav, {'variant': variant, 'goal_offsets': True})
    assert command.endswith('--goal-offsets')
    assert '--goal-offsets' not in collavn.train_command('runs/x', tiny_nav, {'variant': variant})


@pytest.mark.parametrize('variant', ['collavn', 'no_comm'])
def test_the_goal_belief_labels_are_what_the_expert_knew(tiny_nav, tiny_runs, variant):
    """goal_known_labels must say exactly when run_team's expert switched from exploring to the shortest path:
    wherever the two rules disagree, the recorded label is the one the known-flag picks."""
    from collab_perception.data.nav import NavDataset
    dataset = NavDataset(tiny_nav)
    encoder = collavn.load_or_pretrain_encoder(dataset, 0)
    maps, feats = collavn.map_features(dataset, encoder, 'train')
    episodes = [e for e in dataset.episodes('train') if e.team == 3][:6]
    batch = collavn.EpisodeBatch(episodes, maps, feats, dataset.config)
    sight_m = 3 * dataset.config.lattice_m
    team_sight = variant != 'no_comm'
    rollout = collavn.run_team(None, batch, policy='random', rng=np.random.default_rng(5), sight_m=sight_m,
                               team_sight=team_sight)
    known = collavn.goal_known_labels(batch, rollout, sight_m, team_sight, sight_memory=True)
    T = rollout.active.shape[2]
    assert known.shape == (len(batch), T, 3)
    assert (known[:, 1:] >= known[:, :-1]).all()            # once known, known to the end
    decided = 0
    prev = np.full(rollout.nodes.shape[:2], collavn.STOP)
    for t in range(T):
        nodes = rollout.nodes[:, :, t]
        shortest = batch.expert_actions(nodes, prev, np.ones(nodes.shape, bool))
        explore = batch.expert_actions(nodes, prev, np.zeros(nodes.shape, bool))
        differ = (shortest != explore) & rollout.active[:, :, t]
        expected = np.where(known[:, t], shortest, explore)
        assert (rollout.expert[:, :, t][differ] == expected[differ]).all()
        decided += int(differ.sum())
        prev = np.where(rollout.active[:, :, t], rollout.actions[:, :, t], prev)
    assert decided > 20 and known.any() and not known.all()
    # the head learns from it: the belief term adds to the loss and reaches the recurrent state
    torch.manual_seed(0)
    model = collavn.CollaVNAgent(collavn.AgentConfig(variant=variant,
                                                     feature_dim=feats[next(iter(feats))]['views'].shape[-1]))
    plain = collavn.imitation_loss(model, batch, rollout, 0.0, 0.0, sight_m)[0]
    with_belief = collavn.imitation_loss(model, batch, rollout, 0.0, 0.0, sight_m, belief_weight=1.0)[0]
    assert float(with_belief.detach()) > float(plain.detach())
    with_belief.backward()
    assert model.goal_belief.weight.grad.abs().sum() > 0 and model.gru.weight_hh.grad.abs().sum() > 0


def test_a_radio_range_limits_who_hears_whom(tiny_nav, tiny_runs):
    from collab_perception.data.nav import NavDataset
    dataset = NavDataset(tiny_nav)
    encoder = collavn.load_or_pretrain_encoder(dataset, 0)
    maps, feats = collavn.map_features(dataset, encoder, 'train')
    episodes = [e for e in dataset.episodes('train') if e.team == 3][:4]
    batch = collavn.EpisodeBatch(episodes, maps, feats, dataset.config)
    nodes = batch.starts()
    assert batch.reach(nodes, 0.0).all()                                  # 0: no limit
    reach = batch.reach(nodes, 6.0)
    for b, m in enumerate(batch.maps):
        for i in range(3):
            for j in range(3):
                metres = np.linalg.norm((m.cells[nodes[b, i]] - m.cells[nodes[b, j]]) * dataset.config.lattice_m)
                assert reach[b, i, j] == (metres <= 6.0)
    assert (reach == reach.transpose(0, 2, 1)).all() and not reach.all()
    # a range that covers the whole region changes nothing: the same expert paths as without one
    sight_m = 2 * dataset.config.lattice_m
    free = collavn.run_team(None, batch, policy='expert', sight_m=sight_m)
    wide = collavn.run_team(None, batch, policy='expert', sight_m=sight_m, comm_range_m=1000.0, sight_memory=False)
    assert (free.nodes == wide.nodes).all()
    # values only go to agents in reach at that step, and a replay along the recorded paths keeps the range
    model = collavn.load_agent(str(tiny_runs / 'collavn' / 'model.pt'))
    model.cfg = dataclasses.replace(model.cfg, threshold=0.0)               # everyone in reach sends
    rollout = collavn.run_team(model, batch, comm_range_m=6.0)
    assert rollout.comm_range_m == 6.0 and rollout.sent.any()
    for t in range(rollout.sent.shape[1]):
        in_reach = batch.reach(rollout.nodes[:, :, t], 6.0)
        assert not (rollout.sent[:, t] & ~in_reach).any()
        assert (rollout.sent[:, t] | ~in_reach | ~rollout.requested[:, t, :, None]
                | np.eye(3, dtype=bool)[None]).all()
    _, scores_seq, *_ = collavn.run_team(model, batch, teacher=rollout)
    for t, scores in enumerate(scores_seq):
        assert not ((scores.detach().numpy() > 0) & ~batch.reach(rollout.nodes[:, :, t], 6.0)).any()
    with pytest.raises(ValueError, match='comm_range_m'):
        collavn.NavTrainConfig(comm_range_m=-1.0)


def test_a_patrol_before_the_goals_fills_the_memories(tiny_nav, tiny_runs, tmp_path):
    from collab_perception.data.nav import NavDataset
    dataset = NavDataset(tiny_nav)
    encoder = collavn.load_or_pretrain_encoder(dataset, 0)
    maps, feats = collavn.map_features(dataset, encoder, 'train')
    episodes = [e for e in dataset.episodes('train') if e.team == 2][:6]
    batch = collavn.EpisodeBatch(episodes, maps, feats, dataset.config)
    path = batch.patrol(5)
    assert path.shape == (len(batch), 2, 6) and (path[:, :, 0] == batch.starts()).all()
    assert (path[:, :, 1:] != path[:, :, :-1]).any()                      # the team moved
    for b, m in enumerate(batch.maps):                                     # along the lattice's edges
        for i in range(2):
            for t in range(5):
                assert path[b, i, t + 1] == path[b, i, t] or path[b, i, t + 1] in m.neighbours[path[b, i, t]]
    assert (collavn.EpisodeBatch(episodes, maps, feats, dataset.config).patrol(5) == path).all()   # a replay walks it again
    # the episode starts where the patrol ended, and SPL's shortest length is measured from there
    model = collavn.load_agent(str(tiny_runs / 'collavn' / 'model.pt'))
    rollout = collavn.run_team(model, batch, patrol_steps=5)
    assert rollout.patrol_steps == 5 and (rollout.nodes[:, :, 0] == path[:, :, -1]).all()
    outcomes = collavn.episode_outcomes(batch, rollout)
    assert [o.shortest_m for o in outcomes] == [batch.distance[b][i][path[b, i, -1]] * dataset.config.lattice_m
                                                for b in range(len(batch)) for i in range(2)]
    # replayed along a recorded walk, every agent's memory holds its patrol's entries before the first step's
    rollout = collavn.run_team(None, batch, policy='random', rng=np.random.default_rng(5), patrol_steps=5)
    assert rollout.active.shape[2] >= 2 and (rollout.nodes[:, :, 0] == path[:, :, -1]).all()
    _, scores_seq, _, entry_seq, *_ = collavn.run_team(model, batch, teacher=rollout)
    assert entry_seq[0].shape[-1] == 1 + 5 and entry_seq[1].shape[-1] == 1 + 6
    replayed = collavn.run_team(model, batch, teacher=rollout)[1]
    assert all(torch.equal(a, b) for a, b in zip(scores_seq, replayed))
    # sighting labels count the patrol: with memory, what a patrol passed stays seen
    ever = collavn.sighting_labels(batch, rollout, 4.0, memory=True, with_patrol=True)
    assert ever.shape[1] == 5 + rollout.active.shape[2]
    assert (collavn.sighting_labels(batch, rollout, 4.0, memory=True) == ever[:, 5:]).all()
    # the experts: one that remembers the patrol's sightings does at least as well as one that does not
    sight_m = 2 * dataset.config.lattice_m
    rates = [collavn.evaluate_batches(None, [batch], policy='expert', sight_m=sight_m, patrol_steps=5,
                                      sight_memory=memory)['success_rate'] for memory in (True, False)]
    assert rates[0] >= rates[1]
    loss, _, _ = collavn.imitation_loss(model, batch, rollout, 0.0, 1.0, sight_m, read_weight=1.0)
    assert torch.isfinite(loss)
    with pytest.raises(ValueError, match='patrol_steps'):
        collavn.NavTrainConfig(patrol_steps=-1)
    assert '--patrol-steps 5' in collavn.train_command('runs/x', tiny_nav, {'variant': 'collavn', 'patrol_steps': 5})
    # the swarm runs the paper's task: a run trained with a patrol is not exported for it
    ckpt = torch.load(tiny_runs / 'collavn' / 'model.pt', weights_only=True)
    ckpt['train']['patrol_steps'] = 5
    (tmp_path / 'patrolled').mkdir()
    torch.save(ckpt, tmp_path / 'patrolled' / 'model.pt')
    with pytest.raises(ValueError, match="patrol_steps.*offline only"):
        collavn.export_run(str(tmp_path / 'patrolled'), tiny_nav, str(tmp_path / 'out'), check=0)


def test_a_fresh_agent_matches_its_goal_panorama_best():
    """The match is a scaled cosine in the key's space with the goal entering through the key's projection:
    before any training, the key of the goal's own panorama scores highest against the query."""
    torch.manual_seed(1)
    model = collavn.CollaVNAgent(collavn.AgentConfig(feature_dim=16))
    panoramas = torch.rand(8, 4, 16)                     # 8 places, four views each
    goal = panoramas[3:4].expand(8, 4, 16)
    cells, memory_mean = torch.rand(8, 2), torch.zeros(8, model.cfg.value_dim)
    with torch.no_grad():
        _, query, key, _ = model.observe(panoramas, goal, cells, memory_mean, torch.zeros(8, 1))
        score, _ = collavn.attend(query[0], key, torch.zeros(8, 1), torch.ones(8, dtype=torch.bool))
        logits = key @ query[0]
    assert query.shape == key.shape == (8, model.cfg.key_dim)
    assert int(logits.argmax()) == 3
    assert float(score) == pytest.approx(float(torch.sigmoid(logits.max() / math.sqrt(model.cfg.key_dim))))
    assert float(score) > 0.5        # cosine 1: MATCH_SCALE_INIT * (1 - MATCH_COSINE_INIT) > 0

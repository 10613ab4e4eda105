"""`collab-perception train | evaluate | export`: the learning side of the handshake paper, from one CLI.

Imported lazily by collab_perception/cli.py, so that the ROS commands never load torch.
"""
from __future__ import annotations

import argparse
import json
import logging
import os

from ..config import ConfigError

SELECTIONS = ('soft', 'hard')     # learn.models.SELECTIONS; repeated so that --help loads no torch
PATCH_SAMPLINGS = ('cells', 'pixels')   # learn.models.PATCH_SAMPLINGS, likewise
FUSIONS = ('hard', 'soft', 'bayes')     # learn.mash.FUSIONS, likewise

SETTINGS = ('hidden-target', 'accurate-pose', 'noisy-pose', 'random-exploration', 'obstruction')
METHODS = ('backbone', 'single_normal', 'single_degraded', 'catall', 'attention', 'compression', 'random', 'who2com',
           'who2com_nomsg', 'when2com',
           'mash', 'mash_stacked', 'inpainting', 'inpainting_all', 'inputstack', 'outputstack', 'warped_outputstack',
           'warped_outputstack_cells')


def add_learn_parsers(sub) -> None:
    p = sub.add_parser(
        'train', help='train one method on one setting (resumable)',
        description='Train a method of the handshake paper (Who2com §III; baselines §IV-C) on a generated dataset, '
                    'with a progress bar; checkpoints (last.pt, best.pt by validation accuracy), the effective '
                    'config and the learning curve go to runs/train/<setting>/<method>/. A fixed number of '
                    'iterations with cosine decay makes a run reproducible from its seed; --resume continues one.\n\n'
                    'methods: ' + ', '.join(METHODS),
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--method', required=True, choices=METHODS, metavar='NAME', help='one of the methods above')
    p.add_argument('--setting', required=True, choices=SETTINGS, metavar='SETTING', help=', '.join(SETTINGS))
    p.add_argument('--data', default='', help='dataset directory (default: datasets/<setting>, made with '
                   '`collab-perception dataset generate`)')
    p.add_argument('--out', default='', help='run directory (default: runs/train/<setting>/<method>)')
    p.add_argument('--iterations', type=int, default=1000, help='optimizer steps (default 1000: ~16 min on 2 cores '
                   'for the collaborative models)')
    p.add_argument('--batch-size', type=int, default=16)
    p.add_argument('--lr', type=float, default=2e-3, help='peak learning rate (AdamW, cosine decay)')
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--eval-every', type=int, default=250, help='validate and checkpoint every N steps')
    p.add_argument('--max-minutes', type=float, default=0.0, help='stop early after this long (the run is marked '
                   'truncated; 0: no limit)')
    p.add_argument('--threads', type=int, default=0, help='torch threads (default: all cores)')
    p.add_argument('--query-size', type=int, default=8, help='m, the broadcast message (default 8)')
    p.add_argument('--key-size', type=int, default=256, help='k, the local key (default 256)')
    p.add_argument('--attention', choices=('general', 'additive', 'scaled_dot'), default='general')
    p.add_argument('--selection', choices=SELECTIONS, default='soft',
                   help='handshake training: soft, the softmax blend of every supporter (Eq. 5, default), or '
                        'hard, the supporter(s) inference connects to, with the softmax\'s gradient '
                        '(straight-through)')
    p.add_argument('--patch-sampling', choices=PATCH_SAMPLINGS, default='cells',
                   help='MASH: what a supporter sends for a matched cell: cells, its class distribution averaged '
                        'over the cell (default), or pixels, its segmentation at label resolution through a '
                        'sub-cell warping grid (MASH Eq. 3; needs a dataset with correspondence_uv)')
    p.add_argument('--match-stem', type=int, default=0, metavar='C',
                   help='MASH: a small strided CNN on the raw image gives C channels per cell beside the '
                        'backbone\'s features, for matching only (default 0: match on the backbone\'s features); '
                        'trained with --freeze-encoder too, the images are then cached beside the features')
    p.add_argument('--refine-flow', action='store_true',
                   help='MASH, pixels sampling: refine each supporter\'s matches as a flow field over the target\'s '
                        'cells after the smoothing (positions and match confidence from a small conv net on the '
                        'matches\' positions and masses), trained on the sub-cell positions: infilling becomes '
                        'interpolating a smooth field instead of moving mass between the volume\'s channels')
    p.add_argument('--accuracy-confidence', action='store_true',
                   help='MASH with --refine-flow: train the target\'s self-confidence and each match\'s '
                        'confidence to estimate the share of the cell\'s pixels its own prediction, or the '
                        'supporter\'s patch, gets right; HardSelection then takes a patch only where it is expected '
                        'to beat the target, and the supporter\'s threshold is an expected accuracy')
    p.add_argument('--valid-mask', action='store_true',
                   help='pose settings: tell the model where a supporter\'s warped view has no pixels (its features '
                        'there are blended towards a learned "nothing seen" vector by the uncovered share of each '
                        'cell); offline only so far: `export` refuses such a run')
    p.add_argument('--freeze-encoder', action='store_true',
                   help='keep the encoder of --init-from fixed (e.g. runs/train/<setting>/backbone/best.pt); '
                        'the training frames are then encoded once and their features cached in memory (MASH: the '
                        'own head is kept too, and every view\'s class distribution cached with its features)')
    p.add_argument('--select-by', default='accuracy', metavar='METRIC',
                   help='the validation measure that picks best.pt: accuracy (default), miou, or for MASH '
                        'match_within_one_cell (its matcher: real matches within one cell of the truth)')
    p.add_argument('--init-from', default='', metavar='CHECKPOINT',
                   help='start from the weights of another run whose names and shapes match (e.g. MASH\'s '
                        'backbone from runs/train/obstruction/inpainting/best.pt); ignored with --resume')
    p.add_argument('--resume', action='store_true', help='continue runs/.../last.pt')
    p.add_argument('--quiet', action='store_true', help='no progress bar')
    p.set_defaults(func=cmd_train)

    p = sub.add_parser(
        'evaluate', help='score every trained run and write the results page (runs/RESULTS.md)',
        description='Evaluate runs/train/<setting>/<method>/best.pt on the test split of datasets/<setting> (results '
                    'cached next to each checkpoint), then write the handshake paper\'s Table I on our data (bytes per '
                    'frame from the real message sizes, overall accuracy, mIoU, BIS, selection accuracy) and a plot '
                    'of accuracy against bytes.')
    p.add_argument('--runs', default='runs/train', help='root of the training runs')
    p.add_argument('--datasets', default='datasets', help='root of the datasets')
    p.add_argument('--split', default='test', choices=('val', 'test'))
    p.add_argument('--out', default='runs/RESULTS.md',
                   help='Markdown file to write ("-": print only; default runs/RESULTS.md: docs/RESULTS.md is curated '
                        'from it, with its rounds and findings, and is not overwritten)')
    p.add_argument('--plot', default='runs/img/results_accuracy_vs_bytes.png',
                   help='accuracy against bytes (PNG); the training curves go beside it')
    p.add_argument('--settings', nargs='+', choices=SETTINGS, default=list(SETTINGS), metavar='SETTING',
                   help='the settings to score and write (default: all; obstruction is the MASH section)')
    p.add_argument('--quiet', action='store_true')
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser(
        'export', help='export a trained model to ONNX by role (handshake: encoder, matcher, decoder; MASH: '
                       'requester, supporter, fusion)',
        description='Write the roles of a trained run, each a single .onnx file, plus model_card.yaml (training '
                    'command, setting, seed, measured metrics) and roles.json; checks ONNX Runtime against torch '
                    'on test frames. who2com / who2com_nomsg / when2com runs give encoder.onnx, matcher.onnx and '
                    'decoder.onnx; mash / mash_stacked runs give requester.onnx, supporter.onnx and fusion.onnx '
                    '(MASH §III; the swarm runs them in spatial mode, config/swarm_mash.yaml).')
    p.add_argument('--run', required=True, help='run directory with best.pt (e.g. runs/train/hidden-target/who2com)')
    p.add_argument('--out', required=True, help='output directory (e.g. models/who2com_hidden_target)')
    p.add_argument('--datasets', default='datasets')
    p.add_argument('--fusion', choices=FUSIONS, default=None,
                   help='MASH only: HardSelection, SoftSelection or BayesFusion (default: the one calibrated on '
                        'the validation split, else hard)')
    p.add_argument('--threshold', type=float, default=None,
                   help='MASH only: a supporter sends a matched cell from this confidence on (default: the one '
                        'calibrated on the validation split, else the model\'s)')
    p.add_argument('--test-data', default=None, metavar='DATA',
                   help='MASH only: the dataset whose test split the model card scores (default: the one the run '
                        'trained on)')
    p.add_argument('--unseen-data', default=None, metavar='DATA',
                   help='MASH only: the unseen-worlds dataset the model card scores (default: the test dataset\'s '
                        'path + "-unseen", when it exists)')
    p.add_argument('--fp16', action='store_true',
                   help='also write each role in half precision (<role>.fp16.onnx: float16 weights and arithmetic, '
                        'float32 inputs and outputs) and check it against the fp32 file; a drone runs it with '
                        '`precision: fp16` (GPU / Jetson, docs/DEPLOY.md)')
    p.set_defaults(func=cmd_export)


def _quiet_torch_export_logs() -> None:
    # torch's exporter warns about every torchvision op it cannot register (there is no torchvision here)
    logging.getLogger('torch.onnx').setLevel(logging.ERROR)
    os.environ.setdefault('TORCH_LOGS', '-all')


def cmd_train(args) -> int:
    from .models import ModelConfig
    from .train import TrainConfig, select_by_problem, train
    data = args.data or os.path.join('datasets', args.setting)
    if not os.path.exists(os.path.join(data, 'manifest.json')):
        raise ConfigError('--data', f'{data} holds no dataset; make it with: collab-perception dataset generate '
                          f'--setting {args.setting} --frames 2400 --out {data} --workers 2')
    cfg = TrainConfig(method=args.method, setting=args.setting, data_dir=data, out_dir=args.out, seed=args.seed,
                      iterations=args.iterations, batch_size=args.batch_size, lr=args.lr, eval_every=args.eval_every,
                      max_minutes=args.max_minutes, threads=args.threads, init_from=args.init_from,
                      select_by=args.select_by,
                      model=ModelConfig(query_size=args.query_size, key_size=args.key_size, attention=args.attention,
                                        selection=args.selection, freeze_encoder=args.freeze_encoder,
                                        patch_sampling=args.patch_sampling, valid_mask=args.valid_mask,
                                        match_stem=args.match_stem, refine_flow=args.refine_flow,
                                        accuracy_confidence=args.accuracy_confidence))
    problem = select_by_problem(args.method, args.select_by)
    if problem:
        raise ConfigError('--select-by', problem)
    result = train(cfg, resume=args.resume, progress=not args.quiet)
    metric = result['select_by']
    print(f'{result["method"]}/{result["setting"]}: {result["steps"]} steps in {result["elapsed_s"] / 60:.1f} min, '
          f'best validation {metric} {result["best_val_" + metric]:.4f}{" (truncated)" if result["truncated"] else ""}; '
          f'{result["out_dir"]}')
    return 0


def cmd_evaluate(args) -> int:
    from .report import write_results
    path = write_results(args.runs, args.datasets, None if args.out == '-' else args.out, args.plot, args.split,
                         progress=not args.quiet, settings=tuple(args.settings))
    if path:
        print(f'wrote {path} and {args.plot}')
    return 0


def cmd_export(args) -> int:
    _quiet_torch_export_logs()
    with open(os.path.join(args.run, 'config.json')) as f:
        method = json.load(f)['method']
    if method in ('mash', 'mash_stacked'):
        from .mash_export import export_mash_run
        card = export_mash_run(args.run, args.out, args.datasets, fusion=args.fusion, threshold=args.threshold,
                               fp16=args.fp16, test_data=args.test_data, unseen_data=args.unseen_data)
        print(f'{args.out}: ' + ', '.join(f'{k} {v}' for k, v in card['onnx_check'].items()))
        if args.fp16:
            print('fp16 against fp32: ' + ', '.join(f'{k} {v}' for k, v in card['onnx_fp16_check'].items()))
        print(f'test split: {card["metrics_test_split"]}')
        return 0
    for name in ('fusion', 'threshold', 'test_data', 'unseen_data'):
        if getattr(args, name) is not None:
            raise ConfigError(f'--{name.replace("_", "-")}', f'only MASH runs have it; {args.run} is a {method} run')
    from .export import export_run
    report = export_run(args.run, args.out, args.datasets, fp16=args.fp16)
    print(f'{args.out}: ' + ', '.join(f'{k} {v}' for k, v in report.items()))
    return 0

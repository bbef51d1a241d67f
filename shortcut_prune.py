"""Shortcut pruning: the global threshold over every BN conv including those on residual adds
(sparsity `--prune 1`); the convs added together by a residual stage share the mask of the
stage's first conv.

    python3 shortcut_prune.py --weights runs/train/exp2/weights/last.pt --percent 0.6
"""
from utils.compress.prune_flags import prune_parser


def plan(run, opt):
    removed = run.threshold_plan(mode=1, percent=opt.percent, rule='first')
    return [run.stage('masked (gamma = 0)', removed=removed, masked=True),
            run.stage('compact', removed=removed)], opt.percent


def main(argv=None):
    opt = prune_parser(__doc__, percent=0.6).parse_args(argv)
    from utils.compress import prune_run
    return prune_run.run_plan(opt, 'shortcut', plan)


if __name__ == '__main__':
    main()

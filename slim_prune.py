"""Slim pruning: the global threshold over every BN conv including residual adds (sparsity
`--prune 1`), at least --layer_keep of each layer kept, and a residual stage keeps the union
of its convs' channels.

    python3 slim_prune.py --weights runs/train/exp2/weights/last.pt --percent 0.8 --layer_keep 0.01
"""
from utils.compress.prune_flags import prune_parser


def plan(run, opt):
    from utils.compress.prune import slim_removed
    if not 0 <= opt.layer_keep <= 1:
        raise ValueError(f'--layer_keep must be in [0, 1], got {opt.layer_keep}')
    removed = run.threshold_plan(mode=1, percent=opt.percent,
                                 removed_fn=lambda graph, scales, p: slim_removed(graph, scales, p, opt.layer_keep))
    return [run.stage('masked (gamma = 0)', removed=removed, masked=True),
            run.stage('compact', removed=removed)], opt.percent


def main(argv=None):
    opt = prune_parser(__doc__, percent=0.8, layer_keep=0.01).parse_args(argv)
    from utils.compress import prune_run
    return prune_run.run_plan(opt, 'slim', plan)


if __name__ == '__main__':
    main()

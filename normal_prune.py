"""Normal pruning: one global |gamma| threshold over the BN convs that touch no residual add
(sparsity `--prune 0`); removed channels' beta is folded into their consumers.

    python3 train.py -sr --s 0.001 --prune 0 --weights runs/train/exp/weights/best.pt
    python3 normal_prune.py --weights runs/train/exp2/weights/last.pt --percent 0.5
    python3 train.py --weights runs/prune/normal/<name>.pt            # fine-tune
"""
from utils.compress.prune_flags import prune_parser


def plan(run, opt):
    removed = run.threshold_plan(mode=0, percent=opt.percent)
    return [run.stage('masked (gamma = 0)', removed=removed, masked=True),
            run.stage('compact', removed=removed)], opt.percent


def main(argv=None):
    opt = prune_parser(__doc__, percent=0.5).parse_args(argv)
    from utils.compress import prune_run
    return prune_run.run_plan(opt, 'normal', plan)


if __name__ == '__main__':
    main()

"""Regular pruning: normal pruning's threshold and layers, with every kept channel count
rounded up to a multiple of --channel-base (hardware-friendly widths; a layer that would
keep none keeps --channel-base).

    python3 regular_prune.py --weights runs/train/exp2/weights/last.pt --percent 0.5 --channel-base 8
"""
from utils.compress.prune_flags import prune_parser


def plan(run, opt):
    from utils.compress.prune import round_up_masks
    if opt.channel_base < 1:
        raise ValueError(f'--channel-base must be >= 1, got {opt.channel_base}')
    removed = run.threshold_plan(mode=0, percent=opt.percent,
                                 adjust=lambda scales, masks: round_up_masks(scales, masks, opt.channel_base))
    return [run.stage('masked (gamma = 0)', removed=removed, masked=True),
            run.stage('compact', removed=removed)], opt.percent


def main(argv=None):
    opt = prune_parser(__doc__, percent=0.5, channel_base=8).parse_args(argv)
    from utils.compress import prune_run
    return prune_run.run_plan(opt, 'regular', plan)


if __name__ == '__main__':
    main()

"""Layer-channel pruning: slim pruning (--percent, --layer_keep), then layer pruning
(--shortcuts) of the slimmed model.

    python3 layer_channel_prune.py --weights runs/train/exp2/weights/last.pt --percent 0.6 --shortcuts 2
"""
import slim_prune
from utils.compress.prune_flags import prune_parser


def plan(run, opt):
    from utils.compress.layer_graph import LayerGraph
    from utils.compress.prune import select_blocks
    channel_stages, percent = slim_prune.plan(run, opt)
    slimmed = channel_stages[-1].model
    blocks = select_blocks(slimmed, LayerGraph(slimmed.module_defs, slimmed.in_channels), opt.shortcuts)
    print(f'Removing the residual blocks that end at layers {[s for s, _ in blocks]}')
    return channel_stages + [run.stage('compact, blocks removed', model=slimmed, drop_blocks=blocks)], \
        f'{percent}_{opt.shortcuts}'


def main(argv=None):
    opt = prune_parser(__doc__, percent=0.6, layer_keep=0.01, shortcuts=2).parse_args(argv)
    from utils.compress import prune_run
    return prune_run.run_plan(opt, 'layer_channel', plan)


if __name__ == '__main__':
    main()

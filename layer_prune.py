"""Layer pruning: remove the --shortcuts residual blocks whose closing conv has the lowest
mean |gamma| (sparsity `--prune 2`); every route/shortcut index is re-indexed and every
remaining tensor copied.

    python3 layer_prune.py --weights runs/train/exp2/weights/last.pt --shortcuts 4
"""
from utils.compress.prune_flags import prune_parser


def plan(run, opt):
    from utils.compress.prune import select_blocks
    blocks = select_blocks(run.model, run.graph, opt.shortcuts)
    print(f'Removing the residual blocks that end at layers {[s for s, _ in blocks]}')
    return [run.stage('masked (closing gamma = 0)', drop_blocks=blocks, masked=True),
            run.stage('compact', drop_blocks=blocks)], opt.shortcuts


def main(argv=None):
    opt = prune_parser(__doc__, shortcuts=2).parse_args(argv)
    from utils.compress import prune_run
    return prune_run.run_plan(opt, 'layer', plan)


if __name__ == '__main__':
    main()

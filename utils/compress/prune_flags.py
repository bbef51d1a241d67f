"""The flags of the *_prune.py scripts. Kept apart from utils/compress/prune_run.py, which needs torch:
building a parser (``--help``) must not import it."""
import argparse


def percent_value(text):
    """--percent: a number, or 'auto' (the cut a `train.py -sr --sr-target` run prepared)."""
    if text == 'auto':
        return text
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number or 'auto', got {text!r}") from None


def prune_parser(description, percent=None, shortcuts=None, layer_keep=None, channel_base=None):
    """The flags every pruning script shares (upstream spellings) plus the method's own."""
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--cfg', default='', help='model cfg (default: the cfg stored in a .pt checkpoint)')
    p.add_argument('--data', default='data/shapes.data', help='dataset .data file (valid= for mAP, train= for '
                   'adaptive BN)')
    p.add_argument('--weights', required=True, help='the sparsity-trained checkpoint (.pt) or Darknet .weights')
    if percent is not None:
        p.add_argument('--percent', type=percent_value, default=percent,
                       help='share of the candidate BN scales below the global threshold (default %(default)s); '
                            "'auto': exactly the channels a `train.py -sr --sr-target` run took to 0")
    if layer_keep is not None:
        p.add_argument('--layer_keep', '--layer-keep', type=float, default=layer_keep,
                       help='each layer keeps at least this share of its channels (default %(default)s)')
    if shortcuts is not None:
        p.add_argument('--shortcuts', '--shortcut', type=int, default=shortcuts,
                       help='residual blocks to remove (default %(default)s)')
    if channel_base is not None:
        p.add_argument('--channel-base', type=int, default=channel_base,
                       help='kept channel counts are multiples of this (default %(default)s)')
    p.add_argument('--img-size', '--img_size', type=int, default=256, help='evaluation and latency size')
    p.add_argument('--batch-size', '--batch_size', type=int, default=16, help='evaluation batch size')
    p.add_argument('--adapt-bn', type=int, default=256, metavar='N',
                   help='re-estimate BN statistics on N training images before saving (0 = off)')
    p.add_argument('--latency-reps', type=int, default=30, help='timed forwards per model (batch 1, median)')
    p.add_argument('--out', default='', help='output folder (default: a new runs/prune/<method> folder)')
    p.add_argument('--device', default='', help="'' (auto), cpu, 0")
    p.add_argument('--workers', type=int, default=2)
    return p

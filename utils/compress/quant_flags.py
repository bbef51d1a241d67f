"""The quantization flags of train.py, test.py, detect.py and export.py. Kept apart from
utils/compress/quant.py, which needs torch: building a parser (``--help``) must not import it."""

BITS = (2, 4, 8, 16, 32)
SCHEMES = {1: 'google', 2: 'dorefa'}  # --quantized N
RANGES = ('minmax', 'mse')  # --qrange


def add_quant_args(parser, train=False):
    g = parser.add_argument_group('quantization (utils/compress/quant.py)')
    g.add_argument('--quantized', type=int, default=None, choices=[0, *SCHEMES],
                   help='0 float, 1 Google/TFLite fake quantization, 2 DoReFa (default: what the checkpoint says)')
    g.add_argument('--a-bit', '--a_bit', dest='a_bit', type=int, default=None, choices=BITS,
                   help='activation bits (default 8; 32 = float)')
    g.add_argument('--w-bit', '--w_bit', dest='w_bit', type=int, default=None, choices=BITS,
                   help='weight bits (default 8; 32 = float)')
    g.add_argument('--BN_Fold', '--bn-fold', dest='bn_fold', action='store_true',
                   help='fold BatchNorm into the quantized conv (batch statistics in training)')
    g.add_argument('--FPGA', '--fpga', dest='fpga', action='store_true',
                   help='power-of-two scales and a quantized bias (needs --BN_Fold)')
    g.add_argument('--edge-bits', type=int, default=None, choices=(0, *BITS),
                   help='bits of the first conv and the head convs when --a-bit/--w-bit are lower (default 8; '
                        '0 = every conv at --a-bit/--w-bit, as upstream)')
    g.add_argument('--full-range', action='store_true', default=None,
                   help='8-bit weights use all codes [-127, 127] (VNNI-only targets; implied by --FPGA); by default '
                        'a conv with 8-bit activations keeps them in [-64, 64], so int8 kernels of CPUs without VNNI '
                        'cannot saturate')
    g.add_argument('--qrange', default=None, choices=RANGES,
                   help='Google scheme: minmax (default: weights max|w| per channel, activations a moving min/max) or '
                        'mse (the clipped range with the least squared quantization error; for 4 bits)')
    if train:
        g.add_argument('--bn-freeze', type=float, default=0.9,
                       help='--BN_Fold: fraction of the optimizer steps after which the fold uses running statistics')
    else:
        g.add_argument('--calib', type=int, default=0, metavar='N',
                       help='post-training quantization: calibrate the activation ranges on N training images')
    return g

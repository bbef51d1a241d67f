"""Export a model for deployment: ONNX (FP32 or static INT8), OpenVINO IR, Darknet cfg + .weights.

    python3 export.py --weights runs/train/exp/weights/best.pt                      # -> best.onnx
    python3 export.py --weights best.pt --int8 --calib 200                          # -> best_int8.onnx (QDQ)
    python3 export.py --weights qat.pt                       # a quantization-aware checkpoint: its own QDQ
    python3 export.py --weights best.pt --quantized 1 --calib 64        # fake-quant PTQ (utils/compress/quant.py) as QDQ
    python3 export.py --weights best.pt --format openvino [--int8]                  # -> best[_int8]_openvino/
    python3 export.py --weights best.pt --format darknet                            # -> best.cfg + best.weights
    python3 export.py --weights qat.pt --format qparams [--reorder 16 16]           # -> qat_qparams.npz (integers)
    python3 export.py --cfg cfg/yolov3.cfg --weights yolov3.weights --img-size 416 --dynamic --simplify
    python3 test.py --weights best.onnx ; python3 detect.py --weights best_openvino   # run the export

The graph takes float [B,3,H,W] images in [0,1] (letterboxed, RGB) at the fixed --img-size
and returns the decoded [B, N, 5+nc] of the PyTorch eval model. A quantization-aware
checkpoint exports as QDQ with its own scales. Every export is run right after it is written
(ONNX Runtime, OpenVINO or OpenCV DNN) on validation images of --data and compared with
PyTorch; the exit status is 1 if it is out of tolerance. Requirements: requirements-export.txt.
"""
import argparse


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--cfg', default='', help='model cfg (default: the cfg stored in a .pt checkpoint)')
    p.add_argument('--weights', default='', help='.pt checkpoint or Darknet .weights')
    p.add_argument('--img-size', '--img_size', type=int, default=256, help='fixed input size (pixels, square)')
    p.add_argument('--batch-size', '--batch_size', type=int, default=1, help='fixed batch (or the traced one '
                   'with --dynamic)')
    p.add_argument('--dynamic', action='store_true', help='dynamic batch axis')
    p.add_argument('--simplify', action='store_true', help='simplify the ONNX graph with onnxslim')
    p.add_argument('--format', default='onnx', choices=['onnx', 'openvino', 'darknet', 'qparams'],
                   help='qparams: integer weights/biases/scales of a quantized model (.npz, README "Integer export")')
    p.add_argument('--reorder', type=int, nargs=2, default=None, metavar=('TM', 'TN'),
                   help='qparams: also write each weight in the tiled order of a TM x TN accelerator')
    p.add_argument('--opset', type=int, default=17, help='ONNX opset (13..20)')
    p.add_argument('--out', default='', help='output path (.onnx, OpenVINO folder, or .weights with the .cfg '
                   'next to it); default: next to --weights, named after it')
    p.add_argument('--device', default='cpu', help='device the model is traced on: cpu, 0, ...')
    p.add_argument('--int8', action='store_true', help='static post-training INT8 (QDQ, per-channel weights)')
    p.add_argument('--data', default='data/shapes.data', help='.data file: calibration (train=) and check '
                   '(valid=) images')
    from utils.compress.quant_flags import add_quant_args
    add_quant_args(p)  # its --calib N also sets the --int8 calibration images (default 100)
    return p.parse_args(argv)


def main(argv=None):
    from utils.general import user_errors
    from utils.parse_config import CfgError
    opt = parse_args(argv)
    with user_errors(CfgError):
        if opt.batch_size < 1 or opt.calib < 0:
            raise ValueError('--batch-size must be >= 1 and --calib >= 0')
        from utils.deploy.export import run
        return run(opt)


if __name__ == '__main__':
    main()

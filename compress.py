"""End-to-end compression showcase: baseline -> BN-sparsity training -> pruning -> fine-tuning
with and without distillation -> 8-bit QAT -> exports -> test.py mAP of every exported file ->
batch-1 latency of every runtime (each file in its own process, rounds interleaved) -> one report.

    python3 compress.py --quick                                    # built-in dataset, minutes on 2 cores (README: times per CPU)
    python3 compress.py                                            # every pruning method, < 60 min
    python3 compress.py --quick --base runs/train/exp/weights/best.pt   # skip training the baseline
    python3 compress.py --data data/my.data --cfg cfg/yolov3-tiny.cfg --out runs/compress_mine

Resumable: each stage lands in --out/<stage> and is skipped when its output exists (an
interrupted training run continues from its last.pt), so rerunning the same command continues
where it stopped. --until STAGE stops after that stage. Writes --out/report.md (a table per
stage: parameters, GFLOPs, mAP@0.5, mAP@0.5:0.95, file size, latency per runtime; the
headline: the best compressed model in its fastest runtime against the float model in OpenCV
DNN), --out/report.json and --out/accuracy_latency.png. The stages are the real command lines
(train.py, *_prune.py, export.py, test.py; logs in --out/*.log and --out/deploy/*.log) through
utils/compress/pipeline.py; the work is utils/compress/showcase.py. Exports need requirements-export.txt.
"""
import argparse


def parse_args(argv=None):
    from utils.compress.showcase import BUDGETS, STAGES
    quick, full = BUDGETS['quick'], BUDGETS['full']
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--quick', action='store_true', help='small budgets and one pruning plan (slim:0.76:k0.2)')
    p.add_argument('--data', default='data/shapes.data', help='dataset .data file')
    p.add_argument('--cfg', default='cfg/yolov3-mini-shapes.cfg', help='model cfg of the baseline trained here')
    p.add_argument('--base', default='', help='trained float .pt to start from (skips training the baseline)')
    p.add_argument('--out', default='', help='output folder: stages, logs, report (default runs/compress, --quick '
                   'runs/compress_quick: the budgets differ, so the stages cannot be shared)')
    p.add_argument('--img-size', '--img_size', type=int, default=256, help='train, test and export size (pixels)')
    p.add_argument('--workers', type=int, default=2, help='data loader workers of every stage')
    for key, what in (('base_epochs', 'baseline training'), ('sr_epochs', 'sparsity training'),
                      ('ft_epochs', 'fine-tuning of every pruned model (plain and distilled)'),
                      ('qat_epochs', 'quantization-aware training')):
        p.add_argument(f'--{key.replace("_", "-")}', type=int, default=None,
                       help=f'epochs of {what} (default {full[key]}, --quick {quick[key]})')
    p.add_argument('--s', type=float, default=0.05, help='sparsity lambda (train.py -sr --s; 0.05 suits the Adam '
                   'shapes recipe in 10 epochs)')
    p.add_argument('--plans', nargs='+', default=None, help='pruning plans as in bench/bench_prune.py, '
                   'method:amount[:shortcuts][:kF] (default: its DEFAULT_PLANS; --quick: slim:0.76:k0.2)')
    p.add_argument('--pick', default='auto', help='the plan distilled, quantized and deployed (default: see '
                   '--pick-by, among the plans within --tolerance of the baseline mAP@0.5 after plain fine-tuning)')
    p.add_argument('--pick-by', default='latency', choices=['latency', 'gflops'],
                   help='latency (default): the fastest of those plans in OpenVINO FP32, each timed in its own '
                        'process, rounds interleaved; gflops: the fewest GFLOPs')
    p.add_argument('--kd', type=int, default=6, choices=[1, 2, 3, 4, 5, 6], help='distillation strategy (train.py '
                   '--KDstr; 6, objectness-guided, is the one that gained in bench/bench_distill.py); the teacher is '
                   'the sparsity-trained model the plans were cut from')
    p.add_argument('--lr-factor', type=float, default=0.1, help='QAT learning rate: this x the recipe\'s lr0')
    p.add_argument('--calib', type=int, default=100, help='calibration images of the static INT8 export')
    p.add_argument('--tolerance', type=float, default=0.01, help='mAP@0.5 a compressed model may lose (the '
                   'pick and the headline)')
    p.add_argument('--threads', type=int, default=2, help='threads of every runtime in the latency run')
    p.add_argument('--latency-runs', type=int, default=60, help='interleaved batch-1 rounds of the latency '
                   'run (one process per file)')
    p.add_argument('--until', default=STAGES[-1], choices=STAGES, help='stop after this stage')
    return p.parse_args(argv)


def main(argv=None):
    opt = parse_args(argv)
    from utils.compress.showcase import main as showcase
    from utils.general import user_errors
    from utils.parse_config import CfgError
    with user_errors(CfgError):
        return showcase(opt)


if __name__ == '__main__':
    main()

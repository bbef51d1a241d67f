"""Train a YOLO model from a Darknet cfg.

    python3 train.py                                   # small YOLO on the built-in shapes dataset
    python3 train.py --cfg cfg/yolov3.cfg --data data/coco2017.data --weights weights/yolov3.weights -pt
    python3 train.py --resume runs/train/exp/weights/last.pt
    torchrun --nproc_per_node 2 train.py ...           # multi-GPU (or multi-process CPU) DDP
    python3 train.py --weights pruned.pt               # fine-tune the architecture the checkpoint carries
    python3 train.py --weights base.pt -sr --s 0.001 --prune 0      # BN-sparsity training before pruning
    python3 train.py --weights pruned.pt --t_weights base.pt --KDstr 3   # fine-tune with distillation
    python3 train.py --weights base.pt --quantized 1 --BN_Fold --FPGA --epochs 3   # quantization-aware training

Flags follow the 2020 upstream project (``--img-size min max test``, ``--accumulate`` via the
nominal batch ``--nbs``, ``-pt``, ``-sr --s --prune``...). Features plug into the Trainer's hooks
(``add_features``): sparsity (utils/compress/sparsity.py), quantization (utils/compress/quant.py),
distillation (utils/compress/distill.py).
"""
import argparse

DEFAULT_DATA = 'data/shapes.data'


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--epochs', type=int, default=10, help='(the default fits the shapes job in ~9 CPU minutes)')
    p.add_argument('--batch-size', '--batch_size', type=int, default=8,
                   help='total batch over all processes (8: best shapes mAP per CPU minute; GPUs: 16-64)')
    p.add_argument('--nbs', type=int, default=0, help='nominal batch: gradients accumulate to it before a step '
                   '(0 = the batch size, no accumulation; upstream used 64)')
    p.add_argument('--accumulate', type=int, default=None,
                   help='upstream spelling: batches per optimizer step (sets --nbs to accumulate x batch-size)')
    p.add_argument('--cfg', default='', help='model cfg (default: the cfg a .pt --weights carries, else '
                   'cfg/yolov3-mini-shapes.cfg)')
    p.add_argument('--data', default=DEFAULT_DATA, help='dataset .data file')
    p.add_argument('--hyp', default='', help="hyperparameter YAML (default: the .data file's hyp=, else data/hyp.yaml)")
    p.add_argument('--img-size', '--img_size', type=int, nargs='+', default=[256],
                   help='train min, train max, test (missing entries repeat the last)')
    p.add_argument('--multi-scale', action='store_true', help='random train size in [min, max] (on if min != max)')
    p.add_argument('--rect', action='store_true', help='rectangular training batches (no mosaic, no shuffle)')
    p.add_argument('--resume', nargs='?', const='last', default='',
                   help='resume from a last.pt (default: the newest runs/train/*/weights/last.pt)')
    p.add_argument('--nosave', action='store_true', help='only save the final checkpoint')
    p.add_argument('--notest', action='store_true', help='only evaluate after the final epoch')
    p.add_argument('--evolve', type=int, default=0, metavar='N', help='evolve hyperparameters for N generations')
    p.add_argument('--cache-images', nargs='?', const='ram', default='auto', choices=['ram', 'auto', 'off'],
                   help='keep decoded images in RAM: ram (flag alone), auto (default: only datasets that need '
                        '< 1 GiB and < 10%% of free RAM), off')
    p.add_argument('--weights', default='', help='initial weights (.pt or Darknet); "" = random init')
    p.add_argument('-pt', '--pretrain', action='store_true',
                   help='weights for another class count: skip the detection-head convs (any other mismatch '
                        'between --cfg and --weights is an error)')
    p.add_argument('--project', default='runs/train', help='parent folder of run folders')
    p.add_argument('--name', default='exp', help='run folder name (exp, exp2, ... never overwritten)')
    p.add_argument('--device', default='', help="'' (auto), cpu, 0, 0,1")
    p.add_argument('--adam', action='store_true', help='Adam instead of SGD (same as optimizer: adam in the hyp file)')
    p.add_argument('--ema', action='store_true', help='keep an exponential moving average of the weights')
    p.add_argument('--single-cls', action='store_true', help='train all classes as one')
    p.add_argument('--workers', type=int, default=2, help='data loader worker processes')
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--patience', type=int, default=0, help='stop after N epochs without improvement (0 = off)')
    p.add_argument('--close-mosaic', type=int, default=0, help='last N epochs without mosaic')
    p.add_argument('--freeze', type=int, default=0, help='freeze the first N layers')
    p.add_argument('--sync-bn', action='store_true', help='SyncBatchNorm under DDP (CUDA)')
    p.add_argument('--stop-after', type=int, default=None, help='train at most N epochs in this invocation '
                   '(time-boxed jobs; continue with --resume)')
    sr = p.add_argument_group('BN-sparsity training (utils/compress/sparsity.py)')
    sr.add_argument('-sr', '--sr', '--sparsity-regularization', dest='sr', action='store_true',
                    help='add s*sign(gamma) to the gradient of the BN scales that --prune may remove')
    sr.add_argument('--s', '--sr-lambda', dest='s', type=float, default=None,
                    help='sparsity factor lambda, applied once per optimizer step (default 0.001; upstream applied '
                         'it per micro-batch: accumulate x lambda per step). Under torchrun write --sr-lambda: '
                         "torchrun's parser rejects --s as an ambiguous abbreviation of its own options")
    sr.add_argument('--prune', type=int, default=None, choices=[0, 1, 2],
                    help='layers penalised: 0 normal/regular, 1 shortcut/slim/layer-channel, 2 layer pruning '
                         '(default 0)')
    sr.add_argument('--sr-schedule', default=None, choices=['constant', 'step', 'cosine'],
                    help='lambda over the epochs: constant (default), step (0.1 x lambda from half the epochs), '
                         'cosine (lambda x (1 + cos(pi e / E)) / 2)')
    sr.add_argument('--sr-target', type=float, default=None, metavar='P',
                    help='prepare a slim cut at --percent P: the channels it removes are taken to exactly 0 during '
                         'training, so the pruned model needs no fine-tuning (default: off)')
    sr.add_argument('--sr-keep', type=float, default=None, metavar='K',
                    help='--sr-target: the cut\'s --layer_keep (default 0.01)')
    sr.add_argument('--sr-ramp', type=float, default=None, metavar='R',
                    help='--sr-target: fraction of the training over which the cut goes to 0 (default 0.5)')
    kd = p.add_argument_group('knowledge distillation (utils/compress/distill.py)')
    kd.add_argument('--KDstr', '--kdstr', dest='KDstr', type=int, default=None, choices=[1, 2, 3, 4, 5, 6],
                    help='strategy: 1 output KL, 2 obj/cls KL + boxes where the student is worse than the teacher, '
                         '3 obj/cls KL + box imitation, 4 = 3 + feature attention, 5 = 4 under the fine-grained mask, '
                         "6 objectness-guided outputs at the detection loss's scale")
    kd.add_argument('--t_weights', '--t-weights', dest='t_weights', default='',
                    help='teacher weights (.pt, or Darknet .weights with --t_cfg); same head layout as the student')
    kd.add_argument('--t_cfg', '--t-cfg', dest='t_cfg', default='',
                    help='teacher cfg (default: the cfg a .pt --t_weights carries)')
    kd.add_argument('--t-precision', default=None, choices=['fp32', 'bf16', 'auto'],
                    help="the teacher's forward: auto (default) = bf16 (CPU autocast) on CPUs with native bfloat16 "
                         '(AVX512-BF16, AMX), else fp32')
    kd.add_argument('--kd-weight', type=float, default=None, metavar='W',
                    help='multiplies every distillation term (default 1: upstream\'s weights, which keep KD small '
                         'next to the detection loss)')
    from utils.compress.quant_flags import add_quant_args
    add_quant_args(p, train=True)
    opt = p.parse_args(argv)
    if opt.sr:
        opt.s = 0.001 if opt.s is None else opt.s
        opt.prune = 0 if opt.prune is None else opt.prune
        opt.sr_schedule = opt.sr_schedule or 'constant'
        if opt.s < 0:
            p.error(f'--s {opt.s}: the sparsity factor cannot be negative')
        if opt.sr_target is None and (opt.sr_keep is not None or opt.sr_ramp is not None):
            p.error('--sr-keep / --sr-ramp set the --sr-target cut; add --sr-target P')
    else:
        given = [f for f, v in (('--s', opt.s), ('--prune', opt.prune), ('--sr-schedule', opt.sr_schedule),
                                ('--sr-target', opt.sr_target), ('--sr-keep', opt.sr_keep), ('--sr-ramp', opt.sr_ramp))
                 if v is not None]
        if given:  # upstream HEAD turned sparsity on with --prune alone; say so rather than train dense
            p.error(f'{" ".join(given)}: only used by sparsity training, which is off; add -sr')
    kd_error = distillation_flag_error(opt)
    if kd_error:
        p.error(kd_error)
    if opt.accumulate:
        opt.nbs = opt.accumulate * opt.batch_size
    opt.img_size = (opt.img_size + [opt.img_size[-1]] * 2)[:3]
    if any(s % 32 for s in opt.img_size):
        p.error(f'--img-size {opt.img_size}: every size must be a multiple of 32')
    return opt


def distillation_flag_error(opt):
    """The message for inconsistent --KDstr / --t_weights / --t_cfg, else None."""
    if opt.KDstr is None:
        given = [f for f, v in (('--t_weights', opt.t_weights), ('--t_cfg', opt.t_cfg), ('--kd-weight', opt.kd_weight),
                                ('--t-precision', opt.t_precision)) if v]
        return f'{" ".join(given)}: only used by distillation, which is off; add --KDstr 1..6' if given else None
    if opt.kd_weight is not None and not opt.kd_weight > 0:
        return f'--kd-weight {opt.kd_weight}: must be > 0'
    if not opt.t_weights:
        return f'--KDstr {opt.KDstr} needs the teacher: add --t_weights (a .pt, or Darknet .weights with --t_cfg)'
    if not opt.t_weights.endswith(('.pt', '.pth')) and not opt.t_cfg:
        return f'--t_weights {opt.t_weights}: Darknet weights carry no cfg; add --t_cfg'
    return None


def add_features(trainer):
    """Register the hooks of the features the trainer's options turn on (before it builds its model)."""
    opt = trainer.opt
    if opt.sr:
        from utils.compress.sparsity import attach_sparsity
        attach_sparsity(trainer, s=opt.s, prune=opt.prune, schedule=opt.sr_schedule, target=opt.sr_target,
                        target_keep=0.01 if opt.sr_keep is None else opt.sr_keep,
                        ramp=0.5 if opt.sr_ramp is None else opt.sr_ramp)
    if opt.KDstr:
        from utils.compress.distill import attach_distillation
        attach_distillation(trainer, t_weights=opt.t_weights, strategy=opt.KDstr, t_cfg=opt.t_cfg,
                            weight=1.0 if opt.kd_weight is None else opt.kd_weight,
                            t_precision=opt.t_precision or 'auto')
    from utils.compress.quant import attach_quantization, spec_from_opt
    spec = spec_from_opt(opt)
    if spec is not None:
        attach_quantization(trainer, spec)
    return trainer


def main(argv=None):
    opt = parse_args(argv)
    from utils.general import user_errors
    from utils.datasets import resolve_data
    from utils.trainer import Trainer, resume_options
    with user_errors(FloatingPointError):
        start_ckpt = None  # --resume trains the checkpoint it resumes, whatever --weights says
        if opt.resume:
            opt = resume_options(opt, defaults=parse_args([]))
        else:
            from models import weights_checkpoint
            from utils.compress.quant import adopt_checkpoint_spec, spec_from_opt
            spec_from_opt(opt)  # flag errors before any work
            start_ckpt = weights_checkpoint(opt.weights)  # read once: for its quantization and its weights
            adopt_checkpoint_spec(opt, start_ckpt)
        opt.data = resolve_data(opt.data)
        if opt.evolve:
            from utils.evolve import evolve
            evolve(opt, configure=add_features, start_ckpt=start_ckpt)
        else:
            add_features(Trainer(opt, start_ckpt=start_ckpt)).train()


if __name__ == '__main__':
    main()

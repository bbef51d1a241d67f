"""Evaluate a model: P, R, mAP@0.5, mAP@0.5:0.95, F1 per class, speed, plots, COCO JSON.

    python3 test.py --cfg cfg/yolov3.cfg --data data/coco2017.data --weights weights/yolov3.weights
    python3 test.py --weights runs/train/exp/weights/best.pt          # cfg and data from the checkpoint/default
    python3 test.py ... --task speed | study
    python3 test.py --weights best.pt --quantized 1 --calib 64        # post-training 8-bit quantization
    python3 test.py --weights best.onnx | best_openvino/     # an export (export.py): square batches of its size

Writes metrics.json, PR/F1 curves, confusion matrix and validation batch images into
runs/test/<name>. ``run(...)`` is the same as a function.
"""
import argparse
from pathlib import Path


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--cfg', default='', help='model cfg (default: the cfg stored in a .pt checkpoint)')
    p.add_argument('--data', default='data/shapes.data', help='dataset .data file')
    p.add_argument('--weights', default='', help='.pt checkpoint, Darknet .weights, .onnx (ONNX Runtime) or '
                   'OpenVINO .xml / folder')
    p.add_argument('--batch-size', '--batch_size', type=int, default=16)
    p.add_argument('--img-size', '--img_size', type=int, default=256, help='inference size (pixels)')
    p.add_argument('--conf-thres', type=float, default=0.001)
    p.add_argument('--iou-thres', type=float, default=0.6, help='NMS IoU threshold')
    p.add_argument('--save-json', action='store_true', help='write COCO-style predictions.json')
    p.add_argument('--task', default='test', choices=['test', 'speed', 'study'])
    p.add_argument('--study-sizes', type=int, nargs='+', default=None,
                   help='image sizes of --task study (default: 256, 320, ... up to max(--img-size, 640))')
    p.add_argument('--device', default='', help="'' (auto), cpu, 0")
    p.add_argument('--single-cls', action='store_true')
    p.add_argument('--square', action='store_true', help='square --img-size batches instead of rect ones (what '
                   'a fixed-size export runs; use it on the .pt to compare the two)')
    p.add_argument('--augment', action='store_true', help='test-time augmentation')
    p.add_argument('--merge', action='store_true', help='merge-NMS')
    p.add_argument('--workers', type=int, default=2)
    p.add_argument('--project', default='runs/test')
    p.add_argument('--name', default='exp')
    from utils.compress.quant_flags import add_quant_args
    add_quant_args(p)
    return p.parse_args(argv)


def study_sizes(opt):
    """Image sizes evaluated by --task study: --study-sizes, else 256..max(img_size, 640) step 64."""
    sizes = getattr(opt, 'study_sizes', None) or list(range(256, max(opt.img_size, 640) + 1, 64))
    bad = [s for s in sizes if s < 32 or s % 32]
    if bad:
        raise ValueError(f'--study-sizes must be multiples of 32 (>= 32), got {bad}')
    return sorted(set(sizes))


def fixed_size_batches(model, opt, sizes):
    """True for an exported model (fixed input size): test.py then evaluates square batches of
    that size, saying so; a --task study over other sizes is an error."""
    hw = getattr(model, 'input_hw', None)
    if hw is None:
        return False
    if hw[0] != hw[1]:
        raise ValueError(f'{opt.weights}: input {hw[0]}x{hw[1]} is not square; test.py evaluates square exports')
    if opt.task == 'study':
        raise ValueError(f'{opt.weights}: an export has one input size ({hw[0]}); --task study needs a .pt')
    if opt.img_size != hw[0]:
        print(f'{opt.weights} has a fixed {hw[0]}x{hw[1]} input: --img-size {opt.img_size} -> {hw[0]}')
        opt.img_size = sizes[0] = hw[0]
    print(f'{model.describe()}: square {hw[0]}x{hw[1]} batches, not rect ones (compare with test.py --square '
          f'on the .pt)')
    return True


def run(opt):
    from utils.datasets import create_dataloader
    from utils.evaluation import evaluate
    from utils.general import increment_path
    from utils.parse_config import parse_data_cfg
    from utils.torch_utils import select_device
    from utils.datasets import resolve_data
    from utils.parse_config import read_names
    device = select_device(opt.device)
    sizes = [opt.img_size] if opt.task != 'study' else study_sizes(opt)
    opt.data = resolve_data(opt.data)
    data = parse_data_cfg(opt.data, required=('valid', 'classes'))
    nc = 1 if opt.single_cls else int(data['classes'])
    names = read_names(data.get('names'), nc)
    from utils.inference import load_inference_model
    from utils.compress.quant import spec_from_opt
    model, _ = load_inference_model(opt.weights, opt.cfg, device, opt.img_size, quant=spec_from_opt(opt),
                                    calib=opt.calib, data=opt.data)
    square = opt.square or fixed_size_batches(model, opt, sizes)
    if model.nc != nc and not opt.single_cls:
        raise ValueError(f'the model has {model.nc} classes, {opt.data} has {nc}')
    model.fuse()
    save_dir = increment_path(Path(opt.project) / opt.name)
    coco = 'coco' in Path(opt.data).stem.lower() and nc == 80
    results = []
    for size in sizes:
        loader, _ = create_dataloader(data['valid'], size, opt.batch_size, stride=32, hyp=None, augment=False,
                                      rect=not square, workers=opt.workers, shuffle=False, pad=0.5,
                                      single_cls=opt.single_cls, nc=int(data['classes']))
        conf = 0.25 if opt.task == 'speed' else opt.conf_thres
        metrics = evaluate(model, loader, names, conf_thres=conf, iou_thres=opt.iou_thres, save_dir=save_dir,
                           plots=opt.task == 'test', verbose=opt.task == 'test', augment=opt.augment,
                           save_json=opt.save_json, coco=coco, merge=opt.merge, single_cls=opt.single_cls,
                           gt_json=data.get('eval'))
        results.append((size, metrics))
    if opt.task == 'study':
        lines = ['img_size,map50,map50_95,ms_per_image'] + [
            f"{s},{m['map50']:.5f},{m['map50_95']:.5f},{m['speed_ms']['total']:.2f}" for s, m in results]
        from utils.general import atomic_write_text
        from utils.plots import plot_study
        atomic_write_text(save_dir / 'study.csv', '\n'.join(lines) + '\n')
        plot_study(save_dir / 'study.csv', save_dir / 'study.png')
    print(f'Results saved to {save_dir}')
    return results[-1][1]


def main(argv=None):
    from utils.general import user_errors
    opt = parse_args(argv)
    with user_errors():
        run(opt)


if __name__ == '__main__':
    main()

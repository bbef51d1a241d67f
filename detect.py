"""Detect objects in images, folders, globs, videos, webcams and streams.

    python3 detect.py --weights runs/train/exp/weights/best.pt      # the built-in shapes validation images
    python3 detect.py --cfg cfg/yolov3.cfg --weights weights/yolov3.weights --names data/coco.names --source video.mp4
    python3 detect.py --weights best.onnx          # an export (export.py): ONNX Runtime, or OpenVINO (.xml / folder)

Annotated images and videos (same fps and size as the input) go to a new run folder
(runs/detect/exp, exp2, ...); ``--save-txt`` writes YOLO rows ``class cx cy w h conf``
normalised to the original image.
"""
import argparse
import time
from pathlib import Path


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--cfg', default='', help='model cfg (default: the cfg stored in a .pt checkpoint)')
    p.add_argument('--names', default='', help='.names file (default: class indices)')
    p.add_argument('--weights', required=True, help='.pt checkpoint, Darknet .weights, .onnx (ONNX Runtime) or '
                   'OpenVINO .xml / folder')
    p.add_argument('--source', default='', help='image, folder, glob, video, .txt list, webcam index, URL '
                   '(default: the built-in shapes validation images)')
    p.add_argument('--output', '--project', dest='project', default='runs/detect', help='parent of run folders')
    p.add_argument('--name', default='exp')
    p.add_argument('--img-size', '--img_size', type=int, default=416)
    p.add_argument('--conf-thres', type=float, default=0.3)
    p.add_argument('--iou-thres', type=float, default=0.6)
    p.add_argument('--fourcc', default='mp4v', help='output video codec')
    p.add_argument('--device', default='')
    p.add_argument('--view-img', action='store_true')
    p.add_argument('--save-txt', action='store_true')
    p.add_argument('--classes', type=int, nargs='+', help='keep only these classes')
    p.add_argument('--agnostic-nms', action='store_true')
    p.add_argument('--augment', action='store_true', help='test-time augmentation')
    p.add_argument('--compile', action='store_true', help='torch.compile the model (faster after a slow start)')
    p.add_argument('--data', default='data/shapes.data', help='.data file whose train images --calib uses')
    from utils.compress.quant_flags import add_quant_args
    add_quant_args(p)
    return p.parse_args(argv)


def default_source():
    """The built-in dataset's validation image list (generated on first use)."""
    from utils.datasets import default_data
    from utils.parse_config import parse_data_cfg
    return parse_data_cfg(default_data(), required=('valid',))['valid']


def load_detector(opt, device):
    """(model to run, checkpoint entries): an export as it is (its fixed input size replaces
    --img-size), else the .pt/.weights model, quantized and calibrated as the flags / checkpoint
    say, BN-fused and channels_last."""
    import models
    from utils.inference import load_inference_model, weights_kind
    from utils.compress.quant import spec_from_opt
    exported = weights_kind(opt.weights) == 'export'
    if exported and (opt.compile or opt.augment):  # fused and optimised at export
        raise ValueError(f'{opt.weights}: --compile/--augment apply to .pt/.weights models (an export is optimised '
                         'by export.py)')
    model, ckpt = load_inference_model(opt.weights, opt.cfg, device, opt.img_size, quant=spec_from_opt(opt),
                                       calib=opt.calib, data=opt.data)
    if not exported:
        return models.optimize_for_inference(model, compile=opt.compile), ckpt
    h, w = model.input_hw
    if (opt.img_size, opt.img_size) != (h, w):
        print(f'{opt.weights} has a fixed {h}x{w} input: --img-size {opt.img_size} -> {max(h, w)}')
    opt.img_size = (h, w) if h != w else h
    print(model.describe())
    return model, ckpt


def run(opt):
    from tqdm import tqdm
    from utils.deploy.backends import is_exported
    from utils.datasets import LoadImages, LoadStreams
    from utils.detector import DetectionSink, detect_frame, summary
    from utils.general import increment_path
    from utils.parse_config import read_names
    from utils.torch_utils import select_device
    src = default_source() if not opt.source else str(opt.source)
    is_stream = src.isnumeric() or src.lower().startswith(('rtsp://', 'rtmp://', 'http://', 'https://'))
    if not is_stream and not any(ch in src for ch in '*?') and not Path(src).exists():
        raise FileNotFoundError(f'--source {src} does not exist')  # before the (slow) model load
    device = select_device(opt.device)
    model, ckpt = load_detector(opt, device)
    names = read_names(opt.names, model.nc) if opt.names or not ckpt.get('names') else ckpt['names']
    dataset = LoadStreams(src, img_size=opt.img_size) if is_stream else LoadImages(src, img_size=opt.img_size)
    if is_exported(opt.weights):
        dataset.auto = False  # letterbox to the export's full square input, not to the next stride multiple
    sink = DetectionSink(increment_path(Path(opt.project) / opt.name), names, opt.fourcc, opt.save_txt, opt.view_img)
    t_start, n = time.time(), 0
    bar = tqdm(dataset, total=None if is_stream else dataset.frame_count(), unit='frame',
               bar_format='{l_bar}{bar:10}{r_bar}')
    try:
        for path, img, im0s, cap, status in bar:
            batch = [(path, img, im0s)] if not is_stream else list(zip(path, img, im0s))
            for p, im, im0 in batch:
                det, (h, w), dt = detect_frame(model, im, im0.shape, device, opt.conf_thres, opt.iou_thres,
                                               opt.classes, opt.agnostic_nms, opt.augment)
                bar.write(f'{status}{h}x{w} {summary(det, names)} ({1e3 * dt:.1f} ms)')
                sink.write(p, im0, det, cap, getattr(dataset, 'frame', 0), stream=is_stream)
                n += 1
            if sink.quit_requested:
                break
    finally:  # videos stay playable when a stream is stopped with q or Ctrl-C
        bar.close()
        sink.close()
    print(f'{n} images/frames in {time.time() - t_start:.1f} s. Results saved to {sink.save_dir}')
    return sink.save_dir


def main(argv=None):
    from utils.general import user_errors
    opt = parse_args(argv)
    with user_errors():
        run(opt)


if __name__ == '__main__':
    main()

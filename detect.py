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

import cv2
import numpy as np
import torch


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
    from utils.quant import add_quant_args
    add_quant_args(p)
    return p.parse_args(argv)


def default_source():
    """The built-in dataset's validation image list (generated on first use)."""
    from utils.datasets import default_data
    from utils.parse_config import parse_data_cfg
    return parse_data_cfg(default_data(), required=('valid',))['valid']


def exported_detector(opt, device):
    """(model, entries) of an .onnx / OpenVINO export; its fixed input size replaces --img-size."""
    from utils.backends import load_exported
    if opt.quantized or opt.calib or opt.compile or opt.augment:
        raise ValueError(f'{opt.weights}: --quantized/--calib/--compile/--augment apply to .pt/.weights models '
                         '(an export is optimised, and quantized, by export.py)')
    model = load_exported(opt.weights, device)
    h, w = model.input_hw
    if (opt.img_size, opt.img_size) != (h, w):
        print(f'{opt.weights} has a fixed {h}x{w} input: --img-size {opt.img_size} -> {max(h, w)}')
    opt.img_size = (h, w) if h != w else h
    print(model.describe())
    return model, {'names': model.names} if model.names else {}


def run(opt):
    import models
    from utils.backends import is_exported
    from tqdm import tqdm
    from utils.datasets import LoadImages, LoadStreams, scale_boxes
    from utils.evaluation import tta_forward
    from utils.general import increment_path
    from utils.nms import non_max_suppression
    from utils.plots import colors
    from utils.torch_utils import select_device
    from utils.parse_config import read_names
    src = default_source() if not opt.source else str(opt.source)
    is_stream = src.isnumeric() or src.lower().startswith(('rtsp://', 'rtmp://', 'http://', 'https://'))
    if not is_stream and not any(ch in src for ch in '*?') and not Path(src).exists():
        raise FileNotFoundError(f'--source {src} does not exist')  # before the (slow) model load
    device = select_device(opt.device)
    exported = is_exported(opt.weights)
    if exported:  # runs as it is: fused, optimised and (maybe) quantized at export
        model, ckpt = exported_detector(opt, device)
        fast = model
    else:
        from utils.quant import prepare_for_inference, spec_from_opt
        model, ckpt = models.load_model(opt.cfg, opt.weights, opt.img_size, device, quant=spec_from_opt(opt))
        if opt.calib and opt.data == 'data/shapes.data':
            from utils.datasets import default_data
            opt.data = default_data()
        prepare_for_inference(model, opt, device)
        fast = models.optimize_for_inference(model, compile=opt.compile)
    names = read_names(opt.names, model.nc) if opt.names or not ckpt.get('names') else ckpt['names']
    dataset = LoadStreams(src, img_size=opt.img_size) if is_stream else LoadImages(src, img_size=opt.img_size)
    if exported:
        dataset.auto = False  # letterbox to the export's full square input, not to the next stride multiple
    save_dir = increment_path(Path(opt.project) / opt.name)
    writers = {}
    t_start, n, quit_requested = time.time(), 0, False
    bar = tqdm(dataset, total=None if is_stream else dataset.frame_count(), unit='frame',
               bar_format='{l_bar}{bar:10}{r_bar}')
    try:
        for path, img, im0s, cap, status in bar:
            batch = [(path, img, im0s)] if not is_stream else list(zip(path, img, im0s))
            for p, im, im0 in batch:
                x = torch.from_numpy(np.ascontiguousarray(im)).to(device).float().div_(255.0)[None]
                t0 = time.perf_counter()
                with torch.inference_mode():
                    x = x.contiguous(memory_format=torch.channels_last)
                    pred = tta_forward(fast, x) if opt.augment else fast(x)[0]
                    det = non_max_suppression(pred, opt.conf_thres, opt.iou_thres, classes=opt.classes,
                                              agnostic=opt.agnostic_nms)[0].clone()
                    det[:, :4] = scale_boxes(x.shape[2:], det[:, :4], im0.shape[:2]).round()
                dt = time.perf_counter() - t0
                det = det.cpu()
                counts = ', '.join(f'{int((det[:, 5] == c).sum())} {names[int(c)]}' for c in det[:, 5].unique())
                bar.write(f'{status}{x.shape[2]}x{x.shape[3]} {counts or "no detections"} ({1e3 * dt:.1f} ms)')
                annotated = draw_detections(im0.copy(), det, names, colors)
                stem = Path(p).stem if not is_stream else f'stream{p}'
                if opt.save_txt:
                    write_txt(save_dir / 'labels' / f'{stem}{_frame_suffix(dataset, cap)}.txt', det, im0.shape)
                if cap is None and not is_stream:
                    cv2.imwrite(str(save_dir / Path(p).name), annotated)
                else:
                    out = save_dir / f'{stem}.mp4'
                    if out not in writers:
                        fps = (cap.get(cv2.CAP_PROP_FPS) if cap is not None else 0) or 30
                        h, w = annotated.shape[:2]
                        writers[out] = cv2.VideoWriter(str(out), cv2.VideoWriter_fourcc(*opt.fourcc), fps, (w, h))
                    writers[out].write(annotated)
                n += 1
                if opt.view_img:
                    cv2.imshow(str(p), annotated)
                    quit_requested = cv2.waitKey(1) == ord('q')
            if quit_requested:
                break
    finally:  # videos stay playable when a stream is stopped with q or Ctrl-C
        bar.close()
        for w in writers.values():
            w.release()
    print(f'{n} images/frames in {time.time() - t_start:.1f} s. Results saved to {save_dir}')
    return save_dir


def _frame_suffix(dataset, cap):
    return f'_{getattr(dataset, "frame", 0)}' if cap is not None else ''


def draw_detections(img, det, names, colors):
    """Boxes with a stable colour per class and 'name conf' labels (in place, BGR image)."""
    lw = max(round(sum(img.shape[:2]) / 2 * 0.003), 2)
    for *xyxy, conf, cls in det.tolist():
        c = colors(int(cls), bgr=True)
        p1, p2 = (int(xyxy[0]), int(xyxy[1])), (int(xyxy[2]), int(xyxy[3]))
        cv2.rectangle(img, p1, p2, c, lw, cv2.LINE_AA)
        label = f'{names[int(cls)]} {conf:.2f}'
        tf = max(lw - 1, 1)
        tw, th = cv2.getTextSize(label, 0, lw / 3, tf)[0]
        top = p1[1] - th - 3 >= 0
        q2 = (p1[0] + tw, p1[1] - th - 3 if top else p1[1] + th + 3)
        cv2.rectangle(img, p1, q2, c, -1, cv2.LINE_AA)
        cv2.putText(img, label, (p1[0], p1[1] - 2 if top else p1[1] + th + 2), 0, lw / 3, (255, 255, 255), tf,
                    cv2.LINE_AA)
    return img


def write_txt(path, det, shape):
    """YOLO rows: class cx cy w h conf, normalised to the original image."""
    from utils.general import atomic_write_text
    h, w = shape[:2]
    rows = []
    for x1, y1, x2, y2, conf, cls in det.tolist():
        rows.append(f'{int(cls)} {(x1 + x2) / 2 / w:.6f} {(y1 + y2) / 2 / h:.6f} {(x2 - x1) / w:.6f} '
                    f'{(y2 - y1) / h:.6f} {conf:.5f}')
    atomic_write_text(path, '\n'.join(rows) + ('\n' if rows else ''))


def main(argv=None):
    from utils.general import user_errors
    opt = parse_args(argv)
    with user_errors():
        run(opt)


if __name__ == '__main__':
    main()

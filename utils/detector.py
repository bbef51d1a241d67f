"""The detection loop behind detect.py: frames in, annotated images / videos and YOLO label
rows out, into one run folder.

    sink = DetectionSink(save_dir, names, fourcc='mp4v', save_txt=True)
    for path, img, im0, cap, status in dataset:
        det = detect_frame(model, img, im0.shape, device, conf_thres=0.3, iou_thres=0.6)
        sink.write(path, im0, det, cap, frame)
    sink.close()
"""
import time
from pathlib import Path

import cv2
import numpy as np
import torch

from utils.datasets import scale_boxes, write_detections_txt
from utils.nms import non_max_suppression
from utils.plots import draw_detections


def detect_frame(model, img, orig_shape, device, conf_thres=0.3, iou_thres=0.6, classes=None, agnostic=False,
                 augment=False):
    """One letterboxed frame img [3, H, W] uint8 RGB -> (detections [n, 6] (xyxy in the original
    image's pixels, conf, cls) on the CPU, the network input size (H, W), seconds taken)."""
    from utils.evaluation import tta_forward
    x = torch.from_numpy(np.ascontiguousarray(img)).to(device).float().div_(255.0)[None]
    t0 = time.perf_counter()
    with torch.inference_mode():
        x = x.contiguous(memory_format=torch.channels_last)
        pred = tta_forward(model, x) if augment else model(x)[0]
        det = non_max_suppression(pred, conf_thres, iou_thres, classes=classes, agnostic=agnostic)[0].clone()
        det[:, :4] = scale_boxes(x.shape[2:], det[:, :4], orig_shape[:2]).round()
    return det.cpu(), tuple(x.shape[2:]), time.perf_counter() - t0


def summary(det, names):
    """'2 circle, 1 square' (or 'no detections') for the log line."""
    counts = ', '.join(f'{int((det[:, 5] == c).sum())} {names[int(c)]}' for c in det[:, 5].unique())
    return counts or 'no detections'


class DetectionSink:
    """Where detections go: annotated images (same name as the source), videos and streams as
    .mp4 at the source's fps and size, and with ``save_txt`` a labels/<stem>[_<frame>].txt per
    frame. ``close()`` finalises the videos (also after q or Ctrl-C: they stay playable)."""

    def __init__(self, save_dir, names, fourcc='mp4v', save_txt=False, view=False):
        self.save_dir, self.names, self.fourcc, self.save_txt, self.view = Path(save_dir), names, fourcc, save_txt, view
        self.writers = {}
        self.quit_requested = False

    def write(self, path, im0, det, cap=None, frame=0, stream=False):
        annotated = draw_detections(im0.copy(), det, self.names)
        stem = Path(path).stem if not stream else f'stream{path}'
        if self.save_txt:
            suffix = f'_{frame}' if cap is not None else ''
            write_detections_txt(self.save_dir / 'labels' / f'{stem}{suffix}.txt', det, im0.shape)
        if cap is None and not stream:
            cv2.imwrite(str(self.save_dir / Path(path).name), annotated)
        else:
            self._video(self.save_dir / f'{stem}.mp4', annotated, cap)
        if self.view:
            cv2.imshow(str(path), annotated)
            self.quit_requested = cv2.waitKey(1) == ord('q')
        return annotated

    def _video(self, out, frame, cap):
        if out not in self.writers:
            fps = (cap.get(cv2.CAP_PROP_FPS) if cap is not None else 0) or 30
            h, w = frame.shape[:2]
            self.writers[out] = cv2.VideoWriter(str(out), cv2.VideoWriter_fourcc(*self.fourcc), fps, (w, h))
        self.writers[out].write(frame)

    def close(self):
        for writer in self.writers.values():
            writer.release()
        self.writers.clear()

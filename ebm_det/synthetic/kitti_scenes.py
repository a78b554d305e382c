"""Seeded generator of synthetic KITTI-format LiDAR scenes for mmdet3d 1.x.

Writes the raw KITTI layout::

    <out>/training/velodyne/NNNNNN.bin   float32 (x, y, z, intensity), LiDAR frame
    <out>/training/label_2/NNNNNN.txt    KITTI labels, camera frame
    <out>/training/calib/NNNNNN.txt      standard KITTI calibration (drive 0000)
    <out>/training/image_2/NNNNNN.png    flat grey 1242x375 placeholder image
    <out>/ImageSets/{train,val,test}.txt frame ids (test is empty)
    <out>/kitti_infos_{train,val}.pkl    mmdet3d 1.x (v2) info files

Scenes: a flat ground plane at z = -1.73 m (sensor at the origin, 1.73 m above
the road as on the KITTI car), labelled Car / Pedestrian / Cyclist boxes with
yaw uniform in [-pi, pi), and unlabelled clutter (thin poles, wall segments).
Points come from ray-casting a front-facing spinning LiDAR (40 beams from +2
to -24.8 deg like the HDL-64 span, 720 azimuths over [-90, 90) deg) against
ground, objects and clutter, with 2 cm range noise and 7 % dropout, so the
density falls with range and objects self-occlude and shadow each other.

Labelled objects are kept fully inside the camera image (so ``truncated = 0``
is true) and must receive at least ``MIN_OBJECT_POINTS`` LiDAR returns; an
object hidden behind others is dropped from the labels (its few returns stay
in the cloud). ``occluded`` is written as 0 for every object. The reflecting
surface of an object sits ``LABEL_MARGIN`` (5 cm) inside its label box, like
a box drawn around a point cluster, so range noise does not push returns out
of the box (mmdet3d counts ``num_lidar_pts`` and crops GT-sampling points by
box). Every frame has at least one labelled object.

Frame conversions (LiDAR <-> camera boxes, yaw convention, corner projection)
use mmdet3d's own box classes, and the info files are produced by mmdet3d's
own converters from ``mmdet3d/.mim/tools/dataset_converters``
(``get_kitti_image_info`` -> ``_calculate_num_points_in_gt`` ->
``update_kitti_infos``, i.e. what ``tools/create_data.py kitti`` does, minus
the test split and reduced point clouds); see :func:`_load_mmdet3d_converters`
for how they are imported. Paths in the infos are file names, so a config
needs ``data_prefix=dict(pts='training/velodyne', img='training/image_2')``.
The image is a real (flat) PNG because the converter reads each image to get
its shape.

Usage::

    python -m ebm_det.synthetic.kitti_scenes --out data/kitti_gen \
        --num-train 200 --num-val 50 --seed 0
"""
from __future__ import annotations

import argparse
import importlib
import importlib.util
import os
import os.path as osp
import sys
import tempfile
import time
import types
from typing import Dict, List, NamedTuple, Sequence, Tuple

import numpy as np

# Ranges below are (low, high): uniform draws for floats, numpy's half-open
# [low, high) for counts. Lengths are in metres, angles in radians unless said.
IMG_H, IMG_W = 375, 1242  # px, size of KITTI's CAM2 image
SENSOR_HEIGHT = 1.73  # m, Velodyne above the road on the KITTI car
GROUND_Z = -SENSOR_HEIGHT  # ground plane height in the LiDAR frame
MIN_OBJECT_POINTS = 5  # labelled objects need at least this many returns
MAX_RANGE = 80.0  # m, returns beyond this are lost
RANGE_NOISE = 0.02  # m, std of the range noise
DROPOUT = 0.07  # probability that a return is lost
LABEL_MARGIN = 0.05  # m between the reflecting surface and the label box
# m, [x0, y0, z0, x1, y1, z1] that labelled objects are kept inside
DEFAULT_POINT_CLOUD_RANGE = (0, -20, -3, 40, 20, 1)

# Scanner: a front-facing spinning LiDAR.
NUM_BEAMS = 40  # elevation channels
NUM_AZIMUTHS = 720  # columns over the front half-turn [-90, 90) deg
BEAM_ELEVATION_DEG = (2.0, -24.8)  # deg, top and bottom beam (the HDL-64 span)

# Labelled objects.
OBJECTS_PER_FRAME = (6, 16)  # objects asked for per frame, [low, high)
CANDIDATES_PER_OBJECT = 6  # most candidates fail the camera-view test
OBJECT_X_RANGE = (3.0, 40.0)  # m, forward distance of candidate centres
OBJECT_MAX_ABS_Y = 18.0  # m, lateral bound of candidate centres
RANGE_INSET = 0.5  # m, candidate centres stay this far inside the range
MIN_CAMERA_DEPTH = 0.5  # m, every box corner lies this far before the camera
OBJECT_GAP = 0.3  # m, smallest gap between two labelled footprints

# Unlabelled clutter: thin poles anywhere in front, walls outside the
# labelled corridor.
POLES = (2, 7)  # poles per frame, [low, high)
POLE_MIN_SIDE = 0.15  # m, thinnest pole
POLE_SIDE_SPREAD = 0.15  # m, pole side = POLE_MIN_SIDE + this * U[0, 1)
POLE_X = (4.0, 45.0)  # m, forward position of a pole
POLE_Y = (-22.0, 22.0)  # m, lateral position of a pole
POLE_HEIGHT = (3.0, 7.0)  # m
WALLS = (1, 4)  # wall segments per frame, [low, high)
WALL_LENGTH = (5.0, 20.0)  # m
WALL_HEIGHT = (2.0, 4.0)  # m
WALL_THICKNESS = 0.3  # m
WALL_YAW_STD = 0.05  # rad, std of a wall's deviation from its axis
SIDE_WALL_PROB = 0.7  # chance that a wall runs along x (else across the road)
SIDE_WALL_ABS_Y = (19.5, 25.0)  # m, lateral distance of a side wall
SIDE_WALL_NEAR_GAP = 2.0  # m, least x of a side wall's near end
SIDE_WALL_MAX_X = 50.0  # m, largest x of a side wall's centre
FAR_WALL_X = (45.0, 60.0)  # m, forward position of a wall across the road
FAR_WALL_Y = (-15.0, 15.0)  # m, lateral position of a wall across the road
CLUTTER_GAP = 0.5  # m, smallest gap of clutter to objects and other clutter

# Intensity of a return (reflectance in [0, 1]).
OBJECT_REFLECTANCE = (0.1, 0.9)  # one paint value per labelled object
CLUTTER_REFLECTANCE = (0.3, 0.6)  # brighter clutter
GROUND_REFLECTANCE = 0.15  # dull asphalt
INTENSITY_NOISE = 0.03  # std of the per-return intensity noise

PLACEHOLDER_GREY = 96  # grey level (0-255) of the flat image_2 placeholder

# Calibration of KITTI object frame 000000 (training split); P0-P3 are 3x4,
# R0_rect 3x3, Tr_* 3x4. Frames here share one calibration like a KITTI drive.
KITTI_CALIB: Dict[str, np.ndarray] = {
    'P0': np.array([7.215377e+02, 0.0, 6.095593e+02, 0.0,
                    0.0, 7.215377e+02, 1.728540e+02, 0.0,
                    0.0, 0.0, 1.0, 0.0]).reshape(3, 4),
    'P1': np.array([7.215377e+02, 0.0, 6.095593e+02, -3.875744e+02,
                    0.0, 7.215377e+02, 1.728540e+02, 0.0,
                    0.0, 0.0, 1.0, 0.0]).reshape(3, 4),
    'P2': np.array([7.215377e+02, 0.0, 6.095593e+02, 4.485728e+01,
                    0.0, 7.215377e+02, 1.728540e+02, 2.163791e-01,
                    0.0, 0.0, 1.0, 2.745884e-03]).reshape(3, 4),
    'P3': np.array([7.215377e+02, 0.0, 6.095593e+02, -3.395242e+02,
                    0.0, 7.215377e+02, 1.728540e+02, 2.199936e+00,
                    0.0, 0.0, 1.0, 2.729905e-03]).reshape(3, 4),
    'R0_rect': np.array([9.999239e-01, 9.837760e-03, -7.445048e-03,
                         -9.869795e-03, 9.999421e-01, -4.278459e-03,
                         7.402527e-03, 4.351614e-03, 9.999631e-01]).reshape(3, 3),
    'Tr_velo_to_cam': np.array([7.533745e-03, -9.999714e-01, -6.166020e-04,
                                -4.069766e-03, 1.480249e-02, 7.280733e-04,
                                -9.998902e-01, -7.631618e-02, 9.998621e-01,
                                7.523790e-03, 1.480755e-02,
                                -2.717806e-01]).reshape(3, 4),
    'Tr_imu_to_velo': np.array([9.999976e-01, 7.553071e-04, -2.035826e-03,
                                -8.086759e-01, -7.854027e-04, 9.998898e-01,
                                -1.482298e-02, 3.195559e-01, 2.024406e-03,
                                1.482454e-02, 9.998881e-01,
                                -7.997231e-01]).reshape(3, 4),
}

# name -> (sampling weight, length range, width range, height range), metres.
CLASS_SPECS: Dict[str, Tuple[float, Tuple[float, float], Tuple[float, float],
                             Tuple[float, float]]] = {
    'Car': (0.6, (3.5, 4.8), (1.5, 1.9), (1.4, 1.7)),
    'Pedestrian': (0.28, (0.5, 0.9), (0.5, 0.8), (1.5, 1.9)),
    'Cyclist': (0.12, (1.5, 1.9), (0.5, 0.8), (1.6, 1.9)),
}


def _homogeneous(mat: np.ndarray) -> np.ndarray:
    """Pad a (3, 3) or (3, 4) matrix to (4, 4), as KITTI's ``extend_matrix``."""
    out = np.eye(4)
    out[:mat.shape[0], :mat.shape[1]] = mat
    return out


def lidar2cam_matrix() -> np.ndarray:
    """(4, 4) LiDAR -> rectified camera transform, ``R0_rect @ Tr_velo_to_cam``.

    This is the product mmdet3d's ``update_infos_to_v2`` stores as
    ``images.CAM2.lidar2cam`` and that KittiDataset uses to convert boxes;
    it is formed in float32 there, so it is here too, which makes the
    label -> info -> dataset round trip exact up to the label text precision.
    """
    rect = _homogeneous(KITTI_CALIB['R0_rect']).astype(np.float32)
    velo2cam = _homogeneous(KITTI_CALIB['Tr_velo_to_cam']).astype(np.float32)
    return (rect @ velo2cam).astype(np.float64)


def cam2img_matrix() -> np.ndarray:
    """(4, 4) rectified camera -> CAM2 image projection (P2 padded)."""
    return _homogeneous(KITTI_CALIB['P2'])


class Scene(NamedTuple):
    """One synthetic frame.

    A NamedTuple rather than a dataclass so the file also works when it is
    loaded by path without being registered in ``sys.modules``.

    Attributes:
        boxes_lidar: (M, 7) labelled boxes in mmdet3d's LiDAR convention
            ``[x, y, z_bottom, l (x_size), w (y_size), h (z_size), yaw]``
            (metres, radians; yaw 0 points along +x, counter-clockwise).
        names: M class names.
        num_points: (M,) LiDAR returns on each labelled box.
        clutter_lidar: (C, 7) unlabelled clutter boxes, same layout.
        points: (P, 4) float32 ``[x, y, z, intensity]`` in the LiDAR frame.
    """
    boxes_lidar: np.ndarray
    names: List[str]
    num_points: np.ndarray
    clutter_lidar: np.ndarray
    points: np.ndarray


def _lidar_boxes(boxes: np.ndarray):
    """Wrap (M, 7) numpy boxes as ``LiDARInstance3DBoxes`` (mmdet3d stores
    box tensors as float32, ~4 um resolution at 40 m)."""
    import torch
    from mmdet3d.structures import LiDARInstance3DBoxes
    return LiDARInstance3DBoxes(torch.from_numpy(np.asarray(boxes, np.float64)),
                                box_dim=7)


def boxes_lidar_to_camera(boxes: np.ndarray) -> np.ndarray:
    """LiDAR boxes -> KITTI camera boxes through mmdet3d's ``Box3DMode``.

    Args:
        boxes: (M, 7) LiDAR boxes (see :class:`Scene`).

    Returns:
        (M, 7) camera boxes ``[x, y, z, l, h, w, rotation_y]`` with the bottom
        centre as origin (y points down), i.e. KITTI's location/dimensions.
    """
    from mmdet3d.structures import Box3DMode
    cam = _lidar_boxes(boxes).convert_to(Box3DMode.CAM, lidar2cam_matrix())
    return cam.tensor.numpy().astype(np.float64)


def project_boxes_2d(boxes_cam: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Project camera boxes into CAM2 the way KittiMetric does for predictions.

    Args:
        boxes_cam: (M, 7) camera boxes.

    Returns:
        Tuple of (M, 4) ``[x1, y1, x2, y2]`` pixel boxes (min/max over the 8
        projected corners, unclipped) and (M,) minimum corner depth in metres.
    """
    import torch
    from mmdet3d.structures import CameraInstance3DBoxes, points_cam2img
    corners = CameraInstance3DBoxes(torch.from_numpy(boxes_cam)).corners
    uvd = points_cam2img(corners, corners.new_tensor(cam2img_matrix()),
                         with_depth=True)  # (M, 8, 3)
    uv = uvd[..., :2]
    bbox = torch.cat([uv.min(dim=1)[0], uv.max(dim=1)[0]], dim=1)
    return bbox.numpy(), uvd[..., 2].min(dim=1)[0].numpy()


def _overlap_free(boxes: np.ndarray, margin: float, fixed: int = 0) -> np.ndarray:
    """Greedy selection of boxes whose footprints do not touch.

    Args:
        boxes: (M, 7) LiDAR boxes; the first ``fixed`` are always kept.
        margin: metres added to every length and width before testing.
        fixed: number of leading boxes that are already accepted.

    Returns:
        (M,) bool mask of accepted boxes.
    """
    if len(boxes) == 0:
        return np.zeros(0, dtype=bool)
    grown = boxes.copy()
    grown[:, 3:5] += margin
    # All boxes stand on the ground, so 3D overlap <=> BEV overlap.
    lb = _lidar_boxes(grown)
    iou = type(lb).overlaps(lb, lb).numpy()
    keep = np.zeros(len(boxes), dtype=bool)
    keep[:fixed] = True
    for i in range(fixed, len(boxes)):
        if not (iou[i, keep] > 0).any():
            keep[i] = True
    return keep


# ----------------------------------------------------------------------------
# Scene content
# ----------------------------------------------------------------------------
def _draw_candidates(rng: np.random.Generator, num: int,
                     x_range: Tuple[float, float],
                     y_lim: float) -> Tuple[np.ndarray, np.ndarray]:
    """Draw ``num`` random boxes standing on the ground.

    Class by CLASS_SPECS weight, sizes uniform in the class ranges, centre
    x in ``x_range``, |y| < ``y_lim``, yaw uniform in [-pi, pi).

    Returns:
        (num, 7) LiDAR boxes and (num,) class indices into CLASS_SPECS.
    """
    names_all = list(CLASS_SPECS)
    probs = np.array([CLASS_SPECS[n][0] for n in names_all])
    cls = rng.choice(len(names_all), size=num, p=probs / probs.sum())
    ranges = np.array([CLASS_SPECS[names_all[c]][1:] for c in cls])  # (n,3,2)
    dims = rng.uniform(ranges[..., 0], ranges[..., 1])  # l, w, h
    xy = np.stack([rng.uniform(x_range[0], x_range[1], num),
                   rng.uniform(-y_lim, y_lim, num)], axis=1)
    yaw = rng.uniform(-np.pi, np.pi, num)
    boxes = np.concatenate(
        [xy, np.full((num, 1), GROUND_Z), dims, yaw[:, None]], axis=1)
    return boxes, cls


def _in_camera_view(boxes: np.ndarray, pcr: Sequence[float],
                    y_lim: float) -> np.ndarray:
    """(M,) bool: the box's footprint lies in the BEV window (x in the range,
    |y| <= ``y_lim`` + RANGE_INSET) and its 8 corners project inside the
    CAM2 image, at least MIN_CAMERA_DEPTH in front of the camera."""
    corners = _lidar_boxes(boxes).corners.numpy()[:, :, :2]  # (n, 8, 2)
    in_range = ((corners[..., 0] >= pcr[0]) & (corners[..., 0] <= pcr[3])
                & (np.abs(corners[..., 1]) <= y_lim + RANGE_INSET)).all(axis=1)
    bbox, depth = project_boxes_2d(boxes_lidar_to_camera(boxes))
    in_image = ((depth > MIN_CAMERA_DEPTH) & (bbox[:, 0] >= 0)
                & (bbox[:, 1] >= 0) & (bbox[:, 2] < IMG_W) & (bbox[:, 3] < IMG_H))
    return in_range & in_image


def _sample_objects(rng: np.random.Generator, num: int,
                    pcr: Sequence[float]) -> Tuple[np.ndarray, List[str]]:
    """Draw up to ``num`` non-overlapping labelled objects in camera view.

    Candidates are drawn in front of the sensor (x in [3, 40], |y| < 18,
    intersected with the point-cloud range minus 0.5 m), then kept only if
    all 8 corners project inside the 1242x375 CAM2 image, then thinned
    greedily so that no two footprints come closer than 0.3 m.

    Returns:
        (M, 7) LiDAR boxes (M <= num) and their M class names.
    """
    x_range = (max(OBJECT_X_RANGE[0], pcr[0] + RANGE_INSET),
               min(OBJECT_X_RANGE[1], pcr[3] - RANGE_INSET))
    y_lim = min(OBJECT_MAX_ABS_Y, -pcr[1] - RANGE_INSET, pcr[4] - RANGE_INSET)
    boxes, cls = _draw_candidates(rng, CANDIDATES_PER_OBJECT * num, x_range,
                                  y_lim)
    ok = np.flatnonzero(_in_camera_view(boxes, pcr, y_lim))
    boxes = boxes[ok]
    keep = _overlap_free(boxes, margin=OBJECT_GAP)
    sel = ok[keep][:num]
    names_all = list(CLASS_SPECS)
    return boxes[keep][:num], [names_all[c] for c in cls[sel]]


def _sample_labelled_objects(rng: np.random.Generator, pcr: Sequence[float]
                             ) -> Tuple[np.ndarray, List[str]]:
    """(M, 7) LiDAR boxes and M names of a frame's objects, M >= 1.

    At least one labelled object per frame: KittiDataset drops empty frames
    in training and kitti_eval indexes each GT frame's first alpha.
    """
    objects: np.ndarray = np.zeros((0, 7))
    while len(objects) == 0:
        objects, names = _sample_objects(
            rng, int(rng.integers(*OBJECTS_PER_FRAME)), pcr)
    return objects, names


def _sample_poles(rng: np.random.Generator) -> np.ndarray:
    """(P, 7) LiDAR boxes of thin square poles anywhere in front."""
    n_poles = int(rng.integers(*POLES))
    side = POLE_MIN_SIDE + POLE_SIDE_SPREAD * rng.random(n_poles)
    return np.stack([rng.uniform(*POLE_X, n_poles), rng.uniform(*POLE_Y, n_poles),
                     np.full(n_poles, GROUND_Z), side, side,
                     rng.uniform(*POLE_HEIGHT, n_poles),
                     rng.uniform(-np.pi, np.pi, n_poles)], axis=1)


def _sample_wall(rng: np.random.Generator) -> List[float]:
    """One wall segment as a LiDAR box ``[x, y, z, l, w, h, yaw]``."""
    length, height = rng.uniform(*WALL_LENGTH), rng.uniform(*WALL_HEIGHT)
    if rng.random() < SIDE_WALL_PROB:  # along the road, left or right
        y = rng.choice([-1, 1]) * rng.uniform(*SIDE_WALL_ABS_Y)
        x = rng.uniform(length / 2 + SIDE_WALL_NEAR_GAP, SIDE_WALL_MAX_X)
        yaw = rng.normal(0, WALL_YAW_STD)
    else:  # across the far end
        x, y = rng.uniform(*FAR_WALL_X), rng.uniform(*FAR_WALL_Y)
        yaw = np.pi / 2 + rng.normal(0, WALL_YAW_STD)
    return [x, y, GROUND_Z, length, WALL_THICKNESS, height, yaw]


def _sample_clutter(rng: np.random.Generator, objects: np.ndarray) -> np.ndarray:
    """Unlabelled clutter: 2-6 thin poles and 1-3 wall segments.

    Walls run roughly along x beyond |y| = 19 m (outside the labelled
    corridor) or across the road beyond x = 45 m, so they rarely hide
    labelled objects; poles stand anywhere free in front of the sensor.

    Returns:
        (C, 7) LiDAR boxes that do not overlap ``objects`` or each other.
    """
    poles = _sample_poles(rng)
    walls = [_sample_wall(rng) for _ in range(int(rng.integers(*WALLS)))]
    clutter = np.concatenate([poles, np.asarray(walls)], axis=0)
    keep = _overlap_free(np.concatenate([objects, clutter]), margin=CLUTTER_GAP,
                         fixed=len(objects))
    return clutter[keep[len(objects):]]


def _reflecting_bodies(objects: np.ndarray) -> np.ndarray:
    """(M, 7) surfaces that reflect the beams: the label boxes shrunk by
    LABEL_MARGIN on every side but the bottom, which stays on the ground.

    Like a hand-drawn box around a point cluster, so that range noise does
    not push half of an object's returns outside its box (mmdet3d counts
    num_lidar_pts and crops GT-sampling points by box).
    """
    bodies = objects.copy()
    bodies[:, 3:6] -= [2 * LABEL_MARGIN, 2 * LABEL_MARGIN, LABEL_MARGIN]
    return bodies


# ----------------------------------------------------------------------------
# Ray casting
# ----------------------------------------------------------------------------
def _beam_directions(num_beams: int, num_azimuths: int) -> Tuple[np.ndarray, np.ndarray]:
    """Unit ray directions of the simulated scanner.

    Returns:
        (num_beams, num_azimuths, 3) directions and the (num_azimuths,)
        ascending azimuths in radians, covering [-pi/2, pi/2).
    """
    elev = np.deg2rad(np.linspace(*BEAM_ELEVATION_DEG, num_beams))
    azim = -np.pi / 2 + np.pi * np.arange(num_azimuths) / num_azimuths
    ce = np.cos(elev)[:, None]
    dirs = np.stack([ce * np.cos(azim)[None], ce * np.sin(azim)[None],
                     np.broadcast_to(np.sin(elev)[:, None],
                                     (num_beams, num_azimuths))], axis=-1)
    return dirs, azim


def _ground_hits(dirs: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """(B, A) distance in metres to the ground plane (inf for rays that do
    not point down) and (B, A) hit index (-1 ground, -2 nothing)."""
    with np.errstate(divide='ignore'):
        t = np.where(dirs[..., 2] < 0, GROUND_Z / dirs[..., 2], np.inf)
    return t, np.where(np.isfinite(t), -1, -2)


def _azimuth_spans(boxes: np.ndarray,
                   azim: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """(M,) first and (M,) exclusive last azimuth column that each box's
    footprint spans (boxes lie in front, x > 0)."""
    corners = _lidar_boxes(boxes).corners.numpy()[:, :, :2]
    az_c = np.arctan2(corners[..., 1], corners[..., 0])
    return (np.searchsorted(azim, az_c.min(axis=1), side='left'),
            np.searchsorted(azim, az_c.max(axis=1), side='right'))


def _slab_entry(dirs: np.ndarray,
                box: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Slab test of rays from the origin against one solid box.

    Args:
        dirs: (B, a, 3) unit ray directions.
        box: (7,) LiDAR box (bottom-centre origin).

    Returns:
        (B, a) entry distance in metres and (B, a) bool: the ray enters the
        box in front of the sensor.
    """
    x, y, z, l, w, h, yaw = box
    c, s = np.cos(yaw), np.sin(yaw)
    # Ray origin (0,0,0) and direction in the box frame (centre at 0).
    o = np.array([-(c * x + s * y), -(-s * x + c * y), -(z + h / 2)])
    dl = np.stack([c * dirs[..., 0] + s * dirs[..., 1],
                   -s * dirs[..., 0] + c * dirs[..., 1], dirs[..., 2]], axis=-1)
    # a ray parallel to a slab would divide by zero
    dl = np.where(np.abs(dl) < 1e-12, 1e-12, dl)
    half = np.array([l, w, h]) / 2
    t1 = (-half - o) / dl
    t2 = (half - o) / dl
    t_near = np.minimum(t1, t2).max(axis=-1)
    t_far = np.maximum(t1, t2).min(axis=-1)
    return t_near, (t_far >= t_near) & (t_near > 0)


def _cast(dirs: np.ndarray, azim: np.ndarray,
          boxes: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Ray-cast from the origin against the ground plane and solid boxes.

    Slab test in each box's local frame; to keep it cheap each box only
    tests the azimuth columns its footprint spans.

    Args:
        dirs: (B, A, 3) unit ray directions.
        azim: (A,) ascending azimuths of the columns.
        boxes: (M, 7) LiDAR boxes (bottom-centre origin).

    Returns:
        (B, A) hit distance in metres (inf for no hit) and (B, A) int index
        of the hit box (-1 ground, -2 nothing).
    """
    t, hit = _ground_hits(dirs)
    if len(boxes) == 0:
        return t, hit
    a0, a1 = _azimuth_spans(boxes, azim)
    for m, box in enumerate(boxes):
        if a1[m] <= a0[m]:
            continue
        cols = slice(a0[m], a1[m])
        t_near, ok = _slab_entry(dirs[:, cols], box)
        view_t = t[:, cols]
        closer = ok & (t_near < view_t)
        view_t[closer] = t_near[closer]
        hit[:, cols][closer] = m
    return t, hit


def _intensity(rng: np.random.Generator, hit: np.ndarray, num_objects: int,
               num_solids: int) -> np.ndarray:
    """(P,) intensity in [0, 1] of returns hitting ``hit`` (box index, -1
    ground): a reflectance per solid (objects first, then clutter) plus
    noise."""
    refl = np.concatenate([rng.uniform(*OBJECT_REFLECTANCE, num_objects),
                           rng.uniform(*CLUTTER_REFLECTANCE,
                                       num_solids - num_objects)])
    base = np.where(hit >= 0, refl[np.maximum(hit, 0)], GROUND_REFLECTANCE)
    return np.clip(base + rng.normal(0, INTENSITY_NOISE, len(base)), 0, 1)


def _returns(rng: np.random.Generator, dirs: np.ndarray, t: np.ndarray,
             hit: np.ndarray, num_objects: int,
             num_solids: int) -> Tuple[np.ndarray, np.ndarray]:
    """Turn ray hits into LiDAR returns: drop those beyond MAX_RANGE and a
    DROPOUT share at random, add range noise and an intensity.

    Returns:
        (P, 4) float32 ``[x, y, z, intensity]`` points and (P,) hit index
        of each (box index, -1 ground).
    """
    valid = np.isfinite(t) & (t <= MAX_RANGE)
    valid &= rng.random(t.shape) >= DROPOUT
    r = t[valid] + rng.normal(0.0, RANGE_NOISE, int(valid.sum()))
    hit = hit[valid]
    xyz = dirs[valid] * r[:, None]
    intensity = _intensity(rng, hit, num_objects, num_solids)
    points = np.concatenate([xyz, intensity[:, None]], axis=1).astype(np.float32)
    return points, hit


def _seen_objects(counts: np.ndarray) -> np.ndarray:
    """(M,) bool: objects with at least MIN_OBJECT_POINTS returns; the
    best-seen one when every object is hidden."""
    seen = counts >= MIN_OBJECT_POINTS
    if not seen.any():
        seen[np.argmax(counts)] = True
    return seen


def make_scene(seed: int, frame_id: int,
               point_cloud_range: Sequence[float] = DEFAULT_POINT_CLOUD_RANGE,
               num_beams: int = NUM_BEAMS,
               num_azimuths: int = NUM_AZIMUTHS) -> Scene:
    """Build one frame deterministically from ``(seed, frame_id)``.

    Args:
        seed: dataset seed.
        frame_id: frame index; frames are independent of generation order.
        point_cloud_range: ``[x0, y0, z0, x1, y1, z1]`` (m) that labelled
            objects must lie in.
        num_beams: elevation channels of the scanner.
        num_azimuths: columns over the front half-turn [-90, 90) deg.

    Returns:
        The :class:`Scene`.
    """
    rng = np.random.default_rng([seed, frame_id])
    objects, names = _sample_labelled_objects(rng, point_cloud_range)
    clutter = _sample_clutter(rng, objects)
    dirs, azim = _beam_directions(num_beams, num_azimuths)
    bodies = _reflecting_bodies(objects)
    solid = np.concatenate([bodies, clutter]) if len(clutter) else bodies
    t, hit = _cast(dirs, azim, solid)
    points, hit = _returns(rng, dirs, t, hit, len(objects), len(solid))
    counts = np.bincount(hit[hit >= 0], minlength=len(solid))[:len(objects)]
    seen = _seen_objects(counts)
    return Scene(boxes_lidar=objects[seen],
                 names=[n for n, s in zip(names, seen) if s],
                 num_points=counts[seen], clutter_lidar=clutter, points=points)


# ----------------------------------------------------------------------------
# KITTI files
# ----------------------------------------------------------------------------
def _image_boxes(boxes_cam: np.ndarray) -> np.ndarray:
    """(M, 4) ``[x1, y1, x2, y2]`` CAM2 boxes of (M, 7) camera boxes, with
    the clipping KittiMetric applies to projected predictions."""
    bbox, _ = project_boxes_2d(boxes_cam)
    bbox[:, :2] = np.maximum(bbox[:, :2], 0)
    bbox[:, 2:] = np.minimum(bbox[:, 2:], [IMG_W, IMG_H])
    return bbox


def _observation_angle(boxes_cam: np.ndarray) -> np.ndarray:
    """(M,) KITTI alpha in [-pi, pi), the formula KittiMetric uses for
    camera boxes."""
    alpha = boxes_cam[:, 6] - np.arctan2(boxes_cam[:, 0], boxes_cam[:, 2])
    return (alpha + np.pi) % (2 * np.pi) - np.pi


def _label_lines(scene: Scene) -> List[str]:
    """KITTI ``label_2`` lines for a scene's labelled boxes.

    Format: ``type truncated occluded alpha x1 y1 x2 y2 h w l x y z ry`` in
    the rectified camera frame; 6 decimals so that the LiDAR boxes survive
    the text round trip to well below 1e-3.
    """
    if len(scene.boxes_lidar) == 0:
        return []
    cam = boxes_lidar_to_camera(scene.boxes_lidar)  # x y z l h w ry
    bbox = _image_boxes(cam)
    alpha = _observation_angle(cam)
    lines = []
    for name, a, b, c in zip(scene.names, alpha, bbox, cam):
        x, y, z, l, h, w, ry = c
        lines.append(f'{name} 0.00 0 {a:.6f} {b[0]:.4f} {b[1]:.4f} {b[2]:.4f} '
                     f'{b[3]:.4f} {h:.6f} {w:.6f} {l:.6f} {x:.6f} {y:.6f} '
                     f'{z:.6f} {ry:.6f}')
    return lines


def _calib_text() -> str:
    """KITTI calib file; the key order is what mmdet3d's reader indexes by."""
    keys = ('P0', 'P1', 'P2', 'P3', 'R0_rect', 'Tr_velo_to_cam', 'Tr_imu_to_velo')
    return ''.join(
        f'{k}: ' + ' '.join(f'{v:.12e}' for v in KITTI_CALIB[k].ravel()) + '\n'
        for k in keys)


def _png_bytes(width: int, height: int, grey: int = PLACEHOLDER_GREY) -> bytes:
    """Encode a flat grey BGR PNG once (the placeholder for every image_2).

    mmdet3d's converter opens each image to learn its shape, so a real,
    correctly sized PNG is needed; a flat one compresses to ~1 kB.
    """
    import cv2  # installed with mmcv
    ok, buf = cv2.imencode('.png', np.full((height, width, 3), grey, np.uint8))
    assert ok, 'cv2 failed to encode the placeholder PNG'
    return buf.tobytes()


def _write_frame(root: str, frame_id: int, scene: Scene, png: bytes,
                 calib: str) -> None:
    """Write velodyne/label_2/calib/image_2 files of one frame under root."""
    name = f'{frame_id:06d}'
    scene.points.astype(np.float32).tofile(
        osp.join(root, 'velodyne', name + '.bin'))
    with open(osp.join(root, 'label_2', name + '.txt'), 'w') as f:
        f.write(''.join(line + '\n' for line in _label_lines(scene)))
    with open(osp.join(root, 'calib', name + '.txt'), 'w') as f:
        f.write(calib)
    with open(osp.join(root, 'image_2', name + '.png'), 'wb') as f:
        f.write(png)


# ----------------------------------------------------------------------------
# Info files through mmdet3d's own converters
# ----------------------------------------------------------------------------
_CONVERTER_PKG = '_ebm_mmdet3d_dataset_converters'


def _register_converter_package() -> None:
    """Register mmdet3d's ``.mim/tools/dataset_converters`` folder as the
    package ``_CONVERTER_PKG`` (once)."""
    if _CONVERTER_PKG in sys.modules:
        return
    spec = importlib.util.find_spec('mmdet3d')
    conv_dir = osp.join(osp.dirname(spec.origin), '.mim', 'tools',
                        'dataset_converters')
    if not osp.isdir(conv_dir):
        raise ImportError(f'mmdet3d converters not found at {conv_dir}')
    pkg = types.ModuleType(_CONVERTER_PKG)
    pkg.__path__ = [conv_dir]
    pkg.__package__ = _CONVERTER_PKG
    sys.modules[_CONVERTER_PKG] = pkg


def _skimage_standin() -> Dict[str, types.ModuleType]:
    """``{'skimage': ..., 'skimage.io': ...}`` stand-in modules whose imread
    decodes with PIL, or {} when scikit-image is installed.

    kitti_data_utils does ``from skimage import io`` only to read image
    shapes, and scikit-image is not among the packages mmdet3d is installed
    with here.
    """
    if importlib.util.find_spec('skimage') is not None:
        return {}
    sk, sk_io = types.ModuleType('skimage'), types.ModuleType('skimage.io')
    sk_io.imread = _imread_pil
    sk.io = sk_io
    return {'skimage': sk, 'skimage.io': sk_io}


def _load_mmdet3d_converters() -> types.SimpleNamespace:
    """Import the KITTI converters that ship inside the mmdet3d wheel.

    ``tools/dataset_converters`` of mmdet3d is installed as
    ``mmdet3d/.mim/tools/dataset_converters``; ``.mim`` is not a valid
    package name, and putting ``.mim`` on ``sys.path`` would make its
    ``tools`` package shadow this repository's ``tools`` package. So the
    folder is registered under a private package name, which keeps the
    converters' relative imports (``from .kitti_data_utils import ...``)
    working and leaves ``sys.path`` alone. A scikit-image stand-in (see
    :func:`_skimage_standin`) is visible during the import only.

    Returns:
        Namespace with ``kitti_converter``, ``kitti_data_utils`` and
        ``update_infos_to_v2`` modules.
    """
    _register_converter_package()
    shim = _skimage_standin()
    sys.modules.update(shim)
    try:
        return types.SimpleNamespace(**{
            name: importlib.import_module(f'{_CONVERTER_PKG}.{name}')
            for name in ('kitti_data_utils', 'kitti_converter',
                         'update_infos_to_v2')})
    finally:
        for key in shim:
            sys.modules.pop(key, None)


def _imread_pil(path: str) -> np.ndarray:
    """``skimage.io.imread`` stand-in: (H, W[, C]) uint8 array via PIL."""
    from PIL import Image
    with Image.open(path) as img:
        return np.asarray(img)


def _write_split_infos(conv: types.SimpleNamespace, out_dir: str, split: str,
                       ids: List[int], v1_dir: str, v2_dir: str) -> str:
    """Write ``<out_dir>/kitti_infos_<split>.pkl`` (v2) for frames ``ids``,
    staging the v1 and v2 files in ``v1_dir`` / ``v2_dir``; return its path."""
    import mmengine
    infos = conv.kitti_data_utils.get_kitti_image_info(
        out_dir, training=True, velodyne=True, calib=True,
        image_ids=ids, relative_path=True, num_worker=1)
    conv.kitti_converter._calculate_num_points_in_gt(
        out_dir, infos, relative_path=True)
    v1 = osp.join(v1_dir, f'kitti_infos_{split}.pkl')
    mmengine.dump(infos, v1)
    conv.update_infos_to_v2.update_kitti_infos(v1, v2_dir)
    path = osp.join(out_dir, f'kitti_infos_{split}.pkl')
    os.replace(osp.join(v2_dir, f'kitti_infos_{split}.pkl'), path)
    return path


def _write_infos(out_dir: str, splits: Dict[str, List[int]]) -> Dict[str, str]:
    """Create ``kitti_infos_<split>.pkl`` (mmdet3d v2 format) for each split.

    Follows ``tools/create_data.py kitti`` step by step: v1 infos from the
    raw files (``get_kitti_image_info``), points-in-box counts
    (``_calculate_num_points_in_gt``, which also drops points outside the
    image as the original does), then ``update_kitti_infos`` to v2.

    Returns:
        Mapping split -> absolute path of the written info file.
    """
    conv = _load_mmdet3d_converters()
    with tempfile.TemporaryDirectory() as stage:
        # update_kitti_infos sleeps 5 s whenever out_dir is a substring of
        # the input path (an overwrite warning), so v1 and v2 are staged in
        # sibling folders and moved into place afterwards.
        v1_dir, v2_dir = osp.join(stage, 'v1'), osp.join(stage, 'v2')
        os.makedirs(v1_dir)
        os.makedirs(v2_dir)
        return {split: _write_split_infos(conv, out_dir, split, ids, v1_dir, v2_dir)
                for split, ids in splits.items()}


def _make_layout(out_dir: str, splits: Dict[str, List[int]]) -> str:
    """Create the KITTI folders and ``ImageSets/<split>.txt`` (with an
    empty test list); return the ``training`` folder."""
    root = osp.join(out_dir, 'training')
    for sub in ('velodyne', 'label_2', 'calib', 'image_2'):
        os.makedirs(osp.join(root, sub), exist_ok=True)
    os.makedirs(osp.join(out_dir, 'ImageSets'), exist_ok=True)
    # No testing/ folder is generated; an empty test list keeps the
    # ImageSets layout create_data.py expects.
    for split, ids in {**splits, 'test': []}.items():
        with open(osp.join(out_dir, 'ImageSets', f'{split}.txt'), 'w') as f:
            f.write(''.join(f'{i:06d}\n' for i in ids))
    return root


def generate(out_dir: str, num_train: int, num_val: int, seed: int = 0,
             point_cloud_range: Sequence[float] = DEFAULT_POINT_CLOUD_RANGE
             ) -> Dict[str, str]:
    """Generate a KITTI-format dataset of synthetic LiDAR scenes.

    Frame ids are ``0 .. num_train-1`` (train) and then ``num_val`` val ids;
    each frame depends only on ``(seed, frame_id)``, see :func:`make_scene`.

    Args:
        out_dir: dataset root (created if missing).
        num_train: number of training frames (>= 1).
        num_val: number of validation frames (>= 1).
        seed: dataset seed.
        point_cloud_range: ``[x0, y0, z0, x1, y1, z1]`` in metres that the
            labelled objects are kept inside.

    Returns:
        Dict with ``root``, ``train_info``, ``val_info``, ``imagesets``
        (absolute paths).
    """
    if num_train < 1 or num_val < 1:
        # mmdet3d 1.4's update_kitti_infos raises UnboundLocalError on an
        # empty split (ignore_class_name is only bound inside its loop).
        raise ValueError('num_train and num_val must both be >= 1')
    out_dir = osp.abspath(out_dir)
    splits = {'train': list(range(num_train)),
              'val': list(range(num_train, num_train + num_val))}
    root = _make_layout(out_dir, splits)
    png, calib = _png_bytes(IMG_W, IMG_H), _calib_text()
    for frame_id in splits['train'] + splits['val']:
        scene = make_scene(seed, frame_id, point_cloud_range)
        _write_frame(root, frame_id, scene, png, calib)
    infos = _write_infos(out_dir, splits)
    return dict(root=out_dir, train_info=infos['train'], val_info=infos['val'],
                imagesets=osp.join(out_dir, 'ImageSets'))


def main(argv: Sequence[str] = None) -> None:
    """CLI entry point; see the module docstring."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--out', default='data/kitti_gen')
    parser.add_argument('--num-train', type=int, default=200)
    parser.add_argument('--num-val', type=int, default=50)
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--point-cloud-range', type=float, nargs=6,
                        default=DEFAULT_POINT_CLOUD_RANGE)
    args = parser.parse_args(argv)
    t0 = time.perf_counter()
    paths = generate(args.out, args.num_train, args.num_val, args.seed,
                     args.point_cloud_range)
    n = args.num_train + args.num_val
    dt = time.perf_counter() - t0
    print(f'wrote {n} frames in {dt:.1f} s ({dt / max(n, 1):.3f} s/frame)')
    for key, path in paths.items():
        print(f'{key}: {path}')


if __name__ == '__main__':
    main()

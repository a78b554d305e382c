"""Tests for ebm_det.synthetic.coco_shapes: COCO validity, labelling rules, determinism and
loading through mmdet's CocoDataset. CPU only, a few seconds."""
import json
from pathlib import Path
from typing import Dict

import numpy as np
import pytest

from ebm_det.synthetic import coco_shapes as gen

SIZE = 128


def _read_split(json_path: str) -> Dict[str, bytes]:
    """Return {relative path: bytes} of the json and every image of its split."""
    json_path = Path(json_path)
    data = json.loads(json_path.read_text())
    split_dir = json_path.parents[1] / json_path.stem.replace('instances_', '')
    files = {'ann': json_path.read_bytes()}
    for image in data['images']:
        files[image['file_name']] = (split_dir / image['file_name']).read_bytes()
    return files


@pytest.fixture(scope='module')
def small_set(tmp_path_factory: pytest.TempPathFactory) -> str:
    """10 images of 128 px, seed 0, split 'train'; returns the annotation json path."""
    return gen.generate(tmp_path_factory.mktemp('shapes'), 10, 'train', size=SIZE, seed=0,
                        log_every=0)


def test_coco_structure_and_boxes(small_set: str) -> None:
    coco_api = pytest.importorskip('pycocotools.coco')
    cv2 = pytest.importorskip('cv2')
    coco = coco_api.COCO(small_set)
    assert len(coco.getImgIds()) == 10
    assert [c['name'] for c in coco.loadCats(coco.getCatIds())] == list(gen.SHAPE_CLASSES)
    split_dir = Path(small_set).parents[1] / 'train'
    for image_id in coco.getImgIds():
        info = coco.loadImgs(image_id)[0]
        assert (info['width'], info['height']) == (SIZE, SIZE)
        assert cv2.imread(str(split_dir / info['file_name'])).shape == (SIZE, SIZE, 3)
        anns = coco.loadAnns(coco.getAnnIds(imgIds=image_id))
        assert len(anns) >= 1
        for ann in anns:
            x, y, w, h = ann['bbox']
            assert all(isinstance(v, int) for v in ann['bbox'])
            assert x >= 0 and y >= 0 and x + w <= SIZE and y + h <= SIZE
            assert w >= 1 and h >= 1 and (w >= 2 or h >= 2)
            # area is the mask pixel count, so it fits inside its box
            assert 0 < ann['area'] <= w * h
            assert ann['iscrowd'] == 0 and ann['category_id'] in coco.getCatIds()
            assert ann['visible_fraction'] >= 0.3


def test_all_categories_used_across_sample(tmp_path: Path) -> None:
    json_path = gen.generate(tmp_path, 30, 'val', size=96, seed=3, log_every=0)
    data = json.loads(Path(json_path).read_text())
    used = {ann['category_id'] for ann in data['annotations']}
    assert used == {c['id'] for c in data['categories']}
    # several objects per image on average, not one
    assert len(data['annotations']) >= 2 * len(data['images'])


def test_box_is_tight_box_of_full_mask_and_occluded_objects_are_dropped() -> None:
    rng = np.random.default_rng(7)
    for _ in range(5):
        image, instances = gen.render_scene(rng, SIZE, gen.SHAPE_CLASSES)
        assert image.shape == (SIZE, SIZE, 3) and image.dtype == np.uint8
        covered = np.zeros((SIZE, SIZE), bool)
        for inst in reversed(instances):
            ys, xs = np.nonzero(inst.mask)
            x, y, w, h = inst.bbox_xywh
            assert (x, y, x + w, y + h) == (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
            # the box covers the full mask, occluded part included
            visible = (inst.mask & ~covered).sum() / inst.mask.sum()
            assert visible == pytest.approx(inst.visible_fraction) and visible >= 0.3
            covered |= inst.mask


def test_classes_subset_and_validation(tmp_path: Path) -> None:
    json_path = gen.generate(tmp_path, 4, 'train', size=64, seed=0, classes=('ring', 'star'),
                             log_every=0)
    data = json.loads(Path(json_path).read_text())
    assert [(c['id'], c['name']) for c in data['categories']] == [(1, 'ring'), (2, 'star')]
    assert {a['category_id'] for a in data['annotations']} <= {1, 2}
    with pytest.raises(ValueError):
        gen.generate(tmp_path, 1, 'train', size=64, classes=('hexagon',))


def test_easy_difficulty_follows_its_preset(tmp_path: Path) -> None:
    """The demo's 'easy' set: 1-4 objects per image, at least 60% of each visible, sizes from its
    own range; an unknown difficulty is an error, not a silent default."""
    easy = gen.DIFFICULTIES['easy']
    data = json.loads(Path(gen.generate(tmp_path, 20, 'val', size=SIZE, seed=0, log_every=0,
                                        difficulty='easy')).read_text())
    per_image = np.bincount([a['image_id'] for a in data['annotations']], minlength=21)[1:]
    assert per_image.min() >= 1 and per_image.max() <= easy.objects_range[1]
    assert min(a['visible_fraction'] for a in data['annotations']) >= easy.min_visible_fraction
    low = easy.diameter_at_reference[0] * SIZE / gen.REFERENCE_SIZE
    # a shape's box side is at least ~0.3 of its bounding circle's diameter (the thinnest rectangle)
    assert min(max(a['bbox'][2:]) for a in data['annotations']) >= 0.3 * low
    assert 'difficulty=easy' in data['info']['description']
    # 'hard' (the default) is the benchmark's set: bit-identical to a call without the argument
    assert (_read_split(gen.generate(tmp_path / 'h', 2, 'train', size=SIZE, seed=0, log_every=0,
                                     difficulty='hard'))
            == _read_split(gen.generate(tmp_path / 'd', 2, 'train', size=SIZE, seed=0, log_every=0)))
    with pytest.raises(ValueError, match='difficulty'):
        gen.generate(tmp_path, 1, 'train', size=64, difficulty='medium')


def test_same_seed_identical_different_seed_different(tmp_path: Path) -> None:
    first = _read_split(gen.generate(tmp_path / 'a', 4, 'train', size=SIZE, seed=0, log_every=0))
    again = _read_split(gen.generate(tmp_path / 'b', 4, 'train', size=SIZE, seed=0, log_every=0))
    other = _read_split(gen.generate(tmp_path / 'c', 4, 'train', size=SIZE, seed=1, log_every=0))
    assert first == again
    assert first['ann'] != other['ann']
    assert all(first[name] != other[name] for name in first if name != 'ann')
    # the split name enters the seed too
    val = _read_split(gen.generate(tmp_path / 'a', 4, 'val', size=SIZE, seed=0, log_every=0))
    assert val['000001.png'] != first['000001.png']


def test_loads_through_mmdet_coco_dataset(small_set: str) -> None:
    datasets = pytest.importorskip('mmdet.datasets')
    root = Path(small_set).parents[1]
    dataset = datasets.CocoDataset(
        data_root=str(root), ann_file='annotations/instances_train.json',
        data_prefix=dict(img='train/'), metainfo=dict(classes=gen.SHAPE_CLASSES), pipeline=[])
    coco = json.loads(Path(small_set).read_text())
    assert len(dataset) == len(coco['images'])
    num_instances = sum(len(dataset[i]['instances']) for i in range(len(dataset)))
    assert num_instances == len(coco['annotations'])
    first = dataset[0]
    assert Path(first['img_path']) == root / 'train' / '000001.png'
    ann = next(a for a in coco['annotations'] if a['image_id'] == first['img_id'])
    x, y, w, h = ann['bbox']
    # mmdet turns COCO xywh into (x1, y1, x2, y2) with exclusive x2, y2
    assert first['instances'][0]['bbox'] == [x, y, x + w, y + h]
    assert first['instances'][0]['bbox_label'] == ann['category_id'] - 1

from __future__ import annotations

import itertools

import numpy as np

from vlm_core.datasets import SCENE_CLASSES, SceneConfig, SceneGenerator, SceneVideo


def test_scenes_are_deterministic() -> None:
    a, b = SceneGenerator(seed=4), SceneGenerator(seed=4)
    for i in (0, 17):
        sa, sb = a.scene(i), b.scene(i)
        assert np.array_equal(sa.image, sb.image)
        assert np.array_equal(sa.boxes, sb.boxes)
    assert not np.array_equal(a.scene(0).image, SceneGenerator(seed=5).scene(0).image)


def test_boxes_masks_and_labels_agree() -> None:
    gen = SceneGenerator(SceneConfig(width=200, height=150, min_items=2, max_items=4), seed=1)
    for i in range(20):
        s = gen.scene(i)
        assert s.image.shape == (150, 200, 3)
        assert s.instance_masks is not None and len(s.instance_masks) == len(s.boxes) == len(s.box_labels) >= 1
        for box, label, inst in zip(s.boxes, s.box_labels, s.instance_masks, strict=True):
            ys, xs = np.nonzero(inst)
            # Exact: the box is the tight bound of the item's pixels.
            assert [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1] == box.tolist()
            assert s.mask is not None and (s.mask[inst] == label + 1).all()
            assert 0 <= label < len(SCENE_CLASSES)
        assert s.mask is not None and (s.mask > 0).sum() == sum(int(m.sum()) for m in s.instance_masks)


def test_scene_items_are_real_fashion_mnist() -> None:
    gen = SceneGenerator(seed=2)
    labels = np.concatenate([gen.scene(i).box_labels for i in range(60)])
    assert len(set(labels.tolist())) >= 8  # many of the 10 real classes appear


def test_video_items_move_and_stay_inside() -> None:
    video = SceneVideo(SceneConfig(width=160, height=120, min_items=3, max_items=3, max_item_size=50), seed=9)
    frames = [video.next() for _ in range(60)]
    first, last = frames[0], frames[-1]
    assert len(first.boxes) == 3
    assert not np.array_equal(first.boxes, last.boxes)
    for f in frames:
        assert (f.boxes[:, [0, 1]] >= 0).all() and (f.boxes[:, 2] <= 160).all() and (f.boxes[:, 3] <= 120).all()
    again = SceneVideo(SceneConfig(width=160, height=120, min_items=3, max_items=3, max_item_size=50), seed=9)
    assert np.array_equal(again.next().image, first.image)


def test_video_ground_truth_follows_identities_out_of_the_frame_and_back() -> None:
    from vlm_core.datasets.scenes import SceneMotion

    motion = SceneMotion(bounce=False, crossings=True, maneuvers=True, line_x=0.5, min_speed=2.0)
    video = SceneVideo(SceneConfig(min_items=4, max_items=4, max_item_size=70), seed=3, motion=motion)
    seen: dict[int, list[int]] = {}
    occluded = False
    for t in range(300):
        sample = video.next()
        assert len(video.truth) == len(sample.boxes)
        for item in video.truth:
            seen.setdefault(item.item_id, []).append(t)
            x1, y1, x2, y2 = item.box
            assert 0 <= x1 < x2 <= 320 and 0 <= y1 < y2 <= 240 and 0 <= item.visibility <= 1
            occluded |= 0.05 < item.visibility < 0.9 and x1 > 10 and x2 < 310
    assert set(seen) == {1, 2, 3, 4}
    gaps = [b - a for frames in seen.values() for a, b in itertools.pairwise(frames) if b - a > 1]
    assert gaps, "some item left the frame and came back"
    assert occluded, "some item was partly hidden by another"
    assert sum(video.line_crossings.values()) >= 4
    again = SceneVideo(SceneConfig(min_items=4, max_items=4, max_item_size=70), seed=3, motion=motion)
    for _ in range(300):
        again.next()
    assert again.truth == video.truth and again.line_crossings == video.line_crossings


def test_a_drifting_video_changes_style_at_its_frame_and_keeps_its_items() -> None:
    from vlm_core.datasets.scenes import SceneStyle

    config = SceneConfig(min_items=3, max_items=3)
    plain = SceneVideo(config, seed=5)
    for style in (SceneStyle.SMALL, SceneStyle.NEGATIVE, SceneStyle.CLUTTER):
        video = SceneVideo(config, seed=5, drift=style, drift_after=4)
        reference = SceneVideo(config, seed=5)
        for t in range(6):
            frame, same = video.next(), reference.next()
            assert video.frame_style is (SceneStyle.BASE if t < 4 else style)
            assert np.array_equal(frame.image, same.image) == (t < 4)
            assert sorted(frame.box_labels.tolist()) == sorted(same.box_labels.tolist())  # the same items
        if style is SceneStyle.SMALL:
            areas = (frame.boxes[:, 2] - frame.boxes[:, 0]) * (frame.boxes[:, 3] - frame.boxes[:, 1])
            plain_boxes = same.boxes
            plain_areas = (plain_boxes[:, 2] - plain_boxes[:, 0]) * (plain_boxes[:, 3] - plain_boxes[:, 1])
            assert areas.sum() < 0.3 * plain_areas.sum()
    assert plain.frame_style is SceneStyle.BASE


def test_a_scene_style_applies_to_generated_scenes() -> None:
    from vlm_core.datasets.scenes import SceneStyle

    base = SceneGenerator(SceneConfig(), seed=3).scene(0)
    negative = SceneGenerator(SceneConfig(style=SceneStyle.NEGATIVE), seed=3).scene(0)
    assert np.array_equal(base.boxes, negative.boxes) and not np.array_equal(base.image, negative.image)
    small = SceneGenerator(SceneConfig(style=SceneStyle.SMALL), seed=3)
    sides = np.concatenate(
        [np.maximum(*(lambda b: (b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]))(small.scene(i).boxes)) for i in range(10)]
    )
    assert sides.max() <= round(SceneConfig.max_item_size * 0.4)


def test_turnover_brings_in_new_items() -> None:
    from vlm_core.datasets.scenes import SceneMotion

    video = SceneVideo(SceneConfig(min_items=3, max_items=3), seed=1, motion=SceneMotion(turnover=5))
    ids = set()
    for _ in range(31):
        video.next()
        ids.update(t.item_id for t in video.truth)
    assert len(video.items) == 3 and len(ids) >= 8  # 3 at first, one more every 5 frames

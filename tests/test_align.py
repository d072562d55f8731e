"""Tests for speechbrain_xmkd.teachers.align (5-point ArcFace alignment)."""

import cv2
import numpy as np
import pytest

from speechbrain_xmkd.teachers.align import (
    ARCFACE_TEMPLATE_112,
    FaceAligner,
    align_face,
    arcface_template,
    center_crop_face,
    read_middle_frame,
    similarity_transform,
)
from speechbrain_xmkd.teachers import align as align_module


def _similarity(scale, angle_deg, tx, ty):
    a = np.deg2rad(angle_deg)
    rot = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    return np.hstack([scale * rot, [[tx], [ty]]])


def _apply(matrix, points):
    return points @ matrix[:, :2].T + matrix[:, 2]


def _lstsq_similarity(src, dst):
    """Independent reference: a no-reflection similarity is linear in
    (a, b, tx, ty): x' = a x - b y + tx, y' = b x + a y + ty."""
    rows, rhs = [], []
    for (x, y), (u, v) in zip(src, dst):
        rows += [[x, -y, 1, 0], [y, x, 0, 1]]
        rhs += [u, v]
    a, b, tx, ty = np.linalg.lstsq(np.array(rows), np.array(rhs), rcond=None)[0]
    return np.array([[a, -b, tx], [b, a, ty]])


def test_template_values_and_scaling():
    assert ARCFACE_TEMPLATE_112.shape == (5, 2)
    np.testing.assert_allclose(ARCFACE_TEMPLATE_112[1], [73.5318, 51.5014])
    np.testing.assert_allclose(ARCFACE_TEMPLATE_112[4], [70.7299, 92.2041])
    np.testing.assert_allclose(arcface_template(224), 2 * ARCFACE_TEMPLATE_112)
    np.testing.assert_allclose(arcface_template(112), ARCFACE_TEMPLATE_112)


def test_recovers_random_similarities_exactly():
    rng = np.random.default_rng(0)
    for _ in range(50):
        forward = _similarity(
            rng.uniform(0.3, 5),
            rng.uniform(-180, 180),
            *rng.uniform(-300, 300, 2)
        )
        src = _apply(forward, ARCFACE_TEMPLATE_112)
        matrix = similarity_transform(src, ARCFACE_TEMPLATE_112)
        assert matrix.shape == (2, 3)
        err = np.linalg.norm(_apply(matrix, src) - ARCFACE_TEMPLATE_112, axis=1)
        assert err.max() < 1.0
        assert err.max() < 1e-8  # noiseless: exact up to float error


def test_noisy_points_give_the_least_squares_optimum():
    rng = np.random.default_rng(1)
    for _ in range(20):
        forward = _similarity(rng.uniform(1, 3), rng.uniform(-40, 40), 150, 90)
        src = _apply(forward, ARCFACE_TEMPLATE_112) + rng.normal(0, 2.0, (5, 2))
        ours = similarity_transform(src, ARCFACE_TEMPLATE_112)
        # Exact linear least-squares reference.
        np.testing.assert_allclose(
            ours, _lstsq_similarity(src, ARCFACE_TEMPLATE_112), atol=1e-9
        )
        # OpenCV's estimator, with every point an inlier and LM refinement.
        cv_matrix, inliers = cv2.estimateAffinePartial2D(
            src.astype(np.float32),
            ARCFACE_TEMPLATE_112.astype(np.float32),
            method=cv2.RANSAC,
            ransacReprojThreshold=1e4,
            refineIters=100,
        )
        assert inliers.all()

        def sse(m):
            return ((_apply(m, src) - ARCFACE_TEMPLATE_112) ** 2).sum()

        assert sse(ours) <= sse(cv_matrix) + 1e-4
        np.testing.assert_allclose(ours, cv_matrix, rtol=1e-3, atol=1e-2)


def test_mirrored_points_still_give_a_rotation():
    mirrored = ARCFACE_TEMPLATE_112 * [-1, 1] + [200, 0]
    matrix = similarity_transform(mirrored, ARCFACE_TEMPLATE_112)
    assert np.linalg.det(matrix[:, :2]) > 0
    np.testing.assert_allclose(
        matrix, _lstsq_similarity(mirrored, ARCFACE_TEMPLATE_112), atol=1e-9
    )


def test_similarity_transform_rejects_bad_input():
    with pytest.raises(ValueError, match=r"\[N, 2\]"):
        similarity_transform(np.zeros((5, 3)), np.zeros((5, 3)))
    with pytest.raises(ValueError, match="same point"):
        similarity_transform(np.ones((5, 2)), ARCFACE_TEMPLATE_112)


def _blobs(shape, centres, sigma):
    """Gaussian dots at sub-pixel centres (pixel i sits at coordinate i)."""
    yy, xx = np.mgrid[: shape[0], : shape[1]].astype(np.float64)
    canvas = np.zeros(shape[:2])
    for cx, cy in centres:
        canvas += np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * sigma**2))
    gray = np.clip(255 * canvas, 0, 255).astype(np.uint8)
    return np.repeat(gray[:, :, None], 3, axis=2)


def _centroid(gray, x, y, radius=6):
    x0, y0 = int(round(x)), int(round(y))
    win = gray[y0 - radius : y0 + radius + 1, x0 - radius : x0 + radius + 1]
    win = win.astype(np.float64)
    yy, xx = np.mgrid[
        y0 - radius : y0 + radius + 1, x0 - radius : x0 + radius + 1
    ]
    return (win * xx).sum() / win.sum(), (win * yy).sum() / win.sum()


@pytest.mark.parametrize("size", [112, 224])
def test_warp_puts_dots_on_the_template(size):
    forward = _similarity(2.4, 23.0, 110.0, 40.0)
    dots = _apply(forward, ARCFACE_TEMPLATE_112)
    image = _blobs((420, 480, 3), dots, sigma=3.0)
    aligned = align_face(image, dots, size=size)
    assert aligned.shape == (size, size, 3) and aligned.dtype == np.uint8
    for tx, ty in arcface_template(size):
        cx, cy = _centroid(aligned[:, :, 0], tx, ty)
        assert np.hypot(cx - tx, cy - ty) < 1.0


def test_align_face_validates_its_inputs():
    image = np.zeros((64, 64, 3), np.uint8)
    with pytest.raises(ValueError, match="uint8 RGB image"):
        align_face(image.astype(np.float32), ARCFACE_TEMPLATE_112)
    with pytest.raises(ValueError, match=r"\[5, 2\]"):
        align_face(image, np.zeros((4, 2)))


def test_center_crop_keeps_the_middle_square():
    image = np.zeros((100, 200, 3), np.uint8)
    image[:, :50] = [255, 0, 0]
    image[:, 50:150] = [0, 255, 0]
    image[:, 150:] = [0, 0, 255]
    crop = center_crop_face(image, 112)
    assert crop.shape == (112, 112, 3) and crop.dtype == np.uint8
    assert (crop == [0, 255, 0]).all()
    assert center_crop_face(np.zeros((300, 40, 3), np.uint8), 64).shape == (
        64,
        64,
        3,
    )


def _write_video(path, levels, size=(64, 48)):
    writer = cv2.VideoWriter(
        str(path), cv2.VideoWriter_fourcc(*"mp4v"), 10.0, size
    )
    if not writer.isOpened():
        pytest.skip("this OpenCV build cannot write mp4 (fourcc 'mp4v')")
    for level in levels:
        frame = np.zeros((size[1], size[0], 3), np.uint8)
        frame[:, :] = [200, 0, level]  # BGR: red channel carries the index
        writer.write(frame)
    writer.release()


def test_read_middle_frame_of_an_mp4(tmp_path):
    levels = [10 + 25 * i for i in range(9)]  # middle = index 4 -> 110
    path = tmp_path / "clip.mp4"
    _write_video(path, levels)
    frame = read_middle_frame(path)
    assert frame.shape == (48, 64, 3) and frame.dtype == np.uint8
    red, blue = frame[..., 0].mean(), frame[..., 2].mean()
    assert abs(red - levels[4]) < 8, red  # RGB order, and the middle frame
    assert abs(blue - 200) < 8, blue
    # The decode-and-count fallback finds the same frame.
    slow = align_module._middle_frame_by_decoding(str(path))
    np.testing.assert_array_equal(cv2.cvtColor(slow, cv2.COLOR_BGR2RGB), frame)


def test_unreadable_video_names_the_file(tmp_path):
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"this is not a video" * 10)
    with pytest.raises(ValueError, match="broken.mp4"):
        read_middle_frame(broken)
    with pytest.raises(FileNotFoundError, match="missing.mp4"):
        read_middle_frame(tmp_path / "missing.mp4")


@pytest.fixture(scope="module")
def aligner():
    return FaceAligner(device="cpu")


def test_mtcnn_blank_image_falls_back_to_centre_crop(aligner):
    blank = np.full((160, 240, 3), 127, np.uint8)
    face, found, landmarks = aligner(blank)
    assert found is False and landmarks is None
    np.testing.assert_array_equal(face, center_crop_face(blank, 112))
    # Mixed sizes (two MTCNN batches) and a frame smaller than min_face_size.
    out = aligner.align_batch(
        [blank, np.zeros((100, 100, 3), np.uint8), blank[:10, :10]]
    )
    assert [o[1] for o in out] == [False, False, False]
    assert all(o[0].shape == (112, 112, 3) for o in out)


def test_found_face_is_aligned_with_its_landmarks(aligner, monkeypatch):
    """MTCNN output format (object arrays, batch axis, largest face first)
    is mimicked, since no face photo is available offline."""
    forward = _similarity(1.8, -12.0, 60.0, 30.0)
    dots = _apply(forward, ARCFACE_TEMPLATE_112)
    image = _blobs((300, 320, 3), dots, sigma=2.5)
    blank = np.zeros_like(image)

    def fake_detect(stack, landmarks=False):
        assert stack.ndim == 4 and landmarks
        points = [np.stack([dots, dots * 0.5]), None]  # two faces, none
        boxes = np.array([np.zeros((2, 4)), None], dtype=object)
        probs = np.array([np.ones(2), [None]], dtype=object)
        return boxes, probs, np.array(points, dtype=object)

    monkeypatch.setattr(aligner.mtcnn, "detect", fake_detect)
    (face, found, points), (_, found_blank, none) = aligner.align_batch(
        [image, blank]
    )
    assert found is True and found_blank is False and none is None
    assert points.dtype == np.float64 and points.shape == (5, 2)
    np.testing.assert_allclose(points, dots)
    np.testing.assert_array_equal(face, align_face(image, dots))

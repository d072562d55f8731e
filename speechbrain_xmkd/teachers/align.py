"""Five-point face alignment to the ArcFace template (VoxCeleb2 face prep).

Face teachers trained on MS-Celeb / VGGFace2 crops (face.evoLVe IR-50,
insightface) expect a 112x112 RGB face whose eyes, nose tip and mouth
corners sit on fixed template points. The prep takes the middle frame of
each video (:func:`read_middle_frame`), finds the five landmarks with
facenet-pytorch's MTCNN (:class:`FaceAligner`), and warps the frame with the
least-squares similarity transform onto the template (:func:`align_face`).
When no face is found the central square of the frame is used instead
(:func:`center_crop_face`) and the caller counts it.

Authors
 * speechbrain-xmkd contributors
"""

import os

import cv2
import numpy as np

# (x, y) for a 112x112 crop, image-left first: left eye, right eye, nose tip,
# left mouth corner, right mouth corner. This is face.evoLVe's
# REFERENCE_FACIAL_POINTS (96x112) shifted 8 px right to be square, which is
# also insightface's ``arcface_src``.
ARCFACE_TEMPLATE_112 = np.array(
    [
        [38.2946, 51.6963],
        [73.5318, 51.5014],
        [56.0252, 71.7366],
        [41.5493, 92.3655],
        [70.7299, 92.2041],
    ],
    dtype=np.float64,
)


def arcface_template(size=112):
    """The five template points for a ``size`` x ``size`` crop.

    Arguments
    ---------
    size : int
        Side of the square output in pixels.

    Returns
    -------
    numpy.ndarray
        ``[5, 2]`` float64 (x, y) points, ``ARCFACE_TEMPLATE_112 * size/112``.

    Example
    -------
    >>> arcface_template(224)[0]
    array([ 76.5892, 103.3926])
    """
    return ARCFACE_TEMPLATE_112 * (float(size) / 112.0)


def similarity_transform(src_points, dst_points):
    """Least-squares similarity transform mapping ``src`` onto ``dst``.

    Rotation, uniform scale and translation, never a reflection (Umeyama,
    1991): it minimises ``sum_i ||s R src_i + t - dst_i||^2`` over proper
    rotations ``R``, scales ``s > 0`` and translations ``t``.

    Arguments
    ---------
    src_points : array-like
        ``[N, 2]`` source points (x, y), N >= 2, not all equal.
    dst_points : array-like
        ``[N, 2]`` destination points.

    Returns
    -------
    numpy.ndarray
        ``[2, 3]`` float64 matrix ``[s R | t]`` for ``cv2.warpAffine``.

    Example
    -------
    >>> src = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    >>> dst = 2 * src[:, ::-1] * [1, -1] + [5, 5]  # rotate -90 deg, scale 2
    >>> np.round(similarity_transform(src, dst), 6) + 0.0
    array([[ 0.,  2.,  5.],
           [-2.,  0.,  5.]])
    """
    src = np.asarray(src_points, dtype=np.float64)
    dst = np.asarray(dst_points, dtype=np.float64)
    if src.ndim != 2 or src.shape[1] != 2 or src.shape != dst.shape:
        raise ValueError(
            "src_points and dst_points must both have shape [N, 2], got "
            f"{src.shape} and {dst.shape}"
        )
    if len(src) < 2:
        raise ValueError(f"need at least 2 point pairs, got {len(src)}")
    src_mean, dst_mean = src.mean(axis=0), dst.mean(axis=0)
    src_c, dst_c = src - src_mean, dst - dst_mean
    src_var = (src_c**2).sum() / len(src)
    if src_var <= 1e-12:
        raise ValueError("src_points are all the same point: no transform")
    covariance = dst_c.T @ src_c / len(src)
    U, S, Vt = np.linalg.svd(covariance)
    # Flip the weakest axis when the best orthogonal map is a reflection,
    # which gives the best proper rotation instead.
    sign = np.ones(2)
    if np.linalg.det(U) * np.linalg.det(Vt) < 0:
        sign[-1] = -1.0
    rotation = U @ np.diag(sign) @ Vt
    scale = (S * sign).sum() / src_var
    translation = dst_mean - scale * rotation @ src_mean
    return np.hstack([scale * rotation, translation[:, None]])


def align_face(image_rgb_uint8, landmarks_5x2, size=112):
    """Warps a face so its five landmarks land on the ArcFace template.

    Arguments
    ---------
    image_rgb_uint8 : numpy.ndarray
        ``[H, W, 3]`` uint8 RGB image.
    landmarks_5x2 : array-like
        ``[5, 2]`` (x, y) landmarks in image pixels, in template order
        (left eye, right eye, nose, left mouth, right mouth), as MTCNN
        returns them.
    size : int
        Side of the square output.

    Returns
    -------
    numpy.ndarray
        ``[size, size, 3]`` uint8 RGB aligned face (black outside the
        source image).

    Example
    -------
    >>> image = np.zeros((200, 300, 3), dtype=np.uint8)
    >>> points = ARCFACE_TEMPLATE_112 * 1.5 + [80, 20]
    >>> align_face(image, points).shape
    (112, 112, 3)
    """
    _check_image(image_rgb_uint8)
    points = np.asarray(landmarks_5x2, dtype=np.float64)
    if points.shape != (5, 2) or not np.isfinite(points).all():
        raise ValueError(
            f"landmarks must be a finite [5, 2] array, got shape {points.shape}"
        )
    matrix = similarity_transform(points, arcface_template(size))
    return cv2.warpAffine(
        image_rgb_uint8,
        matrix,
        (int(size), int(size)),
        flags=cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_CONSTANT,
        borderValue=0,
    )


def center_crop_face(image, size=112):
    """Central square crop resized to ``size``: the no-face fallback.

    Arguments
    ---------
    image : numpy.ndarray
        ``[H, W, 3]`` uint8 RGB image.
    size : int
        Side of the square output.

    Returns
    -------
    numpy.ndarray
        ``[size, size, 3]`` uint8 RGB crop.

    Example
    -------
    >>> center_crop_face(np.zeros((90, 160, 3), dtype=np.uint8), 112).shape
    (112, 112, 3)
    """
    _check_image(image)
    height, width = image.shape[:2]
    side = min(height, width)
    top, left = (height - side) // 2, (width - side) // 2
    crop = image[top : top + side, left : left + side]
    # INTER_AREA avoids aliasing when shrinking; it is blurry when growing.
    interpolation = cv2.INTER_AREA if side >= size else cv2.INTER_LINEAR
    return cv2.resize(crop, (int(size), int(size)), interpolation=interpolation)


def read_middle_frame(video_path):
    """Decodes the middle frame of a video as RGB.

    Arguments
    ---------
    video_path : str or os.PathLike
        Any container/codec OpenCV's FFmpeg backend reads (VoxCeleb2 mp4).

    Returns
    -------
    numpy.ndarray
        ``[H, W, 3]`` uint8 RGB frame number ``n_frames // 2``.

    Raises
    ------
    FileNotFoundError
        If the file does not exist.
    ValueError
        If OpenCV cannot open it or it has no decodable frame.

    Example
    -------
    >>> read_middle_frame("no/such/video.mp4")
    Traceback (most recent call last):
    ...
    FileNotFoundError: video 'no/such/video.mp4' does not exist
    """
    path = os.fspath(video_path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"video '{path}' does not exist")
    capture = cv2.VideoCapture(path)
    try:
        if not capture.isOpened():
            raise ValueError(f"video '{path}' could not be opened by OpenCV")
        count = int(capture.get(cv2.CAP_PROP_FRAME_COUNT))
        frame = None
        if count > 0:
            capture.set(cv2.CAP_PROP_POS_FRAMES, count // 2)
            ok, frame = capture.read()
            frame = frame if ok else None
        if frame is None:
            # The header's frame count is an estimate (0, or past the real
            # end, for some containers): decode and count instead.
            frame = _middle_frame_by_decoding(path)
    finally:
        capture.release()
    if frame is None:
        raise ValueError(f"video '{path}' has no decodable frames")
    return cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)


def _middle_frame_by_decoding(path):
    """Two sequential passes: count frames, then stop at the middle one."""
    capture = cv2.VideoCapture(path)
    count = 0
    while capture.grab():
        count += 1
    capture.release()
    if count == 0:
        return None
    capture = cv2.VideoCapture(path)
    try:
        for _ in range(count // 2 + 1):
            ok, frame = capture.read()
            if not ok:
                return None
        return frame
    finally:
        capture.release()


class FaceAligner:
    """MTCNN landmarks + similarity warp, with a centre-crop fallback.

    Wraps facenet-pytorch's ``MTCNN`` (its P/R/O-Net weights ship in the
    wheel, nothing is downloaded) and keeps one face per image: the largest
    (``select_largest=True``) or the most probable one.

    Arguments
    ---------
    device : str or torch.device
        Where MTCNN runs.
    min_face_size : int
        Smallest face side, in pixels, that MTCNN searches for.
    thresholds : sequence of float
        P-Net, R-Net and O-Net score thresholds.
    select_largest : bool
        Keep the largest face (True) or the most probable (False).
    size : int
        Side of the aligned output.
    factor : float
        Image pyramid scale step of MTCNN.

    Example
    -------
    >>> aligner = FaceAligner()
    >>> face, found, landmarks = aligner(np.full((160, 160, 3), 128, np.uint8))
    >>> face.shape, found, landmarks
    ((112, 112, 3), False, None)
    """

    def __init__(
        self,
        device="cpu",
        min_face_size=20,
        thresholds=(0.6, 0.7, 0.7),
        select_largest=True,
        size=112,
        factor=0.709,
    ):
        from facenet_pytorch import MTCNN

        self.size = int(size)
        self.min_face_size = int(min_face_size)
        # post_process only affects MTCNN's own cropped tensors, which are
        # not used: we only call detect().
        self.mtcnn = MTCNN(
            min_face_size=self.min_face_size,
            thresholds=list(thresholds),
            factor=factor,
            select_largest=select_largest,
            keep_all=False,
            post_process=False,
            device=device,
        )

    def landmarks(self, images):
        """Five landmarks of the kept face of each image, or None.

        Arguments
        ---------
        images : list of numpy.ndarray
            ``[H, W, 3]`` uint8 RGB images. Images sharing one shape are
            detected in one MTCNN batch.

        Returns
        -------
        list
            Per image, a ``[5, 2]`` float64 array or None (no face).
        """
        for image in images:
            _check_image(image)
        result = [None] * len(images)
        by_shape = {}
        for i, image in enumerate(images):
            # The pyramid is empty for images below min_face_size, and MTCNN
            # fails on an empty pyramid instead of finding nothing.
            if min(image.shape[:2]) >= self.min_face_size:
                by_shape.setdefault(image.shape, []).append(i)
        for indices in by_shape.values():
            stack = np.stack([images[i] for i in indices])
            _, _, points = self.mtcnn.detect(stack, landmarks=True)
            for i, point in zip(indices, points):
                if point is not None:
                    # detect() returns object-dtype arrays; faces are sorted
                    # so that the one to keep comes first.
                    result[i] = np.asarray(point, dtype=np.float64).reshape(
                        -1, 5, 2
                    )[0]
        return result

    def align_batch(self, images):
        """Aligns a list of frames.

        Arguments
        ---------
        images : list of numpy.ndarray
            ``[H, W, 3]`` uint8 RGB frames.

        Returns
        -------
        list of tuple
            ``(aligned_face, found, landmarks)`` per frame: the aligned
            ``[size, size, 3]`` uint8 face, whether a face was found, and the
            ``[5, 2]`` landmarks (None with the centre-crop fallback).

        Example
        -------
        >>> aligner = FaceAligner()
        >>> blank = np.zeros((120, 160, 3), dtype=np.uint8)
        >>> [found for _, found, _ in aligner.align_batch([blank, blank])]
        [False, False]
        """
        out = []
        for image, points in zip(images, self.landmarks(list(images))):
            if points is None:
                out.append((center_crop_face(image, self.size), False, None))
            else:
                out.append((align_face(image, points, self.size), True, points))
        return out

    def __call__(self, image):
        """Aligns one frame; see :meth:`align_batch`.

        Arguments
        ---------
        image : numpy.ndarray
            ``[H, W, 3]`` uint8 RGB frame.

        Returns
        -------
        tuple
            ``(aligned_face, found, landmarks or None)``.
        """
        return self.align_batch([image])[0]


def _check_image(image):
    """Raises unless ``image`` is an ``[H, W, 3]`` uint8 array."""
    if (
        not isinstance(image, np.ndarray)
        or image.dtype != np.uint8
        or image.ndim != 3
        or image.shape[2] != 3
    ):
        desc = (
            f"{image.dtype} array of shape {image.shape}"
            if isinstance(image, np.ndarray)
            else type(image).__name__
        )
        raise ValueError(f"expected an [H, W, 3] uint8 RGB image, got {desc}")

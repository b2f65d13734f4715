"""Face detection back ends on real photographs and hard inputs (emo_jax.faces.detect), and the
portrait preparation that uses them (emo_jax.pipeline.inputs)."""

import io

import cv2
import numpy as np
import pytest
from PIL import Image
from skimage import data

from emo_jax.errors import InputError
from emo_jax.faces import arcface, detect
from emo_jax.faces.track import box_iou
from emo_jax.pipeline.inputs import prepare_reference

needs_dlib = pytest.mark.skipif(
    not detect.dlib_available(), reason="pip install 'emo-jax[faces]' (dlib-bin, models)"
)
# The astronaut's mouth, marked by hand: corners, top of the upper lip, bottom of the lower lip.
MOUTH = {48: (202, 141), 54: (245, 141), 51: (224, 138), 57: (224, 155)}


@pytest.fixture(scope="module")
def astronaut() -> np.ndarray:
    return data.astronaut()


@pytest.fixture(scope="module")
def dlib_backend():
    if not detect.dlib_available():
        pytest.skip("pip install 'emo-jax[faces]' (dlib-bin, face_recognition_models)")
    return detect.make_detector("dlib")


@needs_dlib
def test_dlib_finds_the_face_and_the_mouth(dlib_backend, astronaut):
    (face,) = dlib_backend.detect(astronaut)
    assert face.landmarks.shape == (68, 2) and face.points5.shape == (5, 2) and face.score > 0
    for k, xy in MOUTH.items():
        assert np.abs(face.landmarks[k] - xy).max() <= 4, (k, face.landmarks[k])
    np.testing.assert_allclose(face.points5[3:], face.landmarks[[48, 54]])
    x0, y0, x1, y1 = face.box  # brows to chin, cheek to cheek
    assert x0 < 202 and x1 > 245 and y0 < face.landmarks[17:27, 1].min() and y1 >= 155


def test_haar_gives_scored_boxes(astronaut):
    haar = detect.make_detector("haar")
    (face,) = haar.detect(astronaut)
    assert face.landmarks is None and face.points5 is None and face.score > 0
    assert face.box[0] < 202 < 245 < face.box[2] and face.box[1] < 141 < face.box[3]
    assert detect.resolve("auto") == ("dlib" if detect.dlib_available() else "haar")
    with pytest.raises(ValueError, match="unknown face back end"):
        detect.resolve("mtcnn")


def _grey(rgb):
    return np.repeat(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)[..., None], 3, axis=2)


@needs_dlib
@pytest.mark.parametrize("variant", ["grey", "flip", "crop", "jpeg"])
def test_photo_variants_find_the_same_face(dlib_backend, astronaut, variant):
    box = dlib_backend(astronaut)
    if variant == "grey":
        image, expected = _grey(astronaut), box
    elif variant == "flip":
        image, expected = (
            astronaut[:, ::-1].copy(),
            np.array([512 - box[2], box[1], 512 - box[0], box[3]]),
        )
    elif variant == "crop":
        image, expected = astronaut[30:330, 100:400].copy(), box - [100, 30, 100, 30]
    else:
        buf = io.BytesIO()
        Image.fromarray(astronaut).save(buf, "JPEG", quality=30)
        image, expected = np.asarray(Image.open(buf)), box
    found = dlib_backend(image)
    assert found is not None and box_iou(found, expected) > 0.8


@needs_dlib
def test_exif_orientation_is_honoured(tmp_path, astronaut):
    path = tmp_path / "turned.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: the viewer turns the stored pixels 90 degrees clockwise
    Image.fromarray(np.rot90(astronaut).copy()).save(path, exif=exif)
    ref = prepare_reference(path, 64, detector="dlib")
    assert ref.face_box is not None and ref.crop[2] < 512


@needs_dlib
def test_small_face_in_a_large_image(dlib_backend, astronaut):
    canvas = np.full((1200, 1600, 3), 210, np.uint8)
    canvas[700:956, 1000:1256] = cv2.resize(astronaut[20:276, 100:356], (256, 256))
    (face,) = dlib_backend.detect(canvas)  # the face is about 1/13 of the image's short side
    assert 1000 < face.box[0] < face.box[2] < 1256 and 700 < face.box[1] < face.box[3] < 956


@needs_dlib
def test_two_faces_largest_first_with_a_notice(dlib_backend, astronaut):
    left = astronaut[:320, 60:380]
    right = cv2.resize(astronaut[:320, 60:380][:, ::-1], (240, 240))
    canvas = np.full((320, 640, 3), 200, np.uint8)
    canvas[:, :320], canvas[40:280, 380:620] = left, right
    faces = dlib_backend.detect(canvas)
    assert len(faces) == 2 and faces[0].area > faces[1].area and faces[0].box[0] < 320
    ref = prepare_reference(canvas, 64, detector="dlib")
    assert ref.notice is not None and "2 faces" in ref.notice and "--face" in ref.notice
    other = prepare_reference(canvas, 64, detector="dlib", face=1)
    assert other.notice is None and other.crop[0] > ref.crop[0]
    with pytest.raises(InputError, match="--face 2: 2 face"):
        prepare_reference(canvas, 64, detector="dlib", face=2)


def _result_or_hint(image, **kw):
    """prepare_reference's result, or its one-line error naming what to do."""
    try:
        return prepare_reference(image, 64, **kw)
    except InputError as e:
        assert "\n" not in str(e) and ("--mask" in str(e) or "--face" in str(e))
        return str(e)


@needs_dlib
@pytest.mark.parametrize("case", ["cut", "profile", "drawing", "sketch", "none"])
def test_hard_inputs_give_a_result_or_a_hint(astronaut, case):
    if case == "cut":  # a fifth of the face outside the image
        image = astronaut[:, 200:].copy()
    elif case == "profile":  # the cameraman, his face turned to the camera's viewfinder
        image = data.camera()
    elif case == "drawing":  # a drawn face (emo-jax synth's)
        from emo_jax.data.synth import draw_still, make_identity

        image = draw_still(make_identity(5), 256)
    elif case == "sketch":  # a line drawing of the photograph
        image = np.where(cv2.Canny(astronaut, 80, 160) > 0, 0, 255).astype(np.uint8)
    else:
        image = data.coffee()
    out = _result_or_hint(image, detector="dlib")
    if case == "drawing":
        assert not isinstance(out, str)  # drawn faces (what the default model knows) are found
    if case == "none":
        assert isinstance(out, str) and "no face found" in out
    mask = np.zeros(np.shape(image)[:2], np.uint8)
    mask[100:200, 100:200] = 255
    assert prepare_reference(image, 64, detector="dlib", mask=mask).mask.any()  # --mask works


@needs_dlib
def test_aligned_face_is_stable_under_shift_scale_and_jpeg(dlib_backend, astronaut):
    """What the ArcFace model sees (the 112x112 face aligned on the detected five points)
    hardly changes when the photo is shifted, scaled or re-encoded, against a 10 px slip of
    the points: any recognition model's embedding inherits that stability."""

    def aligned(image, slip=0):
        (face,) = dlib_backend.detect(image)
        return arcface.align(image, face.points5 + [slip, 0]).astype(np.float32)

    base = aligned(astronaut)
    buf = io.BytesIO()
    Image.fromarray(astronaut).save(buf, "JPEG", quality=40)
    variants = {
        "shift": np.pad(astronaut, ((13, 0), (7, 0), (0, 0)), mode="edge")[:512, :512],
        "scale": cv2.resize(astronaut, (410, 410), interpolation=cv2.INTER_AREA),
        "jpeg": np.asarray(Image.open(buf)),
    }
    for name, image in variants.items():
        assert np.abs(aligned(image) - base).mean() < 8, name  # measured 2.1, 3.1, 5.2
    assert np.abs(aligned(astronaut, slip=10) - base).mean() > 25  # measured 38

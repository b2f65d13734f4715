"""Faces: detection with landmarks and scores (`detect`, pluggable back ends: dlib's models as
the face_recognition_models wheel ships them, OpenCV's Haar cascade as the offline fallback),
face tracks and crops (`track`), head pose and rotation speed (`pose`), face / lip region masks
(`regions`) and the ArcFace identity embedding (`arcface`).

Boxes are float arrays (4,) x0, y0, x1, y1 in pixels: the face from the forehead above the
eyebrows to the chin, cheek to cheek (the convention of OpenCV's frontal cascades, which the
training crops and the synthetic corpus's truth follow). Landmarks are (68, 2) in the iBUG 300-W
order (jaw 0-16, brows 17-26, nose 27-35, eyes 36-47, mouth 48-67); five points are insightface's
(image-left eye, image-right eye, nose tip, image-left and image-right mouth corners).
"""

"""Head and tail marks of the mesh views (mesh_recon.mesh_views.landmark_colours, per-face colours in shade_views)."""
import numpy as np

from mesh_recon.mesh_views import HEAD_COLOUR, LANDMARK_REACH, TAIL_COLOUR, landmark_colours, marked_colour, shade_views

# a strip of 10 quads (20 triangles) along x from -1 to 1, at z = 0
XS = np.linspace(-1.0, 1.0, 11)
STRIP_V = np.concatenate([np.stack([XS, np.zeros(11), np.zeros(11)], 1),
                          np.stack([XS, np.full(11, 0.1), np.zeros(11)], 1)])
STRIP_F = np.concatenate([[[i, i + 1, i + 11], [i + 1, i + 12, i + 11]] for i in range(10)])


def _keypoints(bill: int, tail: int, count: int = 12) -> np.ndarray:
    weights = np.zeros((count, len(STRIP_V)))
    weights[:, 5] = 1.0  # the other keypoints sit mid-strip
    weights[0], weights[9] = 0.0, 0.0
    weights[0, bill], weights[9, tail] = 1.0, 1.0
    return weights


def test_faces_near_the_bill_and_the_tail_tip_are_marked():
    colours = landmark_colours(STRIP_V, STRIP_F, _keypoints(bill=10, tail=0), (200, 0, 0))
    centroid_x = STRIP_V[STRIP_F].mean(1)[:, 0]
    reach = LANDMARK_REACH * np.linalg.norm(STRIP_V.max(0) - STRIP_V.min(0))  # 0.24 here
    # brute force: each face by its centroid's distance to the keypoint (the strip's y extent is 0.1)
    for f, x in enumerate(centroid_x):
        centroid = STRIP_V[STRIP_F[f]].mean(0)
        if np.linalg.norm(centroid - STRIP_V[10]) <= reach:
            assert tuple(colours[f]) == HEAD_COLOUR
        elif np.linalg.norm(centroid - STRIP_V[0]) <= reach:
            assert tuple(colours[f]) == TAIL_COLOUR
        else:
            assert tuple(colours[f]) == (200, 0, 0)
    assert (centroid_x[np.all(colours == HEAD_COLOUR, 1)] > 0.7).all()
    assert (centroid_x[np.all(colours == TAIL_COLOUR, 1)] < -0.7).all()
    assert np.all(colours == HEAD_COLOUR, 1).sum() >= 2 and np.all(colours == TAIL_COLOUR, 1).sum() >= 2
    # a bird facing the other way is marked the other way
    flipped = landmark_colours(STRIP_V, STRIP_F, _keypoints(bill=0, tail=10), (200, 0, 0))
    assert np.array_equal(np.all(flipped == HEAD_COLOUR, 1), np.all(colours == TAIL_COLOUR, 1))
    assert np.array_equal(np.all(flipped == TAIL_COLOUR, 1), np.all(colours == HEAD_COLOUR, 1))


def test_face_colours_shade_like_one_colour_per_face():
    ndc = np.stack([STRIP_V * [0.8, 4.0, 1.0] + [0, -0.2, 2.0]])  # (1, V, 3), visible strip, z > 0
    face_colours = np.tile([200.0, 0.0, 0.0], (len(STRIP_F), 1))
    face_colours[:6] = [0.0, 0.0, 250.0]  # the left three quads blue
    mixed = shade_views(ndc, STRIP_F, face_colours)[0].astype(int)
    red = shade_views(ndc, STRIP_F, (200, 0, 0))[0].astype(int)
    blue = shade_views(ndc, STRIP_F, (0, 0, 250))[0].astype(int)
    left = (blue[..., 2] > 0) & (blue[..., 0] == 0)  # strip pixels
    columns = np.nonzero(left.any(0))[0]
    split = columns.min() + 0.3 * np.ptp(columns)  # x = -0.4 of the strip, in pixels, roughly
    cols = np.arange(left.shape[1])[None, :].repeat(left.shape[0], 0)
    blue_part, red_part = left & (cols < split - 2), left & (cols > split + 2)
    assert blue_part.sum() > 20 and red_part.sum() > 20
    assert np.array_equal(mixed[blue_part], blue[blue_part]) and np.array_equal(mixed[red_part], red[red_part])


def test_marked_colour_takes_only_weights_made_for_the_mesh():
    weights = _keypoints(bill=10, tail=0)
    colour = marked_colour(STRIP_V, STRIP_F, (1, 2, 3), [None, weights[:, :5], weights])
    assert np.array_equal(colour, landmark_colours(STRIP_V, STRIP_F, weights, (1, 2, 3)))
    assert marked_colour(STRIP_V, STRIP_F, (1, 2, 3), [None, weights[:, :5], weights[:9]]) == (1, 2, 3)

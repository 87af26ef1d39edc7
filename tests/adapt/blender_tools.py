"""Blender (``bpy``, Blender as a Python module) as the real client of our glTF files, for the tests.

bpy runs in a subprocess: it is heavy, prints a lot and may crash on exit.
"""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

BLENDER_SCRIPT = r"""
import json, sys
import numpy as np
import bpy
glb, out, fps, frames, guess = sys.argv[1], sys.argv[2], int(sys.argv[3]), json.loads(sys.argv[4]), sys.argv[5] == "1"
bpy.ops.wm.read_factory_settings(use_empty=True)
scene = bpy.context.scene
scene.render.fps, scene.render.fps_base = fps, 1.0  # the importer converts seconds with render.fps * fps_base
before = set(bpy.data.objects)
bpy.ops.import_scene.gltf(filepath=glb, guess_original_bind_pose=guess, disable_bone_shape=True)
new = [o for o in bpy.data.objects if o not in before]
arms, meshes = [o for o in new if o.type == "ARMATURE"], [o for o in new if o.type == "MESH"]
info = {"version": bpy.app.version_string, "armatures": len(arms), "meshes": len(meshes),
        "bones": [b.name for b in arms[0].data.bones] if arms else [],
        "skinned": [any(m.type == "ARMATURE" and m.object in arms for m in o.modifiers) for o in meshes],
        "frame_ranges": [list(a.frame_range) for a in bpy.data.actions]}
verts = []
for f in frames:
    scene.frame_set(f)
    ob = meshes[0].evaluated_get(bpy.context.evaluated_depsgraph_get())
    me = ob.to_mesh()
    co = np.empty(3 * len(me.vertices))
    me.vertices.foreach_get("co", co)
    M = np.array(ob.matrix_world)
    verts.append(co.reshape(-1, 3) @ M[:3, :3].T + M[:3, 3])
    ob.to_mesh_clear()
np.save(out, np.stack(verts))
print("RESULT " + json.dumps(info))
"""


def blender_to_world(points: np.ndarray) -> np.ndarray:
    """(..., 3) Blender coordinates -> video camera frame: the importer maps glTF (x, y, z) to Blender (x, -z, y),
    and glTF is (x, -y, -z) of the camera frame, so camera = (x, -z, y) of Blender."""
    return np.stack([points[..., 0], -points[..., 2], points[..., 1]], -1)



def skip_without_bpy() -> None:
    """Like pytest.importorskip("bpy") but without importing it into the test process; with the environment
    variable BIRDMESH_REQUIRE_BLENDER set (CI), a missing bpy fails the test instead of skipping it."""
    if importlib.util.find_spec("bpy") is None:
        message = "no bpy (Blender as a module): pip install -e '.[test,blender]' (bpy==5.0.1, Python 3.11)"
        if os.environ.get("BIRDMESH_REQUIRE_BLENDER"):
            pytest.fail(message)
        pytest.skip(message)


def run_blender(glb: Path, frames: list[int], fps: float, tmp_path: Path, guess_bind_pose: bool = True
                ) -> tuple[dict, np.ndarray, float]:
    """Import ``glb`` into an empty Blender scene at ``fps`` (an integer) and evaluate the skinned mesh.

    Returns:
        (info: version, armatures, meshes, bones, skinned, frame_ranges; the evaluated vertices (len(frames), V', 3)
        in the video camera frame (``blender_to_world``), in the file's vertex order; seconds taken).
    """
    script, out = tmp_path / "blender_check.py", tmp_path / "verts.npy"
    script.write_text(BLENDER_SCRIPT)
    start = time.perf_counter()
    run = subprocess.run([sys.executable, str(script), str(glb), str(out), str(int(fps)), json.dumps(frames),
                          str(int(guess_bind_pose))], capture_output=True, text=True, timeout=600)
    seconds = time.perf_counter() - start
    lines = [line for line in run.stdout.splitlines() if line.startswith("RESULT ")]
    assert lines, f"Blender run failed (exit {run.returncode}):\n{run.stdout[-3000:]}\n{run.stderr[-3000:]}"
    return json.loads(lines[-1][len("RESULT "):]), blender_to_world(np.load(out)), seconds

"""The GUI's Qt-free parts: state objects, rendering, media writers, recent files, requests."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from brainsynth_gui.generation_request import GenerationChoices, RemainingTime, format_seconds
from brainsynth_gui.recent_files import RecentFiles
from brainsynth_gui.rendering import (
    PLANES,
    colourise,
    compose_views,
    oriented_slice,
    pad_to_multiple,
    screen_rows,
    slice_rect_mm,
)
from brainsynth_gui.state import (
    CursorState,
    DisplayState,
    ImageLayer,
    OrientationState,
    TrajectoryState,
    ViewerState,
    WindowLevelState,
    ZoomState,
)
from engine.checkpoint import Checkpoint
from engine.errors import ExportError, SamplingError
from engine.geometry import GridGeometry
from engine.specs import PRESETS

GRID = GridGeometry.over_mni_box((16, 24, 16))


def test_state_module_is_qt_free():
    import subprocess

    code = (
        "import sys, brainsynth_gui.state, brainsynth_gui.rendering, brainsynth_gui.animation, "
        "brainsynth_gui.media, brainsynth_gui.recent_files, brainsynth_gui.generation_request, "
        "brainsynth_gui.volume_library, brainsynth_gui.checkpoint_info, brainsynth_gui.rating_state, "
        "brainsynth_gui.review_flow\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('PySide6', 'pyqtgraph', 'shiboken6')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


class Counter:
    def __init__(self, observable):
        self.n = 0
        observable.subscribe(self)

    def __call__(self):
        self.n += 1


def test_cursor_voxel_mm_clipping_and_notifications():
    cursor = CursorState(GRID)
    calls = Counter(cursor)
    assert cursor.voxel == (8, 12, 8)
    cursor.set_voxel((1.4, 30, -3))
    assert cursor.voxel == (1, 23, 0)
    assert calls.n == 1
    cursor.set_voxel((1, 23, 0))  # no change, no notification
    assert calls.n == 1
    np.testing.assert_allclose(cursor.mm, GRID.voxel_to_mm((1, 23, 0)))
    cursor.set_mm(GRID.voxel_to_mm((5, 6, 7)) + 1.0)  # within half a voxel
    assert cursor.voxel == (5, 6, 7)
    cursor.step(2, 100)
    assert cursor.voxel == (5, 6, 15)
    cursor.step(2, -1)
    assert cursor.voxel[2] == 14
    other = GridGeometry.over_mni_box((32, 48, 32))
    mm = cursor.mm
    cursor.set_grid(other)
    assert np.all(np.abs(cursor.mm - mm) <= np.asarray(other.spacing_mm) / 2 + 1e-9)


def test_unsubscribe_stops_callbacks():
    wl = WindowLevelState()
    calls = Counter(wl)
    wl.unsubscribe(calls)
    wl.set(window=10)
    assert calls.n == 0


def test_window_level_fields_and_drag_agree():
    wl = WindowLevelState(window=1000, level=500)
    assert (wl.low, wl.high) == (0, 1000)
    wl.set(window=0)
    assert wl.window == WindowLevelState.MIN_WINDOW
    wl.set_range(100, 300)
    assert (wl.window, wl.level) == (200, 200)
    wl.drag((200, 200), dx_px=50, dy_px=-10)  # right widens, up lowers the level (brighter)
    assert (wl.window, wl.level) == (300, 180)
    wl.set(window=float("nan"))
    assert wl.window == 300


def test_orientation_and_display_and_zoom():
    orientation = OrientationState()
    assert orientation.radiological
    assert orientation.name == "radiological"
    orientation.set_radiological(False)
    assert orientation.name == "neurological"

    display = DisplayState()
    with pytest.raises(ValueError, match="compare mode must be one of"):
        display.set_compare("sideways")
    display.set_overlay_opacity(3)
    assert display.overlay_opacity == 1.0

    zoom = ZoomState(GRID)
    centre = zoom.centre_mm
    np.testing.assert_allclose(centre, [0.0, -18.0, 18.0], atol=1e-9)  # middle of the MNI box
    zoom.zoom_by(100)
    assert zoom.factor == ZoomState.MAX_FACTOR
    zoom.pan_by((1, 2, 3))
    np.testing.assert_allclose(zoom.centre_mm, centre + np.array([1, 2, 3]))
    zoom.reset()
    assert zoom.factor == 1
    assert np.allclose(zoom.centre_mm, centre)


def test_trajectory_timeline():
    traj = TrajectoryState()
    assert traj.label() == ""
    assert traj.at_end
    traj.set_playing(True)
    assert not traj.playing  # nothing to play
    traj.set_frames((0, 4, 9), (999, 599, 99), total_steps=10)
    assert traj.index == 2
    assert traj.at_end
    traj.set_index(-5)
    assert traj.index == 0
    traj.step_by(1)
    assert traj.index == 1
    traj.advance()
    traj.advance()
    assert traj.index == 0  # wraps for playback
    traj.set_kind("x0")
    assert traj.label() == "frame 1 of 3 · step 1/10 (t = 999), predicted x0"
    traj.set_index(2)
    assert traj.label() == "frame 3 of 3 · step 10/10 (t = 99), predicted x0"
    traj.set_kind("x_t")
    assert traj.label() == "frame 3 of 3 · step 10/10 (t = 99), final sample"
    traj.set_frames((-1, 0, 9), (1000, 999, 99), total_steps=10)
    traj.set_index(0)
    assert traj.label() == "frame 1 of 3 · starting noise (t = 1000)"
    traj.set_frames((0, 4, 9), (999, 599, 99), total_steps=10)
    traj.set_kind("x0")
    with pytest.raises(ValueError, match="kind must be one of"):
        traj.set_kind("eps")
    traj.set_fps(1000)
    assert traj.fps == TrajectoryState.MAX_FPS
    traj.set_playing(True)
    assert traj.playing
    traj.clear()
    assert len(traj) == 0
    assert not traj.playing


def test_layer_value_and_readout():
    state = ViewerState.for_grid(GRID)
    data = np.arange(np.prod(GRID.shape), dtype=np.float32).reshape(GRID.shape)
    state.layer("synthetic").set(data, "x")
    state.cursor.set_voxel((1, 2, 3))
    assert state.layer("synthetic").value_at((1, 2, 3)) == data[1, 2, 3]
    assert ImageLayer("e").value_at((0, 0, 0)) is None
    text = state.readout()
    assert "voxel [1, 2, 3]" in text
    assert f"synthetic {data[1, 2, 3]:.0f}" in text
    assert "MNI (" in text
    assert "real" not in text


def test_a_viewer_state_holds_any_number_of_named_layers():
    data = np.full(GRID.shape, 7.0, np.float32)
    three = ViewerState.for_grid(GRID, layer_names=("synthetic", "real", "mask"))
    assert list(three.layers) == ["synthetic", "real", "mask"]
    three.layer("mask").set(data, "brain mask")
    three.layer("real").set(data * 2)
    assert three.readout().endswith("real 14   mask 7")  # every layer with data, in order
    one = ViewerState.for_grid(GRID, layer_names=("case",))  # review mode
    assert list(one.layers) == ["case"]
    assert one.layer("case").name == "case"
    with pytest.raises(KeyError, match="no layer 'real'; this state has case"):
        one.layer("real")
    assert list(ViewerState.for_grid(GRID).layers) == ["synthetic", "real"]  # the main window's
    for bad in ((), ("a", "a")):
        with pytest.raises(ValueError, match="distinct names"):
            ViewerState.for_grid(GRID, layer_names=bad)


def test_orientation_of_slices_and_letters():
    vol = np.zeros((4, 5, 6), np.float32)
    vol[0, 4, 5] = 1  # RAS+: the patient's leftmost, most anterior, most superior voxel
    axial = PLANES["axial"]
    rad = screen_rows(oriented_slice(vol, axial, 5, radiological=True))
    neuro = screen_rows(oriented_slice(vol, axial, 5, radiological=False))
    # Anterior is up; in radiological view the patient's left is on the screen's right.
    assert rad[0, -1] == 1
    assert neuro[0, 0] == 1
    assert axial.edge_letters(True) == {"left": "R", "right": "L", "top": "A", "bottom": "P"}
    assert axial.edge_letters(False)["left"] == "L"
    sagittal = PLANES["sagittal"]
    sag = screen_rows(oriented_slice(vol, sagittal, 0, radiological=True))
    assert sag[0, 0] == 1  # anterior on the left, superior up
    assert sagittal.edge_letters(False) == {"left": "A", "right": "P", "top": "S", "bottom": "I"}
    assert PLANES["coronal"].edge_letters(True)["top"] == "S"


def test_slice_rect_covers_the_grid_in_scene_mm():
    for radiological in (True, False):
        x, y, w, h = slice_rect_mm(
            PLANES["axial"], GRID.shape, GRID.spacing_mm, GRID.origin_mm, radiological=radiological
        )
        assert w == pytest.approx(181)
        assert h == pytest.approx(217)
        assert y == pytest.approx(-126.5)
        assert x == pytest.approx(-90.5)  # the MNI box is symmetric in x


def test_colourise_and_compose():
    raster = np.array([[0.0, 500.0, 1000.0]])
    rgb = colourise(raster, low=0, high=1000, colormap="gray")
    assert rgb.shape == (1, 3, 3)
    assert rgb[0, 0, 0] == 0
    assert rgb[0, 2, 0] == 255
    vol = np.random.default_rng(0).uniform(0, 1000, GRID.shape).astype(np.float32)
    one = compose_views(
        vol,
        ["axial"],
        voxel=(8, 12, 8),
        spacing_mm=GRID.spacing_mm,
        radiological=True,
        low=0,
        high=1000,
        colormap="gray",
        caption="step 1/3",
    )
    three = compose_views(
        vol,
        ["axial", "coronal", "sagittal"],
        voxel=(8, 12, 8),
        spacing_mm=GRID.spacing_mm,
        radiological=True,
        low=0,
        high=1000,
        colormap="hot",
    )
    assert one.shape[1] == pytest.approx(181, abs=1)
    assert one.shape[0] == pytest.approx(217 + 22, abs=1)
    assert three.shape[1] == pytest.approx(181 + 217 + 181 + 8, abs=3)
    assert pad_to_multiple(one, 16).shape[0] % 16 == 0
    with pytest.raises(ValueError, match="unknown colour map"):
        colourise(raster, low=0, high=1, colormap="nope")


def test_gif_round_trip_and_mp4_hint(tmp_path, monkeypatch):
    import imageio.v3 as iio

    from brainsynth_gui import media

    frames = [np.full((20, 30, 3), v, np.uint8) for v in (0, 120, 250)]
    path = media.write_animation(tmp_path / "a.gif", frames, fps=5)
    back = iio.imread(path, index=None)
    assert back.shape[0] == 3
    assert back.shape[1:3] == (20, 30)
    with pytest.raises(ExportError, match="already exists"):
        media.write_animation(path, frames, fps=5)
    with pytest.raises(ExportError, match=r"\.gif or \.mp4"):
        media.write_animation(tmp_path / "a.avi", frames, fps=5)
    monkeypatch.setitem(sys.modules, "imageio_ffmpeg", None)  # import fails as if not installed
    with pytest.raises(ExportError, match=r"pip install 'brainsynth\[video\]'"):
        media.write_animation(tmp_path / "a.mp4", frames, fps=5)
    assert not (tmp_path / "a.mp4").exists()


@pytest.mark.skipif(not __import__("brainsynth_gui.media").media.ffmpeg_available(), reason="imageio-ffmpeg missing")
def test_mp4_round_trip(tmp_path):
    import imageio.v2 as imageio

    from brainsynth_gui import media

    frames = [np.full((21, 30, 3), v, np.uint8) for v in (0, 120, 250, 60)]
    path = media.write_animation(tmp_path / "a.mp4", frames, fps=4)
    reader = imageio.get_reader(path, format="FFMPEG")
    # iter_data(), not list(reader): imageio's FFMPEG reader reports len() = inf when the file does
    # not state its frame count, and list() then tries to allocate for that.
    got = list(reader.iter_data())
    reader.close()
    assert len(got) == 4
    assert got[0].shape[0] % 16 == 0


def test_recent_files(tmp_path):
    store = tmp_path / "cfg" / "recent.json"
    a, b = tmp_path / "a.safetensors", tmp_path / "b.nii.gz"
    a.write_text("x")
    b.write_text("x")
    recent = RecentFiles(store, limit=2)
    recent.add("checkpoints", a)
    recent.add("scans", b)
    recent.add("checkpoints", tmp_path / "gone.safetensors")
    again = RecentFiles(store, limit=2)
    assert again.get("checkpoints") == [a.resolve()]  # missing files are not offered
    assert again.get("scans") == [b.resolve()]
    store.write_text("{not json")
    assert RecentFiles(store).get("scans") == []


def test_generation_choices_and_time_left():
    import random

    choices = GenerationChoices(sampler="ddim", steps=3, count=2, seed=7)
    assert choices.resolve_seeds() == [7, 8]
    seeds = GenerationChoices(count=3, random_seed=True).resolve_seeds(random.Random(1))
    assert len(seeds) == 3
    assert seeds[1] == seeds[0] + 1
    checkpoint = Checkpoint(spec=PRESETS["tiny"], weights={})
    with pytest.raises(SamplingError):
        GenerationChoices(sampler="euler").to_request(checkpoint)
    ticks = iter([0.0, 10.0])
    clock = RemainingTime(clock=lambda: next(ticks))
    assert clock.update(0.1) is None
    assert clock.update(0.2) == pytest.approx(80.0)
    assert format_seconds(None) == "…"
    assert format_seconds(65) == "1 min 05 s"
    assert format_seconds(3700) == "1 h 01 min"


def test_out_of_memory_says_what_to_lower():
    import torch

    from brainsynth_gui.background import OOM_HINT, describe_failure

    oom = getattr(torch.cuda, "OutOfMemoryError", RuntimeError)("CUDA out of memory. Tried to allocate 2 GiB")
    assert describe_failure(oom) == OOM_HINT
    assert "batch size" in OOM_HINT
    assert "trajectory frames" in OOM_HINT
    assert "CPU" in OOM_HINT
    assert describe_failure(SamplingError("no CUDA GPU")) == "no CUDA GPU"
    assert "unexpectedly" in describe_failure(ZeroDivisionError("x"))

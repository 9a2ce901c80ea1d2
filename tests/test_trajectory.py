"""Trajectory frame choice, compact storage and its memory bound."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from engine.errors import SamplingError
from engine.samplers import SamplerSettings, SamplingStep, denoise, initial_noise, trailing_timesteps
from engine.specs import ScheduleSpec
from engine.trajectory import TrajectoryRecorder, downsampled_shape, estimated_bytes, frame_indices


def _step(index: int, total: int, x: torch.Tensor) -> SamplingStep:
    return SamplingStep(index=index, total=total, timestep=1000 - index, x_t=x, x0_pred=-x)


@pytest.mark.parametrize(("frames", "total"), [(2, 1000), (5, 10), (20, 50), (50, 1000), (7, 8), (3, 3)])
def test_frames_evenly_spaced_with_first_and_last(frames, total):
    kept = frame_indices(frames, total)
    assert len(kept) == frames
    assert kept[0] == 0
    assert kept[-1] == total - 1
    gaps = np.diff(kept)
    assert gaps.min() >= 1
    assert gaps.max() - gaps.min() <= 1  # as even as integers allow


def test_frame_edge_cases():
    assert frame_indices(0, 100) == ()
    assert frame_indices(1, 100) == (99,)  # one frame: the final sample
    assert frame_indices(500, 20) == tuple(range(20))
    assert frame_indices(5, 10) == (0, 2, 5, 7, 9)
    with pytest.raises(SamplingError):
        frame_indices(-1, 10)


def test_memory_bound_figures_in_the_docs():
    # 50 frames at 84 x 128 x 84 in float16: 2 * 50 * 903,168 * 2 bytes = 181 MB per sample.
    assert estimated_bytes(50, (84, 128, 84)) == 2 * 50 * 84 * 128 * 84 * 2 == 180_633_600
    assert estimated_bytes(50, (84, 128, 84), downsample=2) == 2 * 50 * 42 * 64 * 42 * 2
    # The full float32 x_t trajectory the recorder avoids: 3.6 GB.
    assert estimated_bytes(1000, (84, 128, 84), dtype=torch.float32) // 2 == 3_612_672_000
    assert downsampled_shape((84, 128, 84), 3) == (28, 43, 28)  # partial blocks kept


@pytest.mark.parametrize("downsample", [1, 2, 3])
def test_recorder_keeps_chosen_frames_within_bound(downsample):
    total, frames, batch = 12, 4, 2
    grid = (8, 10, 6)
    recorder = TrajectoryRecorder(frames, total, downsample=downsample)
    for index in range(total):
        x = torch.full((batch, 1, *grid), float(index)) + torch.arange(batch).view(batch, 1, 1, 1, 1) * 100
        if recorder.want_frame(index):
            recorder.add(_step(index, total, x))
        else:
            recorder.add(SamplingStep(index=index, total=total, timestep=1000 - index))  # ignored
    trajectories = recorder.trajectories()
    assert len(trajectories) == batch
    assert recorder.nbytes == batch * estimated_bytes(frames, grid, downsample=downsample)
    for k, trajectory in enumerate(trajectories):
        assert trajectory.steps == frame_indices(frames, total) == (0, 4, 7, 11)
        assert trajectory.timesteps == tuple(1000 - i for i in trajectory.steps)
        assert trajectory.nbytes == estimated_bytes(frames, grid, downsample=downsample)
        x_t = trajectory.x_t_array()
        assert x_t.dtype == np.float32
        assert x_t.shape == (frames, *downsampled_shape(grid, downsample))
        assert trajectory.x_t_frames.dtype == torch.float16
        for f, step in enumerate(trajectory.steps):
            np.testing.assert_allclose(x_t[f], step + 100 * k)
            np.testing.assert_allclose(trajectory.x0_array()[f], -(step + 100 * k))


def test_downsampling_is_a_block_mean_including_partial_blocks():
    x = torch.arange(5 * 4 * 3, dtype=torch.float32).reshape(1, 1, 5, 4, 3)
    recorder = TrajectoryRecorder(1, 1, downsample=2, dtype=torch.float32)
    recorder.add(_step(0, 1, x))
    frame = recorder.trajectories()[0].x_t_array()[0]
    assert frame.shape == (3, 2, 2)
    volume = x[0, 0].numpy()
    assert frame[0, 0, 0] == pytest.approx(volume[0:2, 0:2, 0:2].mean())
    assert frame[2, 1, 1] == pytest.approx(volume[4:5, 2:4, 2:3].mean())  # the partial corner block


def test_recorder_with_real_sampler_run():
    schedule = ScheduleSpec(num_train_timesteps=20, clip_sample=False)
    noise, generators = initial_noise((1, 4, 4, 4), [0, 1])
    settings = SamplerSettings("ddim", 10)
    recorder = TrajectoryRecorder(3, settings.steps)

    def model(x, timesteps):
        return 0.1 * x

    for step in denoise(model, schedule, noise, generators, settings, want_frames=recorder.want_frame):
        recorder.add(step)
        last = step
    trajectories = recorder.trajectories()
    assert [t.steps for t in trajectories] == [(0, 5, 9)] * 2
    timesteps = trailing_timesteps(20, 10)
    assert trajectories[0].timesteps == (timesteps[0], timesteps[5], timesteps[9])
    # The last frame is the final sample (to float16 precision).
    np.testing.assert_allclose(trajectories[1].x_t_array()[-1], last.x_t[1, 0].numpy(), atol=2e-3)


def test_missing_frames_are_reported():
    recorder = TrajectoryRecorder(2, 5)
    with pytest.raises(SamplingError, match=r"want_frames=recorder\.want_frame"):
        recorder.add(SamplingStep(index=0, total=5, timestep=9))


@pytest.mark.parametrize("downsample", [0, -2, 1.5])
def test_bad_downsample(downsample):
    with pytest.raises(SamplingError, match="downsampling"):
        TrajectoryRecorder(2, 5, downsample=downsample)


def test_no_frames_no_trajectories():
    recorder = TrajectoryRecorder(0, 5)
    assert not any(recorder.want_frame(i) for i in range(5))
    assert recorder.trajectories() == []

"""Multi-slice meshes: per-slice (ICI) degrees times across-slice (DCN) degrees."""

from __future__ import annotations

import dataclasses

import jax
import numpy as np
import pytest
from helpers import load_config

from molmo_jax.model.config import ConfigError
from molmo_jax.model.sharding import MESH_AXES, hybrid_device_grid, make_mesh
from molmo_jax.train.config import validate
from molmo_jax.train.loop import mesh_from_config


def test_dcn_degrees_multiply_and_slices_stay_contiguous():
    mesh = make_mesh({"fsdp": 2, "data": -1}, dcn={"data": 2})
    assert dict(mesh.shape) == {"data": 4, "fsdp": 2, "tensor": 1, "expert": 1}
    grid = np.vectorize(lambda d: d.id)(mesh.devices)[:, :, 0, 0]
    # simulated devices: the first four form slice 0 and fill the first half of `data`
    assert sorted(grid[:2].ravel()) == [0, 1, 2, 3] and sorted(grid[2:].ravel()) == [4, 5, 6, 7]
    mesh = make_mesh({"tensor": 2, "data": -1}, dcn={"fsdp": 2, "data": 2})
    assert dict(mesh.shape) == {"data": 2, "fsdp": 2, "tensor": 2, "expert": 1}
    with pytest.raises(ValueError, match="unknown dcn mesh axes"):
        make_mesh({"data": -1}, dcn={"dta": 2})
    with pytest.raises(ValueError, match="do not split into 3 slices"):
        make_mesh({"data": -1}, dcn={"data": 3})


@dataclasses.dataclass(frozen=True)
class _FakeDevice:
    id: int
    slice_index: int
    process_index: int = 0
    platform: str = "fake"
    device_kind: str = "fake"


def test_devices_with_slice_index_are_grouped_by_slice():
    devices = [_FakeDevice(i, slice_index=i % 2) for i in range(8)]  # slices interleaved in id order
    grid = hybrid_device_grid((1, 2, 2, 1), (2, 1, 1, 1), devices)
    assert grid.shape == (2, 2, 2, 1)
    assert {d.slice_index for d in grid[0].ravel()} == {0} and {d.slice_index for d in grid[1].ravel()} == {1}


def test_config_dcn_block_builds_the_mesh_and_bad_keys_are_named():
    c = load_config("stage2_multitask", "tiny")
    c.model.checkpoint = "some/checkpoint"
    c.mesh.data, c.mesh.fsdp = -1, 2
    c.mesh.dcn.data = 2
    validate(c)
    mesh = mesh_from_config(c)
    assert mesh.size == jax.device_count() and mesh.shape["data"] == 4 and mesh.axis_names == MESH_AXES
    c.mesh.dcn = dict(dta=2)
    with pytest.raises(ConfigError, match=r"config\.mesh\.dcn\.dta=2: is not a mesh axis"):
        validate(c)
    c.mesh.dcn = dict(data=0)
    with pytest.raises(ConfigError, match=r"config\.mesh\.dcn\.data=0"):
        validate(c)

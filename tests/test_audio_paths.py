"""Load Audio (Sonic) on a shared server: only files inside ComfyUI's input, output
and temp folders (after resolving symlinks), regular files only, one error against
`audio` for a bad name, ComfyUI's own range checks kept, and a content fingerprint
that follows the same rule."""
import os
import shutil
import uuid
from pathlib import Path

import folder_paths
import pytest
import torch
from test_hardening import _tone, _write

import nodes

LOAD = nodes.NODE_CLASS_MAPPINGS["SonicLoadAudio"]


def _input_dir():
    return Path(folder_paths.get_input_directory())


def _unique(ext=".wav"):
    return f"paths_{uuid.uuid4().hex[:8]}{ext}"


def _load(name, **kw):
    args = dict(audio=name, start_time=0.0, duration=0.0, gain_db=0.0)
    args.update(kw)
    return LOAD.execute(**args).result[0]


def _graph(name, **kw):
    inputs = dict(audio=name, start_time=0.0, duration=0.0, gain_db=0.0)
    inputs.update(kw)
    return {"load": {"class_type": "SonicLoadAudio", "inputs": inputs},
            # PreviewAny, not PreviewAudio: core's audio nodes are absent when torchaudio is
            # (the no-torchaudio job runs this file too).
            "out": {"class_type": "PreviewAny", "inputs": {"source": ["load", 0]}}}


@pytest.fixture(scope="module")
def outside(tmp_path_factory):
    """A valid audio file outside every allowed folder."""
    d = tmp_path_factory.mktemp("outside")
    return _write(d / "secret.wav", _tone(16000, 0.5), 16000)


@pytest.fixture(scope="module")
def inside():
    name = _unique()
    _write(_input_dir() / name, _tone(16000, 0.5), 16000)
    return name


def _relative_from(folder, target):
    return os.path.relpath(target, folder)


def test_a_file_in_input_loads(inside):
    audio = _load(inside)
    assert audio["sample_rate"] == 16000 and audio["waveform"].shape == (1, 1, 8000)


@pytest.mark.parametrize("kind", ["dotdot", "absolute", "dotdot_output", "dotdot_temp", "symlink"])
def test_names_leading_out_of_the_allowed_folders_are_refused(host, outside, kind):
    if kind == "dotdot":
        name = _relative_from(folder_paths.get_input_directory(), outside)
    elif kind == "absolute":
        name = str(outside)
    elif kind == "dotdot_output":
        name = _relative_from(folder_paths.get_output_directory(), outside) + " [output]"
    elif kind == "dotdot_temp":
        name = _relative_from(folder_paths.get_temp_directory(), outside) + " [temp]"
    else:
        name = _unique()
        os.symlink(outside, _input_dir() / name)
    with pytest.raises(ValueError, match=r"Load Audio \(Sonic\): .*outside ComfyUI's input, output and temp"):
        _load(name)
    # Validation refuses it too, once, against `audio` (not once per input).
    ok, _error, _outs, node_errors = host.validate(_graph(name))
    assert not ok
    errors = node_errors["load"]["errors"]
    assert [e["extra_info"]["input_name"] for e in errors] == ["audio"]
    assert "outside ComfyUI's input" in errors[0]["details"]
    # The fingerprint never reads the file.
    assert LOAD.fingerprint_inputs(name, 0.0, 0.0, 0.0) == f"unavailable:{name}"
    # And the file list does not offer it.
    assert name not in LOAD.define_schema().inputs[-1].options


@pytest.mark.parametrize(("folder", "suffix"), [("output", " [output]"), ("temp", " [temp]")])
def test_annotated_output_and_temp_files_load(folder, suffix):
    d = Path(folder_paths.get_directory_by_type(folder))
    d.mkdir(parents=True, exist_ok=True)
    name = _unique()
    _write(d / name, _tone(16000, 0.25), 16000)
    assert _load(name + suffix)["waveform"].shape[-1] == 4000


def test_a_symlink_that_stays_inside_is_accepted(inside):
    name = _unique()
    os.symlink(_input_dir() / inside, _input_dir() / name)
    assert torch.equal(_load(name)["waveform"], _load(inside)["waveform"])
    assert name in LOAD.define_schema().inputs[-1].options


def test_dotdot_that_stays_inside_is_accepted(inside):
    sub = _input_dir() / f"sub_{uuid.uuid4().hex[:6]}"
    sub.mkdir()
    assert torch.equal(_load(f"{sub.name}/../{inside}")["waveform"], _load(inside)["waveform"])


def test_devices_and_fifos_are_refused_without_reading(host):
    dev = _unique(".wav")
    os.symlink("/dev/zero", _input_dir() / dev)  # resolves outside: refused by the path rule
    with pytest.raises(ValueError, match="outside ComfyUI's input"):
        _load(dev)
    fifo = _unique(".wav")
    os.mkfifo(_input_dir() / fifo)  # inside input/, but reading it would block the worker
    with pytest.raises(ValueError, match=r"Load Audio \(Sonic\): .*not a regular file"):
        _load(fifo)
    assert LOAD.fingerprint_inputs(fifo, 0.0, 0.0, 0.0) == f"unavailable:{fifo}"
    ok, _e, _o, node_errors = host.validate(_graph(fifo))
    assert not ok and [e["extra_info"]["input_name"] for e in node_errors["load"]["errors"]] == ["audio"]
    assert fifo not in LOAD.define_schema().inputs[-1].options


def test_a_missing_file_is_one_error_against_audio(host):
    name = _unique()
    ok, _e, _o, node_errors = host.validate(_graph(name))
    assert not ok
    errors = node_errors["load"]["errors"]
    assert len(errors) == 1 and errors[0]["extra_info"]["input_name"] == "audio"
    assert "not found" in errors[0]["details"] and name in errors[0]["details"]


@pytest.mark.parametrize(("field", "value"), [("start_time", 1e20), ("duration", 1e7), ("gain_db", 1e4),
                                         ("gain_db", -1e4), ("start_time", -1.0)])
def test_comfyui_range_checks_stay_on(host, inside, field, value):
    ok, _e, _o, node_errors = host.validate(_graph(inside, **{field: value}))
    assert not ok
    types = {e["type"] for e in node_errors["load"]["errors"]}
    assert types <= {"value_bigger_than_max", "value_smaller_than_min"} and types
    assert node_errors["load"]["errors"][0]["extra_info"]["input_name"] == field


@pytest.mark.parametrize("field", ["start_time", "duration", "gain_db"])
def test_nan_inputs_are_refused_by_name(inside, field):
    with pytest.raises(ValueError, match=rf"Load Audio \(Sonic\): input '{field}' is nan"):
        _load(inside, **{field: float("nan")})


def test_rerun_when_the_content_changes_under_the_same_name(host):
    """Same name, new content: the fingerprint changes and the executor runs the node
    again; same content: the cached output is reused."""
    name = _unique()
    path = _input_dir() / name
    _write(path, _tone(16000, 0.5, freq=440.0), 16000)
    f1 = LOAD.fingerprint_inputs(name, 0.0, 0.0, 0.0)
    first = host.run(_graph(name)).outputs("load")[0]["waveform"]
    again = host.run(_graph(name)).outputs("load")[0]["waveform"]
    assert again is first  # unchanged file: ComfyUI reused the cached output
    tmp = path.with_name("new_" + name)
    _write(tmp, _tone(16000, 0.5, freq=880.0), 16000)
    shutil.move(tmp, path)
    assert LOAD.fingerprint_inputs(name, 0.0, 0.0, 0.0) != f1
    changed = host.run(_graph(name)).outputs("load")[0]["waveform"]
    assert changed is not first and not torch.allclose(changed, first)
    expected = torch.from_numpy(_tone(16000, 0.5, freq=880.0)).float()
    torch.testing.assert_close(changed[0], expected, rtol=0, atol=1e-4)  # int16 quantisation: < 4.6e-5

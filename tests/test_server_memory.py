"""The memory budget on a real ComfyUI server (issue 22): three hostile files queued at
once through Load Audio (Sonic) -> Preview Audio (a wide FLAC that declares its length,
a FLAC whose header lies about it, a 64-channel WAV) are refused, the server's peak
resident memory rises less than the budget plus a measured allowance, and the
next normal prompt runs.

Measured (2-core CPU host, ComfyUI 0.3.75, budget 64 MiB): peak - baseline 70.0-70.8 MiB with
the budget in place (64 MiB of decoded samples of the liar, then refused); 1010 MiB on
the code before it."""
import os
import time
import uuid

import comfy_host
import numpy as np
import pytest
from audio_files import flac_declaring, silent_flac, wav_header_only, write_audio
from comfy_server import ComfyServer, ServerError
from conftest import ROOT

from sonic_diffusion.audio_budget import BUDGET_ENV

BUDGET_MB = 64
HOSTILE = ("wide.flac", "liar.flac", "many.wav")
# The liar is decoded up to the budget before it is refused; FFmpeg's decoder, the
# per-frame conversions and the allocator's page rounding add to that: 6.7 MiB measured.
OVERHEAD_MB = 16


def _write_inputs(folder):
    silent_flac(folder / "wide.flac", 384000, 8, 20.0)  # 235 MiB decoded, declared by the header
    flac_declaring(silent_flac(folder / "liar.flac", 384000, 8, 20.0), 3840)  # says 0.01 s, holds 20 s
    wav_header_only(folder / "many.wav", 48000, 64, 6.0, 6.0)  # 64 channels: 70 MiB decoded
    t = np.arange(44100) / 44100
    wav_header_only(folder / "cut.wav", 48000, 1, 10.0, 0.01)  # truncated: refused after its first frames
    write_audio(folder / "tone.wav", 0.3 * np.sin(2 * np.pi * 440 * t)[None], 44100)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    base = tmp_path_factory.mktemp("memory-base")
    for sub in ("custom_nodes", "input", "output", "models", "temp", "user/default"):
        (base / sub).mkdir(parents=True, exist_ok=True)
    os.symlink(ROOT, base / "custom_nodes" / comfy_host.PACK_DIR_NAME)
    _write_inputs(base / "input")
    old = os.environ.get(BUDGET_ENV)
    os.environ[BUDGET_ENV] = str(BUDGET_MB)  # the server owner's setting, inherited by the server
    try:
        with ComfyServer(base) as srv:
            yield srv
    except ServerError as e:
        pytest.fail(str(e))
    finally:
        os.environ.pop(BUDGET_ENV) if old is None else os.environ.__setitem__(BUDGET_ENV, old)


def _prompt(audio, gain_db=0.0):
    return {"1": {"class_type": "SonicLoadAudio",
                  "inputs": {"audio": audio, "start_time": 0.0, "duration": 0.0, "gain_db": gain_db}},
            "2": {"class_type": "PreviewAudio", "inputs": {"audio": ["1", 0]}}}


def _queue(server, prompt):
    return server.get_json("/prompt", {"prompt": prompt, "client_id": str(uuid.uuid4())})["prompt_id"]


def _wait(server, pid, timeout=120):
    deadline = time.time() + timeout
    while time.time() < deadline:
        hist = server.get_json(f"/history/{pid}")
        if pid in hist and hist[pid].get("status", {}).get("completed") is not None:
            return hist[pid]
        assert server.alive(), server.log_tail()
        time.sleep(0.2)
    raise AssertionError(f"prompt {pid} did not finish in {timeout} s:\n{server.log_tail()}")


def _error(entry):
    msgs = [m[1] for m in entry["status"].get("messages", []) if m[0] == "execution_error"]
    return msgs[0]["exception_message"] if msgs else None


def _status_kib(pid, field):
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise AssertionError(f"no {field} in /proc/{pid}/status")


def test_three_hostile_files_at_once_stay_under_the_budget_and_the_next_prompt_runs(server):
    # Once through the nodes' code paths and ComfyUI's error path (a truncated file), so the
    # baseline holds what any prompt leaves behind.
    warm = _wait(server, _queue(server, _prompt("tone.wav")))
    assert warm["status"]["status_str"] == "success", _error(warm)
    assert _error(_wait(server, _queue(server, _prompt("cut.wav"))))
    pid = server.proc.pid
    with open(f"/proc/{pid}/clear_refs", "w") as f:
        f.write("5")  # resets the peak resident size (VmHWM) to the current one
    baseline = _status_kib(pid, "VmRSS")
    ids = [_queue(server, _prompt(name)) for name in HOSTILE]
    entries = [_wait(server, i) for i in ids]
    peak = _status_kib(pid, "VmHWM")
    rise_mib = (peak - baseline) / 1024
    print(f"server peak RSS {peak / 1024:.1f} MiB, baseline {baseline / 1024:.1f} MiB, rise {rise_mib:.1f} MiB "
          f"(budget {BUDGET_MB} MiB)")
    for name, entry in zip(HOSTILE, entries):
        message = _error(entry)
        assert message and message.startswith(f"Load Audio (Sonic): '{name}': "), (name, message)
        assert f"budget of {BUDGET_MB:.1f} MiB" in message and "channel(s)" in message, message
    assert rise_mib < BUDGET_MB + OVERHEAD_MB, f"the server's peak rose {rise_mib:.1f} MiB, over the budget"
    after = _wait(server, _queue(server, _prompt("tone.wav", gain_db=-3.0)))
    assert after["status"]["status_str"] == "success", _error(after)

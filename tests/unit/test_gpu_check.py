"""The GPU check: refuses clearly without a GPU, and runs end to end when rehearsed on the CPU."""

from __future__ import annotations

import shutil

import pytest

from bench import gpu_check

no_gpu = pytest.mark.skipif(shutil.which("nvidia-smi") is not None,
                            reason="this machine has nvidia-smi: the no-GPU path is not reachable")


@no_gpu
@pytest.mark.parametrize("flags", [["--no-venv"], []])
def test_without_a_gpu_it_says_so_and_exits_non_zero_before_installing(tmp_path, capsys, flags):
    venv = tmp_path / "venv"
    rc = gpu_check.main([*flags, "--venv", str(venv)])
    out = capsys.readouterr().out
    assert rc == gpu_check.EXIT_NO_GPU != 0
    assert "NO GPU" in out and "nvidia-smi" in out and "nothing was installed" in out
    assert not venv.exists()  # it stopped before building anything


def test_cpu_rehearsal_runs_every_step_and_writes_no_results(capsys):
    before = gpu_check.OUT.stat().st_mtime_ns if gpu_check.OUT.exists() else None
    rc = gpu_check.main(["--cpu-rehearsal", "--batches", "1,4", "--seconds", "0.05"])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "REHEARSAL" in out and "GPU CHECK PASSED" in out
    # both models ran at both batch sizes and their CPU-vs-CPU outputs agree
    assert "| 4 |" in out and "same faces yes" in out and "1.000000" in out
    # the float16 row beside float32's, with its verdict (OpenVINO runs it on the CPU)
    from pipelines import openvino_session

    if openvino_session.available():
        assert "| 4 | fp16 |" in out and "`dlib`: fp16 keeps parity" in out
    after = gpu_check.OUT.stat().st_mtime_ns if gpu_check.OUT.exists() else None
    assert before == after

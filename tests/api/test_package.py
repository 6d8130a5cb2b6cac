"""The installable core is the kernel library: `import st_adapter_fast` loads none of the application's
dependencies (they are extras: [video], [bench], [hf], [open_clip])."""
import os
import subprocess
import sys
import textwrap

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
APP_MODULES = ("av", "yaml", "tqdm", "matplotlib", "timm", "transformers", "open_clip")


def test_import_loads_no_application_dependency():
    code = textwrap.dedent(f"""
        import sys
        import torch
        # torch itself imports tqdm when it is installed (torch.hub's download bars): drop what torch
        # loaded, so that only what st_adapter_fast imports is seen
        for name in [m for m in sys.modules if m.split(".")[0] in {APP_MODULES!r}]:
            del sys.modules[name]
        import st_adapter_fast
        print(sorted({{m.split(".")[0] for m in sys.modules}} & set({APP_MODULES!r})))
    """)
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, env=env,
                            timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]", f"import st_adapter_fast loaded {result.stdout.strip()}"


def test_the_extras_install_what_each_command_needs():
    tomllib = pytest.importorskip("tomllib")
    from st_adapter_fast import cli
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        project = tomllib.load(f)["project"]
    extras = {name: set(packages) for name, packages in project["optional-dependencies"].items()}
    assert not {"av", "pyyaml", "tqdm", "matplotlib", "timm"} & set(project["dependencies"])
    parser = cli.build_parser()
    commands = [["make-synthetic", "out"], ["train"], ["eval", "a"], ["demo"], ["bench"], ["bench", "--e2e"]]
    for command in commands:
        args = parser.parse_args(command)
        extra, modules = args.needs(args)
        assert {cli.PIP_NAMES.get(m, m) for m in modules} <= extras[extra], command
    assert extras["train"] == extras["video"]   # its former name
    assert extras["video"] | extras["bench"] | extras["hf"] | extras["open_clip"] <= extras["test"]
    assert not {p.split(">")[0] for p in extras["hf"] | extras["open_clip"]} & set(project["dependencies"])

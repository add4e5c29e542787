"""A cold start with one instance of each decoding model, the others added once the first answer is out.

On two cores a cold start is the stubs' start, side by side: each Python stub pays its interpreter, numpy and its
own imports (0.3-0.5 CPU-s), and the two decoding models (`preprocess_crop`, `preprocess`) run two instances each
so that one caller's slow batch does not hold every other caller of the path. The first answer needs one of each.
Measured 2026-12-07 on the Zen 3 VM (AVX2), `python -m loadtest.bench.coldstart --runs 3`, two alternating rounds:
2.6 and 2.9 s to the first crop answer with two instances each, 2.2 and 2.1 s with one.

So, where the launcher loads the ensembles first (command.loads_first), Triton reads the repository through a view
in the run folder (:meth:`NarrowStart.build`): a symbolic link per model, except that each of :data:`MODELS` whose
config (the one Triton reads: ``configs/<name>.pbtxt``, else ``config.pbtxt``) has one instance group of more than
one instance is a folder of links whose config says one. Once the first answer is out (first_load.LaterLoads),
:meth:`NarrowStart.widen` gives each such model's instance count, the model is loaded again with the config it serves
and that count, and :meth:`NarrowStart.link` then puts its link in place. Triton 2.51 adds the instances beside the
one serving, which keeps its stub (checked 2026-12-07: the same process serves on, one more starts, 0.4 s), or, when
a file of the model changed since it loaded (a first start from a fresh clone writes the model's ``__pycache__``),
loads it anew beside the one serving and then unloads that, as a rollout does. Loaded again from the repository
alone, it kept one instance: Triton saw no file newer than those it had read. From then on the view holds only
links, so a rollout reads the repository as it is (new versions, a new config), and a restart after a crash starts
with every instance.
"""

from __future__ import annotations

import os
import re
import shutil
import uuid
from pathlib import Path

from common import contract

#: The models that start with one instance: the decoding steps of the two paths, cheap to widen.
MODELS = (contract.PREPROCESS_CROP_MODEL, contract.PREPROCESS_MODEL)
#: The view's folder in the server's run folder.
VIEW_FOLDER = "repository-view"
#: ``count: N`` inside an ``instance_group [ ... ]``.
_GROUPS = re.compile(r"instance_group\s*\[(?P<groups>[^\]]*)\]")
_COUNT = re.compile(r"\bcount\s*:\s*(?P<count>\d+)")


def config_file(model: Path, config_name: str) -> Path:
    """The config Triton reads for ``model`` under ``--model-config-name=config_name`` (none for ``default``)."""
    if config_name != "default" and (named := model / "configs" / f"{config_name}.pbtxt").is_file():
        return named
    return model / "config.pbtxt"


def instances(config: str) -> int | None:
    """The instance count of ``config``'s one instance group; None for no group, several, or several counts."""
    groups = _GROUPS.findall(config)
    if len(groups) != 1 or len(counts := _COUNT.findall(groups[0])) != 1:
        return None
    return int(counts[0])


def one_instance(config: str) -> str | None:
    """``config`` with its one instance group of more than one instance given one; None when it has no such group
    (none, several, or one of one instance): such a config is left as it is."""
    if (count := instances(config)) is None or count <= 1:
        return None
    match = _GROUPS.search(config)
    narrowed = _COUNT.sub("count: 1", match.group("groups"), count=1)
    return config[: match.start("groups")] + narrowed + config[match.end("groups") :]


class NarrowStart:
    """The view of ``folder`` that Triton starts on (:meth:`build`, at ``view``), and the way back: the counts to load
    the narrowed models with (:meth:`widen`), then their links (:meth:`link`)."""

    def __init__(self, folder: Path, view: Path, config_name: str) -> None:
        self.folder, self.view, self.config_name = Path(folder), Path(view), config_name
        self.narrowed: dict[str, int] = {}  # model: its config's instance count

    def build(self) -> Path:
        """Makes the view (private to this user) and returns it: a link per entry of the repository, a folder of
        links for each model started with one instance."""
        shutil.rmtree(self.view, ignore_errors=True)  # a server started again in the same run folder
        self.view.mkdir(mode=0o700)
        self.narrowed = {}
        for entry in sorted(self.folder.iterdir()):
            config = config_file(entry, self.config_name)
            wanted = entry.name in MODELS and entry.is_dir() and config.is_file()
            text = config.read_text() if wanted else ""
            if (narrowed := one_instance(text)) is None:
                (self.view / entry.name).symlink_to(entry)
                continue
            _links_except(entry, self.view / entry.name, config.relative_to(entry), narrowed)
            self.narrowed[entry.name] = instances(text)
        return self.view

    def widen(self) -> dict[str, int]:
        """The models still narrowed, with the instance count their configs give, for Triton to load them again
        with; each loaded so then goes to :meth:`link` (one whose load failed stays, for the next Triton)."""
        return dict(self.narrowed)

    def link(self, name: str) -> None:
        """Puts model ``name``'s link in the view in place of its narrowed folder. After its load with every
        instance, not before: Triton loads a model whose files changed anew (every instance, and its stubs, new),
        and adds instances in place only to one whose files did not (seen 2026-12-07)."""
        self.narrowed.pop(name, None)
        # A rename, then the link: Triton reads this folder only when asked to load, which comes later.
        aside = self.view / f".{name}-{uuid.uuid4().hex[:8]}"
        os.rename(self.view / name, aside)
        (self.view / name).symlink_to(self.folder / name)
        shutil.rmtree(aside)


def _links_except(source: Path, target: Path, config: Path, text: str) -> None:
    """``target`` as a folder of links to ``source``'s entries, with ``config`` (relative, in a subfolder or not)
    written as ``text`` instead of linked."""
    target.mkdir(mode=0o700)
    for entry in source.iterdir():
        if entry.name != config.parts[0]:
            (target / entry.name).symlink_to(entry)
        elif len(config.parts) == 1:
            (target / entry.name).write_text(text)
        else:
            _links_except(entry, target / entry.name, Path(*config.parts[1:]), text)

"""Run ``python -m MODULE ARGS`` as the base image would: the torch stack cannot be imported. Then write, as
JSON, the distributions whose files the run imported (test_base_image_steps.py checks them against the base
lock). Usage: python tests/base_image_probe.py REPORT.json BLOCKED,NAMES MODULE [ARGS...]"""

import json
import runpy
import sys
from importlib import metadata
from pathlib import Path


def imported_distributions() -> dict[str, list[str]]:
    owners: dict[str, str] = {}
    for dist in metadata.distributions():
        for file in dist.files or []:
            if file.suffix in (".py", ".so", ".pyd"):
                owners[str(Path(dist.locate_file(file)).resolve())] = dist.metadata["Name"]
    found: dict[str, list[str]] = {}
    for name, module in list(sys.modules.items()):
        path = getattr(module, "__file__", None)
        owner = owners.get(str(Path(path).resolve())) if path else None
        if owner:
            found.setdefault(owner, []).append(name)
    return {owner: sorted(names)[:3] for owner, names in found.items()}


def main() -> int:
    report, blocked, module, *argv = sys.argv[1:]
    for name in blocked.split(","):
        # None in sys.modules: `import` raises ImportError and importlib.util.find_spec() answers None,
        # which is how transformers and others decide that torch is absent.
        sys.modules[name] = None
    sys.argv = [module, *argv]
    code = 0
    try:
        runpy.run_module(module, run_name="__main__", alter_sys=True)
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else 1
    Path(report).write_text(json.dumps(imported_distributions(), indent=1))
    return code


if __name__ == "__main__":
    sys.exit(main())

"""Maps the fixed top-level folders onto one import namespace, ``llorch`` (DECISIONS D2).

pyproject.toml holds the metadata; this file exists only because setuptools' static
configuration cannot discover subpackages under a remapped package directory.
The data folders (specs, requirements maps, contracts) ship inside the wheel too, so that
`llorch conform` from a regular install finds them through ``llorch.resources``.
"""

from setuptools import find_packages, setup

CODE = {
    "llorch": "llorch",
    "llorch.reference": "reference",
    "llorch.harness": "harness",
    "llorch.tools": "tools",
}
DATA = {
    "llorch.specs": "specs",
    "llorch.requirements": "requirements",
    "llorch.contracts": "contracts",
}

packages: list[str] = list(DATA)
for name, path in CODE.items():
    packages += [name] + [f"{name}.{sub}" for sub in find_packages(path)]

setup(
    packages=packages,
    package_dir={**CODE, **DATA},
    package_data={
        "": ["*.feature", "*.yaml", "*.json", "*.txt", "*.jsonl", "*.sse", "py.typed"],
        # data folders without an __init__.py inside code packages (feature files, recordings)
        "llorch.harness": ["**/*.feature", "**/*.json", "**/*.yaml", "**/*.txt"],
        "llorch.reference": ["**/*.jsonl", "**/*.sse", "**/*.json", "**/*.yaml", "**/*.txt", "**/*.md"],
        "llorch.specs": ["*.md"],
        "llorch.requirements": ["*.yaml"],
        "llorch.contracts": ["**/*"],
    },
)

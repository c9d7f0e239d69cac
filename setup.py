"""The compiled step checker (curation/_stepscan.c); everything else is in pyproject.toml.

`optional=True`: where no C compiler works (or MSVC, which lacks __int128) the build goes on
without it and `curation.steps` runs its Python path, ~36x slower with the same verdicts.
"""

from setuptools import Extension, setup

setup(ext_modules=[Extension("curation._stepscan", ["curation/_stepscan.c"], optional=True,
                             extra_compile_args=["-O2"])])

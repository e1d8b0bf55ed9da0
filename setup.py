"""Build hook for the optional C speed-up of the pgoutput decoder (all metadata is in pyproject.toml).

``optional=True``: without a C compiler or Python headers the build goes on and cdcflow
uses its pure-Python decoder, which produces the same rows, more slowly.
"""

from setuptools import Extension, setup

setup(ext_modules=[Extension("cdcflow._pgoutput_c", ["src/cdcflow/_pgoutput_c.c"], optional=True)])

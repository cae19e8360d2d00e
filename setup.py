"""Only the optional C kernel lives here; everything else is in pyproject.toml.

``kernels/nucleus.c`` becomes ``userlm_local._nucleus`` (a plain shared library loaded with
ctypes).  ``optional=True``: where it cannot be compiled, the install still succeeds and the
sampler falls back to numpy (``userlm_local.runtime.sampling.backend()`` says which is in use).
"""

from setuptools import Extension, setup

setup(ext_modules=[Extension("userlm_local._nucleus", sources=["kernels/nucleus.c"], optional=True,
                             extra_compile_args=["-O3", "-ffast-math"], libraries=["m"])])

"""Build the C extension; everything else is in pyproject.toml."""
import glob

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "nflogd._nflog",
            sources=sorted(glob.glob("nflogd/_nflog/*.c")),
            depends=sorted(glob.glob("nflogd/_nflog/*.h")),
            libraries=["netfilter_log", "mnl"],
            extra_compile_args=["-std=gnu11", "-Wall", "-Wextra", "-Werror", "-O2",
                                "-fvisibility=hidden"],
        )
    ]
)

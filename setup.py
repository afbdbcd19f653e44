"""Build the C extension; everything else is in pyproject.toml."""
import glob
import subprocess

from setuptools import Extension, setup


def libnetfilter_log_version() -> str:
    """The version built against, for nflogd_build_info."""
    try:
        return subprocess.run(["pkg-config", "--modversion", "libnetfilter_log"], check=True,
                              capture_output=True, text=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


setup(
    ext_modules=[
        Extension(
            "nflogd._nflog",
            sources=sorted(glob.glob("csrc/*.c")),
            depends=sorted(glob.glob("csrc/*.h")),
            libraries=["netfilter_log", "mnl"],
            define_macros=[("LIBNETFILTER_LOG_VERSION", f'"{libnetfilter_log_version()}"')],
            extra_compile_args=["-std=gnu11", "-Wall", "-Wextra", "-Werror", "-O2",
                                "-fvisibility=hidden"],
        )
    ]
)

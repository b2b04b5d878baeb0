"""mtajax: multi-task adversarial attacks (GB-MTA / DGBA) in JAX and Flax.

Citations "spec §n" / "reference-spec §n" and "Qnn" in this package's docstrings and comments are
the sections and quirks of the reference code described in docs/reference.md.
"""

from mtajax import platform as _platform

CPU_WORKAROUND_ACTIVE = _platform.apply_cpu_workaround()

__version__ = "0.1.0"

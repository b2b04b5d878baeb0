"""mtajax: multi-task adversarial attacks (GB-MTA / DGBA) in JAX and Flax."""

from mtajax import platform as _platform

CPU_WORKAROUND_ACTIVE = _platform.apply_cpu_workaround()

__version__ = "0.1.0"

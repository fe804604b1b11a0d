"""Test configuration: float64 on, fast XLA compiles, a reproducible hypothesis profile.

Test time is mostly XLA compiling many small programs. With optimisation level 0 and the legacy
(non-fusion-emitter) CPU backend, compiles are ~3x faster; tests/test_xla_flags.py checks that the
float64 results stay the same without these flags.
"""

import os
from importlib.metadata import version

# The flags, per jaxlib minor release they were checked on (test_xla_flags.py: float64 results
# unchanged). XLA aborts the process on an unknown flag, and jaxlib 0.11 dropped
# --xla_cpu_use_fusion_emitters, so each release gets only the flags it has; a release not listed
# runs the tests under XLA's defaults (and test_xla_flags.py fails, to say so).
FLAGS_BY_JAXLIB = {
    "0.10.": "--xla_backend_optimization_level=0 --xla_cpu_use_fusion_emitters=false",
    "0.11.": "--xla_backend_optimization_level=0",
    "0.12.": "--xla_backend_optimization_level=0",
}
FAST_XLA_FLAGS = next((f for v, f in FLAGS_BY_JAXLIB.items() if version("jaxlib").startswith(v)),
                      None)
if FAST_XLA_FLAGS:
    os.environ.setdefault("XLA_FLAGS", FAST_XLA_FLAGS)

import jax  # noqa: E402
from hypothesis import HealthCheck, settings  # noqa: E402

jax.config.update("jax_enable_x64", True)

# "ci": the same examples every run (derandomized), so a red CI is reproducible; "dev": fresh
# random examples each run, for hunting (HYPOTHESIS_PROFILE=dev pytest ...).
_common = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow], print_blob=True)
settings.register_profile("ci", derandomize=True, **_common)
settings.register_profile("dev", **_common)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

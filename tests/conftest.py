"""Test configuration: float64 on, fast XLA compiles, a reproducible hypothesis profile.

Test time is mostly XLA compiling many small programs. With optimisation level 0 and the legacy
(non-fusion-emitter) CPU backend, compiles are ~3x faster; tests/test_xla_flags.py checks that the
float64 results stay the same without these flags.
"""

import os
from importlib.metadata import version

# The flags exist in the jaxlib this project pins (0.10.x). jaxlib 0.11 dropped
# --xla_cpu_use_fusion_emitters and aborts the process on an unknown flag, so with any other
# jaxlib the tests run under XLA's defaults (and test_xla_flags.py fails, to say so).
FLAGS_JAXLIB = "0.10."
FAST_XLA_FLAGS = "--xla_backend_optimization_level=0 --xla_cpu_use_fusion_emitters=false"
if version("jaxlib").startswith(FLAGS_JAXLIB):
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

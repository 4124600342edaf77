"""Dataset adapters; importing this package registers the built-in ones in ``ADAPTERS``."""

# isort: off
from ofgr_core.data import synthetic  # noqa: F401
from ofgr_core.data import imagefolder, manifest, openimages, stanford_cars, vehicle10  # noqa: F401
# isort: on

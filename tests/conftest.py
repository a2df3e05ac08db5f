import os
from pathlib import Path

import pytest

CIFAR10 = Path(os.environ.get("SEARCHLAB_DATA", "")) / "cifar10"


@pytest.fixture(scope="session")
def cifar_data():
    """$SEARCHLAB_DATA, holding the real CIFAR-10; CI must have it, elsewhere the tests skip."""
    if not (CIFAR10 / "train_x.npy").is_file():
        if os.environ.get("CI"):
            pytest.fail(f"CI needs CIFAR-10 at $SEARCHLAB_DATA/cifar10 ({CIFAR10})")
        pytest.skip("set SEARCHLAB_DATA to a folder holding cifar10/*.npy")
    return str(CIFAR10.parent)


@pytest.fixture(scope="session")
def ray_session():
    """One Ray instance for the whole test session (DESIGN.md section 5)."""
    import ray

    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=200 * 1024**2,
             log_to_driver=False)
    yield
    ray.shutdown()

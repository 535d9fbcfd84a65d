"""pytest options: long runs are opt-in (``pytest --runslow`` or ``make test-slow``)."""

import pytest


def pytest_addoption(parser):
    parser.addoption("--runslow", action="store_true", default=False, help="run slow tests")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--runslow"):
        return
    skip_slow = pytest.mark.skip(reason="slow: run with --runslow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip_slow)


@pytest.fixture(scope="module")
def tiny_synthetic(request, tmp_path_factory):
    """A tiny synthetic panoptic split (6 train, 3 val images of 64x72) registered for the
    module as ``<module name>_synthetic_{train,val}``; returns {"train": name, "val": name}."""
    from detectron2.data import DatasetCatalog, MetadataCatalog

    from panoptic_ext.data import register_synthetic_panoptic

    prefix = f"{request.module.__name__.rsplit('.', 1)[-1]}_synthetic"
    root = str(tmp_path_factory.mktemp("synthetic"))
    names = register_synthetic_panoptic(
        prefix, root=root, num_train=6, num_val=3, height=64, width=72
    )
    yield names
    for name in names.values():
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)

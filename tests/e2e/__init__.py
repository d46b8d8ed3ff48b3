"""The booted appliance image (QEMU). A package, so that its conftest.py is `e2e.conftest` and
leaves the name `conftest` to tests/conftest.py, which test modules import from."""

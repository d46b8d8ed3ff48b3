"""`service-tool maintenance`: placeholder, being written."""


def register(groups) -> None:
    pass

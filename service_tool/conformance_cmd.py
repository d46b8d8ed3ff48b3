"""`service-tool conformance`: placeholder, being written."""


def register(groups) -> None:
    pass

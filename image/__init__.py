"""Building the appliance's operating system image: `python3 -m image.build` (see build.py).

Not part of the installed product (the wheel holds `appliance` and `service_tool` only); the
test suite imports `image.debian` so its containers boot the same Debian tree as the box.
"""

"""The box's one network interface: configuration rendered for netplan and systemd, runtime
state through netlink (pyroute2) and systemd's D-Bus APIs, and DHCP lease loss (FL-09)."""

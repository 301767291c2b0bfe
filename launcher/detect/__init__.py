"""Hardware detection as pure functions over a root path (sysfs and /dev trees are test fixtures)."""

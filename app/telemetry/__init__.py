"""What the hardware is and does: detection, the live sampler, sysfs, NVML, memory bandwidth, advice."""

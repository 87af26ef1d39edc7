"""Shared helpers of the birdmesh toolkit: errors, configs, video I/O, colour, DAVIS data, metrics."""

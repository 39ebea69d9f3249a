"""The quality experiment's parts: arms and the selection rule, controls, measurement, statistics, report."""

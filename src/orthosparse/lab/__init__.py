"""The experiment lab: config, presets, run folders, train, sweep, report, inspect, demo, CLI.

The lab runs the paper's experiments on top of the core library (:mod:`orthosparse`); the core
never imports it. ``orthosparse <command>`` is :mod:`orthosparse.lab.cli`.
"""

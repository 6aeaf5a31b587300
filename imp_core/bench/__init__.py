"""`imp bench`: prefill and decode speed of a checkpoint or of a family's real-shape preset with
random weights in a published format mix, with the roofline arithmetic (bytes a decode step must
read, achieved bandwidth, fraction of the copy bandwidth measured in the same run) and an
optional per-op profile. Modules: ``presets`` (what the families offer), ``model`` (build the
model and bind the path the run uses), ``roofline``, ``runner`` (the measurements), ``report``."""

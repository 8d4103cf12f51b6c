"""Training: a run's settings (config), data, Lightning module, callbacks, rewards (CIDEr-D for SCST), schedules,
run folder and exit messages; run.train drives them."""

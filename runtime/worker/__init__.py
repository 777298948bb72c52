"""The worker process: scheduler, batches, sampler and stop rules over one model."""

"""Everything that executes: the engine, scheduler, model runner, sampler and models."""

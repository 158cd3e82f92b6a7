"""Real, bounded fault injectors and the scenario suite (`make scenarios`)."""

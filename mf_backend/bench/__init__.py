"""Benchmarks: ground-truth quality metrics (`bench quality`) and, in its own module, speed (`bench speed`)."""

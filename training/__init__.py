"""Training data: synthetic seismograms, SeisBench-format datasets and magnitude labels."""

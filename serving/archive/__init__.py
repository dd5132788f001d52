"""Archives: ``seismag annotate`` over files, folders and SDS archives (station-day units)."""

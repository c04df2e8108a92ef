"""Pure functions on arrays and tables (no files, no models): metrics, significance, intervals, power."""

"""The few things both trainers share: the command-line/YAML configuration."""

"""What several test files use: the reference run, the one way to run a train.py's main() in the
test process, checkpoints read back per side, event files, run folders written without training."""

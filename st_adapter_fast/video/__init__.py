"""The video application on top of the kernel library: video data (data.py), the synthetic temporal-order
task (synthetic.py), training and evaluation (train/), the demo (demo.py). Needs the `[video]` extra."""

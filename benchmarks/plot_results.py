"""Plot stored benchmark results: speedup over the authors' eager adapter, per implementation and config.

    python benchmarks/plot_results.py benchmarks/results/nvidia-h100-80gb-hbm3.json [--mode fwd+bwd] [--out x.png]
"""
import argparse
import json
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def plot(result, mode="fwd+bwd", out=None):
    rows = [r for r in result["rows"] if r["mode"] == mode]
    groups = list(dict.fromkeys((r["config"], r["dtype"]) for r in rows))
    impls = list(dict.fromkeys(r["impl"] for r in rows))
    speedup = {(r["config"], r["dtype"], r["impl"]): r["speedup_vs_reference"] for r in rows}
    width = 0.8 / max(len(impls), 1)
    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(groups) + 2), 4))
    for i, impl in enumerate(impls):
        xs = [g + (i - (len(impls) - 1) / 2) * width for g in range(len(groups))]
        ax.bar(xs, [speedup.get((c, d, impl), 0) for c, d in groups], width, label=impl)
    ax.axhline(1.0, color="black", linewidth=0.8)
    ax.set_xticks(range(len(groups)), [f"{c}\n{d}" for c, d in groups])
    ax.set_ylabel("speedup over the authors' eager adapter")
    ax.set_title(f"one ST-Adapter, {mode}, {result['device']} (torch {result['torch']})")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results")
    parser.add_argument("--mode", default="fwd+bwd", choices=["fwd", "fwd+bwd"])
    parser.add_argument("--out", help="PNG path (default: beside the JSON)")
    args = parser.parse_args()
    with open(args.results) as f:
        result = json.load(f)
    out = args.out or os.path.splitext(args.results)[0] + f".{args.mode.replace('+', '_')}.png"
    print(f"wrote {plot(result, args.mode, out)}")


if __name__ == "__main__":
    main()

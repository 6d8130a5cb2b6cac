"""Plot stored benchmark results: speedup over the authors' eager adapter, per implementation and config.

    python benchmarks/plot_results.py benchmarks/results/nvidia-h100-80gb-hbm3.json [--mode fwd+bwd] [--out x.png]

Needs matplotlib: `pip install -e ".[bench]"`.
"""
import argparse
import json
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


REFERENCE_LINE = "linears only"   # rows whose impl starts with this are a bound, not an implementation


def plot(result, mode="fwd+bwd", out=None):
    """Write `figure(result, mode)` to `out` (PNG); returns `out`."""
    fig = figure(result, mode)
    fig.savefig(out, dpi=120, bbox_inches="tight")   # nothing clipped: title and legend outside the axes fit
    plt.close(fig)
    return out


def figure(result, mode="fwd+bwd"):
    """Speedup over the authors' eager adapter per (config, dtype) group: a bar per implementation that
    was measured there (a missing measurement draws nothing, not a zero bar) and the linears-only time
    (the GEMM-bound part every implementation does) as a dashed line over the group."""
    rows = [r for r in result["rows"] if r["mode"] == mode and r.get("speedup_vs_reference")]
    groups = list(dict.fromkeys((r["config"], r["dtype"]) for r in rows))
    impls = list(dict.fromkeys(r["impl"] for r in rows if not r["impl"].startswith(REFERENCE_LINE)))
    speedup = {(r["config"], r["dtype"], r["impl"]): r["speedup_vs_reference"] for r in rows}
    colors = {impl: plt.get_cmap("tab10")(i % 10) for i, impl in enumerate(impls)}
    width = 0.8 / max(len(impls), 1)
    fig, ax = plt.subplots(figsize=(max(6, 1.8 * len(groups) + 2), 4.2))
    labelled = set()
    for g, (config, dtype) in enumerate(groups):
        present = [impl for impl in impls if (config, dtype, impl) in speedup]
        for i, impl in enumerate(present):
            x = g + (i - (len(present) - 1) / 2) * width
            ax.bar(x, speedup[config, dtype, impl], width, color=colors[impl],
                   label=None if impl in labelled else impl)
            labelled.add(impl)
        bound = next((v for (c, d, impl), v in speedup.items() if (c, d) == (config, dtype)
                      and impl.startswith(REFERENCE_LINE)), None)
        if bound is not None:
            label = "linears only (no conv/act): a bound, not an implementation"
            ax.hlines(bound, g - 0.45, g + 0.45, colors="black", linestyles="dashed", linewidth=1.2,
                      label=None if REFERENCE_LINE in labelled else label)
            labelled.add(REFERENCE_LINE)
    ax.axhline(1.0, color="grey", linewidth=0.8)
    ax.set_xticks(range(len(groups)), [f"{c}\n{d}" for c, d in groups])
    ax.set_ylabel("speedup over the authors' eager adapter")
    ax.set_title(f"one ST-Adapter, {mode}\n{result['device']} (torch {result['torch']})", fontsize=10)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    return fig


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

"""Plot stored benchmark results: speedup over the authors' eager adapter, per implementation and config.

    python benchmarks/plot_results.py benchmarks/results/nvidia-h100-80gb-hbm3.json [--mode fwd+bwd] [--timing graph]
                                      [--out x.png]

--timing launched (default): eager calls, the host's launch work included; --timing graph: the GPU time of
CUDA-graph replays (graph_ms), the host left out.

Needs matplotlib: `pip install -e ".[bench]"`.
"""
import argparse
import json
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


REFERENCE_LINE = "linears only"   # rows whose impl starts with this are a bound, not an implementation


def plot(result, mode="fwd+bwd", out=None, timing="launched"):
    """Write `figure(result, mode, timing)` to `out` (PNG); returns `out`."""
    fig = figure(result, mode, timing)
    fig.savefig(out, dpi=120, bbox_inches="tight")   # nothing clipped: title and legend outside the axes fit
    plt.close(fig)
    return out


def _speedups(rows, timing):
    """{(config, dtype, impl): speedup over the group's baseline row}, from launched or CUDA-graph times."""
    if timing == "launched":
        return {(r["config"], r["dtype"], r["impl"]): r["speedup_vs_reference"] for r in rows
                if r.get("speedup_vs_reference")}
    baseline = {(r["config"], r["dtype"]): r["graph_ms"] for r in rows if r["impl"] == r.get("baseline")}
    return {(r["config"], r["dtype"], r["impl"]): baseline[r["config"], r["dtype"]] / r["graph_ms"] for r in rows
            if r.get("graph_ms") and baseline.get((r["config"], r["dtype"]))}


def figure(result, mode="fwd+bwd", timing="launched"):
    """Speedup over the authors' eager adapter per (config, dtype) group: a bar per implementation that
    was measured there (a missing measurement draws nothing, not a zero bar) and the linears-only time
    (the GEMM-bound part every implementation does) as a dashed line over the group."""
    speedup = _speedups([r for r in result["rows"] if r["mode"] == mode], timing)
    groups = list(dict.fromkeys((c, d) for c, d, _ in speedup))
    impls = list(dict.fromkeys(impl for _, _, impl in speedup if not impl.startswith(REFERENCE_LINE)))
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
    what = "launched eagerly (host work included)" if timing == "launched" else "GPU time (CUDA-graph replay)"
    ax.set_title(f"one ST-Adapter, {mode}, {what}\n{result['device']} (torch {result['torch']})", fontsize=10)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    return fig


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results")
    parser.add_argument("--mode", default="fwd+bwd", choices=["fwd", "fwd+bwd"])
    parser.add_argument("--timing", default="launched", choices=["launched", "graph"])
    parser.add_argument("--out", help="PNG path (default: beside the JSON)")
    args = parser.parse_args()
    with open(args.results) as f:
        result = json.load(f)
    suffix = args.mode.replace("+", "_") + ("" if args.timing == "launched" else "_graph")
    out = args.out or os.path.splitext(args.results)[0] + f".{suffix}.png"
    print(f"wrote {plot(result, args.mode, out, args.timing)}")


if __name__ == "__main__":
    main()
